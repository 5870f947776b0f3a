"""What a storage user hands in and gets back: ``ReadRequest``, ``WriteRequest``, ``IoResult``,
``Batch``; and ``_Io``, one I/O in flight inside the engine."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ggmk.storage.buffers import INLINE_COPY, BouncePool
from ggmk.storage.dest import DeviceDest, Destination
from ggmk.storage.errors import StorageError, from_oserror
from ggmk.storage.files import _FileRef
from ggmk.storage.states import BLOCK_SIZE, Blocks, IoState as S, IoStateCell


@dataclass
class ReadRequest:
    """Read ``length`` bytes at ``offset`` of ``file`` (a path or FileHandle) into ``dest``
    (a Destination, a NumPy array, a CUDA device array, ``"arena"``, ``"device"`` or None for
    fresh page-aligned host memory) at ``dest_offset``."""
    file: Any
    offset: int
    length: int
    dest: Any = None
    dest_offset: int = 0
    tag: Any = None
    on_complete: Callable | None = None


@dataclass
class WriteRequest:
    """Write ``length`` bytes (default: all) of ``src`` (bytes, NumPy array, Destination, CUDA
    device array) from ``src_offset`` to ``file`` at ``offset``; ``create`` the file if
    missing; ``sync``: fdatasync before completing."""
    file: Any
    offset: int
    src: Any
    length: int | None = None
    src_offset: int = 0
    create: bool = True
    sync: bool = False
    tag: Any = None
    on_complete: Callable | None = None


@dataclass
class IoResult:
    """What one I/O did. ``status``: ``ok``, ``short`` (the file ended first: ``nbytes`` <
    ``requested``, the file's length; nothing past ``nbytes`` was written to the destination,
    unless the file was cut while it was read: then its own destination range past ``nbytes``
    may hold zeros, from an O_DIRECT transfer the kernel filled past the new end or a hole's
    zero fill, either landed before the end was seen), ``error`` or ``cancelled`` (``error``
    holds the StorageError naming file and range).

    A write's ``nbytes`` counts the bytes from ``offset`` on that reached the file, also when
    it failed or was cancelled part way (``error.written`` says the same); ``regions`` lists
    every range it wrote as ``(offset, length, "written")`` (segments run on several workers,
    so a failed write may have written ranges past a gap). A read that failed or was
    cancelled part way has ``nbytes`` = the bytes from ``offset`` on that landed in the
    destination (``error.written`` too; the error names every range that landed; a failing
    O_DIRECT ``pread`` reports no partial count, so its own range is not counted); its
    ``regions`` stay the file's data and holes."""
    op: str
    path: str | None
    offset: int
    requested: int
    index: int = 0
    tag: Any = None
    status: str = "pending"
    nbytes: int = 0
    io_path: str | None = None          # gds | bounce | direct | buffered
    o_direct: bool = False
    fallback: str | None = None         # why O_DIRECT was not used (counted in stats)
    regions: list = field(default_factory=list)   # [(offset, length, "data" | "hole")]
    holes: int = 0
    hole_bytes: int = 0
    data_regions: int = 0
    dense_fallback: bool = False
    dest: Destination | None = None
    error: StorageError | None = None
    latency_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "short")

    @property
    def path_used(self) -> str | None:
        return self.io_path

    def data(self) -> np.ndarray:
        """Host view of the ``nbytes`` read (host and arena destinations)."""
        if self.dest is None:
            raise ValueError(f"no data: {self.status} ({self.error})")
        if isinstance(self.dest, DeviceDest) and self.dest.target == "cuda":
            return self.dest.to_host()[:self.nbytes]
        return self.dest.view(self._dest_off, self.nbytes)

    _dest_off: int = 0

    def raise_for_error(self) -> "IoResult":
        if self.error is not None:
            raise self.error
        return self


