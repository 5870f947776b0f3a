"""The ``nvme`` module (SPEC §10, §12): asynchronous file I/O for the CPU kernel.

Channels (declared in ``nvme.toml`` next to this file, which also brings the types):

=================  =========  ================  ==============================================
channel            direction  type              payload
=================  =========  ================  ==============================================
``disk.read``      consume    DISK_READ         tag u64, offset u64, file u32, length u32
``disk.write``     consume    DISK_WRITE        tag u64, offset u64, file u32, flags u32, data
``disk.read.resp`` produce    DISK_READ_RESP    tag, offset, file, status, errno, requested,
                                                length, part, parts, data (the bytes read)
``disk.write.resp`` produce   DISK_WRITE_RESP   tag, offset, file, status, errno, length
=================  =========  ================  ==============================================

``file`` is an id from :meth:`NvmeModule.register` (a path the host registers). Responses carry
``meta0 = tag`` and ``meta1 = length`` too. ``status`` is 0 or one of the codes below (a
short read at end of file is status 0 with ``length < requested``); ``errno`` is the OS error;
``requested`` is the length asked for (of the part), error responses included. A write that
fails part way (``E_NOSPACE`` after some bytes, say) answers with ``length`` = the bytes from
``offset`` on that reached the file.

How requests are served without blocking kernel workers: the batch handler of ``disk.read``
allocates each response payload in the arena (header + data) and hands every read of the batch
to the storage batch fast path as one :meth:`~ggmk.storage.Storage.read_batch` (arrays of file,
offset, length and payload address; the reads run in native code on the storage's fast
threads, the data lands directly in the payloads, each read keeps its own status, errno and
length), and returns ``WAIT`` for them: they come back on the next tick (``WAIT`` is
backpressure, not a yield, so it never hits ``max_yields``), and while the I/O is in flight
the system is not idle, so ``system.run()`` waits for the responses and ``halt`` drains them.
When a request's I/O has completed its responses are published on ``disk.read.resp``; a full
channel keeps them for the next tick. A read longer than ``PART_MAX`` bytes (the largest
arena payload minus the header) comes back in several parts (``part``/``parts``, each with
its own ``offset``). An arena that cannot hold the data gives a response with status
``ALLOC_FAIL`` (if not even the header fits, the request goes to ``sys.error`` with
ALLOC_FAIL; so does a ``disk.write`` whose response payload cannot be allocated, the write
itself done). Every request is answered or accounted for: a storage submission that raises
(the storage given with ``storage=`` was closed) answers each of its requests with
``E_CANCELLED`` (``E_IO`` for another failure), and one file that fails fails only its own
requests.

Example::

    from ggmk.modules.nvme import NvmeModule
    nvme = NvmeModule()
    fid = nvme.register("/data/blob.bin")
    app = ggmk.Module("app")
    reqs = app.produces("disk.read", "DISK_READ")

    @app.handler("GOT", batch=True, consumes="disk.read.resp", message="DISK_READ_RESP")
    def got(ctx, batch): ...            # ctx.system.payload_view / arena.view(payload_ptr)

    with ggmk.boot([nvme, app], workers=2) as system:
        system.channel("disk.read").publish(payload={"tag": 1, "offset": 0, "file": fid,
                                                     "length": 4096})
        system.run()
"""
from __future__ import annotations

import errno as _errno
import os
import random
import threading
from pathlib import Path

import numpy as np

from ggmk import task as T
from ggmk.core.alloc import MAX_ALLOC
from ggmk.core.module import Module
from ggmk.errors import AllocError
from ggmk.storage import ArenaDest, Storage, WriteRequest
from ggmk.storage.files import FileHandle, _checked_path, _not_a_file
from ggmk.typereg import load_module_manifest

__all__ = ["NvmeModule", "MANIFEST", "PART_MAX", "E_IO", "E_NOFILE", "E_PERM", "E_NOSPACE",
           "E_TOOBIG", "E_CANCELLED", "E_BADREQ", "E_RANGE", "STATUS_OF_KIND"]

