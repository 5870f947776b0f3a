"""ggmk: two peer microkernels, one on the CPU and one on the GPU, driven from Python.

Example::

    import ggmk
    from ggmk import OK

    counter = ggmk.Module("counter", version="0.1.0")

    @counter.handler("COUNTER_INC")
    def inc(ctx):
        ctx.emit("COUNTER_DONE", meta0=ctx.task.meta0 + 1)
        return OK

    @counter.handler("COUNTER_DONE", batch=True)
    def done(ctx, batch):
        print(batch.meta0)

    with ggmk.boot([counter], workers=2) as system:
        system.submit("COUNTER_INC", meta0=41)
        system.run(until_idle=True)
"""
# The names below load on first use (PEP 562): ``import ggmk.cli`` (every ``ggmk`` command)
# or ``ggmk.control.client`` needs none of the kernel, and importing it (NumPy, Numba's
# dispatch tables) cost each short-lived CLI process ~0.4 s.
_LAZY = {
    "System": "ggmk.core.kernel", "boot": "ggmk.core.kernel", "Module": "ggmk.core.module",
    "EmitError": "ggmk.errors", "TypeRegistry": "ggmk.typereg", "load_types": "ggmk.typereg",
    **{n: "ggmk.task" for n in (
        "ALLOC_FAIL", "BAD_RETURN", "CHAN_ALREADY_BOUND", "CHAN_CLOSED", "CHAN_FULL",
        "CHAN_TYPE_MISMATCH", "FAIL", "HALTED", "OK", "RETRY", "TASK_DTYPE", "WAIT", "YIELD",
        "Task", "TaskBatch", "TaskTypeError", "TaskValueError")},
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ggmk' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value                # (looked up once)
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
