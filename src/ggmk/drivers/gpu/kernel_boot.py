"""``open_for_kernel``: gpu_drv as the dual-kernel boot uses it (``ggmk.dual.boot``).

The boot asks for ``open_for_kernel(target)`` ("auto", "cpu", "sim" or "cuda") and gets a
:class:`KernelDriver`: the :class:`GpuDriver` for that target's backend (discovery, device
facts) plus what the boot needs:

* ``.target``: the resolved device-kernel target ("cuda", "cpu" or "sim");
* ``.describe() -> dict``: ``{"target", "backend", "backend_reason", "devices": [{"name", ...}]}``;
* ``.launch(modules, *, types=None, **config) -> DeviceKernel``: build, upload and start the
  persistent kernel (``GpuDriver.launch``; the ``sim`` target, which has no backend of its
  own, is launched next to the cpu backend);
* ``.close()``: ``GpuDriver.close`` (stops the kernel if it still runs).

A target that is not usable is a ``BootError`` naming the target and why.
"""
from __future__ import annotations

from ggmk.errors import BootError, DeviceError

from .driver import GpuDriver
from .errors import GpuDriverError


class KernelDriver:
    def __init__(self, target: str = "auto", **options):
        from ggmk.device.targets import get_target
        try:
            tgt = get_target(target)
        except BootError as e:
            raise BootError(f"gpu_drv: device={target!r} is not a device target: {e}") from None
        except ImportError as e:
            raise BootError(f"gpu_drv: device target {target!r} is not usable: cannot load it "
                            f"({e})") from None
        self.target = tgt.NAME
        self.asked = target
        try:
            ok, why = tgt.available()
        except Exception as e:   # noqa: BLE001 - a target whose toolkit is broken
            ok, why = False, repr(e)
        if not ok:
            raise BootError(f"gpu_drv: device target {self.target!r} (asked: {target!r}) is not "
                            f"usable: {why}")
        options.setdefault("display", None)
        try:
            self.driver = GpuDriver(backend="cuda" if self.target == "cuda" else "cpu",
                                    **options)
        except GpuDriverError as e:
            raise BootError(f"gpu_drv: device target {self.target!r}: {e}") from e
        if target != self.target:   # 'auto': say why this target, not "backend='cpu' requested"
            self.driver.backend_reason = (
                f"device={target!r} chose the {self.target!r} target (the {self.target} "
                f"backend): " + ("a usable CUDA GPU" if self.target == "cuda"
                                 else "no usable CUDA GPU"))
        self.kernel = None

    def describe(self) -> dict:
        dev = dict(self.driver.device)
        dev.setdefault("name", self.driver.backend.name)
        if self.target != "cuda":
            dev["kind"] = f"host CPU (the GPU kernel's {self.target} target)"
        return {"target": self.target, "backend": self.driver.backend.name,
                "backend_reason": self.driver.backend_reason, "devices": [dev]}

    def launch(self, modules, *, types=None, **config):
        try:
            if self.target == self.driver.backend.kernel_target:
                k = self.driver.launch(modules, types=types, **config)
            else:                                   # sim: no backend of its own
                from ggmk.device import DeviceKernel
                k = DeviceKernel(modules, target=self.target, types=types, **config)
                k.start()
        except (DeviceError, GpuDriverError) as e:
            raise BootError(f"gpu_drv: cannot launch the GPU kernel on {self.target!r}: {e}") \
                from e
        self.kernel = k
        return k

    def close(self) -> None:
        """Stop a kernel this object started next to the driver (the ``sim`` target: the driver
        never saw it), then ``GpuDriver.close`` (which stops the driver's own kernel)."""
        k = self.kernel
        try:
            if k is not None and k is not self.driver.kernel:
                k.stop()
        finally:
            try:
                self.driver.close()
            finally:
                self.kernel = None


def open_for_kernel(target: str = "auto", **options) -> KernelDriver:
    """gpu_drv for the dual-kernel boot: see :class:`KernelDriver`."""
    return KernelDriver(target, **options)