MANIFEST = Path(__file__).with_name("nvme.toml")

E_IO = T.NVME_IO                 # the response statuses, defined in ggmk.task
E_NOFILE = T.NVME_NOFILE
E_PERM = T.NVME_PERM
E_NOSPACE = T.NVME_NOSPACE
E_TOOBIG = T.NVME_TOOBIG
E_CANCELLED = T.NVME_CANCELLED
E_BADREQ = T.NVME_BADREQ
E_RANGE = T.NVME_RANGE           # destination too small

STATUS_OF_KIND = {"not_found": E_NOFILE, "permission": E_PERM, "no_space": E_NOSPACE,
                  "file_too_large": E_TOOBIG, "cancelled": E_CANCELLED,
                  "bad_request": E_BADREQ, "dest_too_small": E_RANGE,
                  "alloc_fail": T.ALLOC_FAIL, "io": E_IO}

_RESP_DTYPE = np.dtype([("tag", "<u8"), ("offset", "<u8"), ("file", "<u4"), ("status", "<i4"),
                        ("errno", "<i4"), ("requested", "<u4"), ("length", "<u4"),
                        ("part", "<u2"), ("parts", "<u2"), ("reserved", "<u4"),
                        ("dlen", "<u4")])            # dlen: the bytes field's length prefix
DATA_OFF = _RESP_DTYPE.itemsize                       # 48: data 16-byte aligned in the payload
PART_MAX = (MAX_ALLOC - DATA_OFF) // 4096 * 4096      # 126976 bytes of data per response
_REQ_DTYPE = np.dtype([("tag", "<u8"), ("offset", "<u8"), ("file", "<u4"), ("length", "<u4")])
_WREQ_DTYPE = np.dtype([("tag", "<u8"), ("offset", "<u8"), ("file", "<u4"), ("flags", "<u4"),
                        ("dlen", "<u4")])
_WDATA_OFF = _WREQ_DTYPE.itemsize                     # 28
WRITE_SYNC = 1                                        # DISK_WRITE flags: fdatasync first


class _Ticket:
    """One request in flight: its response payloads and storage results."""

    __slots__ = ("op", "tag", "file", "offset", "length", "parts", "results", "left",
                 "emitted", "retained", "filled")

    def __init__(self, op, tag, file, offset, length):
        self.op, self.tag, self.file, self.offset, self.length = op, tag, file, offset, length
        self.parts: list = []          # read: [(ptr, file offset, part length)]
        self.results: list = []
        self.left = 0
        self.emitted = 0
        self.retained = 0              # write: the request payload we hold a reference to
        self.filled = False            # read: response headers written


