"""The seam between ``gpu_drv`` and a device: :class:`Backend` (one per driver) and
:class:`BackendContext` (one per context). The driver does the bookkeeping (handles, bounds,
accounting, reservation, fence numbering, error messages); a backend only moves bytes and signals
completion, so ``cpu`` and ``cuda`` expose exactly the same surface.

Ops a context receives from :meth:`BackendContext.submit` (already checked by the driver):

* ``("nop",)``
* ``("fill", mem, offset, nbytes, value)``
* ``("write", mem, offset, data)``          ``data``: a private uint8 copy
* ``("read", mem, offset, out)``            ``out``: a writable uint8 view of the caller's array
* ``("copy", dst, dst_offset, src, src_offset, nbytes)``
* ``("call", fn, args)``                    only where ``supports_call``

``mem`` is what :meth:`BackendContext.alloc` returned (it has ``address`` and ``nbytes``).
"""
from __future__ import annotations

import abc

import numpy as np

KINDS = ("device", "host")      # device memory; host memory the device can reach (pinned)


class BackendContext(abc.ABC):
    """Device resources of one context: memory, a queue of batches, completion."""

    supports_call: bool = False

    @abc.abstractmethod
    def alloc(self, nbytes: int, kind: str):
        """New memory of ``kind`` (``KINDS``); returns a handle with ``address``, ``nbytes``.
        Raises MemoryError when the device has no room."""

    @abc.abstractmethod
    def free(self, mem) -> None:
        """Give ``mem`` back (after the work already queued on this context, where ordered)."""

    @abc.abstractmethod
    def map(self, mem) -> np.ndarray:
        """A host view (uint8, ``mem.nbytes``) of ``mem``'s bytes, current as of now."""

    @abc.abstractmethod
    def unmap(self, mem, view: np.ndarray) -> None:
        """End the mapping; what was written through ``view`` is in ``mem`` afterwards."""

    @abc.abstractmethod
    def submit(self, ops: list) -> object:
        """Queue ``ops`` to run in order after everything submitted before; return a token."""

    @abc.abstractmethod
    def done(self, token) -> bool:
        """Has the batch of ``token`` finished (successfully or not)? Never blocks."""

    @abc.abstractmethod
    def wait(self, token, timeout: float) -> bool:
        """Block until the batch finished or ``timeout`` seconds passed; True if finished."""

    @abc.abstractmethod
    def error(self, token) -> tuple[int, BaseException] | None:
        """(index of the failing op, exception) if the finished batch failed, else None."""

    @abc.abstractmethod
    def cancel_pending(self) -> int:
        """Drop batches that have not started (their tokens finish with ContextDestroyed);
        returns how many."""

    @abc.abstractmethod
    def close(self, timeout: float) -> bool:
        """Release the context's queue/stream/threads after its memory was freed; True if
        everything stopped within ``timeout``."""


class Backend(abc.ABC):
    """One device: ``name`` (``"cpu"``, ``"cuda"``), ``kernel_target`` (the
    :class:`ggmk.device.DeviceKernel` target that runs on it)."""

    name: str = "?"
    kernel_target: str = "?"

    @abc.abstractmethod
    def describe(self) -> dict:
        """Facts about the device this backend drives (name, memory_total, sources, ...)."""

    @abc.abstractmethod
    def open_context(self, ctx_id: int) -> BackendContext:
        """Resources for a new context."""

    def close(self) -> None:
        """Release the backend (after every context was closed)."""
