"""Errors of ``gpu_drv``. Every message says what was asked, of which context / fence / pool /
option, and what to change."""
from __future__ import annotations

from ggmk.errors import AllocError, DeviceError
from ggmk.task import ALLOC_FAIL


class GpuDriverError(DeviceError):
    """A ``gpu_drv`` request was refused or failed (bad handle, destroyed context, ...)."""


class GpuConfigError(GpuDriverError, ValueError):
    """A configuration option has a bad value; ``option`` names it, ``value`` is what was given."""

    def __init__(self, option: str, value, why: str):
        self.option = option
        self.value = value
        super().__init__(f"gpu_drv config: {option}={value!r}: {why}")


class GpuAllocError(GpuDriverError, AllocError):
    """Memory could not be allocated; ``code`` is ``ggmk.task.ALLOC_FAIL`` and the message starts
    with ``ALLOC_FAIL:``."""

    code = ALLOC_FAIL

    def __init__(self, message: str):
        super().__init__(f"ALLOC_FAIL: {message}")


class PoolExhausted(GpuAllocError):
    """Every slot of a payload pool is in use."""


class FenceTimeout(GpuDriverError, TimeoutError):
    """A fence did not signal within the timeout; ``fence`` is the :class:`Fence`."""

    def __init__(self, fence, timeout: float):
        self.fence = fence
        self.timeout = timeout
        super().__init__(f"gpu_drv: {fence.name} (batch of {fence.commands} commands) did not "
                         f"signal within {timeout:g} s; it is still pending (wait again, or "
                         f"raise command_timeout_ms)")


class CommandError(GpuDriverError):
    """A command of a submitted batch failed; the fence carries it (``index`` is the command's
    position in the batch)."""

    def __init__(self, fence, index: int, command, cause: BaseException):
        self.fence = fence
        self.index = index
        self.command = command
        super().__init__(f"gpu_drv: {fence.name}: command {index} ({_short(command)}) failed: "
                         f"{type(cause).__name__}: {cause}")


class ContextDestroyed(GpuDriverError):
    """The context was destroyed (a request on it, or a batch that never ran). For a batch,
    ``Fence.error`` / ``wait`` give one whose message names the fence and its context and whose
    ``fence`` is the :class:`Fence` (None otherwise)."""

    fence = None


def _short(command) -> str:
    r = repr(command)
    return r if len(r) <= 80 else r[:77] + "..."
