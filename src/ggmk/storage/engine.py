"""The storage engine: requests, batches, the worker pool, the per-I/O paths (see __init__)."""
from __future__ import annotations

import errno as E
import fcntl
import os
import resource
import stat as _stat
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


def _not_a_file(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, if storage must not use it (None: a regular file,
    a block device, or a directory, which fails with EISDIR on its first read as before)."""
    for test, what in ((_stat.S_ISFIFO, "a FIFO (named pipe)"), (_stat.S_ISSOCK, "a socket"),
                       (_stat.S_ISCHR, "a character device")):
        if test(mode):
            return what
    return None


def _open_file(path: str, flags: int, same: tuple | None = None) -> tuple[int, tuple]:
    """``os.open`` that never blocks on what is not a file: opened non-blocking (a FIFO's
    open would otherwise wait for a writer for ever), then refused with ESPIPE (kind
    ``bad_request``) unless it is a regular file, a block device or a directory; ``same``:
    the (st_dev, st_ino) it must be (a second descriptor of a file already open: refused if
    the path was replaced in between). Returns (fd, (st_dev, st_ino))."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    try:
        st = os.fstat(fd)
        what = _not_a_file(st.st_mode)
        if what is not None:
            raise OSError(E.ESPIPE, f"not a regular file: {path} is {what}; storage reads and "
                                    f"writes regular files and block devices", path)
        ident = (st.st_dev, st.st_ino)
        if same is not None and ident != same:
            raise OSError(E.ESTALE, f"{path} was replaced while it was being opened", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, ident


def _size_of(fd: int) -> int:
    """The size of an open file: ``st_size``, or a block device's size (its st_size is 0)."""
    st = os.fstat(fd)
    if _stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def _path_size(path) -> int:
    """The size of the file at ``path`` (a block device's too, whose st_size is 0)."""
    st = os.stat(path)
    if not _stat.S_ISBLK(st.st_mode):
        return st.st_size
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return _size_of(fd)
    finally:
        os.close(fd)


class FileHandle:
    """An open file for storage I/O: a buffered descriptor and, where the file system accepts
    it, an ``O_DIRECT`` one (``direct_refused`` says why not). Reuse one across many requests
    (a batch of 4 KiB reads); a request naming a path opens and closes its own.

    Only regular files and block devices: a FIFO, a socket or a character device is refused
    at once with OSError ESPIPE (opened non-blocking, so a FIFO never blocks the open)."""

    def __init__(self, path, *, write: bool = False, create: bool = False,
                 o_direct: bool | str = "auto"):
        self.path = os.fspath(path)
        self.writable = write
        flags = os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
        self.fd, ident = _open_file(self.path, flags | (os.O_CREAT if create else 0))
        self.fd_direct = None
        self.direct_refused = None
        if o_direct is False:
            self.direct_refused = "disabled"
        elif not _HAS_O_DIRECT:
            self.direct_refused = "no_o_direct"
        else:
            try:
                self.fd_direct, _ = _open_file(self.path, flags | os.O_DIRECT, ident)
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
        return _size_of(self.fd)

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


class _FastFiles:
    """The files of one :meth:`Storage.read_batch`, per entry of its ``file`` list: paths
    opened here (closed when their stage ends), a caller's FileHandles held (released when the
    batch ends); ``fd_d``/``fd_b`` the O_DIRECT / buffered descriptors (-1: none), ``size``
    the file's size, ``open_err``/``open_msg`` why it did not open, ``closed`` a caller's
    handle already closed, ``why`` (an index into ``why_reasons``) why O_DIRECT is not used.

    Stages: only the entries some read uses are opened, at most ``per_stage`` paths at once
    (each takes two descriptors): stage k opens the paths ranked [k * per_stage, (k + 1) *
    per_stage) among them (FileHandles are stage 0). ``order`` lists the reads stage by stage,
    ``bounds`` where each stage starts in it. ``release()`` gives back whatever is still open
    or held (a batch that ends, or one never started)."""

    def __init__(self, storage, files: list, paths: list, fids, per_stage: int):
        k = len(files)
        self.o_direct = storage.o_direct
        self.files, self.paths, self.fids = files, paths, fids
        self.fd_d = np.full(k, -1, np.int32)
        self.fd_b = np.full(k, -1, np.int32)
        self.size = np.zeros(k, np.int64)
        self.open_err = np.zeros(k, np.int32)
        self.open_msg: list = [None] * k
        self.closed = np.zeros(k, bool)
        self.why = np.zeros(k, np.int8)
        self.why_reasons: list = [None, "unaligned"]
        self.owned = False                 # handed to a FastBatch, which releases them
        self._closes: dict = {}            # entry -> close() of the path opened for it
        self._holds: list = []             # _release of each caller's FileHandle held
        used = np.zeros(k, bool)
        used[fids] = True
        self.used = used
        need = used & np.array([not isinstance(f, FileHandle) for f in files], bool)
        self.stage_of = np.where(need, (np.cumsum(need) - 1) // max(1, per_stage), 0)
        stage = self.stage_of[fids]
        nstages = int(stage.max()) + 1 if len(stage) else 1
        self.order = np.argsort(stage, kind="stable").astype(np.int64)
        self.bounds = np.searchsorted(stage[self.order], np.arange(nstages + 1)).tolist()

    def open_stage(self, k: int, batch=None) -> None:
        """Close stage k - 1's paths and open stage k's (stage 0: also hold the caller's
        FileHandles); with ``batch`` (a later stage, on a pool thread), plan its reads."""
        for e in [e for e in self._closes if self.stage_of[e] == k - 1]:
            self._closes.pop(e)()
        held: dict = {}
        for e in np.flatnonzero(self.used & (self.stage_of == k)).tolist():
            f = self.files[e]
            if isinstance(f, FileHandle):
                if id(f) not in held:
                    held[id(f)] = f._acquire()
                    if held[id(f)]:
                        self._holds.append(f._release)
                if not held[id(f)]:
                    self.open_err[e] = E.EBADF          # closed: refused, never read
                    self.closed[e] = True
                    continue
                fh = f
            else:
                try:
                    fh = FileHandle(self.paths[e], o_direct=self.o_direct)
                except OSError as ex:
                    self.open_err[e] = ex.errno or E.EIO
                    self.open_msg[e] = ex.strerror
                    continue
                self._closes[e] = fh.close
            try:
                self.size[e] = _size_of(fh.fd)
            except OSError as ex:
                self.open_err[e] = ex.errno or E.EIO
                self.open_msg[e] = f"fstat: {ex.strerror}"
                continue
            self.fd_b[e] = fh.fd
            if fh.fd_direct is not None and self.o_direct is not False:
                self.fd_d[e] = fh.fd_direct
            elif self.o_direct is not False:
                self.why_reasons.append(fh.direct_refused or "no_o_direct")
                self.why[e] = len(self.why_reasons) - 1
        if batch is not None:
            sel = self.order[self.bounds[k]:self.bounds[k + 1]]
            batch._plan(sel, *self.plan(sel, batch.offsets, batch.lengths,
                                        batch.dest.address(0) + batch.dest_offsets))

    def plan(self, sel, offs, lens, addr):
        """For the reads ``sel`` (indexes) whose files are open: (why refused: an _R_ code
        or 0, O_DIRECT fd or -1, buffered fd, why not O_DIRECT: an index into why_reasons,
        how many bytes O_DIRECT may land straight in the destination)."""
        f = self.fids[sel]
        o, ln, a = offs[sel], lens[sel], addr[sel]
        code = np.zeros(len(sel), np.int8)
        code[self.closed[f]] = _fast._R_CLOSED
        code[(code == 0) & (self.open_err[f] != 0)] = _fast._R_OPEN
        fdd = self.fd_d[f]
        aligned = (o % ALIGN == 0) & (ln % ALIGN == 0) & (a % ALIGN == 0)
        why = np.where(fdd < 0, self.why[f], np.where(aligned, 0, 1)).astype(np.int8)
        fdd = np.where(why == 0, fdd, -1).astype(np.int32)
        if self.o_direct is True:
            code[(code == 0) & (why != 0)] = _fast._R_NODIRECT
        # O_DIRECT straight into the destination only over the whole blocks before the end of
        # the file: the block that holds the end would be written whole (zeros past the end)
        caps = np.clip((self.size[f] - np.maximum(o, 0)) // ALIGN * ALIGN, 0,
                       np.maximum(ln, 0))
        return code, fdd, self.fd_b[f], why, np.where(fdd >= 0, caps, ln)

    def release(self) -> None:
        closes, self._closes = list(self._closes.values()), {}
        holds, self._holds = self._holds, []
        for rel in closes + holds:
            try:
                rel()
            except OSError:
                pass


def _files_per_stage() -> int:
    """How many paths one read_batch opens at once (two descriptors each): an eighth of the
    soft descriptor limit, so a batch over thousands of files never runs out (EMFILE)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    return max(4, min(4096, soft // 8))


def _checked_path(f, name: str):
    """The path of ``f`` (a FileHandle or a path), or TypeError / ValueError naming ``name``
    and the value: checked before anything is opened."""
    if isinstance(f, FileHandle):
        return f.path
    try:
        p = os.fspath(f)
    except TypeError:
        raise TypeError(f"{name}: expected a path or FileHandle, got {type(f).__name__} "
                        f"{f!r}") from None
    if ("\0" if isinstance(p, str) else b"\0") in p:
        raise ValueError(f"{name}: the path {p!r} contains a NUL byte (no file name can)")
    return p


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

    Counts (``workers``, ``max_batch``, ``bounce_count``, ``fast_threads``, ``seq_depth``) are
    ints >= 1; sizes (``bounce_size``, ``segment_size``, ``direct_chunk``, ``seq_chunk``) are
    positive multiples of 4096; ``o_direct`` and ``gds`` are ``"auto"``, True or False;
    ``sparse`` True or False; ``device_target`` ``"cpu"``, ``"sim"`` or ``"cuda"``. Anything
    else raises (TypeError for the wrong type, ValueError for a value) naming the option, the
    value and what is allowed: nothing is rounded or coerced.
    """

    def __init__(self, *, workers: int = 4, max_batch: int = 256, bounce_size: int = 1 << 20,
                 bounce_count: int = 8, segment_size: int = 8 << 20, direct_chunk: int = 4 << 20,
                 o_direct: bool | str = "auto", sparse: bool = True, gds: bool | str = "auto",
                 arena=None, device_target: str = "cpu", chunk_hook: Callable | None = None,
                 fast_threads: int = 16, seq_chunk: int = 4 << 20, seq_depth: int = 16):
        # every option checked before anything is allocated or started; a bad one raises
        # naming the option, its value and what is allowed (never silently rounded)
        workers, max_batch, bounce_count, fast_threads, seq_depth = (
            _count_option(k, v) for k, v in (
                ("workers", workers), ("max_batch", max_batch), ("bounce_count", bounce_count),
                ("fast_threads", fast_threads), ("seq_depth", seq_depth)))
        bounce_size, segment_size, direct_chunk, seq_chunk = (
            _size_option(k, v) for k, v in (
                ("bounce_size", bounce_size), ("segment_size", segment_size),
                ("direct_chunk", direct_chunk), ("seq_chunk", seq_chunk)))
        for name, v in (("o_direct", o_direct), ("gds", gds)):
            if not (v is True or v is False or (isinstance(v, str) and v == "auto")):
                raise ValueError(f"{name} must be 'auto', True or False, got "
                                 f"{type(v).__name__} {v!r}")
        if not isinstance(sparse, (bool, np.bool_)):
            raise TypeError(f"sparse must be True or False, got {type(sparse).__name__} "
                            f"{sparse!r}")
        if not isinstance(device_target, str) or device_target not in _DEVICE_TARGETS:
            raise ValueError(f"device_target must be one of "
                             f"{', '.join(map(repr, _DEVICE_TARGETS))}, got "
                             f"{type(device_target).__name__} {device_target!r}")
        if chunk_hook is not None and not callable(chunk_hook):
            raise TypeError(f"chunk_hook must be callable or None, got "
                            f"{type(chunk_hook).__name__} {chunk_hook!r}")
        self.max_batch = max_batch
        self.segment_size = segment_size
        self.direct_chunk = direct_chunk
        self.seq_chunk = seq_chunk
        self.seq_depth = seq_depth
        self.bounce_size = bounce_size
        self.bounce_count = bounce_count
        self.o_direct = o_direct
        self.sparse = bool(sparse)
        self.gds_mode = gds
        self.arena = arena
        self.device_target = device_target
        self.chunk_hook = chunk_hook
        self.stats_ = StorageStats()
        self.callback_errors: deque = deque(maxlen=64)
        try:
            self._pool = BouncePool(bounce_size, bounce_count)
        except (OSError, OverflowError, MemoryError) as e:
            raise MemoryError(f"bounce buffers: bounce_count={bounce_count} x bounce_size="
                              f"{bounce_size} bytes could not be allocated: "
                              f"{type(e).__name__}: {e}") from e
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
        self._live: set = set()                  # I/Os admitted, not finished (cancel_all)
        self._fast_live: set = set()             # fast batches not finished (cancel_all)
        self._files_per_stage = 0                # read_batch: paths open at once (0: auto)
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
        see ``result.status`` and ``result.nbytes``; one that fails part way has ``nbytes``
        = the bytes from ``offset`` on that landed in the destination, see IoResult).

        A read not finished after ``timeout`` seconds is cancelled and ended before the
        TimeoutError is raised: not started, it ends CANCELLED (its error names the
        timeout); running, it stops at its next chunk boundary (the chunks in flight, one
        ``pread`` each, are waited for). So nothing writes into ``dest`` after the call, and
        the error's ``result`` is the finished IoResult (``ok``, ``short``, ``error`` or
        ``cancelled``, ``nbytes`` the bytes that landed). Memory the read allocated
        (``dest=None``, ``"arena"``, ``"device"``) is freed (``result.dest`` is None)."""
        self._check_open("read()")                  # before the stat of length=None
        _timeout_arg("read()", timeout)
        if length is None and _is_int(offset):      # a bad offset is refused by submit
            try:
                size = file.size() if isinstance(file, FileHandle) else _path_size(file)
            except OSError as e:                    # the documented StorageError, not_found
                raise from_oserror(e, "read", _path_of(file), int(offset), 0, "stat") from None
            length = max(size - int(offset), 0)
        b = self.submit([ReadRequest(file, offset, length, dest, dest_offset)])
        try:
            r = b.wait(timeout)[0]
        except TimeoutError:
            err = self._timed_out(b, "read()", timeout)
            r = err.result
            if r.dest is not None and (dest is None or isinstance(dest, str)):
                r.dest.release()            # ours, and the caller gave up on it: not leaked
                r.dest = None
            raise err from None
        return r.raise_for_error()

    def write(self, file, offset: int, src, length: int | None = None, *, sync: bool = False,
              create: bool = True, timeout: float | None = None) -> IoResult:
        """Write one range and wait; raises StorageError on failure (``error.written``: the
        bytes from ``offset`` on that reached the file).

        A write not finished after ``timeout`` seconds is cancelled and ended before the
        TimeoutError is raised: not started, it ends CANCELLED (its error names the timeout)
        and writes nothing; running, it stops at its next chunk boundary (the ``pwrite`` in
        flight is waited for). So nothing reads ``src`` after the call (the caller may reuse
        it), and the error's ``result`` is the finished IoResult: ``nbytes`` and ``regions``
        say what reached the file."""
        self._check_open("write()")
        _timeout_arg("write()", timeout)
        req = WriteRequest(file, offset, src, length, create=create, sync=sync)
        b = self.submit([req])
        try:
            r = b.wait(timeout)[0]
        except TimeoutError:
            raise self._timed_out(b, "write()", timeout) from None
        return r.raise_for_error()

    def _timed_out(self, b: Batch, call: str, timeout) -> TimeoutError:
        """``call`` (read() or write(), one I/O) timed out: cancel it (its error names the
        timeout), end it here if it is still queued (the workers may be busy for long), wait
        for it to stop at its next chunk boundary if it runs. The TimeoutError to raise,
        with the finished result (``.result``): nothing touches the caller's buffer after."""
        b._cancel_why = f"{call} timed out after {timeout} s: cancelled"
        b.cancel()
        self._help(b, None)
        r = b.wait()[0]
        where = "reached the file" if r.op == "write" else "landed in the destination"
        err = TimeoutError(
            f"storage {r.op} of {r.path} [{r.offset}, {r.offset + r.requested}) not finished "
            f"after {timeout} s: cancelled, and ended before this error ({r.status}, "
            f"{r.nbytes} bytes from offset {r.offset} {where}; nothing touches the buffer "
            f"any more); the outcome is this error's .result")
        err.result = r
        return err

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
        batch._storage = self
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
        hold each I/O's status, bytes, errno and path; a bad request (negative offset, a range
        past 2**63 - 1, no room in the destination, a file that does not open) fails alone,
        not the batch. An entry of ``file`` that is neither a path nor a FileHandle raises
        (TypeError naming it) before anything is opened. A read that crosses the end of the
        file writes nothing past its ``nbytes`` (O_DIRECT reads the block holding the end into
        a scratch block; a file cut after the batch sized it: the read is ``short`` with the
        file's length, and its own destination range past that may hold zeros, which the
        kernel puts in an O_DIRECT transfer past the new end). ``on_done(batch)`` runs once
        when every I/O has finished (in a storage thread, before ``wait`` returns; an
        exception it raises is kept in ``batch.callback_error``); it may read again (see
        :meth:`FastBatch.wait`).
        With ``wait=True``, a batch not finished after ``timeout`` seconds raises TimeoutError
        once it is over: the reads not started end CANCELLED (naming the timeout), the ones
        already running (at most ``fast_threads``, one ``pread`` each) are waited for, so
        nothing writes into ``dest`` afterwards; the error's ``batch`` is the finished
        FastBatch, every read's outcome in it (``on_done`` has run, perhaps in this thread).
        A batch that close() overtakes (it ran after this check) ends with every read
        CANCELLED. A read that fails part way (ERROR) keeps in ``nbytes`` the bytes from its
        offset on that landed before the error (its error's ``written``; a failing O_DIRECT
        ``pread`` reports no partial count, so its own range is not counted)."""
        self._check_open("read_batch()")
        # (wait="no" waited; on_done=5 failed in a storage thread, kept as callback_error)
        _timeout_arg("read_batch()", timeout)
        if not isinstance(wait, (bool, np.bool_)):
            raise TypeError(f"read_batch(): wait={wait!r}: allowed True or False")
        if on_done is not None and not callable(on_done):
            raise TypeError(f"read_batch(): on_done must be callable or None, got "
                            f"{type(on_done).__name__} {on_done!r}")
        offs = _int_array("offsets", offsets)
        n = len(offs)
        lens = _int_array("lengths", lengths, n)
        many = isinstance(file, (list, tuple))
        files = list(file) if many else [file]
        paths = [_checked_path(f, f"file[{k}]" if many else "file") for k, f in enumerate(files)]
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
            dest = _alloc(paths[0] if len(files) == 1 else None, 0, total,
                          f"host memory (dest=None: {n} reads packed in order)",
                          lambda: HostDest.alloc(total))
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
        # the files: opened once per batch (a path), or the caller's handles (a caller's
        # handle is held, so that closing it defers closing its descriptors until this batch
        # finishes: its reads never use a number reused by another file). Everything above
        # is checked before the first open; from here on, an exception closes what was opened
        ff = _FastFiles(self, files, paths, fids, self._files_per_stage or _files_per_stage())
        try:
            return self._read_batch_run(ff, fids, offs, lens, dest, doffs, n, wait, timeout,
                                        on_done)
        except BaseException:
            if not ff.owned:                     # not handed to a FastBatch yet
                ff.release()
            raise

    def _read_batch_run(self, ff, fids, offs, lens, dest, doffs, n, wait, timeout, on_done):
        ff.open_stage(0)
        refused = np.zeros(n, np.int8)
        refused[(offs < 0) | (lens < 0) | (doffs < 0)] = _fast._R_BAD
        # a range past the largest file offset (2**63 - 1) is refused as submit() refuses it
        # (pread would fail it with EINVAL); lens >= 0 there, so the subtraction cannot wrap
        refused[(refused == 0) & (offs > _MAX_OFF - np.maximum(lens, 0))] = _fast._R_BAD
        # doffs + lens could wrap in int64: compare with what is left past doffs instead
        room = np.int64(dest.nbytes)
        refused[(refused == 0) & ((lens > room) | (doffs > room - lens))] = _fast._R_DEST
        # the reads of the first stage's files are planned now, the others when they open
        fd_d, fd_b = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        why, caps = np.zeros(n, np.int8), np.zeros(n, np.int64)
        sel = ff.order[ff.bounds[0]:ff.bounds[1]]
        code, fd_d[sel], fd_b[sel], why[sel], caps[sel] = ff.plan(
            sel, offs, lens, dest.address(0) + doffs)
        refused[sel] = np.where(refused[sel] == 0, code, refused[sel])
        b = _fast.FastBatch(self, ff.paths, fids, fd_d, fd_b, offs, lens, dest, doffs, refused,
                            ff.open_err[fids], why, ff.why_reasons, [ff.release],
                            chunk=min(256, max(8, n // (self._fast.n * 8))), on_done=on_done,
                            caps=caps, open_msgs=ff.open_msg,
                            stager=ff if len(ff.bounds) > 2 else None)
        ff.owned = True                          # the batch releases the files when it ends
        self.stats_.batch(n)
        with self._cond:
            self._fast_inflight += 1
            self._fast_live.add(b)
        b._start(self._fast)
        if not wait:
            return b
        try:
            return b.wait(timeout)
        except TimeoutError:
            # never left running behind the caller's back (it would write into a buffer the
            # caller may reuse, its outcome known to nobody): cancelled, finished, handed back
            b._expire(f"read_batch(wait=True) timed out after {timeout} s: cancelled")
            err = TimeoutError(
                f"storage read_batch of {n} reads not finished after {timeout} s: "
                f"{b.count(_fast.CANCELLED)} not started were cancelled, the reads already "
                f"running finished first (nothing writes into the destination any more); "
                f"every read's outcome is in the batch (this error's .batch)")
            err.batch = b
            raise err from None

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
        """Cancel every I/O not finished, queued or running (running ones stop at their next
        chunk boundary, as with :meth:`Batch.cancel`), and every fast batch in flight (its
        reads not started yet end CANCELLED). Returns how many I/Os and fast batches it asked
        to stop (a fast batch counts once)."""
        with self._cond:
            ios = list(self._live)
            fast = list(self._fast_live)
        return sum(io.cancel() for io in ios) + sum(b.cancel() for b in fast)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0 and not self._pending
                                       and self._fast_inflight == 0, timeout)

    def _fast_done(self, b=None) -> None:
        """A fast batch finished (wait_idle counts them too)."""
        with self._cond:
            self._fast_inflight -= 1
            self._fast_live.discard(b)
            self._cond.notify_all()

    def _is_storage_thread(self, thread=None) -> bool:
        """``thread`` (default: this one) is a worker or a fast-pool thread: a callback runs
        on it."""
        me = thread or threading.current_thread()
        return me in self._threads or self._fast.owns(me)

    def close(self, cancel: bool = False, timeout: float | None = 30.0) -> None:
        """Stop: optionally cancel what is queued or running (:meth:`cancel_all`; also what
        ``with`` does when its block raised), wait for the rest, stop threads."""
        if self._closed:
            return
        me = threading.current_thread()
        inside = self._is_storage_thread(me)                  # from a callback
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
        if doff < 0:
            raise ValueError(f"dest_offset {doff} must be >= 0")
        if isinstance(d, str) and doff:
            raise ValueError(f"dest_offset {doff}: with dest={d!r} (fresh memory of length "
                             f"bytes) it must be 0")
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
                self._live.add(io)
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

    def _io_done(self, io) -> None:
        with self._cond:
            self._live.discard(io)
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
                item = self._work.popleft()
            self._run_item(item)

    def _run_item(self, item) -> None:
        kind, io, seg = item
        try:
            if kind == "io":
                self._start(io)
            else:
                self._run_seg(io, seg)
        except BaseException as e:  # noqa: BLE001 - never lose an I/O to a bug here
            io.fail(io.make_error("io", f"internal error: {e!r}"))
            if kind == "io" and io.segs_left == 0:
                self._finalize(io)

    def _take_for(self, batch: Batch):
        """(under _cond) A queued work item of ``batch`` taken off the queues, or None: an I/O
        or segment waiting for a worker, else an I/O waiting behind ``max_batch`` (admitted
        now, over the limit: its caller holds one of the slots)."""
        for item in self._work:
            if item[1].batch is batch:
                self._work.remove(item)
                return item
        for io in self._pending:
            if io.batch is batch:
                self._pending.remove(io)
                self._inflight += 1
                return ("io", io, None)
        return None

    def _help(self, batch: Batch, timeout: float | None) -> None:
        """A storage thread (a callback) waits for ``batch``: it runs the batch's queued work
        itself instead of waiting for a worker, which may be this very thread (one worker) or
        busy in callbacks that wait too; what other threads already run, it waits for. Also
        a caller whose read() / write() timed out, for its cancelled I/O (see _timed_out)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                item = self._take_for(batch)
                while item is None and batch._left:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return                   # Batch.wait raises the TimeoutError
                    self._cond.wait(left)
                    item = self._take_for(batch)
                if item is None:
                    return
            self._run_item(item)

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
                        # no data after pos: a hole to the end of the file, which may have
                        # been cut since it was sized (truncated: a short read, not zeros)
                        d = limit = io.limit = min(limit, max(pos, _size_of(fh.fd)))
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
                    fences.append((io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a),
                                   a, b))
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
            for f, a, b in fences:               # (copy or zero fill, the file range it lands)
                try:
                    f.wait()
                except BaseException as e:  # noqa: BLE001
                    err = err or e
                else:
                    io.wrote(a, b)
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
            io.wrote(pos, pos + got)
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
        base = np.uint64(io.dest.address(io.dest_off))   # the address of file offset io.offset
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
        # offsets from the I/O's start, never negative (an address less the file offset could
        # be, past 2**47, and not fit a uint64)
        job = _fast.ChunkJob(fh.fd_direct, fh.fd, offs, lens,
                             base + (offs - io.offset).astype(np.uint64), io.cancel_flag)
        if len(chunks) and not self._fast.dispatch(job, self.seq_depth):
            # close() ran from a callback with this read still queued: this worker finishes
            # the queue, so it reads the chunks itself rather than start the pool again
            job._work()
        edge_error: BaseException | None = None
        try:
            for a, b, kind in seg:               # holes and edges while the chunks run
                if kind == "hole":
                    fences.append((io.engine.zero(io.dest, io.dest_off + a - io.offset, b - a),
                                   a, b))
                    holes.append((io.blk_up(a), io.blk(b) if b < io.limit else io.blk_up(b)))
            for a, b in edges:
                if io.check_quiet():
                    break
                self._read_bounce(io, fh, True, a, b, fences)
        except BaseException as e:  # noqa: BLE001 - raised after the chunks are accounted
            edge_error = e
            io.cancel_flag[0] = 1
        # then read the chunks no pool thread took yet here: the pool's threads may all be in
        # callbacks that wait for this very read (fast_threads=1, a read from on_done)
        job._work()
        job.wait()
        got, err = job.got.tolist(), job.err.tolist()
        first_err = first_short = None
        for k, (c0, c1) in enumerate(chunks):
            e = err[k]
            if e < 0:
                continue                         # not started (cancelled / after a failure)
            io.wrote(c0, c0 + got[k])            # a failed chunk's bytes before the error too
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
                    fences.append((fence, pos, pos + useful))
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
                io.wrote(pos, pos + done)        # what a short write put there before
                raise
            if n == 0:
                err = OSError(E.EIO, "write returned 0 bytes")
                err.ggmk_pos = pos + done
                io.wrote(pos, pos + done)
                raise err
            done += n
        io.wrote(pos, pos + done)

    def _gds_write_all(self, io: _Io, fh: FileHandle, soff: int, n: int, pos: int) -> None:
        """cuFile may write fewer bytes than asked (it returns the count): write the rest."""
        done = 0
        while done < n:
            got = fh.gds().write(io.dest, soff + done, n - done, pos + done)
            io.wrote(pos + done, pos + done + got)
            if got <= 0:
                err = OSError(E.EIO, "GPUDirect write returned 0 bytes")
                err.ggmk_pos = pos + done
                raise err
            done += got

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
                        self._gds_write_all(io, fh, soff, n, pos)
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
            r.error = io.make_error("cancelled", (io.batch._cancel_why or "the I/O was "
                                    "cancelled") + (" while queued" if not io.started
                                                    else " mid-flight"))
        elif io.error is not None:
            r.status, r.error = "error", io.error
        else:
            end = io.limit if io.short_at is None else min(io.limit, io.short_at)
            if io.short_at is not None:
                # the file ended before the size it had at the start: it was cut while read,
                # maybe inside a hole zero-filled before a later read found the end (the end
                # that read saw, at a data region's start, is not the file's): it ends where
                # the file ends now
                try:
                    end = min(end, _size_of(io.fref.fh.fd))
                except OSError:
                    pass
            r.nbytes = max(end - io.offset, 0)
            r.status = "ok" if r.nbytes == io.length else "short"
        if io.started:
            self._account_landed(io)
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
        self._io_done(io)

    def _account_landed(self, io: _Io) -> None:
        """A write's ``regions`` (the ranges that reached the file); a write or read that
        failed or was cancelled part way gets ``nbytes`` = the bytes from its offset on that
        reached the file / landed in the destination, and an error that says so and names
        every range (they are there: 0 would tell a caller nothing was)."""
        r = io.result
        spans: list = []
        for a, b in sorted(io.written):
            if spans and a <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        total = io.landed_bytes = sum(b - a for a, b in spans)
        if io.op == "write":
            r.regions = [(a, b - a, "written") for a, b in spans]
        e = r.error
        if e is None:
            return
        r.nbytes = spans[0][1] - io.offset if spans and spans[0][0] == io.offset else 0
        where = ", ".join(f"[{a}, {b})" for a, b in spans)
        there = "reached the file" if io.op == "write" else "landed in the destination"
        words = (f"{total} of its {io.length} bytes {there}: {where}" if total
                 else f"none of its {io.length} bytes {there}")
        r.error = StorageError(e.kind, e.op, e.path, e.offset, e.length, f"{e.detail}; {words}",
                               errno=e.errno, code=e.code, written=r.nbytes)

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


_DEVICE_TARGETS = ("cpu", "sim", "cuda")      # the device kernel's targets (dest="device")


def _count_option(name: str, v) -> int:
    """A Storage option that counts something: an int >= 1."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int >= 1, got {type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def _size_option(name: str, v) -> int:
    """A Storage option that is a size in bytes: a positive multiple of 4096."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, a positive multiple of {ALIGN} bytes, got "
                        f"{type(v).__name__} {v!r}")
    if v < ALIGN or v % ALIGN:
        raise ValueError(f"{name} must be a positive multiple of {ALIGN}, got {v} (allowed: "
                         f"{ALIGN}, {2 * ALIGN}, ... bytes)")
    return int(v)


def _timeout_arg(what: str, v):
    """A call's ``timeout``: None or a number of seconds >= 0 (not a bool), checked before
    any I/O starts (a bad one raised only after the I/O had started, and ran on)."""
    if v is None or (isinstance(v, (int, float, np.integer, np.floating))
                     and not isinstance(v, (bool, np.bool_)) and v >= 0):
        return v
    raise ValueError(f"{what}: timeout={v!r}: allowed None or a number of seconds >= 0")


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
