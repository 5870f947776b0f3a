"""The hook where ``gpu_drv`` (``ggmk.drivers.gpu``, written separately) plugs into the
dual-kernel boot.

The boot asks for a driver with :func:`open_driver` (target: "auto", "cpu", "sim", "cuda").
When ``ggmk.drivers.gpu`` provides ``open_for_kernel(target)``, that is used; until then the
:class:`FallbackDriver` below does what the boot needs. The contract (what ``open_for_kernel``
must return):

* ``.target``: the resolved target ("cuda", "cpu" or "sim");
* ``.describe() -> dict``: what was found (``{"target", "devices": [{"name", ...}]}``);
* ``.launch(modules, *, types=None, **config) -> DeviceKernel``: build, upload and launch the
  persistent kernel, returned started;
* ``.close()``.

A target that is not usable is a BootError naming the target and why.
"""
from __future__ import annotations

import os
import platform

from ggmk.errors import BootError


def _available(target: str):
    import importlib
    try:
        mod = importlib.import_module(f"ggmk.device.targets.{target}")
    except Exception as e:   # noqa: BLE001 - a target whose package is missing
        return False, f"cannot load the {target} target: {e}"
    try:
        return mod.available()
    except Exception as e:   # noqa: BLE001
        return False, repr(e)


class FallbackDriver:
    """Finds the device for ``target`` and launches the GPU kernel on it."""

    def __init__(self, target: str = "auto"):
        from ggmk.device import host
        try:
            self.target = host.resolve_target(target)
        except BootError as e:
            raise BootError(f"gpu_drv: device={target!r} is not a device target: {e}") from None
        ok, why = _available(self.target)
        if not ok:
            raise BootError(f"gpu_drv: device target {self.target!r} (asked: {target!r}) is not "
                            f"usable: {why}")
        self.asked = target
        self.kernel = None

    def describe(self) -> dict:
        if self.target == "cuda":
            devs = []
            try:
                from ggmk.drivers import pci
                for f in pci.scan():
                    if getattr(f, "vendor", None) == 0x10DE:
                        devs.append({"name": getattr(f, "name", "NVIDIA GPU"),
                                     "address": getattr(f, "address", "")})
            except Exception:   # noqa: BLE001 - discovery is informative only
                pass
            return {"target": "cuda", "devices": devs or [{"name": "NVIDIA GPU"}]}
        return {"target": self.target,
                "devices": [{"name": platform.processor() or platform.machine(),
                             "kind": "host CPU (the GPU kernel's %s target)" % self.target,
                             "cores": os.cpu_count()}]}

    def launch(self, modules, *, types=None, **config):
        from ggmk.device import DeviceKernel
        from ggmk.errors import DeviceError
        try:
            k = DeviceKernel(modules, target=self.target, types=types, **config)
        except DeviceError as e:
            raise BootError(f"gpu_drv: cannot launch the GPU kernel on {self.target!r}: {e}") \
                from e
        k.start()
        self.kernel = k
        return k

    def close(self) -> None:
        self.kernel = None


def open_driver(target: str = "auto"):
    try:
        from ggmk.drivers import gpu as drv
    except ImportError:
        drv = None
    if drv is not None and hasattr(drv, "open_for_kernel"):
        return drv.open_for_kernel(target)
    return FallbackDriver(target)
