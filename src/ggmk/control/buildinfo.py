"""The GPU kernel of an app as it would be built at boot: the user's device modules plus the
bridge's own device module (``ggmk.bridge.device_side``), so ``ggmk build`` and ``ggmk kern
info`` report the kernel that actually runs, bridge handlers included.

Example::

    from ggmk.control import app, buildinfo
    modules, options = app.load("examples/dual_app.py")
    rep = buildinfo.report(modules, options)         # needs numba-cuda's compiler and ptxas
    print(rep["table"])
"""
from __future__ import annotations


def split(modules):
    """(CPU modules, GPU modules) of an app's module list."""
    import ggmk.device as gd
    cpu = [m for m in modules if not isinstance(m, gd.Module)]
    gpu = [m for m in modules if isinstance(m, gd.Module)]
    return cpu, gpu


def device_modules(modules, types, window: int | None = None) -> list:
    """The device modules the dual boot hands the GPU kernel (same wiring as ggmk.dual)."""
    from ggmk.bridge import device_side as ds
    from ggmk.bridge.plan import device_spec, plan as plan_bridge
    cpu, gpu = split(modules)
    bplan = plan_bridge(cpu, gpu, types, types_given=True)
    return list(gpu) + [ds.build_module(*device_spec(bplan, window))]


def report(modules, options: dict, *, arch: str = "sm_90", reg_limit: int = 32,
           whole_kernel: bool = True) -> dict:
    """``ggmk.device.build.build_report`` of the app's GPU kernel, as a dict with ``table``.
    Raises ``ggmk.device.build.BuildError`` (``ToolchainMissing`` without ptxas) or
    ``ValueError`` when the app has no GPU modules."""
    from ggmk.device.build import build_report
    from ggmk.typereg import TypeRegistry
    _, gpu = split(modules)
    if not gpu:
        raise ValueError("the app has no GPU (ggmk.device) modules: there is no GPU kernel to "
                         "build")
    types = options.get("types")
    if types is None:
        from ggmk.dual import _register_names
        types = TypeRegistry()
        _register_names(types, *split(modules))
    rep = build_report(device_modules(modules, types), types=types, arch=arch,
                       reg_limit=reg_limit, whole_kernel=whole_kernel, allow_spill=True)
    return {**rep.as_dict(), "table": rep.table(),
            "spills": [getattr(h, "name", "persistent kernel") for h in rep.spills]}
