"""The batch fast path: many small reads (4 KiB random reads) with no Python work per I/O.

Why it exists: the general path (:meth:`Storage.submit`) keeps a Python object, a state cell,
a block table and a result per I/O and runs each read from a Python worker; at 4 KiB that
bookkeeping (~100 us of Python per I/O on a loaded 2-core box) is the whole cost, and a
``ThreadPoolExecutor`` of ``os.preadv`` beat it 2:1. Here a batch is a handful of NumPy arrays
(fd, file offset, length, destination address per I/O); the reads run in a Numba
``@njit(nogil=True)`` loop that calls libc ``pread`` directly (no GIL, no Python objects), on
``fast_threads`` threads that pull chunks of the batch, so that many reads are in flight at
once (the device's queue depth is what makes random reads fast). Validation, the state
machines, the statistics and the results are updated once per batch, vectorized.

Results and errors stay per I/O (arrays indexed like the request arrays): ``nbytes`` (a short
read at end of file has ``nbytes < length``; nothing past it is written (a file cut after the
batch sized it: O_DIRECT may have put zeros there, in the read's own range); a read that failed
part way: the bytes from its offset on that landed before the error), ``status`` (``OK``,
``SHORT``, ``ERROR``, ``CANCELLED``), ``errno``, ``direct`` (O_DIRECT used), ``latency_ns``;
:meth:`FastBatch.error` builds the :class:`StorageError` naming the file and the range.

Example::

    with Storage() as st, st.open("data.bin") as fh:
        offs = np.random.default_rng(0).integers(0, fh.size() // 4096, 10000) * 4096
        b = st.read_batch(fh, offs, 4096)            # fresh aligned host memory, packed
        b.status, b.nbytes, b.data(17)                # per I/O
        b.raise_for_error()

State machines per batch: the I/Os move FREE -> INIT -> READY (or INIT -> FREE when refused)
-> IN_PROGRESS -> CALLBACK_REQ -> CALLBACK_END -> FREE (cancelled: IN_PROGRESS ->
TERMINATE_REQ -> TERMINATED -> CALLBACK_REQ); their blocks FREE -> ALLOC -> INIT -> QUEUED
-> DMA_START -> DONE or DMA_ERROR (cancelled: QUEUED -> FREE) -> FREE, each step one vectorized
check of the same tables (:mod:`ggmk.storage.states`) over the whole batch.
"""
from __future__ import annotations

import errno as E
import itertools
import os
import queue
import threading
import time

import numpy as np
from ggmk.storage.dest import Destination
from ggmk.storage.errors import StorageError, kind_of_errno
from ggmk.storage.states import BLOCK_SIZE, BlockState as BS, IoState as S, StateVector

__all__ = ["FastBatch", "FastPool", "ChunkJob", "OK", "SHORT", "ERROR", "CANCELLED", "STATUS_NAMES"]

OK, SHORT, ERROR, CANCELLED = 0, 1, 2, 3
STATUS_NAMES = ("ok", "short", "error", "cancelled")
_ALIGN = 4096
_CANCEL_MARK = -1               # err[] of an I/O the cancel flag stopped before it started
_R_OK, _R_BAD, _R_DEST, _R_OPEN, _R_NODIRECT, _R_CLOSED = range(6)   # why a request was refused

_native = None


def native():
    """The compiled read loop (:mod:`ggmk.storage._native`), imported on first use so that
    ``import ggmk.storage`` does not pay for importing Numba."""
    global _native
    if _native is None:
        from ggmk.storage import _native as m
        _native = m
    return _native


def warm_up() -> None:
    """Compile (or load from Numba's cache) the read loop now rather than in the first batch."""
    native().warm_up()


