"""ggmk: two peer microkernels, one on the CPU and one on the GPU, driven from Python."""
from ggmk.task import (  # noqa: F401
    TASK_DTYPE, Task, TaskBatch, OK, RETRY, YIELD, FAIL,
    CHAN_FULL, CHAN_CLOSED, CHAN_TYPE_MISMATCH, CHAN_ALREADY_BOUND, ALLOC_FAIL,
)

__version__ = "0.1.0"
