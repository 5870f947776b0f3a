"""The storage engine: requests, batches, the worker pool, the per-I/O paths (see __init__)."""
from __future__ import annotations

import errno as E
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ggmk.storage import fast as _fast
from ggmk.storage import gds as _gds
from ggmk.storage.buffers import (ALIGN, DONE, BouncePool, InlineCopy, ThreadCopy, align_down,
                                  align_up)
from ggmk.storage.dest import ArenaDest, DeviceDest, Destination, HostDest, as_destination
from ggmk.storage.errors import StorageError, from_oserror
from ggmk.storage.states import BLOCK_SIZE, Blocks, BlockState as BS, IoState as S, IoStateCell
from ggmk.storage.stats import StorageStats

__all__ = ["Storage", "FileHandle", "ReadRequest", "WriteRequest", "IoResult", "Batch"]

_HAS_O_DIRECT = hasattr(os, "O_DIRECT")
_INLINE = InlineCopy()
_MAX_OFF = (1 << 63) - 1                # the largest file offset (off_t), 2**63 - 1


class FileHandle:
    """An open file for storage I/O: a buffered descriptor and, where the file system accepts
    it, an ``O_DIRECT`` one (``direct_refused`` says why not). Reuse one across many requests
    (a batch of 4 KiB reads); a request naming a path opens and closes its own."""

    def __init__(self, path, *, write: bool = False, create: bool = False,
                 o_direct: bool | str = "auto"):
        self.path = os.fspath(path)
        self.writable = write
        flags = os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
        self.fd = os.open(self.path, flags | (os.O_CREAT if create else 0), 0o644)
        self.fd_direct = None
        self.direct_refused = None
        if o_direct is False:
            self.direct_refused = "disabled"
        elif not _HAS_O_DIRECT:
            self.direct_refused = "no_o_direct"
        else:
            try:
                self.fd_direct = os.open(self.path, flags | os.O_DIRECT)
            except OSError as e:
                if e.errno in (E.EINVAL, E.EOPNOTSUPP):
                    self.direct_refused = "fs_refuses_o_direct"     # tmpfs, some FUSE, ...
                else:
                    os.close(self.fd)
                    raise
        self._gds = None
        self._gds_error = None
        self._lock = threading.Lock()
        self.closed = False
        self._users = 0                 # I/Os queued or running on it (see _acquire)
        self._fds_open = True

    def size(self) -> int:
        if not self._fds_open:
            raise OSError(E.EBADF, f"{self.path}: the FileHandle is closed")
        return os.fstat(self.fd).st_size

    def _acquire(self) -> bool:
        """One more I/O uses the descriptors (False if the handle is closed): until the
        matching :meth:`_release`, ``close`` defers closing them, so that a queued read never
        uses a descriptor number that a file opened meanwhile has been given."""
        with self._lock:
            if self.closed:
                return False
            self._users += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0 and self.closed and self._fds_open
            if last:
                self._fds_open = False
        if last:
            self._close_fds()

    def gds(self):
        with self._lock:
            if self._gds is None and self._gds_error is None:
                try:
                    self._gds = _gds.CuFile(self.fd_direct, self.path, self.writable)
                except Exception as e:  # noqa: BLE001
                    self._gds_error = e
            if self._gds is None:
                raise OSError(E.EOPNOTSUPP, f"GPUDirect Storage: {self._gds_error!r}")
            return self._gds

    def close(self) -> None:
        """Close the file. I/Os already queued or running on it still use it; its descriptors
        are closed when the last of them finishes (new requests on it fail with EBADF)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            now = self._users == 0 and self._fds_open
            if now:
                self._fds_open = False
        if now:
            self._close_fds()

    def _close_fds(self) -> None:
        if self._gds is not None:
            self._gds.close()
        for fd in (self.fd, self.fd_direct):
            if fd is not None:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"FileHandle({self.path!r}, write={self.writable}, "
                f"o_direct={self.fd_direct is not None})")


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
    ``requested``; nothing past ``nbytes`` was written to the destination), ``error`` or
    ``cancelled`` (``error`` holds the StorageError naming file and range)."""
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
    (``as_completed``); ``cancel`` cancels every I/O that has not finished."""

    def __init__(self, n: int):
        self.results: list[IoResult | None] = [None] * n
        self.order: list[int] = []          # request indexes in completion order
        self._ios: list = []
        self._left = n
        self._streaming = 0                 # as_completed() readers waiting
        self._cond = threading.Condition()

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


class _FileRef:
    """A file shared by the requests of one submission: opened once (in a worker), closed when
    the last of them finishes; a FileHandle passed in is never closed here."""

    def __init__(self, file, write: bool, create: bool, o_direct):
        self.given = isinstance(file, FileHandle)
        self.fh = file if self.given else None
        self.path = file.path if self.given else os.fspath(file)
        self.write, self.create, self.o_direct = write, create, o_direct
        self.users = 0
        self.error: OSError | None = None
        self._lock = threading.Lock()

    def get(self) -> FileHandle:
        with self._lock:
            if self.fh is None and self.error is None:
                try:
                    self.fh = FileHandle(self.path, write=self.write, create=self.create,
                                         o_direct=self.o_direct)
                except OSError as e:
                    self.error = e
            if self.error is not None:
                raise self.error
            return self.fh

    def acquire(self) -> bool:
        """One more request uses the file; False if it is a FileHandle already closed (its
        descriptors then stay in use until the last request releases it)."""
        if self.given and not self.fh._acquire():
            return False
        with self._lock:
            self.users += 1
        return True

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0 and not self.given and self.fh is not None:
                self.fh.close()
                self.fh = None
        if self.given:
            self.fh._release()


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
        self.engine = _INLINE
        self.pool: BouncePool | None = None
        self.cancel_flag: np.ndarray | None = None   # the sequential path's ChunkJob flag
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


class Storage:
    """File ranges to and from host memory, the CPU kernel's arena and device memory.

    Options: ``workers`` (I/O threads), ``max_batch`` (I/Os in flight at once; more are
    queued, in order), ``bounce_size``/``bounce_count`` (the preallocated aligned bounce
    buffers), ``segment_size`` (a large I/O is split into segments that run on several
    workers), ``direct_chunk`` (largest single read into the destination), ``o_direct``
    (``"auto"``: where the file system and alignment allow, fallbacks counted; ``True``:
    required; ``False``: never), ``sparse`` (find holes with SEEK_DATA/SEEK_HOLE), ``gds``
    (``"auto"``/``False``: GPUDirect Storage for CUDA destinations), ``arena`` (for
    ``dest="arena"``), ``device_target`` (for ``dest="device"``), ``chunk_hook`` (called as
    ``hook(io_index, file_offset)`` after each chunk; tests use it to cancel mid-flight),
    ``fast_threads`` (threads of the batch fast path, :meth:`read_batch`: how many small
    reads are in flight at once; started on the first fast batch), ``seq_chunk`` and
    ``seq_depth`` (the sequential path: a host read on the ``direct`` path is cut into aligned
    chunks of ``seq_chunk`` bytes that ``seq_depth`` fast-path threads read at once, so that
    several large O_DIRECT reads are always in flight; see :class:`~ggmk.storage.fast.ChunkJob`).
    """

    def __init__(self, *, workers: int = 4, max_batch: int = 256, bounce_size: int = 1 << 20,
                 bounce_count: int = 8, segment_size: int = 8 << 20, direct_chunk: int = 4 << 20,
                 o_direct: bool | str = "auto", sparse: bool = True, gds: bool | str = "auto",
                 arena=None, device_target: str = "cpu", chunk_hook: Callable | None = None,
                 fast_threads: int = 16, seq_chunk: int = 4 << 20, seq_depth: int = 16):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if segment_size < BLOCK_SIZE or segment_size % BLOCK_SIZE:
            raise ValueError(f"segment_size must be a positive multiple of {BLOCK_SIZE}")
        if seq_chunk < ALIGN or seq_chunk % ALIGN:
            raise ValueError(f"seq_chunk must be a positive multiple of {ALIGN}, got {seq_chunk}")
        if seq_depth < 1:
            raise ValueError(f"seq_depth must be >= 1, got {seq_depth}")
        if o_direct not in ("auto", True, False):
            raise ValueError(f"o_direct must be 'auto', True or False, got {o_direct!r}")
        self.max_batch = max_batch
        self.segment_size = segment_size
        self.direct_chunk = align_up(max(direct_chunk, ALIGN))
        self.seq_chunk = seq_chunk
        self.seq_depth = seq_depth
        self.bounce_size = bounce_size
        self.bounce_count = bounce_count
        self.o_direct = o_direct
        self.sparse = sparse
        self.gds_mode = gds
        self.arena = arena
        self.device_target = device_target
        self.chunk_hook = chunk_hook
        self.stats_ = StorageStats()
        self.callback_errors: deque = deque(maxlen=64)
        self._pool = BouncePool(bounce_size, bounce_count)
        self._fast = _fast.FastPool(fast_threads)
        self._pinned_pool = None
        self._thread_copy = None
        self._cuda_copy = None
        self._elock = threading.Lock()
        self._cond = threading.Condition()
        self._work: deque = deque()
        self._pending: deque = deque()
        self._inflight = 0
        self._fast_inflight = 0                  # fast batches not finished
        self._closed = False
        self._threads = [threading.Thread(target=self._worker, name=f"ggmk-storage-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public API
    def open(self, path, *, write: bool = False, create: bool = False) -> FileHandle:
        """A FileHandle to reuse across requests (close it when done)."""
        return FileHandle(path, write=write, create=create, o_direct=self.o_direct)

    def read(self, file, offset: int = 0, length: int | None = None, dest=None,
             dest_offset: int = 0, timeout: float | None = None) -> IoResult:
        """Read one range and wait; raises StorageError on failure (a short read is not one:
        see ``result.status`` and ``result.nbytes``)."""
        self._check_open("read()")                  # before the stat of length=None
        if length is None and _is_int(offset):      # a bad offset is refused by submit
            try:
                size = file.size() if isinstance(file, FileHandle) else os.stat(file).st_size
            except OSError as e:                    # the documented StorageError, not_found
                raise from_oserror(e, "read", _path_of(file), int(offset), 0, "stat") from None
            length = max(size - int(offset), 0)
        r = self.submit([ReadRequest(file, offset, length, dest, dest_offset)]).wait(timeout)[0]
        return r.raise_for_error()

    def write(self, file, offset: int, src, length: int | None = None, *, sync: bool = False,
              create: bool = True, timeout: float | None = None) -> IoResult:
        """Write one range and wait; raises StorageError on failure."""
        self._check_open("write()")
        req = WriteRequest(file, offset, src, length, create=create, sync=sync)
        return self.submit([req]).wait(timeout)[0].raise_for_error()

    def submit(self, requests, on_complete: Callable | None = None) -> Batch:
        """Submit many requests at once; returns a :class:`Batch` at once. Each I/O completes
        on its own (any order) with its own status; ``on_complete(result)`` runs for each, in
        a storage thread. At most ``max_batch`` I/Os are in flight; the rest wait in order."""
        self._check_open("submit()")
        reqs = list(requests)
        for i, req in enumerate(reqs):      # before any I/O is set up: nothing to undo
            if not isinstance(req, (ReadRequest, WriteRequest)):
                raise TypeError(f"request {i}: expected ReadRequest or WriteRequest, got "
                                f"{type(req).__name__}")
            if not isinstance(req.file, FileHandle):
                try:
                    os.fspath(req.file)
                except TypeError:
                    raise TypeError(f"request {i}: file: expected a path or FileHandle, got "
                                    f"{type(req.file).__name__} {req.file!r}") from None
        batch = Batch(len(reqs))
        self.stats_.batch(len(reqs))
        refs: dict = {}
        ready = []
        for i, req in enumerate(reqs):
            io = self._make_io(batch, i, req, refs, on_complete)
            batch._ios.append(io)
            if io is not None and io.cell.state is S.READY:
                ready.append(io)
        self._admit(ready)
        return batch

    def read_batch(self, file, offsets, lengths=4096, dest=None, dest_offsets=None, *,
                   file_ids=None, wait: bool = True, timeout: float | None = None,
                   on_done: Callable | None = None):
        """The batch fast path for many small reads (see :mod:`ggmk.storage.fast`): one
        vectorized submission, the reads run in native code on ``fast_threads`` threads.

        ``file``: a FileHandle or path, or a list of them with ``file_ids`` (an index into it
        per I/O). ``offsets``, ``lengths`` (an int for all, or one per I/O), ``dest_offsets``:
        integer arrays. ``dest``: host memory (a NumPy array, HostDest, ArenaDest) or None for
        fresh page-aligned host memory with the reads packed in order. Returns a
        :class:`~ggmk.storage.fast.FastBatch` (finished unless ``wait=False``) whose arrays
        hold each I/O's status, bytes, errno and path; a bad request (negative offset, no room
        in the destination, a file that does not open) fails alone, not the batch.
        ``on_done(batch)`` runs once when every I/O has finished (in a storage thread, before
        ``wait`` returns; an exception it raises is kept in ``batch.callback_error``).
        A batch that close() overtakes (it ran after this check) ends with every read
        CANCELLED."""
        self._check_open("read_batch()")
        offs = _int_array("offsets", offsets)
        n = len(offs)
        lens = _int_array("lengths", lengths, n)
        files = list(file) if isinstance(file, (list, tuple)) else [file]
        if file_ids is None:
            if len(files) != 1:
                raise ValueError(f"file: {len(files)} files given without file_ids; pass "
                                 f"file_ids (an index into file per I/O)")
            fids = np.zeros(n, np.int64)
        else:
            fids = _int_array("file_ids", file_ids, n)
            if n and (fids.min() < 0 or fids.max() >= len(files)):
                raise ValueError(f"file_ids: values must be in [0, {len(files)}), got "
                                 f"[{fids.min()}, {fids.max()}]")
        if dest is None:
            pos = np.maximum(lens, 0)
            # an int64 sum could wrap (to a tiny destination): add in Python past 2**62
            big = float(pos.sum(dtype=np.float64)) >= 2.0 ** 62
            total = int(pos.astype(object).sum()) if big else int(pos.sum())
            dest = _alloc(_path_of(files[0]) if len(files) == 1 else None, 0, total,
                          f"host memory (dest=None: {n} reads packed in order)",
                          lambda: HostDest.alloc(max(total, 1)))
        elif isinstance(dest, str) or not as_destination(dest).host_addressable:
            raise ValueError(f"dest: the fast path reads into host memory (a NumPy array, "
                             f"HostDest, ArenaDest, None), got {dest!r}; use submit() for "
                             f"device memory")
        dest = as_destination(dest)
        if not dest.view(0, 0).flags.writeable:
            raise ValueError(f"dest: {dest.describe()} is read-only")
        if dest_offsets is None:
            pos = np.maximum(lens, 0)
            doffs = np.cumsum(pos) - pos
        else:
            doffs = _int_array("dest_offsets", dest_offsets, n)
        # the files: opened once per batch (a path), or the caller's handles
        # (a caller's handle is held, so that closing it defers closing its descriptors
        # until this batch finishes: its reads never use a number reused by another file)
        paths, fd_d, fd_b, releases, why_reasons = [], [], [], [], [None, "unaligned"]
        open_err = np.zeros(len(files), np.int32)
        file_closed = np.zeros(len(files), bool)
        file_why = np.zeros(len(files), np.int8)
        held: dict = {}
        for k, f in enumerate(files):
            paths.append(_path_of(f))
            fh = f
            if not isinstance(f, FileHandle):
                try:
                    fh = FileHandle(f, o_direct=self.o_direct)
                except OSError as e:
                    open_err[k] = e.errno or E.EIO
                    fd_d.append(-1)
                    fd_b.append(-1)
                    continue
                releases.append(fh.close)
            elif id(f) not in held:
                held[id(f)] = f._acquire()
                if held[id(f)]:
                    releases.append(f._release)
            if isinstance(f, FileHandle) and not held[id(f)]:
                open_err[k] = E.EBADF                  # closed: refused, never read
                file_closed[k] = True
                fd_d.append(-1)
                fd_b.append(-1)
                continue
            fd_b.append(fh.fd)
            fd_d.append(-1 if fh.fd_direct is None or self.o_direct is False else fh.fd_direct)
            if fd_d[-1] < 0 and self.o_direct is not False:
                why_reasons.append(fh.direct_refused or "no_o_direct")
                file_why[k] = len(why_reasons) - 1
        fd_d, fd_b = np.asarray(fd_d, np.int32)[fids], np.asarray(fd_b, np.int32)[fids]
        refused = np.zeros(n, np.int8)
        refused[(offs < 0) | (lens < 0) | (doffs < 0)] = _fast._R_BAD
        # doffs + lens could wrap in int64: compare with what is left past doffs instead
        room = np.int64(dest.nbytes)
        refused[(refused == 0) & ((lens > room) | (doffs > room - lens))] = _fast._R_DEST
        refused[(refused == 0) & file_closed[fids]] = _fast._R_CLOSED
        refused[(refused == 0) & (open_err[fids] != 0)] = _fast._R_OPEN
        addr = dest.address(0) + doffs
        aligned = (offs % ALIGN == 0) & (lens % ALIGN == 0) & (addr % ALIGN == 0)
        why = np.where(fd_d < 0, file_why[fids], np.where(aligned, 0, 1)).astype(np.int8)
        fd_d = np.where(why == 0, fd_d, -1).astype(np.int32)
        if self.o_direct is True:
            refused[(refused == 0) & (why != 0)] = _fast._R_NODIRECT
        b = _fast.FastBatch(self, paths, fids, fd_d, fd_b, offs, lens, dest, doffs, refused,
                            open_err[fids], why, why_reasons, releases,
                            chunk=min(256, max(8, n // (self._fast.n * 8))), on_done=on_done)
        self.stats_.batch(n)
        with self._cond:
            self._fast_inflight += 1
        b._start(self._fast)
        return b.wait(timeout) if wait else b

    def warm_up(self) -> "Storage":
        """Start the fast pool's threads and load (or compile) its native read loop now;
        otherwise the first ``direct`` read or ``read_batch`` pays for it (a Numba cache load,
        a fraction of a second; a compile on a cold cache, seconds)."""
        self._check_open("warm_up()")
        if not self._fast.start():              # close() ran since the check
            self._check_open("warm_up()", closed=True)
        return self

    def _check_open(self, what: str, closed: bool = False) -> None:
        """RuntimeError naming the call if the storage is closed: after close() nothing reads,
        writes or starts a storage thread again."""
        if closed or self._closed:
            raise RuntimeError(f"storage is closed: {what} after Storage.close() is not "
                               f"allowed; open a new Storage")

    def cancel_all(self) -> int:
        with self._cond:
            ios = list(self._pending) + [it[1] for it in self._work]
        n = 0
        for io in ios:
            n += io.cancel()
        return n

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0 and not self._pending
                                       and self._fast_inflight == 0, timeout)

    def _fast_done(self) -> None:
        """A fast batch finished (wait_idle counts them too)."""
        with self._cond:
            self._fast_inflight -= 1
            self._cond.notify_all()

    def close(self, cancel: bool = False, timeout: float | None = 30.0) -> None:
        """Stop: optionally cancel what is queued or running, wait for the rest, stop threads."""
        if self._closed:
            return
        me = threading.current_thread()
        inside = me in self._threads or self._fast.owns(me)   # from a callback
        if cancel:
            self.cancel_all()
        if not inside:              # a storage thread would wait for its own I/O (and hang)
            self.wait_idle(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not me:         # this thread finishes the queue itself (never joined)
                t.join(timeout)
        self._fast.close(timeout)
        for eng in (self._thread_copy, self._cuda_copy):
            if eng is not None:
                eng.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(cancel=exc[0] is not None)

    def stats(self) -> dict:
        s = self.stats_.snapshot()
        ok, why = _gds.available() if self.gds_mode else (False, "disabled")
        s["gds"] = {"available": ok, "why": why}
        s["bounce"] = self._pool.stats()
        with self._cond:
            s["queued_now"] = len(self._pending)
        return s

    # ------------------------------------------------------------------ setup
    def _make_io(self, batch, i, req, refs, on_complete):
        if isinstance(req, ReadRequest):
            op, write, create = "read", False, False
        else:
            op, write, create = "write", True, req.create
        key = (id(req.file) if isinstance(req.file, FileHandle) else os.fspath(req.file),
               write, create)
        fref = refs.get(key)
        if fref is None:
            fref = refs[key] = _FileRef(req.file, write, create, self.o_direct)
        held = fref.acquire()
        # only ints, never truncated; a bad one is refused below (0 stands in for it)
        args = {"offset": req.offset, "length": req.length}
        if op == "read":
            args["dest_offset"] = req.dest_offset
        else:
            args["src_offset"] = req.src_offset
            if req.length is None:
                del args["length"]                     # the whole source
        vals, bad = {}, None
        for name, v in args.items():
            vals[name] = int(v) if _is_int(v) else 0
            if bad is None and not _is_int(v):
                bad = (f"{name}: expected an int (a Python or NumPy integer, not bool), got "
                       f"{type(v).__name__} {v!r}")
        offset, length = vals["offset"], vals.get("length")
        io = _Io(self, batch, i, op, fref, offset, max(length or 0, 0), None, 0, req)
        io.callbacks = [cb for cb in (req.on_complete, on_complete) if cb is not None]
        io.held = held
        io.cell.to(S.INIT)
        try:
            if not held:
                raise from_oserror(OSError(E.EBADF, "the FileHandle is closed"), op,
                                   fref.path, offset, max(length or 0, 0))
            if bad is not None:
                raise ValueError(bad)
            if op == "read":
                _check_range(offset, length)           # before the destination is allocated
                dest, doff = self._read_dest(req, offset, length, vals["dest_offset"])
                io.own_dest = req.dest is None or isinstance(req.dest, str)
            else:
                dest, doff, length = self._write_src(req, offset, length, vals["src_offset"])
                io.length = length
                io.limit = offset + length
                _check_range(offset, length)
            io.dest, io.dest_off = dest, doff
            io.result.dest, io.result._dest_off, io.result.requested = dest, doff, io.length
        except StorageError as e:
            return self._refuse(io, e)
        except (ValueError, TypeError) as e:
            return self._refuse(io, StorageError("bad_request", op, fref.path, offset,
                                                 io.length, str(e)))
        io.blocks = Blocks(-(-io.length // BLOCK_SIZE), io.what, io.block_counts)
        io.blocks.move_all(BS.ALLOC)
        io.cell.to(S.READY)
        return io

    def _read_dest(self, req: ReadRequest, offset: int, length: int, doff: int):
        """(destination, offset in it); checks come first, an allocation last (so a refused
        request never holds one)."""
        d = req.dest
        path = _path_of(req.file)
        if isinstance(d, str):
            if d == "arena":
                if self.arena is None:
                    raise ValueError('dest="arena" needs Storage(arena=...)')
                dest = _alloc(path, offset, length, "arena memory",
                              lambda: ArenaDest.alloc(self.arena, length))
                if dest is None:
                    raise StorageError("alloc_fail", "read", path, offset,
                                       length, f"the arena could not allocate {length} bytes "
                                       f"(ALLOC_FAIL; largest allocation "
                                       f"{_max_alloc()} bytes)")
                return dest, 0
            if d == "device":
                return _alloc(path, offset, length, f"{self.device_target} device memory",
                              lambda: DeviceDest.alloc(length, self.device_target)), 0
            raise ValueError(f"dest={d!r}: expected 'arena', 'device' or a buffer")
        dest = None if d is None else as_destination(d, length)
        nbytes = length if dest is None else dest.nbytes       # None: fresh, of length bytes
        if doff < 0 or doff + length > nbytes:
            what = (f"fresh host memory ({length} bytes)" if dest is None
                    else dest.describe())
            raise StorageError("dest_too_small", "read", path, offset, length,
                               f"destination {what} from offset {doff} has room "
                               f"for {max(nbytes - doff, 0)} bytes, {length} requested")
        if dest is None:
            return _alloc(path, offset, length, "host memory",
                          lambda: HostDest.alloc(length)), doff
        if dest.host_addressable and not dest.view(0, 0).flags.writeable:
            raise ValueError(f"destination {dest.describe()} is read-only")
        return dest, doff

    def _write_src(self, req: WriteRequest, offset: int, length: int | None, soff: int):
        s = req.src
        if isinstance(s, (bytes, bytearray, memoryview)):
            s = np.frombuffer(s, dtype=np.uint8)
        src = as_destination(s, 0)
        length = src.nbytes - soff if length is None else length
        if soff < 0 or length < 0 or soff + length > src.nbytes:
            raise StorageError("bad_request", "write", _path_of(req.file), offset,
                               max(length, 0), f"source {src.describe()} from offset {soff} "
                               f"holds {max(src.nbytes - soff, 0)} bytes, {length} requested")
        return src, soff, length

    def _refuse(self, io: _Io, err: StorageError):
        io.cell.to(S.FREE)                   # INIT -> FREE: refused at setup
        io.error = err
        r = io.result
        if io.own_dest and io.dest is not None:
            io.dest.release()                # ours: a refused request holds nothing
        r.status, r.error, r.dest = "error", err, None
        r.latency_ns = time.perf_counter_ns() - io.t0
        if io.held:
            io.fref.release()
        self._callbacks(io)
        self.stats_.finish(io, False)
        io.batch._complete(io.index, r)
        return io

    # ------------------------------------------------------------------ scheduling
    def _admit(self, ios) -> None:
        if not ios:
            return
        excess = 0
        with self._cond:
            if self._closed:             # closed while this submit was being set up: the
                late = list(ios)         # workers are gone, so these end cancelled here
                self._inflight += len(late)
                ios = ()
            else:
                late = ()
            for io in ios:
                if self._inflight < self.max_batch and not self._pending:
                    self._inflight += 1
                    self._work.append(("io", io, None))
                else:
                    self._pending.append(io)
                    excess += 1
            depth = len(self._pending)
            self._cond.notify_all()
        if excess:
            self.stats_.queued(excess, depth)
        for io in late:
            io.cancel()
            self._finalize(io)               # cancelled while queued (counts _inflight down)

    def _io_done(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._pending and self._inflight < self.max_batch:
                self._inflight += 1
                self._work.append(("io", self._pending.popleft(), None))
            self._cond.notify_all()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._work and not self._closed:
                    self._cond.wait()
                if not self._work:
                    return
                kind, io, seg = self._work.popleft()
            try:
                if kind == "io":
                    self._start(io)
                else:
                    self._run_seg(io, seg)
            except BaseException as e:  # noqa: BLE001 - never lose an I/O to a bug here
                io.fail(io.make_error("io", f"internal error: {e!r}"))
                if kind == "io" and io.segs_left == 0:
                    self._finalize(io)

    # ------------------------------------------------------------------ one I/O
    def _start(self, io: _Io) -> None:
        if not io.cell.to_if((S.READY,), S.IN_PROGRESS):     # cancelled while queued
            self._finalize(io)
            return
        io.started = True
        self.stats_.start()
        try:
            fh = io.fref.get()
            segs = self._plan_read(io, fh) if io.op == "read" else self._plan_write(io, fh)
        except OSError as e:
            io.fail(io.make_os_error(e, "open" if io.fref.fh is None else ""))
            segs = []
        except StorageError as e:
            io.fail(e)
            segs = []
        if not segs:
            self._finalize(io)
            return
        io.segs_left = len(segs)
        if len(segs) > 1:
            with self._cond:
                for s in reversed(segs[1:]):
                    self._work.appendleft(("seg", io, s))
                self._cond.notify_all()
        self._run_seg(io, segs[0])

    def _run_seg(self, io: _Io, seg) -> None:
        try:
            io.check()
            fh = io.fref.fh
            if io.op == "read":
                self._read_seg(io, fh, seg)
            else:
                self._write_seg(io, fh, seg)
        except _Cancelled:
            pass
        except StorageError as e:
            io.fail(e)
        except OSError as e:
            io.fail(io.make_os_error(e, f"at file offset {getattr(e, 'ggmk_pos', '?')}"))
        except Exception as e:  # noqa: BLE001
            io.fail(io.make_error("io", f"{type(e).__name__}: {e}"))
        with io.lock:
            io.segs_left -= 1
            last = io.segs_left == 0
        if last:
            self._finalize(io)

    def _engine_for(self, dest: Destination):
        """(copy engine, bounce pool) for a destination / source."""
        if dest.host_addressable:
            return _INLINE, self._pool
        with self._elock:
            if dest.target == "cuda":
                if self._cuda_copy is None:
                    self._cuda_copy = _gds.CudaCopy()
                    self._pinned_pool = BouncePool(self.bounce_size, self.bounce_count,
                                                   alloc=_gds.pinned_alloc)
                return self._cuda_copy, self._pinned_pool
            if self._thread_copy is None:
                self._thread_copy = ThreadCopy()
            return self._thread_copy, self._pool

    def _choose_direct(self, io: _Io, fh: FileHandle, want: bool, reason: str | None = None):
        """Use O_DIRECT for this I/O? Records the fallback (counted) when it cannot."""
        if self.o_direct is False:
            return False
        if fh.fd_direct is not None and want:
            return True
        why = reason or fh.direct_refused or "unaligned"
        if self.o_direct is True:
            raise io.make_error("bad_request", f"O_DIRECT required but not possible ({why})")
        io.result.fallback = why
        self.stats_.fallback(why)
        return False

    def _gds_ok(self, io: _Io, fh: FileHandle) -> bool:
        """GPUDirect Storage for this CUDA I/O? (else the bounce path; a failure to register
        the file is counted as a fallback, not hidden)."""
        if not self.gds_mode or not _gds.available()[0]:
            return False
        try:
            fh.gds()
            return True
        except OSError:
            if self.gds_mode is True:
                raise
            self.stats_.fallback("gds_register_failed")
            io.result.fallback = "gds_register_failed"
            return False

    def _plan_read(self, io: _Io, fh: FileHandle) -> list:
        r = io.result
        size = fh.size()
        off, end = io.offset, io.offset + io.length
        limit = min(end, size)
        io.limit = limit
        io.blocks.move_all(BS.INIT)
        if limit <= off:
            return []                                   # at or past EOF: a short read of 0
        regions = self._regions(io, fh, off, limit)
        dest = io.dest
        if dest.kind == "device" and dest.target == "cuda" and self._gds_ok(io, fh):
            r.io_path = "gds"
            io.direct = fh.fd_direct is not None
        elif dest.host_addressable:
            io.direct = self._choose_direct(io, fh, True)
            if io.direct:
                congruent = (dest.address(io.dest_off) - off) % ALIGN == 0
                r.io_path = "direct" if congruent else "bounce"
            else:
                r.io_path = "buffered"
        else:
            io.direct = self._choose_direct(io, fh, True)
            r.io_path = "bounce"
        r.o_direct = io.direct
        io.engine, io.pool = self._engine_for(dest)
        if r.io_path == "direct":
            return [regions]          # one segment: the fast pool reads its chunks in parallel
        return self._segments(io, regions)

    def _regions(self, io: _Io, fh: FileHandle, off: int, limit: int) -> list:
        r = io.result
        if not self.sparse:
            out = [(off, limit, "data")]
        else:
            out, pos = [], off
            try:
                while pos < limit:
                    try:
                        d = os.lseek(fh.fd, pos, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno != E.ENXIO:
                            raise
                        d = limit                   # no data after pos: a hole to the end
                    d = min(d, limit)
                    if d > pos:
                        out.append((pos, d, "hole"))
                    if d >= limit:
                        break
                    h = min(os.lseek(fh.fd, d, os.SEEK_HOLE), limit)
                    out.append((d, h, "data"))
                    pos = h
            except OSError as e:
                if e.errno not in (E.EINVAL, E.EOPNOTSUPP, E.ENOTSUP, E.ESPIPE):
                    raise
                out = [(off, limit, "data")]      # no hole support: dense read
                r.dense_fallback = True
        for a, b, kind in out:
            if kind == "hole":
                r.holes += 1
                r.hole_bytes += b - a
            else:
                r.data_regions += 1
        if len(r.regions) < 4096:
            r.regions = [(a, b - a, k) for a, b, k in out[:4096]]
        return out

    def _segments(self, io: _Io, regions) -> list:
        """Split regions into segments of about ``segment_size`` bytes, cut at the I/O's block
        boundaries (so no two segments share a destination block)."""
        size = self.segment_size
        segs, cur, cur_n = [], [], 0
        for a, b, kind in regions:
            pos = a
            while pos < b:
                cut = min(b, pos + (size - cur_n))
                full = cut < b
                if full:              # round the cut up to a block boundary of the I/O
                    rel = cut - io.offset
                    cut = min(b, io.offset + -(-rel // BLOCK_SIZE) * BLOCK_SIZE)
                cur.append((pos, cut, kind))
                cur_n += cut - pos
                pos = cut
                if full or cur_n >= size:
                    segs.append(cur)
                    cur, cur_n = [], 0
        if cur:
            segs.append(cur)
        return segs

    # ------------------------------------------------------------------ reading
    def _hook(self, io: _Io, pos: int) -> None:
        if self.chunk_hook is not None:
            self.chunk_hook(io.index, pos)
        io.check()

    def _read_seg(self, io: _Io, fh: FileHandle, seg) -> None:
        fences = []
        holes = []
        first, last = io.blk(seg[0][0]), io.blk_up(seg[-1][1])
        try:
            if io.result.io_path == "direct":
                self._read_seq(io, fh, seg, fences, holes)
                return
            for a, b, kind in seg:
                if kind == "hole":
                    fences.append(io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a))
                    holes.append((io.blk_up(a), io.blk(b) if b < io.limit else io.blk_up(b)))
                    continue
                path = io.result.io_path
                if path == "gds":
                    self._read_gds(io, fh, a, b)
                elif path == "buffered" and io.dest.host_addressable:
                    self._read_into(io, fh, False, a, b)
                else:
                    self._read_bounce(io, fh, io.direct, a, b, fences)
                if io.short_at is not None:
                    break
        finally:
            err = None
            for f in fences:
                try:
                    f.wait()
                except BaseException as e:  # noqa: BLE001
                    err = err or e
            bl = io.blocks
            if err is not None:
                bl.advance(first, last, BS.DMA_START, BS.DMA_ERROR)
                io.fail(io.make_error("io", f"copy to {io.dest.describe()} failed: {err!r}"))
            else:
                bl.advance(first, last, BS.DMA_START, BS.DONE)
                for h0, h1 in holes:
                    bl.advance(h0, h1, BS.INIT, BS.DONE)

    def _pread(self, io: _Io, fh: FileHandle, direct: bool, buf: np.ndarray, pos: int) -> int:
        fd = fh.fd_direct if direct else fh.fd
        try:
            return os.preadv(fd, [buf], pos)
        except OSError as e:
            if direct and e.errno == E.EINVAL:     # the fs refused this alignment after all
                if io.result.fallback is None:
                    io.result.fallback = "read_einval"
                    self.stats_.fallback("read_einval")
                return os.preadv(fh.fd, [buf], pos)
            e.ggmk_pos = pos
            raise

    def _queue_blocks(self, io: _Io, a: int, b: int) -> None:
        bl = io.blocks
        f, l_ = io.blk(a), io.blk_up(b)
        bl.advance(f, l_, BS.INIT, BS.QUEUED)
        bl.advance(f, l_, BS.QUEUED, BS.DMA_START)

    def _read_chunks(self, io: _Io, a: int, b: int, read) -> None:
        """[a, b) in chunks of ``direct_chunk``: ``read(pos, n)`` returns the bytes read; a
        short one ends the I/O (end of file) and is recorded; the hook runs between chunks."""
        pos = a
        while pos < b:
            n = min(self.direct_chunk, b - pos)
            self._queue_blocks(io, pos, pos + n)
            got = read(pos, n)
            pos += got
            if got < n:
                io.mark_short(pos)
                return
            self._hook(io, pos)

    def _read_into(self, io: _Io, fh: FileHandle, direct: bool, a: int, b: int) -> None:
        """Reads straight into a host destination (no copy)."""
        base = io.dest_off - io.offset
        self._read_chunks(io, a, b, lambda pos, n: self._pread(
            io, fh, direct, io.dest.view(base + pos, n), pos))

    def _read_seq(self, io: _Io, fh: FileHandle, seg, fences, holes) -> None:
        """The ``direct`` path (host memory whose address agrees with the file offset modulo
        4096): the aligned part of every data region is cut into ``seq_chunk`` chunks that the
        fast pool reads with O_DIRECT straight into the destination, ``seq_depth`` at once
        (:class:`~ggmk.storage.fast.ChunkJob`); meanwhile this thread zero-fills the holes
        and reads the unaligned head and tail (under 4 KiB each) through a bounce buffer.
        Results per chunk: the lowest failing chunk fails the I/O (naming its file offset),
        the lowest short one ends it (end of file)."""
        base = io.dest.address(io.dest_off - io.offset)
        edges, offs, lens = [], [], []
        step = self.seq_chunk
        for a, b, kind in seg:
            if kind == "hole":
                continue
            ha = min(align_up(a), b)
            mb = max(ha, align_down(b))
            if a < ha:
                edges.append((a, ha))
            if ha < mb:
                starts = np.arange(ha, mb, step, dtype=np.int64)
                offs.append(starts)
                lens.append(np.minimum(starts + step, mb) - starts)
            if mb < b:
                edges.append((mb, b))
        offs = np.concatenate(offs) if offs else np.zeros(0, np.int64)
        lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        bl = io.blocks
        chunks = list(zip(offs.tolist(), (offs + lens).tolist()))
        for c0, c1 in chunks:
            bl.advance(io.blk(c0), io.blk_up(c1), BS.INIT, BS.QUEUED)
        io.cancel_flag = np.zeros(1, np.int32)
        io.check()                               # cancelled before the flag existed
        job = _fast.ChunkJob(fh.fd_direct, fh.fd, offs, lens, base + offs.astype(np.uint64),
                             io.cancel_flag)
        if len(chunks) and not self._fast.dispatch(job, self.seq_depth):
            # close() ran from a callback with this read still queued: this worker finishes
            # the queue, so it reads the chunks itself rather than start the pool again
            job._work()
        edge_error: BaseException | None = None
        try:
            for a, b, kind in seg:               # holes and edges while the chunks run
                if kind == "hole":
                    fences.append(io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a))
                    holes.append((io.blk_up(a), io.blk(b) if b < io.limit else io.blk_up(b)))
            for a, b in edges:
                if io.check_quiet():
                    break
                self._read_bounce(io, fh, True, a, b, fences)
        except BaseException as e:  # noqa: BLE001 - raised after the chunks are accounted
            edge_error = e
            io.cancel_flag[0] = 1
        job.wait()
        got, err = job.got.tolist(), job.err.tolist()
        first_err = first_short = None
        for k, (c0, c1) in enumerate(chunks):
            e = err[k]
            if e < 0:
                continue                         # not started (cancelled / after a failure)
            f, l_ = io.blk(c0), io.blk_up(c1)
            bl.advance(f, l_, BS.QUEUED, BS.DMA_START)
            if e == 0:
                bl.advance(f, io.blk_up(c0 + got[k]), BS.DMA_START, BS.DONE)
                if got[k] < c1 - c0 and first_short is None:
                    first_short = c0 + got[k]
            elif first_err is None:
                first_err = k
            bl.advance(f, l_, BS.DMA_START, BS.DMA_ERROR)
        if job.fell_back.any() and io.result.fallback is None:
            io.result.fallback = "read_einval"
            self.stats_.fallback("read_einval")
        if job.callback_error is not None:
            raise io.make_error("io", f"internal error in the chunk reader: "
                                      f"{job.callback_error!r}")
        if edge_error is not None and (first_err is None or isinstance(edge_error, _Cancelled)):
            raise edge_error
        if first_err is not None:
            e, c0 = err[first_err], chunks[first_err][0]
            ex = OSError(e, os.strerror(e))
            raise io.make_os_error(ex, f"pread of [{c0}, {chunks[first_err][1]}) at file "
                                       f"offset {c0 + got[first_err]}")
        if first_short is not None:
            io.mark_short(first_short)
        io.check()
        if chunks and chunks[-1][1] < io.limit and io.short_at is None:
            self._hook(io, chunks[-1][1])

    def _read_bounce(self, io: _Io, fh: FileHandle, direct: bool, a: int, b: int,
                     fences) -> None:
        """The pipelined path: read a chunk into a free bounce buffer, start its copy to the
        destination, go on reading into the next buffer while the copy runs."""
        pool, eng = io.pool, io.engine
        pos = a
        end_read = align_up(b) if direct else b
        while pos < b:
            i, buf = pool.acquire()
            fence = DONE
            try:
                start = align_down(pos) if direct else pos
                skip = pos - start
                want = min(len(buf), end_read - start)
                self._queue_blocks(io, pos, min(b, start + want))
                got = self._pread(io, fh, direct, buf[:want], start)
                useful = max(0, min(got - skip, b - pos))
                if useful:
                    fence = eng.to_dest(io.dest, io.dest_off + pos - io.offset,
                                        buf[skip:skip + useful])
                    fences.append(fence)
            finally:
                pool.release(i, fence)
            pos += useful
            if pos < b and got < want:
                io.mark_short(pos)
                return
            if pos < b:
                self._hook(io, pos)

    def _read_gds(self, io: _Io, fh: FileHandle, a: int, b: int) -> None:
        g = fh.gds()
        base = io.dest_off - io.offset
        self._read_chunks(io, a, b, lambda pos, n: g.read(io.dest, base + pos, n, pos))

    # ------------------------------------------------------------------ writing
    def _plan_write(self, io: _Io, fh: FileHandle) -> list:
        r = io.result
        src = io.dest
        io.blocks.move_all(BS.INIT)
        if io.length == 0:
            return []
        aligned = io.offset % ALIGN == 0 and io.length % ALIGN == 0
        if src.kind == "device" and src.target == "cuda" and self._gds_ok(io, fh):
            r.io_path = "gds"
        elif src.host_addressable:
            aligned = aligned and src.address(io.dest_off) % ALIGN == 0
            io.direct = self._choose_direct(io, fh, aligned,
                                            None if fh.fd_direct is None else "unaligned")
            r.io_path = "direct" if io.direct else "buffered"
        else:
            io.direct = self._choose_direct(io, fh, aligned,
                                            None if fh.fd_direct is None else "unaligned")
            r.io_path = "bounce"
        r.o_direct = io.direct
        io.engine, io.pool = self._engine_for(src)
        return self._segments(io, [(io.offset, io.offset + io.length, "data")])

    def _pwrite_all(self, io: _Io, fh: FileHandle, buf: np.ndarray, pos: int) -> None:
        fd = fh.fd_direct if io.direct else fh.fd
        done = 0
        while done < len(buf):
            try:
                n = os.pwritev(fd, [buf[done:]], pos + done)
            except OSError as e:
                if io.direct and e.errno == E.EINVAL:
                    io.direct = False
                    io.result.fallback = "write_einval"
                    self.stats_.fallback("write_einval")
                    fd = fh.fd
                    continue
                e.ggmk_pos = pos + done
                raise
            if n == 0:
                err = OSError(E.EIO, "write returned 0 bytes")
                err.ggmk_pos = pos + done
                raise err
            done += n

    def _write_seg(self, io: _Io, fh: FileHandle, seg) -> None:
        first, last = io.blk(seg[0][0]), io.blk_up(seg[-1][1])
        bl = io.blocks
        ok = False
        try:
            for a, b, _ in seg:
                pos = a
                while pos < b:
                    n = min(self.direct_chunk, b - pos)
                    self._queue_blocks(io, pos, pos + n)
                    soff = io.dest_off + pos - io.offset
                    if io.result.io_path == "gds":
                        fh.gds().write(io.dest, soff, n, pos)
                    elif io.dest.host_addressable:
                        self._pwrite_all(io, fh, io.dest.view(soff, n), pos)
                    else:
                        n = min(n, io.pool.size)
                        i, buf = io.pool.acquire()
                        try:
                            io.engine.from_src(io.dest, soff, buf[:n]).wait()
                            self._pwrite_all(io, fh, buf[:n], pos)
                        finally:
                            io.pool.release(i)
                    pos += n
                    if pos < io.limit:
                        self._hook(io, pos)
            ok = True
        finally:
            bl.advance(first, last, BS.DMA_START, BS.DONE if ok else BS.DMA_ERROR)

    # ------------------------------------------------------------------ completion
    def _finalize(self, io: _Io) -> None:
        r = io.result
        cancelled = not io.cell.to_if((S.IN_PROGRESS,), S.CALLBACK_REQ)
        if cancelled:
            io.cell.to(S.TERMINATED)
            io.cell.to(S.CALLBACK_REQ)
        if io.op == "write" and not cancelled and io.error is None and io.req.sync \
                and io.fref.fh is not None:
            try:
                os.fdatasync(io.fref.fh.fd)
            except OSError as e:
                io.fail(io.make_os_error(e, "fdatasync"))
        if cancelled:
            r.status = "cancelled"
            r.error = io.make_error("cancelled", "the I/O was cancelled"
                               + (" while queued" if not io.started else " mid-flight"))
        elif io.error is not None:
            r.status, r.error = "error", io.error
        else:
            end = io.limit if io.short_at is None else min(io.limit, io.short_at)
            r.nbytes = max(end - io.offset, 0)
            r.status = "ok" if r.nbytes == io.length else "short"
        if io.blocks is not None:
            bl = io.blocks
            bl.move_where(BS.DMA_START, BS.DMA_ERROR)   # only if a copy never completed
            for st in (BS.DONE, BS.DMA_ERROR, BS.QUEUED, BS.INIT, BS.ALLOC):
                if bl.move_where(st, BS.FREE) == len(bl):
                    break
        if r.error is not None:
            if io.op == "read" and io.dest is not None and io.own_dest:
                io.dest.release()                     # ours: never left half-owned
            if io.op == "read":
                r.dest = None
        r.latency_ns = time.perf_counter_ns() - io.t0
        io.fref.release()
        self._callbacks(io)                     # CALLBACK_REQ: user callbacks run
        io.cell.to(S.CALLBACK_END)
        io.cell.to(S.FREE)
        self.stats_.finish(io, io.started)      # counted before any waiter wakes
        io.batch._complete(io.index, r)
        self._io_done()

    def _callbacks(self, io: _Io) -> None:
        for cb in getattr(io, "callbacks", ()):
            try:
                cb(io.result)
            except Exception as e:  # noqa: BLE001 - a callback bug must not stop the pool
                self.callback_errors.append((io.result, e))


def _path_of(file) -> str:
    return file.path if isinstance(file, FileHandle) else os.fspath(file)


def _is_int(v) -> bool:
    """A Python or NumPy integer (a bool is not one: True is no offset)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_range(offset: int, length: int) -> None:
    """A file range: ValueError (refused as bad_request) unless it fits in a file offset."""
    if offset < 0 or length < 0:
        raise ValueError(f"offset {offset} and length {length} must be >= 0")
    if offset + length > _MAX_OFF:
        raise ValueError(f"offset {offset} + length {length} = {offset + length} is past the "
                         f"largest file offset, {_MAX_OFF} (2**63 - 1)")


