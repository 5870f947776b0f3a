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
from ggmk.core.kernel import System, boot  # noqa: F401
from ggmk.core.module import Module  # noqa: F401
from ggmk.errors import EmitError  # noqa: F401
from ggmk.task import (  # noqa: F401
    ALLOC_FAIL, BAD_RETURN, CHAN_ALREADY_BOUND, CHAN_CLOSED, CHAN_FULL, CHAN_TYPE_MISMATCH, FAIL,
    HALTED, OK, RETRY, TASK_DTYPE, WAIT, YIELD, Task, TaskBatch, TaskTypeError, TaskValueError,
)
from ggmk.typereg import TypeRegistry, load_types  # noqa: F401

__version__ = "0.1.0"