class FastPool:
    """``n`` threads that run chunks of fast batches (started on first use). Each batch is
    cut into chunks; the threads pull chunk numbers from the batch (an ``itertools.count``,
    atomic under the GIL), so a slow read delays only its own chunk, and run the native loop
    on each with the GIL released. At most ``n`` reads are in flight at once. Once
    :meth:`close` has run, the threads are never started again (``start`` and ``dispatch``
    return False)."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"fast_threads must be >= 1, got {n}")
        self.n = n
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list = []
        self._lock = threading.Lock()
        self.closed = False

    def start(self) -> bool:
        """Start the threads (once); False, starting none, if the pool is closed."""
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> bool:
        if self.closed:
            return False
        if not self._threads:
            warm_up()
            self._threads = [threading.Thread(target=self._run, name=f"ggmk-storage-fast-{i}",
                                              daemon=True) for i in range(self.n)]
            for t in self._threads:
                t.start()
        return True

    def dispatch(self, job, depth: int | None = None) -> bool:
        """Run ``job`` (a :class:`FastBatch` or :class:`ChunkJob`) on up to ``depth`` (default
        all) of the threads at once: each thread that takes it works until its chunks run out.
        False, queueing nothing, if the pool is closed (the caller finishes the job)."""
        # under the lock: a job queued behind close()'s stop marks would never run, and a
        # start after close() would leave threads nobody stops
        with self._lock:
            if not self._start_locked():
                return False
            for _ in range(min(self.n if depth is None else max(1, depth), job._nchunks)):
                self._q.put(job)
        return True

    def owns(self, thread) -> bool:
        """``thread`` is one of the pool's (a callback running on it)."""
        with self._lock:
            return thread in self._threads

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the threads once the jobs already queued are done; for good (see start)."""
        with self._lock:
            self.closed = True
            threads, self._threads = self._threads, []
            for _ in threads:
                self._q.put(None)
        me = threading.current_thread()
        for t in threads:
            if t is not me:            # closed from one of its own callbacks: not joined
                t.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            job._work()


class FastBatch:
    """A batch of reads on the fast path (returned by :meth:`Storage.read_batch`).

    Arrays (one entry per I/O, request order): ``offsets``, ``lengths``, ``dest_offsets``,
    ``nbytes``, ``status`` (:data:`OK`, :data:`SHORT`, :data:`ERROR`, :data:`CANCELLED`),
    ``errno`` (0, or the OS error),
    ``direct`` (O_DIRECT used), ``latency_ns``. ``dest`` is the destination (a
    :class:`~ggmk.storage.HostDest` or :class:`~ggmk.storage.ArenaDest`).

    Stages: a batch over more files than may be open at once (``stager``, see
    ``Storage.read_batch``) runs in stages, each over the reads of a group of files: the
    thread that finishes a stage's last read closes its files, opens the next stage's and
    hands it to the pool. A file of a later stage that does not open fails its reads then
    (ERROR, naming ``open``), not at submission."""

    def __init__(self, storage, paths, file_ids, fd_direct, fd_buffered, offsets, lengths,
                 dest: Destination, dest_offsets, refused, open_errno, why_buffered,
                 why_reasons, releases, chunk: int, on_done=None, caps=None, open_msgs=None,
                 stager=None):
        n = len(offsets)
        self.storage = storage
        self.paths = paths
        self.file_ids = file_ids
        self.offsets = offsets
        self.lengths = lengths
        self.dest = dest
        self.dest_offsets = dest_offsets
        self.nbytes = np.zeros(n, np.int64)
        self.errno = np.zeros(n, np.int32)
        self.latency_ns = np.zeros(n, np.int64)
        self.status = np.full(n, OK, np.uint8)
        self.direct = fd_direct >= 0
        self._fell_back = np.zeros(n, np.uint8)
        self._fd_direct, self._fd_buffered = fd_direct, fd_buffered
        acc = refused == _R_OK
        # what the native loop reads: refused requests read 0 bytes at 0 (never touched)
        self._run_offs = np.where(acc, offsets, 0).astype(np.int64)
        self._run_lens = np.where(acc, lengths, 0).astype(np.int64)
        # O_DIRECT straight into the destination only up to the last whole block before the
        # end of the file (the native loop reads the block holding it through a scratch block)
        self._caps = self._run_lens.copy() if caps is None else np.minimum(
            np.ascontiguousarray(caps, np.int64), self._run_lens)
        self._addrs = np.where(acc, dest.address(0) + dest_offsets, 0).astype(np.uint64)
        self._refused = refused                    # int8 per I/O: _R_OK or why refused
        self._open_errno = open_errno
        self._open_msgs = open_msgs                # per file: the open error's words, or None
        self._releases = releases                  # the files' closes / handle releases
        self._why_buffered = why_buffered          # int8 per I/O: index into why_reasons
        self._why_reasons = why_reasons            # [None (direct), reason, ...]
        self._cancel = np.zeros(1, np.int32)
        self._chunk = max(1, chunk)
        # a read whose file opened only in a later stage and failed there: why (an _R_ code)
        self._late = np.zeros(n, np.int8)
        self._late_errno = np.zeros(n, np.int32)
        self._stager = stager
        if stager is None:
            self._idx, self._bounds = np.arange(n, dtype=np.int64), [0, n]
        else:
            self._idx, self._bounds = stager.order, stager.bounds
        self._pool = None
        self._stage = _Stage(0, self._bounds[0], self._bounds[1], self._chunk)
        self._nchunks = self._stage.nchunks        # of the stage running (FastPool.dispatch)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._t0 = time.perf_counter_ns()
        self.ios = StateVector("io", n)
        self.blocks_per_io = -(-self._run_lens // BLOCK_SIZE)
        self.blocks = StateVector("block", int(self.blocks_per_io.sum()))
        self.callback_error: BaseException | None = None
        self._on_done = on_done
        self._cancel_why = "the batch was cancelled"    # a cancelled read's error says why

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        return len(self.offsets)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> "FastBatch":
        """Wait until every read finished. Called from a storage thread (a callback), the
        caller reads the batch's chunks not started yet itself: the pool's threads may all be
        running callbacks that wait, this one included. A TimeoutError here leaves the batch
        running (it is the caller's: ``cancel`` stops the reads not started); read_batch with
        ``wait=True`` ends it before it raises."""
        if not self._done.is_set() and self.storage._is_storage_thread():
            self._work()
        if not self._done.wait(timeout):
            raise TimeoutError(f"storage fast batch of {len(self)} reads not finished after "
                               f"{timeout} s")
        return self

    def cancel(self) -> bool:
        """Stop the reads that have not started (they complete with status CANCELLED; reads
        already running finish). False if the batch had already finished."""
        if self._done.is_set():
            return False
        self._cancel[0] = 1
        return True

    @property
    def ok(self) -> bool:
        """Every I/O completed (``ok`` or ``short``)."""
        return bool((self.status <= SHORT).all())

    def count(self, status: int) -> int:
        return int((self.status == status).sum())

    def fallbacks(self) -> dict:
        """Why I/Os that ran did not use O_DIRECT: ``{reason: count}`` (counted in stats)."""
        ran = (self._refused == _R_OK) & (self._late == 0) & (self.status != CANCELLED)
        out = {"read_einval": int(self._fell_back[ran].sum())}
        for code, reason in enumerate(self._why_reasons):
            if reason is not None:
                c = int((ran & (self._why_buffered == code)).sum())
                if c:
                    out[reason] = out.get(reason, 0) + c
        return out

    def status_name(self, i: int) -> str:
        return STATUS_NAMES[int(self.status[i])]

    def error(self, i: int) -> StorageError | None:
        """The error of I/O ``i`` (naming its file and range), or None."""
        st = int(self.status[i])
        if st <= SHORT:
            return None
        path = self.paths[int(self.file_ids[i])] if len(self.paths) else None
        off, ln = int(self.offsets[i]), int(self.lengths[i])
        if st == CANCELLED:
            return StorageError("cancelled", "read", path, off, ln,
                                f"{self._cancel_why} before this read started")
        why = int(self._refused[i]) or int(self._late[i])
        if why == _R_BAD:
            doff = int(self.dest_offsets[i])
            bad = [f"{name} {v} must be >= 0" for name, v in
                   (("offset", off), ("length", ln), ("dest_offset", doff)) if v < 0]
            return StorageError("bad_request", "read", path, off, ln, "; ".join(bad) or (
                f"offset {off} + length {ln} = {off + ln} is past the largest file offset, "
                f"{(1 << 63) - 1} (2**63 - 1)"))
        if why == _R_DEST:
            room = max(self.dest.nbytes - int(self.dest_offsets[i]), 0)
            return StorageError("dest_too_small", "read", path, off, ln,
                                f"destination {self.dest.describe()} from offset "
                                f"{int(self.dest_offsets[i])} has room for {room} bytes, "
                                f"{ln} requested")
        if why == _R_NODIRECT:
            return StorageError("bad_request", "read", path, off, ln,
                                "O_DIRECT required (o_direct=True) but not possible "
                                f"({self._why_reasons[int(self._why_buffered[i])]})")
        e = int(self.errno[i])
        if why == _R_CLOSED:        # the words read() and submit() use for a closed handle
            return StorageError("bad_request", "read", path, off, ln,
                                f"[Errno {e}] the FileHandle is closed", errno=e)
        words = os.strerror(e)
        if why == _R_OPEN:
            if self._open_msgs is not None:
                words = self._open_msgs[int(self.file_ids[i])] or words
            return StorageError(kind_of_errno(e), "read", path, off, ln,
                                f"open: [Errno {e}] {words}", errno=e)
        got = int(self.nbytes[i])          # what landed before the error (the loop is in order)
        there = (f"{got} of its {ln} bytes landed in the destination: [{off}, {off + got})"
                 if got else f"none of its {ln} bytes landed in the destination")
        return StorageError(kind_of_errno(e), "read", path, off, ln,
                            f"pread at file offset {off + got}: [Errno {e}] {words}; {there}",
                            errno=e, written=got)

    def errors(self) -> list[tuple[int, StorageError]]:
        return [(int(i), self.error(int(i))) for i in np.flatnonzero(self.status > SHORT)]

    def raise_for_error(self) -> "FastBatch":
        bad = np.flatnonzero(self.status > SHORT)
        if len(bad):
            raise self.error(int(bad[0]))
        return self

    def data(self, i: int) -> np.ndarray:
        """Host view of the ``nbytes[i]`` bytes read by I/O ``i``."""
        return self.dest.view(int(self.dest_offsets[i]), int(self.nbytes[i]))

    def result(self, i: int):
        """I/O ``i`` as an :class:`~ggmk.storage.IoResult` (a Python object: convenience,
        not for hot loops)."""
        from ggmk.storage.engine import IoResult
        st = int(self.status[i])
        r = IoResult("read", self.paths[int(self.file_ids[i])], int(self.offsets[i]),
                     int(self.lengths[i]), index=i, status=STATUS_NAMES[st],
                     nbytes=int(self.nbytes[i]),
                     io_path=None if self._refused[i] else
                     ("direct" if self.direct[i] else "buffered"),
                     o_direct=bool(self.direct[i]), dest=None if st > SHORT else self.dest,
                     error=self.error(i), latency_ns=int(self.latency_ns[i]))
        r._dest_off = int(self.dest_offsets[i])
        return r

    # ------------------------------------------------------------------ internal
    def _expire(self, why: str) -> None:
        """``read_batch(wait=True)`` timed out: the reads not started end CANCELLED (their
        error says ``why``), this thread takes the chunks no pool thread has taken (their
        reads end at once, unread: the pool may be busy for long), and it waits for the
        reads already running (one ``pread`` each, at most ``fast_threads``). When it returns
        the batch is finished: every read has its outcome and none writes into the
        destination any more (which the caller may reuse)."""
        if not self._done.is_set():
            self._cancel_why = why
            self.cancel()
        self._work()
        while not self._done.wait(0.05):     # a stage opened meanwhile: take its chunks too
            self._work()

    def _start(self, pool: FastPool) -> None:
        acc = self._refused == _R_OK
        self.ios.move(S.INIT)
        self.ios.move(S.READY, acc)
        self.ios.move(S.FREE, ~acc)
        self.blocks.move(BS.ALLOC)
        bacc = np.repeat(acc, self.blocks_per_io)
        self.blocks.move(BS.INIT, bacc)
        self.blocks.move(BS.FREE, ~bacc)
        self.ios.move(S.IN_PROGRESS, acc)
        self.blocks.move(BS.QUEUED, bacc)
        self._acc, self._bacc = acc, bacc
        self.storage.stats_.start_many(int(acc.sum()))
        self._pool = pool
        if self._nchunks == 0 or not acc.any():
            # nothing to read (e.g. only closed FileHandles): done here, no pool thread started
            self._finish()
        elif not pool.dispatch(self):
            # the storage closed after read_batch's check: like a submit that close() beat,
            # every read ends cancelled, unread, and no thread is started for it
            self.errno[acc] = _CANCEL_MARK
            self._finish()

    def _work(self) -> None:
        while True:
            stage = self._stage
            c = next(stage.next)
            if c >= stage.nchunks:
                return
            a = stage.start + c * self._chunk
            b = min(stage.stop, a + self._chunk)
            try:
                native().read_range(self._fd_direct, self._fd_buffered, self._run_offs,
                                    self._run_lens, self._caps, self._addrs, self.nbytes,
                                    self.errno, self.latency_ns, self._fell_back, self._idx,
                                    a, b, self._cancel)
            except BaseException as e:  # noqa: BLE001 - never lose an I/O to a bug here
                ii = self._idx[a:b]
                self.errno[ii] = np.where(self.errno[ii] == 0, E.EIO, self.errno[ii])
                self.callback_error = e
            with self._lock:
                stage.done += 1
                last = stage.done == stage.nchunks
            if last and not self._next_stage(stage.k + 1):
                self._finish()
                return

    def _next_stage(self, k: int) -> bool:
        """(by the thread that finished stage k - 1) Open stage ``k``'s files and run it:
        True, or False if there is none (or the batch was cancelled: the reads of the stages
        not opened end CANCELLED, unread)."""
        if k + 1 >= len(self._bounds):
            return False
        rest = self._idx[self._bounds[k]:]
        if self._cancel[0]:
            self.errno[rest] = _CANCEL_MARK
            return False
        try:
            self._stager.open_stage(k, self)
        except BaseException as e:  # noqa: BLE001 - never lose the batch to a bug here
            self.errno[rest] = np.where(self.errno[rest] == 0, E.EIO, self.errno[rest])
            self.callback_error = e
            return False
        self._stage = _Stage(k, self._bounds[k], self._bounds[k + 1], self._chunk)
        self._nchunks = self._stage.nchunks
        self._pool.dispatch(self)          # closed: this thread reads the stage on its own
        return True

    def _plan(self, sel, code, fd_direct, fd_buffered, why, caps) -> None:
        """A later stage's files are open: its reads ``sel`` (indexes) get their descriptors,
        O_DIRECT choice and end-of-file caps; ``code`` (an _R_ code per read) fails a read
        whose file did not open (or cannot take O_DIRECT when it is required)."""
        acc = self._refused[sel] == _R_OK
        code = np.where(acc, code, 0).astype(np.int8)
        ok = acc & (code == 0)
        self._late[sel] = code
        self._late_errno[sel] = np.where(code == _R_OPEN,
                                         self._open_errno_of(sel), 0).astype(np.int32)
        self._fd_direct[sel] = np.where(ok, fd_direct, -1)
        self._fd_buffered[sel] = np.where(ok, fd_buffered, -1)
        self._why_buffered[sel] = why
        self.direct[sel] = ok & (fd_direct >= 0)
        self._caps[sel] = np.where(ok, np.minimum(caps, self._run_lens[sel]), 0)
        self._run_lens[sel] = np.where(ok, self._run_lens[sel], 0)

    def _open_errno_of(self, sel):
        return self._stager.open_err[self.file_ids[sel]]

    def _finish(self) -> None:
        acc = self._acc
        cancelled = acc & (self.errno == _CANCEL_MARK)
        late = acc & ~cancelled & (self._late != 0)
        self.errno[late] = self._late_errno[late]
        failed = acc & ~cancelled & ((self.errno != 0) | late)
        short = acc & ~cancelled & ~failed & (self.nbytes < self._run_lens)
        st = self.status
        st[short] = SHORT
        st[failed] = ERROR
        st[cancelled] = CANCELLED
        st[~acc] = ERROR
        self.nbytes[~acc | cancelled] = 0         # a failed read keeps what landed before
        self.errno[cancelled] = 0
        self.errno[~acc] = np.where(np.isin(self._refused[~acc], (_R_OPEN, _R_CLOSED)),
                                    self._open_errno[~acc], 0)
        self.direct &= self._fell_back == 0
        self.direct[~acc] = False
        # state machines, once for the batch
        ran = acc & ~cancelled
        bpi = self.blocks_per_io
        self.ios.move(S.TERMINATE_REQ, cancelled)
        self.ios.move(S.TERMINATED, cancelled)
        self.ios.move(S.CALLBACK_REQ, acc)
        b_ran = np.repeat(ran, bpi)
        self.blocks.move(BS.DMA_START, b_ran)
        # a block is DONE when its bytes arrived (a short read's tail blocks, and a failed
        # read's from the one the error cut: DMA_ERROR)
        first = np.repeat(np.cumsum(bpi) - bpi, bpi)
        rel = np.arange(len(first), dtype=np.int64) - first
        nb = np.where(failed, self.nbytes // BLOCK_SIZE, -(-self.nbytes // BLOCK_SIZE))
        b_done = b_ran & (rel < np.repeat(nb, bpi))
        self.blocks.move(BS.DONE, b_done)
        self.blocks.move(BS.DMA_ERROR, b_ran & ~b_done)
        self.blocks.move(BS.FREE, np.repeat(acc, bpi))
        self.ios.move(S.CALLBACK_END, acc)
        self.ios.move(S.FREE, acc)
        for rel in self._releases:                 # after the last read of the batch
            try:
                rel()
            except OSError:
                pass
        self.storage.stats_.finish_fast(self)
        if self._on_done is not None:
            try:
                self._on_done(self)
            except BaseException as e:  # noqa: BLE001 - a callback bug must not lose the batch
                self.callback_error = e
        self._done.set()
        self.storage._fast_done(self)


class _Stage:
    """The reads of one stage of a batch: positions [start, stop) of its order, in chunks
    pulled with ``next`` (an ``itertools.count``), ``done`` counting the chunks finished."""

    __slots__ = ("k", "start", "stop", "nchunks", "next", "done")

    def __init__(self, k: int, start: int, stop: int, chunk: int):
        self.k, self.start, self.stop = k, int(start), int(stop)
        self.nchunks = -(-(self.stop - self.start) // chunk)
        self.next = itertools.count()
        self.done = 0


class ChunkJob:
    """One large read cut into aligned chunks run by the fast pool (the sequential path).

    Why: a single ``pread`` keeps one request in flight, and a Python worker per chunk adds a
    GIL hand-off per chunk; here the chunks (``offs``/``lens``/``addrs`` arrays, O_DIRECT
    aligned) are pulled one at a time by up to ``depth`` pool threads running the native loop,
    so ``depth`` large reads are always queued at the device, which is what it takes to reach
    the disk's (or the host cache's) speed; see ``Storage(seq_chunk=, seq_depth=)``.

    Per chunk: ``got`` (bytes), ``err`` (0, an errno, or ``-1``: not run because the job was
    cancelled or an earlier chunk failed), ``fell_back`` (O_DIRECT refused, read buffered).
    ``cancel`` (an int32 array of one) stops chunks that have not started; a failing chunk
    sets it too (``failed`` then says so), as the I/O has failed anyway."""

    def __init__(self, fd_direct: int, fd_buffered: int, offs, lens, addrs, cancel):
        n = len(offs)
        self.fd_direct = np.full(n, fd_direct, np.int32)
        self.fd_buffered = np.full(n, fd_buffered, np.int32)
        self.offs = np.ascontiguousarray(offs, np.int64)
        self.lens = np.ascontiguousarray(lens, np.int64)
        self.addrs = np.ascontiguousarray(addrs, np.uint64)
        self.got = np.zeros(n, np.int64)
        self.err = np.zeros(n, np.int32)
        self.lat = np.zeros(n, np.int64)
        self.fell_back = np.zeros(n, np.uint8)
        self.cancel = cancel
        self.failed = False
        self.callback_error: BaseException | None = None
        self._nchunks = n
        self._idx = np.arange(n, dtype=np.int64)
        self._next = itertools.count()
        self._left = n
        self._lock = threading.Lock()
        self._done = threading.Event()
        if n == 0:
            self._done.set()

    def wait(self, timeout: float | None = None) -> "ChunkJob":
        if not self._done.wait(timeout):
            raise TimeoutError(f"storage chunk job of {self._nchunks} reads not finished after "
                               f"{timeout} s")
        return self

    def _work(self) -> None:
        n = self._nchunks
        while True:
            c = next(self._next)
            if c >= n:
                return
            try:
                native().read_range(self.fd_direct, self.fd_buffered, self.offs, self.lens,
                                    self.lens, self.addrs, self.got, self.err, self.lat,
                                    self.fell_back, self._idx, c, c + 1, self.cancel)
            except BaseException as e:  # noqa: BLE001 - never lose a chunk to a bug here
                if self.err[c] <= 0:
                    self.err[c] = E.EIO
                self.callback_error = e
            if self.err[c] > 0:
                self.failed = True
                self.cancel[0] = 1          # the I/O failed: do not start its other chunks
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                self._done.set()
