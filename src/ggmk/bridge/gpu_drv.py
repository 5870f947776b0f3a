"""Where ``gpu_drv`` (``ggmk.drivers.gpu``) plugs into the dual-kernel boot.

The boot asks for a driver with :func:`open_driver` (target: "auto", "cpu", "sim", "cuda"),
which is ``ggmk.drivers.gpu.open_for_kernel(target)``. The contract (see
``ggmk.drivers.gpu.kernel_boot``):

* ``.target``: the resolved target ("cuda", "cpu" or "sim");
* ``.describe() -> dict``: what was found (``{"target", "devices": [{"name", ...}]}``);
* ``.launch(modules, *, types=None, **config) -> DeviceKernel``: build, upload and launch the
  persistent kernel, returned started;
* ``.close()``.

A target that is not usable is a BootError naming the target and why.
"""
from __future__ import annotations


def open_driver(target: str = "auto"):
    from ggmk.drivers.gpu import open_for_kernel
    return open_for_kernel(target)