def _alloc(path, offset: int, length: int, what: str, fn):
    """``fn()`` (a destination's allocation), its failure an alloc_fail StorageError naming
    the length: never a raw exception out of submit()."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - ENOMEM, OverflowError, a CUDA out-of-memory
        raise StorageError("alloc_fail", "read", path, offset, length,
                           f"could not allocate {length} bytes of {what} for the "
                           f"destination: {type(e).__name__}: {e}") from e


def _int_array(name: str, v, n: int | None = None) -> np.ndarray:
    """``v`` as a 1-D int64 array (of ``n`` entries; an int is repeated), or a ValueError
    naming the argument (and a value past 2**63 - 1, which int64 would wrap)."""
    a = np.asarray(v)
    if a.dtype.kind in "fO" and not isinstance(v, np.ndarray):
        o = np.asarray(v, dtype=object)    # NumPy makes ints past int64 float or object
        if o.size and all(_is_int(x) for x in o.ravel()):
            a = o
    if a.ndim == 0 and n is not None:
        a = np.full(n, a)
    if (a.ndim != 1 or (a.size and a.dtype.kind not in "iuO")
            or (a.dtype.kind == "O" and not all(_is_int(x) for x in a))):
        alt = "" if n is None else " (or one int)"
        raise ValueError(f"{name}: expected a 1-D array of integers{alt}, "
                         f"got {a.dtype} of shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name}: {len(a)} entries, expected {n} (one per offset)")
    if a.size and a.dtype.kind in "uO":
        for i in (int(np.argmax(a)), int(np.argmin(a))):
            if not -_MAX_OFF - 1 <= int(a[i]) <= _MAX_OFF:
                raise ValueError(f"{name}: {int(a[i])} (entry {i}) is outside 0..{_MAX_OFF} "
                                 f"(2**63 - 1, the largest file offset)")
    return a.astype(np.int64, copy=False)


def _max_alloc() -> int:
    from ggmk.core.alloc import MAX_ALLOC
    return MAX_ALLOC