class Batch:
    """One submission: results by request index (``wait``) or in completion order
    (``as_completed``); ``cancel`` cancels every I/O that has not finished.

    ``wait`` works from a completion callback too: there the waiting storage thread runs the
    batch's queued I/Os itself (a callback that reads again never waits for a worker that is
    busy running it); ``as_completed`` from a callback does not, and may wait for ever."""

    def __init__(self, n: int):
        self.results: list[IoResult | None] = [None] * n
        self.order: list[int] = []          # request indexes in completion order
        self._ios: list = []
        self._left = n
        self._streaming = 0                 # as_completed() readers waiting
        self._cond = threading.Condition()
        self._storage = None                # the Storage that runs it (set by submit)
        self._cancel_why: str | None = None     # a cancelled I/O's error says why

    def __len__(self) -> int:
        return len(self.results)

    def _complete(self, i: int, r: IoResult) -> None:
        with self._cond:
            self.results[i] = r
            self.order.append(i)
            self._left -= 1
            if self._left == 0 or self._streaming:     # wake waiters only when it matters
                self._cond.notify_all()

    def done(self) -> bool:
        return self._left == 0

    def wait(self, timeout: float | None = None) -> list[IoResult]:
        """The results, once every I/O has finished. A TimeoutError here leaves the I/Os
        running (the batch is the caller's: ``cancel`` stops them at their next chunk
        boundary); the blocking calls :meth:`Storage.read` and :meth:`Storage.write` end
        theirs before they raise."""
        st = self._storage
        if self._left and st is not None and st._is_storage_thread():
            st._help(self, timeout)              # a callback waiting: run our I/Os here
        with self._cond:
            if not self._cond.wait_for(lambda: self._left == 0, timeout):
                raise TimeoutError(f"storage batch: {self._left} of {len(self.results)} I/Os "
                                   f"not finished after {timeout} s")
        return list(self.results)

    def as_completed(self, timeout: float | None = None):
        k = 0
        while k < len(self.results):
            with self._cond:
                self._streaming += 1
                try:
                    if not self._cond.wait_for(lambda: len(self.order) > k, timeout):
                        raise TimeoutError("storage batch: no completion in time")
                finally:
                    self._streaming -= 1
                idx = self.order[k]
            k += 1
            yield self.results[idx]

    def cancel(self) -> int:
        return sum(io.cancel() for io in self._ios)


class _Cancelled(Exception):
    pass


class _Io:
    """One I/O in flight (internal)."""

    def __init__(self, storage, batch: Batch, index: int, op: str, fref: _FileRef, offset: int,
                 length: int, dest: Destination | None, dest_off: int, req):
        self.storage = storage
        self.batch = batch
        self.index = index
        self.op = op
        self.fref = fref
        self.offset = offset
        self.length = length
        self.dest = dest
        self.dest_off = dest_off
        self.own_dest = False            # dest allocated here (released if the I/O fails)
        self.req = req
        self.block_counts: dict = {}
        self.io_counts: dict = {}
        what = f"{op} {fref.path} [{offset}, {offset + length})" if fref else op
        self.what = what
        self.cell = IoStateCell(what, counts=self.io_counts)
        self.blocks: Blocks | None = None
        self.lock = threading.Lock()
        self.segs_left = 0
        self.short_at: int | None = None
        self.limit = offset + length
        self.error: StorageError | None = None
        self.started = False
        self.direct = False
        self.engine = INLINE_COPY
        self.pool: BouncePool | None = None
        self.cancel_flag: np.ndarray | None = None   # the sequential path's ChunkJob flag
        # file ranges [a, b) that reached the file (a write) or landed in the destination (a
        # read); landed_bytes: their total, once finished (stats count a failed I/O's)
        self.written: list = []
        self.landed_bytes = 0
        self.t0 = time.perf_counter_ns()
        self.result = IoResult(op, fref.path if fref else None, offset, length, index=index,
                               tag=getattr(req, "tag", None), dest=dest)
        self.result._dest_off = dest_off

    def cancel(self) -> bool:
        """Request termination: queued I/Os stop before starting, running ones at the next
        chunk boundary. Returns False if it had already finished."""
        if not self.cell.to_if((S.READY, S.IN_PROGRESS), S.TERMINATE_REQ):
            return False
        flag = self.cancel_flag
        if flag is not None:
            flag[0] = 1                  # chunks on the fast pool that have not started stop
        return True

    def fail(self, err: StorageError) -> None:
        with self.lock:
            if self.error is None:
                self.error = err

    def make_error(self, kind: str, detail: str) -> StorageError:
        """A StorageError of this I/O (its operation, file and range)."""
        return StorageError(kind, self.op, self.fref.path, self.offset, self.length, detail)

    def make_os_error(self, e: OSError, what: str = "") -> StorageError:
        return from_oserror(e, self.op, self.fref.path, self.offset, self.length, what)

    def wrote(self, a: int, b: int) -> None:
        if b > a:
            with self.lock:
                self.written.append((a, b))

    def mark_short(self, at: int) -> None:
        with self.lock:
            if self.short_at is None or at < self.short_at:
                self.short_at = at

    def check_quiet(self) -> bool:
        """True if the I/O should stop (cancelled or failed)."""
        return self.cell.state is S.TERMINATE_REQ or self.error is not None

    def check(self) -> None:
        if self.cell.state is S.TERMINATE_REQ:
            raise _Cancelled()
        if self.error is not None:
            raise _Cancelled()

    def blk(self, pos: int) -> int:          # block of file offset pos (rounded down)
        return (pos - self.offset) // BLOCK_SIZE

    def blk_up(self, pos: int) -> int:
        return -(-(pos - self.offset) // BLOCK_SIZE)