class NvmeModule(Module):
    """The nvme module; ``register(path)`` gives the file ids requests name.

    ``workers``/``max_batch``/... are :class:`~ggmk.storage.Storage` options for the pool the
    module creates at boot (``storage=`` passes one ready-made instead)."""

    def __init__(self, name: str = "nvme", *, storage: Storage | None = None,
                 **storage_options):
        man = load_module_manifest(MANIFEST)
        super().__init__(name, man.version)
        self.manifest = man
        fns = {"on_read": self._on_read, "on_write": self._on_write}
        for h in man.handlers:
            self.handler(h.type, batch=h.batch, name=h.name)(fns[h.name])
        for c in man.channels:
            if c.direction == "produce":
                d = self.produces(c.name, c.type, mode=c.mode, guarantee=c.guarantee)
                if c.name == "disk.read.resp":
                    self._read_resp = d
                else:
                    self._write_resp = d
            else:
                self.consumes(c.name, c.type, mode=c.mode, guarantee=c.guarantee)
        self.init(self._boot)
        self.fini(self._halt)
        self._given_storage = storage
        self._options = {"workers": 4, **storage_options}
        self.storage: Storage | None = None
        self.system = None
        self._files: dict[int, object] = {}
        self._next_fid = 1
        self._lock = threading.Lock()
        self._tickets: dict[int, _Ticket] = {}
        self._next_ticket = 1
        self._nonce = random.SystemRandom().randrange(1, 1 << 31) << 32
        self.counters = {"reads": 0, "writes": 0, "responses": 0, "errors": 0,
                         "waits": 0, "resp_full": 0, "read_batches": 0, "resp_alloc_fail": 0}

    # ------------------------------------------------------------------ host API
    def register(self, path, *, write: bool = False, create: bool = False,
                 lazy: bool = False) -> int:
        """A file id for requests. The file is opened now (OSError if it cannot be), or with
        ``lazy=True`` by each batch that uses it (errors then come back as response statuses),
        with the same ``write`` (writes to a file registered without it are answered
        ``E_BADREQ``, errno EBADF, and never reach the file) and ``create`` (the first write
        creates a missing file). Refused at once: ``path`` not a path (TypeError), one with a
        NUL byte, or, lazy, an existing FIFO, socket or character device (ValueError);
        ``write``/``create``/``lazy`` not bools (TypeError)."""
        for name, v in (("write", write), ("create", create), ("lazy", lazy)):
            if not isinstance(v, bool):
                raise TypeError(f"register: {name} must be True or False, got "
                                f"{type(v).__name__} {v!r}")
        p = _checked_path(path, "register: path")     # (the storage's own check)
        if lazy:
            try:
                what = _not_a_file(os.stat(p).st_mode)
            except OSError:
                what = None                  # missing now: each batch opens it (or says why)
            if what is not None:
                raise ValueError(f"register: {p!r} is {what}, not a regular file or a block "
                                 f"device")
            fh = _Lazy(p, write, create)
        else:
            fh = FileHandle(p, write=write, create=create,
                            o_direct=self._options.get("o_direct", "auto"))
        with self._lock:
            fid = self._next_fid
            self._next_fid += 1
            self._files[fid] = fh
        return fid

    def unregister(self, fid: int) -> None:
        with self._lock:
            fh = self._files.pop(fid, None)
        if isinstance(fh, FileHandle):
            fh.close()

    def stats(self) -> dict:
        out = dict(self.counters, in_flight=len(self._tickets))
        out["storage"] = self.storage.stats() if self.storage is not None else None
        return out

    # ------------------------------------------------------------------ lifecycle
    def _boot(self, system) -> None:
        # reset_module (``ggmk mod reset``) runs init again in the same system: keep the pool
        # (a second one left the first one's threads and buffers running for good)
        again = system is self.system and self.storage is not None and not self.storage._closed
        self.system = system
        if not again:
            self.storage = self._given_storage or Storage(arena=system.arena, **self._options)

    def _halt(self, system) -> None:
        st = self.storage
        if st is not None and st is not self._given_storage:
            st.close(cancel=True)
        elif st is not None:
            st.wait_idle(30)
        arena = system.arena
        with self._lock:
            tickets = list(self._tickets.values())
            self._tickets.clear()
        for t in tickets:                 # never emitted: ours to give back
            if t.op == "read":
                for k, (ptr, _, _) in enumerate(t.parts):
                    if k >= t.emitted and ptr:
                        arena.release(ptr)
        with self._lock:
            files = list(self._files.values())
        for fh in files:
            if isinstance(fh, FileHandle):
                fh.close()
        self._files.clear()

    # ------------------------------------------------------------------ helpers
    def _file(self, fid: int):
        with self._lock:
            return self._files.get(fid)

    def _new_ticket(self, t: _Ticket) -> int:
        with self._lock:
            tid = self._next_ticket
            self._next_ticket += 1
            self._tickets[tid] = t
        return self._nonce | tid

    def _ticket(self, word: int) -> tuple[int, _Ticket | None]:
        if word & ~0xFFFFFFFF != self._nonce:
            return 0, None
        tid = word & 0xFFFFFFFF
        with self._lock:
            return tid, self._tickets.get(tid)

    def _done_cb(self, ticket: _Ticket, k: int):
        def cb(result):
            ticket.results[k] = result
            if ticket.retained and ticket.op == "write":
                self.system.arena.release(ticket.retained)
                ticket.retained = 0
            with self._lock:
                ticket.left -= 1
        return cb

    # ------------------------------------------------------------------ serving
    def _serve(self, ctx, batch, poll, start) -> np.ndarray:
        """The shared shape of both batch handlers: a record that carries one of our tickets
        (``meta1``) is a request already in flight: ``poll`` it; a new one is parsed and
        started by ``start(arena, ptr, plen, new)``, which returns its ticket (the record then
        WAITs for it, ``meta1`` = the ticket) or a code to finish it with at once; the storage
        requests of the whole batch go in one submission."""
        recs = batch.records
        codes = np.zeros(len(recs), dtype=np.int32)
        arena = ctx.system.arena
        new: list = []
        for i in range(len(recs)):
            word = int(recs["meta1"][i])
            tid, t = self._ticket(word) if word else (0, None)
            if t is not None:
                codes[i] = poll(ctx, tid, t)
                continue
            t = start(arena, int(recs["payload_ptr"][i]), int(recs["payload_len"][i]), new)
            if isinstance(t, _Ticket):
                recs["meta1"][i] = self._new_ticket(t)
                codes[i] = T.WAIT
                self.counters["reads" if t.op == "read" else "writes"] += 1
            else:
                codes[i] = t
        if new:
            reads = [q for q in new if isinstance(q, _Part)]
            if reads:
                self._submit_reads(arena, reads)
            if len(reads) < len(new):
                self._submit_writes([q for q in new if not isinstance(q, _Part)])
        self.counters["waits"] += int((codes == T.WAIT).sum())
        return codes

    def _failed(self) -> _Synthetic:
        """The result of a request whose submission to the storage raised: E_CANCELLED if
        the storage is closed (as a batch close() overtakes), else E_IO."""
        st = self.storage
        return _Synthetic(E_CANCELLED if st is None or st._closed else E_IO, 0)

    def _submit_writes(self, writes: list) -> None:
        try:
            self.storage.submit(writes)
        except Exception:  # noqa: BLE001 - every request is answered, none left in flight
            res = self._failed()
            for q in writes:
                t = q.tag
                t.results[0] = res
                if t.retained:
                    self.system.arena.release(t.retained)
                    t.retained = 0
                with self._lock:
                    t.left = 0

    def _submit_reads(self, arena, parts: list) -> None:
        """Every read part of a batch as one fast-path batch into the arena (one array per
        field; the files deduplicated); each part's ticket learns its result at the end. If
        the submission raises (the storage closed), every part is answered with an error."""
        files, fidx = [], {}
        ids = np.empty(len(parts), np.int64)
        for i, q in enumerate(parts):
            k = fidx.get(id(q.file))
            if k is None:
                k = fidx[id(q.file)] = len(files)
                files.append(q.file)
            ids[i] = k
        offs = np.fromiter((q.offset for q in parts), np.int64, len(parts))
        lens = np.fromiter((q.length for q in parts), np.int64, len(parts))
        base = arena.base - DATA_OFF
        doffs = np.fromiter((q.ptr - base for q in parts), np.int64, len(parts))

        def done(b):
            for i, q in enumerate(parts):
                q.ticket.results[q.k] = (b, i)
            with self._lock:
                for q in parts:
                    q.ticket.left -= 1
        self.counters["read_batches"] += 1
        try:
            self.storage.read_batch(files, offs, lens, arena.buffer, doffs, file_ids=ids,
                                    wait=False, on_done=done)
        except Exception:  # noqa: BLE001 - every request is answered, none left in flight
            res = self._failed()
            for q in parts:
                q.ticket.results[q.k] = res
            with self._lock:
                for q in parts:
                    q.ticket.left -= 1

    # ------------------------------------------------------------------ disk.read
    def _on_read(self, ctx, batch):
        return self._serve(ctx, batch, self._poll_read, self._parse_read)

    def _parse_read(self, arena, ptr: int, plen: int, new: list):
        """A new disk.read request: its ticket, or the code to finish it with."""
        if not ptr or plen != _REQ_DTYPE.itemsize:
            return T.FAIL                              # malformed: to sys.error
        q = np.frombuffer(arena.view(ptr, plen), dtype=_REQ_DTYPE)[0]
        t = _Ticket("read", int(q["tag"]), int(q["file"]), int(q["offset"]), int(q["length"]))
        return self._start_read(arena, t, new) or t

    def _start_read(self, arena, t: _Ticket, new: list) -> int:
        """Allocate the response payloads and queue the storage requests (0), or a code."""
        f = self._file(t.file)
        nparts = max(1, -(-t.length // PART_MAX))
        if f is None:
            return self._error_part(arena, t, E_NOFILE, 0)
        if t.offset + t.length >= 1 << 63:            # past any file: pread would refuse it
            return self._error_part(arena, t, E_BADREQ, 22)
        for k in range(nparts):
            off = t.offset + k * PART_MAX
            ln = min(PART_MAX, t.length - k * PART_MAX)
            ptr = arena.alloc(DATA_OFF + ln)
            if not ptr:                                   # arena full: give back, answer
                for p, _, _ in t.parts:
                    arena.release(p)
                t.parts.clear()
                return self._error_part(arena, t, T.ALLOC_FAIL, 0)
            t.parts.append((ptr, off, ln))
        t.results = [None] * nparts
        t.left = nparts
        src = f.path if isinstance(f, _Lazy) else f
        for k, (ptr, off, ln) in enumerate(t.parts):
            new.append(_Part(src, off, ln, ptr, t, k))
        return 0

    def _error_part(self, arena, t: _Ticket, status: int, err: int) -> int:
        """A one-part error response waiting to be published (0), or ALLOC_FAIL."""
        ptr = arena.alloc(DATA_OFF)
        if not ptr:
            return T.ALLOC_FAIL
        t.parts = [(ptr, t.offset, t.length)]          # requested: the length asked for
        res = _Synthetic(status, err)
        t.results = [res]
        t.left = 0
        return 0

    def _poll_read(self, ctx, tid: int, t: _Ticket) -> int:
        if t.left:
            return T.WAIT
        arena = ctx.system.arena
        if not t.filled:
            self._fill_read(arena, t)
        parts = t.parts[t.emitted:]
        if parts:
            ptrs = np.array([p for p, _, _ in parts], dtype=np.uint64)
            lens = np.array([DATA_OFF + int(np.frombuffer(arena.view(p, DATA_OFF),
                                                          _RESP_DTYPE)[0]["length"])
                             for p, _, _ in parts], dtype=np.uint32)
            m1 = lens.astype(np.uint64) - DATA_OFF
            acc = ctx.emit_batch(self._read_resp, meta0=t.tag, meta1=m1, payload_ptr=ptrs,
                                 payload_len=lens)
            t.emitted += acc
            self.counters["responses"] += acc
            if t.emitted < len(t.parts):
                self.counters["resp_full"] += 1
                return T.WAIT
        with self._lock:
            self._tickets.pop(tid, None)
        return T.OK

    def _fill_read(self, arena, t: _Ticket) -> None:
        """Write every part's header; drop parts past the end of the file (keep one)."""
        keep = []
        for k, ((ptr, off, ln), r) in enumerate(zip(t.parts, t.results)):
            status, err, nbytes = _status_of(r)
            if k and status == 0 and nbytes == 0:
                arena.release(ptr)                 # entirely past EOF: not published
                continue
            keep.append((ptr, off, ln, status, err, nbytes))
            if status:
                self.counters["errors"] += 1
        t.parts = [(p, o, ln) for p, o, ln, *_ in keep]
        for k, (ptr, off, ln, status, err, nbytes) in enumerate(keep):
            h = np.frombuffer(arena.view(ptr, DATA_OFF), _RESP_DTYPE)
            h[0] = (t.tag, off, t.file, status, err, ln, nbytes, k, len(keep), 0, nbytes)
        t.filled = True

    # ------------------------------------------------------------------ disk.write
    def _on_write(self, ctx, batch):
        return self._serve(ctx, batch, self._poll_write, self._parse_write)

    def _parse_write(self, arena, ptr: int, plen: int, new: list):
        """A new disk.write request: its ticket, or the code to finish it with."""
        if not ptr or plen < _WDATA_OFF:
            return T.FAIL
        q = np.frombuffer(arena.view(ptr, _WDATA_OFF), dtype=_WREQ_DTYPE)[0]
        dlen = int(q["dlen"])
        if _WDATA_OFF + dlen != plen:
            return T.FAIL
        t = _Ticket("write", int(q["tag"]), int(q["file"]), int(q["offset"]), dlen)
        f = self._file(t.file)
        if f is None:
            t.results, t.left = [_Synthetic(E_NOFILE, 0)], 0
            return t
        if not f.writable:                         # registered read-only: never written
            t.results, t.left = [_Synthetic(E_BADREQ, _errno.EBADF)], 0
            return t
        arena.retain(ptr)                          # the request payload outlives a halt
        t.retained = ptr
        t.results, t.left = [None], 1
        src = ArenaDest(arena, ptr, dlen, offset=_WDATA_OFF)
        lazy = isinstance(f, _Lazy)
        new.append(WriteRequest(f.path if lazy else f, t.offset, src,
                                sync=bool(int(q["flags"]) & WRITE_SYNC),
                                create=lazy and f.create, tag=t,
                                on_complete=self._done_cb(t, 0)))
        return t

    def _poll_write(self, ctx, tid: int, t: _Ticket) -> int:
        if t.left:
            return T.WAIT
        status, err, nbytes = _status_of(t.results[0])
        if status:
            self.counters["errors"] += 1
        ch = ctx.system.channel(self._write_resp.name)
        if getattr(ch, "subs", True):             # nobody listening: nothing to publish
            try:
                code = ctx.emit(self._write_resp, meta0=t.tag, meta1=nbytes, payload={
                    "tag": t.tag, "offset": t.offset, "file": t.file, "status": status,
                    "errno": err, "length": nbytes})
            except AllocError:
                # no room for the response payload: the request goes to sys.error with
                # ALLOC_FAIL, as a read whose response header does not fit
                self.counters["resp_alloc_fail"] += 1
                with self._lock:
                    self._tickets.pop(tid, None)
                return T.ALLOC_FAIL
            if code == T.CHAN_FULL:
                self.counters["resp_full"] += 1
                return T.WAIT
            self.counters["responses"] += 1
        with self._lock:
            self._tickets.pop(tid, None)
        return T.OK


class _Part:
    """One read part waiting for the batch's fast-path submission."""

    __slots__ = ("file", "offset", "length", "ptr", "ticket", "k")

    def __init__(self, file, offset, length, ptr, ticket, k):
        self.file, self.offset, self.length = file, offset, length
        self.ptr, self.ticket, self.k = ptr, ticket, k


class _Lazy:
    """A file registered with ``lazy=True``: opened by each storage batch that uses it."""

    __slots__ = ("path", "writable", "create")

    def __init__(self, path, write: bool, create: bool):
        self.path, self.writable, self.create = path, write, create


class _Synthetic:
    """A result for a request that never reached the storage layer."""

    def __init__(self, status: int, err: int):
        self.status_code, self.errno_ = status, err


def _status_of(r) -> tuple[int, int, int]:
    """(status code, errno, bytes) of a storage result."""
    if isinstance(r, _Synthetic):
        return r.status_code, r.errno_, 0
    if r is None:
        return E_CANCELLED, 0, 0
    if isinstance(r, tuple):                     # (FastBatch, index): the read fast path
        b, i = r
        err = b.error(i)
        if err is not None:
            return STATUS_OF_KIND.get(err.kind, E_IO), int(err.errno or 0), 0
        return 0, 0, int(b.nbytes[i])
    if r.error is not None:         # a write that failed part way: the bytes it did write
        return STATUS_OF_KIND.get(r.error.kind, E_IO), int(r.error.errno or 0), int(r.nbytes)
    return 0, 0, int(r.nbytes)


def module(**options) -> NvmeModule:
    """``NvmeModule(**options)``."""
    return NvmeModule(**options)
