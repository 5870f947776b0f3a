"""The storage engine: the ``Storage`` API, setting up I/Os, the worker pool and scheduling,
completion (see __init__). Files are in :mod:`ggmk.storage.files`, requests and results in
:mod:`ggmk.storage.requests`, the per-I/O read and write paths in :mod:`ggmk.storage.io_paths`."""
from __future__ import annotations

import errno as E
import os
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from ggmk.storage import fast as _fast
from ggmk.storage import gds as _gds
from ggmk.storage.buffers import ALIGN, BouncePool
from ggmk.storage.dest import ArenaDest, DeviceDest, HostDest, as_destination
from ggmk.storage.errors import StorageError, from_oserror
from ggmk.storage.files import (FileHandle, _checked_path, _FastFiles, _FileRef, _files_per_stage,
                                _path_size, _size_of)
from ggmk.storage.io_paths import IoPaths
from ggmk.storage.requests import Batch, IoResult, ReadRequest, WriteRequest, _Io
from ggmk.storage.states import BLOCK_SIZE, Blocks, BlockState as BS, IoState as S
from ggmk.storage.stats import StorageStats

__all__ = ["Storage", "FileHandle", "ReadRequest", "WriteRequest", "IoResult", "Batch"]

_MAX_OFF = (1 << 63) - 1                # the largest file offset (off_t), 2**63 - 1


class Storage(IoPaths):
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
