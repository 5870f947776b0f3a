"""The handler context: one per worker, reused for every task (never built per task).

A per-task handler reads ``ctx.task``; a batch handler receives ``batch`` (columns) and may also
read ``ctx.batch``. Both emit with ``ctx.emit`` (one message) or ``ctx.emit_batch`` (columns).

Example::

    @mod.handler("STEP")
    def step(ctx):
        if ctx.task.yield_count < 3:
            return ctx.yield_(phase=ctx.task.yield_count + 1)   # resume later, meta0 = phase
        ctx.emit("DONE", meta0=ctx.task.meta0)
        return ggmk.OK
"""
from __future__ import annotations

from array import array as _array

import numpy as np

from ggmk.core.det import check_int
from ggmk.core.emitter import Emitter   # the per-channel emit buffer
from ggmk.errors import AllocError, EmitError
from ggmk.task import word
from ggmk.task import (_U64, CHAN_CLOSED, FLAG_CHANNEL_MSG, FLAG_DETERMINISTIC, PRIO_MASK,
                       RECORD_STRUCT, TASK_DTYPE, WAIT, YIELD, Task, TaskBatch, _scalar,
                       check_count, make)
from ggmk.task import copy as copy_records

_HDR_FLAGS = PRIO_MASK | FLAG_DETERMINISTIC


def u64(values: list) -> np.ndarray:
    """A list of Python ints already known to be task words (0..2**64-1) as a uint64 array
    (through ``array.array``: ~4x faster than ``np.array(values, np.uint64)``)."""
    return np.frombuffer(_array("Q", values), np.uint64)

_PRIORITIES = (0, 1, 2, 3)
_REC = RECORD_STRUCT                        # one TASK_DTYPE record, fields in order
_V48 = np.dtype((np.void, _REC.size))       # a record as raw bytes
_M16 = 0xFFFF
_M32 = 0xFFFF_FFFF
# a buffered emit's key: the child's header as one int (fields that are not meta0/meta1)
#   flags | tenant << 16 | seq << 32 | type << 64 | payload_len << 96 | payload_ptr << 128
# ``hdr`` (the low 64 bits, what a parent passes on: priority and deterministic flag, tenant,
# its seq in determinism mode) is what the channel emitters are bound to as well.


class _NoRows:
    """``TaskRow._m0`` / ``_m1`` while no batch is bound: index -1 reads the record the view
    was given (``Task(rec)`` style), else says that there is no current task."""
    __slots__ = ("row", "name")

    def __init__(self, row, name):
        self.row = row
        self.name = name

    def __getitem__(self, i):
        r = self.row._r
        if r is None:
            raise AttributeError(f"ctx.task.{self.name}: no current task (a batch handler "
                                 f"reads columns from its batch)")
        return int(r[self.name])


class _Meta0:
    """``TaskRow.meta0``: a data descriptor with no ``__get__``. Why: reading ``ctx.task.meta0``
    is the per-task handler's hottest line. With no ``__get__`` Python reads the attribute
    from the instance dict, where the worker stores the current row's meta0 as it moves
    (``TaskRow._d``: one dict store per task instead of a Python call per read; ~45 ns of a
    ~350 ns hop). Writes come here: checked like ``Task``'s, stored in the batch's list (written
    back at the batch's end) and in the dict. While no row is current the key is absent and a
    read returns this object, whose every use raises the "no current task" error."""

    def __set__(self, row, v) -> None:
        if v.__class__ is not int or not 0 <= v <= _U64:
            v = _scalar("meta0", v, _U64)
        i = row._i
        if i < 0:
            _no_current_task()
        row._m0[i] = v
        row._d["meta0"] = v
        row._dirty = True

    def __repr__(self) -> str:
        return "<ctx.task.meta0: no current task>"


def _no_current_task(*_):
    raise AttributeError("ctx.task.meta0: no current task (a batch handler reads columns from "
                         "its batch)")


for _op in ("int", "index", "float", "bool", "hash", "format", "eq", "ne", "lt", "le", "gt",
            "ge", "add", "radd", "sub", "rsub", "mul", "rmul", "floordiv", "rfloordiv", "mod",
            "rmod", "and", "rand", "or", "ror", "xor", "rxor", "lshift", "rshift", "neg",
            "invert", "truediv", "rtruediv", "pow"):
    setattr(_Meta0, f"__{_op}__", _no_current_task)   # using an unbound meta0 is the error


class TaskRow(Task):
    """``ctx.task`` of a per-task handler: one row of the current batch, read and written
    through plain Python values (no NumPy object per task).

    The worker reads the batch's meta0 / meta1 columns once per batch (``.tolist()``); other
    fields are read once per batch on first use; writes (``meta0`` / ``meta1``, checked like
    ``Task``'s setters) go to the lists and back into the records once, at the batch's end.
    Rows past ``_n0`` are follow-on tasks the worker runs in the same step (see
    ``Context.emit``): their header is ``_khdr`` when the whole batch passes on one header,
    else in ``_kids`` (one per follow-on); their seqs count up from ``_seq0``. ``record()`` builds the NumPy record on
    demand (a snapshot: write fields through the view).
    """

    __slots__ = ("_i", "_n0", "_type", "_m0", "_m1", "_recs", "_cols", "_kids", "_dirty",
                 "_lim", "_seq0", "_khdr", "_nr0", "_nr1", "_d", "__dict__")

    def __init__(self):
        super().__init__(None)
        self._d = self.__dict__           # the current row's meta0, under "meta0" (see _Meta0)
        self._nr0 = _NoRows(self, "meta0")
        self._nr1 = _NoRows(self, "meta1")
        self._n0 = 0
        self._type = 0
        self._lim = 0
        self._seq0 = 0
        self._khdr = -1
        self._unbind()

    def _unbind(self) -> None:
        """No current task; the batch's lists are let go (``_start`` sets the rest)."""
        self._i = -1
        self._d.pop("meta0", None)
        self._m0 = self._nr0
        self._m1 = self._nr1
        self._recs = None
        self._cols = None
        self._kids = None
        self._dirty = False

    def _start(self, recs, t: int, m0: list, m1: list, lim: int) -> None:
        """Bind to a batch of records of type ``t`` (meta columns already read)."""
        self._recs = recs
        self._n0 = len(recs)
        self._type = t
        self._m0 = m0
        self._m1 = m1
        self._cols = {}
        self._kids = []
        self._dirty = False
        self._lim = lim
        self._seq0 = 0
        self._khdr = -1
        self._i = -1

    def _col(self, name: str) -> list:
        c = self._cols.get(name)
        if c is None:
            c = self._cols[name] = self._recs[name].tolist()
        return c

    def _get(self, name: str) -> int:
        i = self._i
        if i < 0:
            if self._r is None:
                raise AttributeError(f"ctx.task.{name}: no current task (a batch handler reads "
                                     f"columns from its batch)")
            return int(self._r[name])
        if i < self._n0:
            return self._col(name)[i]
        j = i - self._n0                             # a follow-on run in the same step
        hdr = self._khdr if self._khdr >= 0 else self._kids[j]
        if name == "flags":
            return hdr & _M16
        if name == "tenant":
            return (hdr >> 16) & _M16
        if name == "seq":
            return (self._seq0 + j) & _M32
        return 0                                     # channel, payload, yields, retries

    def _hdr(self, det: bool) -> int:
        """The header a child inherits: priority and deterministic flag, tenant, seq (det)."""
        i = self._i
        if i < 0:
            return 0
        if i < self._n0:
            fl = self._cols.get("flags") or self._col("flags")
            tn = self._cols.get("tenant") or self._col("tenant")
            h = (fl[i] & _HDR_FLAGS) | (tn[i] << 16)
            if det:
                h |= self._col("seq")[i] << 32
            return h
        return self._khdr if self._khdr >= 0 else self._kids[i - self._n0]

    type = property(lambda s: s._type if s._i >= 0 else s._get("type"))
    flags = property(lambda s: s._get("flags"))
    priority = property(lambda s: s._get("flags") & PRIO_MASK)
    tenant = property(lambda s: s._get("tenant"))
    channel = property(lambda s: s._get("channel"))
    seq = property(lambda s: s._get("seq"))
    payload_ptr = property(lambda s: s._get("payload_ptr"))
    payload_len = property(lambda s: s._get("payload_len"))
    yield_count = property(lambda s: s._get("yield_count"))
    retries = property(lambda s: s._get("_pad"))

    # read from the instance dict, where the worker stores the current row's value; written
    # through _Meta0 (see there)
    meta0 = _Meta0()

    def _meta1(self) -> int:
        try:
            return self._m1[self._i]
        except IndexError:      # a follow-on row past the meta1 column: sparse, it is 0
            return 0

    meta1 = property(_meta1)

    @meta1.setter
    def meta1(self, v: int) -> None:
        if v.__class__ is not int or not 0 <= v <= _U64:
            v = _scalar("meta1", v, _U64)
        i = self._i
        if i < 0:
            self._r["meta1"] = v
            return
        m1 = self._m1
        if i >= len(m1):
            m1.extend([0] * (i + 1 - len(m1)))
        m1[i] = v
        self._dirty = True

    def _m1_full(self) -> list:
        """The meta1 column as long as meta0's: follow-ons emitted with meta1 = 0 append
        nothing to it (``Context._inline_emit``), so it is padded with 0 here."""
        m1 = self._m1
        n = len(self._m0)
        if len(m1) < n:
            m1.extend([0] * (n - len(m1)))
        return m1

    def record(self):
        """The current task as a NumPy record, built on demand (a snapshot)."""
        i = self._i
        if i < 0:
            return self._r
        if i < self._n0:
            r = copy_records(self._recs[i:i + 1])
        else:
            hdr = self._khdr if self._khdr >= 0 else self._kids[i - self._n0]
            r = make(1, type=self._type, flags=hdr & _M16, tenant=(hdr >> 16) & _M16,
                     seq=(self._seq0 + i - self._n0) & _M32)
        r["meta0"] = self._m0[i]
        r["meta1"] = self.meta1
        return r[0]

    def _write_back(self) -> None:
        """Store the meta0 / meta1 the handlers wrote into the batch's own records."""
        n = self._n0
        self._recs["meta0"] = u64(self._m0[:n])
        self._recs["meta1"] = u64(self._m1[:n])
        self._dirty = False


def check_priority(priority) -> int:
    """An emit's ``priority`` (not None) as an int 0..3, else EmitError naming it: True passed
    as 1 (True == 1), a float or NumPy bool failed later with an error naming nothing."""
    if isinstance(priority, (bool, np.bool_)) or not isinstance(priority, (int, np.integer)) \
            or priority not in _PRIORITIES:
        raise EmitError(f"priority={priority!r}: allowed 0 (highest), 1, 2, 3 (lowest), an int")
    return int(priority)


def _check_payloads(kernel, recs) -> None:
    """emit_batch's records hand their consumers one payload reference each: the handler must
    own that many (else the consumer's release killed its worker)."""
    ptrs = recs["payload_ptr"]
    if np.count_nonzero(ptrs):
        kernel.arena.check_refs(ptrs, "emit_batch: payload_ptr", EmitError)


def retain_payload(arena, batch, task, i) -> int:
    """``ctx.retain(i)`` (the kernel's and ggmk.testing's): one more reference to the payload
    of the current task (per-task handler, ``i`` None) or of task ``i`` of ``batch``."""
    if batch is not None:
        if i is None:
            raise TypeError("ctx.retain(): a batch handler names the task whose payload to "
                            "keep: ctx.retain(i), i = its index in the batch")
        i = check_int("ctx.retain: i", i, 0, len(batch) - 1,
                      what=" (the task's index in the batch)")
        ptr = int(batch.records["payload_ptr"][i])
    elif i is not None:
        raise TypeError(f"ctx.retain(i={i!r}): a per-task handler keeps its current task's "
                        f"payload: ctx.retain()")
    else:
        ptr = task.payload_ptr
    if ptr:
        arena.retain(ptr)
    return ptr


def inherit_columns(parent, priority, tenant, flags: int):
    """A batch emit's header from its parent batch, one child per parent record: what is not
    given is the parent's priority and tenant (columns), and the deterministic flag always
    comes along. Returns (priority, tenant, flags)."""
    if priority is None:
        priority = parent["flags"] & PRIO_MASK
    if tenant is None:
        tenant = parent["tenant"]
    return priority, tenant, flags | (parent["flags"] & FLAG_DETERMINISTIC)


class Context:
    __slots__ = ("kernel", "worker", "task", "batch", "module", "_ek", "_e0", "_e1",
                 "_det", "_det_on", "_resolve", "_emitters",
                 "_emitters_active", "_pi", "_phdr", "_bhdr", "_types", "_inl_t", "_sched",
                 "_km0", "_klim", "emit", "_general", "_room", "_q0", "_qkey", "_grow", "_bump")

    def __init__(self, kernel, worker: int):
        self.kernel = kernel
        self.worker = worker
        self.task = TaskRow()
        self.batch: TaskBatch | None = None
        self.module = None
        # per-message emits to types, until the batch ends: one key per emit (the child's
        # header, see _key), and meta0 / meta1 in flat lists
        self._ek: list = []
        self._e0: list = []
        # follow-ons past the step's budget from the batch's sender (one header, the inline
        # type, meta1 = 0) while nothing else is buffered: meta0 only, key _qkey; flushed
        # first (they came first), as one template fill
        self._q0: list = []
        self._qkey = 0
        # [the worker's _grow] while the step may grow its follow-on budget, else [None]
        self._grow = [None]
        self._e1: list = []
        self._det_on = kernel.deterministic
        self._resolve = kernel.resolve_target
        # target -> type id for targets that are types (the kernel's own cache: resolve_target
        # answers from it first, so a hit here means exactly what resolve_target would say)
        self._types = getattr(kernel, "_type_cache", None)
        if self._types is None:
            self._types = {}
        self._sched = getattr(kernel, "sched", None)
        self._emitters: dict = {}          # channel target -> this worker's Emitter
        self._emitters_active: list = []
        self._pi = -1                      # the row _phdr was computed for (-1: none)
        self._phdr = 0
        self._bhdr = -1                    # the batch-wide header (-1: none, -2: not looked)
        self._inl_t = -1                   # emits of this type run in this step (the worker)
        self._km0 = ()                     # ... as rows appended to the batch's columns
        self._klim = 0
        # ``ctx.emit``: the general method, or while the worker runs follow-ons in the step,
        # the sender ``_inline_emit`` made for the batch (a closure: no attribute lookups)
        self._general = self._emit
        self.emit = self._general
        self._room = [0]
        # this worker's own bump region (ctx.bump_alloc), reset at each of its steps' start
        self._bump = kernel.arena.worker_bump(worker, kernel.sched.nworkers)

    @property
    def _index(self) -> int:
        return self.task._i

    # -- what a handler can see -----------------------------------------------------------------
    @property
    def tick(self) -> int:
        return self.kernel.tick

    @property
    def arena(self):
        return self.kernel.arena

    @property
    def system(self):
        return self.kernel

    @property
    def chan_seq(self) -> int:
        """The channel sequence number of the current message (0 for a direct task);
        consecutive per channel, so a gap means a message was dropped."""
        t = self.task
        return t.seq if t.channel else 0

    @property
    def channel(self):
        """The Channel the current task came from, or None."""
        cid = self.task.channel
        return self.kernel.channels.by_id.get(cid) if cid else None

    @property
    def reason(self) -> int:
        """For a message from sys.error / sys.dropped: why it landed there (a code)."""
        v = self.task.retries
        return v - 0x10000 if v >= 0x8000 else v

    @property
    def payload(self):
        """The current task's payload: a typed view when its type has a schema, else raw bytes."""
        return self.kernel.payload_view(self.task)

    # -- emitting -------------------------------------------------------------------------------
    def _parent_hdr(self) -> int:
        """The current task's header for its children (computed once per task)."""
        t = self.task
        i = t._i
        if i < 0:
            r = t._r
            return 0 if r is None else (
                (int(r["flags"]) & _HDR_FLAGS) | (int(r["tenant"]) << 16)
                | ((int(r["seq"]) << 32) if self._det_on else 0))
        if i != self._pi:
            self._pi = i
            self._phdr = t._hdr(self._det_on)
        return self._phdr

    def _row_hdr(self) -> int:
        """``_parent_hdr`` for the emit paths: on the batch's first emit, look once whether
        every task of the batch passes on the same header (the usual case: then ``_bhdr``
        holds it and no task computes its own)."""
        if self._bhdr == -2:
            self._bhdr = -1
            t = self.task
            recs = t._recs
            if t._i >= 0 and recs is not None:
                fl = recs["flags"]
                tn = recs["tenant"]
                if (len(recs) == 1 or (((fl ^ fl[0]) & _HDR_FLAGS) == 0).all()
                        and (tn == tn[0]).all()) and (len(recs) == 1 or not self._det_on):
                    h = (int(fl[0]) & _HDR_FLAGS) | (int(tn[0]) << 16)
                    if self._det_on:
                        h |= int(recs["seq"][0]) << 32
                    self._bhdr = t._khdr = h
                    return h
        return self._parent_hdr()

    def _inline_emit(self, tgt, inl_t: int, m0: list, m1: list, lim: list):
        """``ctx.emit`` while the worker runs emits of type ``inl_t`` as further rows of the
        batch (appended to the task view's columns ``m0`` / ``m1``, up to ``lim[0]`` rows; the
        worker sets ``lim[0] = 0`` when the batch ends, so a sender kept past it takes the
        general path; ``tgt``: the target object it was made for, usually the very object a
        handler passes again: no lookup). ``_emit`` makes it on the batch's first follow-on,
        once it knows every task of the batch passes on one header (``_bhdr``): the general
        method's hot path with its state in closure cells. meta1 is sparse: a follow-on with
        meta1 = 0 (most of them) appends to meta0 only, and the column is padded when a
        nonzero one comes (``TaskRow._m1_full``). Anything else (other targets, keywords, a
        word that is not a plain int in range) goes to the general method unchanged."""
        general = self._general
        get = self._types.get
        key = self._bhdr | (inl_t << 64)   # made once the batch is known to have one header
        ek = self._ek
        k, k0, k1 = ek.append, self._e0.append, self._e1.append
        q = self._q0.append
        self._qkey = key
        grow = self._grow
        a0, a1 = m0.append, m1.append
        zero = 0                           # (the int 0 is one object in CPython: an `is` test)

        def emit(target, meta0=0, meta1=0, **kw):
            """ctx.emit while follow-ons run in the step (see Context._emit)."""
            if not kw and (target is tgt or get(target) == inl_t) and meta0.__class__ is int \
                    and not meta0 >> 64:
                if meta1 is zero:
                    if len(m0) < lim[0]:
                        a0(meta0)
                        return 0
                    if lim[0]:             # past the step's budget: queued, as in _emit
                        g = grow[0]        # (unless the step can run more: Worker._grow)
                        if g is not None and g() and len(m0) < lim[0]:
                            a0(meta0)
                            return 0
                        if ek:             # (after other buffered emits: keep their order)
                            k(key)
                            k0(meta0)
                            k1(0)
                        else:
                            q(meta0)
                        return 0
                elif meta1.__class__ is int and not meta1 >> 64:
                    if len(m0) < lim[0]:
                        if len(m1) < len(m0):
                            m1.extend([0] * (len(m0) - len(m1)))
                        a1(meta1)
                        a0(meta0)
                        return 0
                    if lim[0]:
                        k(key)
                        k0(meta0)
                        k1(meta1)
                        return 0
            return general(target, meta0, meta1, **kw)
        return emit

    def _emit(self, target, meta0: int = 0, meta1: int = 0, *, payload=None,
              priority: int | None = None, tenant: int | None = None, flags: int = 0) -> int:
        """Emit one task of ``target`` (a type name/id, or a channel declared with ``produces``).

        Inherits the parent's tenant and priority unless given, and its deterministic flag.
        Returns OK, or a channel code (CHAN_FULL on a full lossless channel, CHAN_CLOSED); on a
        non-OK code the message was not sent and its payload is released.
        """
        # words are checked here, inside the handler's guard: a bad value fails the task that
        # emitted it (converted later, at the batch's end, it would kill the worker)
        tid = self._types.get(target)
        if tid is not None and payload is priority is tenant is None and not flags \
                and meta0.__class__ is meta1.__class__ is int and not (meta0 | meta1) >> 64:
            # the hot path: a list append (records are built once per batch, in flush)
            hdr = self._bhdr
            if hdr >= 0:                  # every task of the batch passes on the same header
                if tid == self._inl_t and len(self._km0) < self._klim:
                    # a follow-on the worker runs in this step, as the next row of the batch
                    # (the task view's columns: _km0 is its _m0)
                    self.task._m1_full().append(meta1)
                    self._km0.append(meta0)
                    return 0
            else:
                hdr = self._row_hdr()
                if tid == self._inl_t and len(self._km0) < self._klim:
                    t = self.task
                    if self._bhdr >= 0:       # just found: the batch has one header
                        t._m1_full().append(meta1)
                        self._km0.append(meta0)
                        if self.emit is self._general:
                            # the batch's first follow-on: from now on ctx.emit is the
                            # batch's sender (made here, so batches that emit nothing
                            # don't pay for it)
                            self._room = [self._klim]
                            self.emit = self._inline_emit(target, tid, self._km0, t._m1,
                                                          self._room)
                        return 0
                    t._kids.append(hdr)
                    t._m1_full().append(meta1)
                    self._km0.append(meta0)
                    return 0
            self._ek.append(hdr | (tid << 64))
            self._e0.append(meta0)
            self._e1.append(meta1)
            return 0
        st = self._emitters.get(target)
        if st is not None and payload is None and priority is None and tenant is None and not flags:
            # the hot path: per-message emit on a channel (credit already taken, no lock)
            hdr = self._bhdr
            if hdr < 0:
                hdr = self._row_hdr()
            m0 = st.m0
            if hdr == st.hdr and len(m0) < st.lim[0] and meta0.__class__ is int \
                    and not meta0 >> 64:
                if meta1:
                    st.m1.append((len(m0), word("meta1", meta1)))
                m0.append(meta0)
                return 0
            meta0 = word("meta0", meta0)
            meta1 = word("meta1", meta1)
            st.bind(self, hdr)
            code = st.slow(meta0, meta1)
            if code == CHAN_CLOSED:
                del self._emitters[target]
            return code
        meta0 = word("meta0", meta0)
        meta1 = word("meta1", meta1)
        kind, tid, chan = self._resolve(target)
        if chan is not None and st is None and payload is None and not chan.closed:
            self._emitters[target] = Emitter(chan)     # next time: the hot path
        elif st is not None:
            st.commit()                              # keep this channel's emit order
        if priority is not None and (priority.__class__ is not int or priority not in _PRIORITIES):
            priority = check_priority(priority)
        if tenant is not None and (tenant.__class__ is not int or not 0 <= tenant <= 0xFFFF):
            raise EmitError(f"tenant={tenant!r}: allowed an integer in 0..65535")
        if flags.__class__ is not int or not 0 <= flags <= 0xFFFF:
            raise EmitError(f"flags={flags!r}: allowed an integer in 0..65535")
        hdr = self._parent_hdr()
        if priority is None:
            priority = hdr & PRIO_MASK
        if tenant is None:
            tenant = (hdr >> 16) & _M16
        flags |= hdr & FLAG_DETERMINISTIC
        seq = hdr >> 32
        fl = (flags & ~PRIO_MASK) | (priority & PRIO_MASK)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self.kernel.store_payload(tid, payload)
        if chan is not None:
            code = chan.emit_one(tid, fl, tenant, ptr, plen, meta0, meta1, seq)
            if code and ptr:
                self.kernel.arena.release(ptr)
            return code
        self._ek.append(fl | (tenant << 16) | (seq << 32) | (tid << 64) | (plen << 96)
                        | (ptr << 128))
        self._e0.append(meta0)
        self._e1.append(meta1)
        return 0

    def emitter(self, target):
        """A per-message sender for a channel, bound to the current task's header (priority,
        tenant, deterministic flag): ``send = ctx.emitter(out); send(meta0, meta1)`` returns
        OK / CHAN_FULL / CHAN_CLOSED like ``ctx.emit``, with less work per call. Use it within
        the handler call that made it.

        Example::

            send = ctx.emitter(out)
            for i in range(n):
                if send(i):           # CHAN_FULL: resume later
                    ...
        """
        st = self._emitters.get(target)
        if st is None:
            kind, tid, chan = self._resolve(target)
            if chan is None:
                raise TypeError(f"emitter: {target!r} is not a channel")
            st = self._emitters[target] = Emitter(chan)
        st.bind(self, self._parent_hdr())
        return st.send

    def emit_batch(self, target, meta0=0, meta1=0, *, count: int | None = None, priority=None,
                   tenant=None, flags: int = 0, payload_ptr=0, payload_len=0) -> int:
        """Emit many tasks at once; every keyword takes a scalar or a column (NumPy array).

        Returns how many were accepted (for a lossless channel, the rest got CHAN_FULL).
        """
        kind, tid, chan = self._resolve(target)
        if chan is not None:
            st = self._emitters.get(target)
            if st is not None:
                st.commit()                          # keep this channel's emit order
        n = check_count(count, meta0, meta1, payload_ptr)
        b = self.batch
        parent = b.records if b is not None else None
        if parent is not None and len(parent) == n:
            priority, tenant, flags = inherit_columns(parent, priority, tenant, flags)
            seq = parent["seq"] if self._det_on else 0
        elif self.task._i >= 0 or self.task._r is not None:
            hdr = self._parent_hdr()
            if priority is None:
                priority = hdr & PRIO_MASK
            if tenant is None:
                tenant = (hdr >> 16) & _M16
            flags |= hdr & FLAG_DETERMINISTIC
            seq = hdr >> 32
        else:
            seq = 0
        if priority is None:
            priority = 0
        if chan is not None:
            # built for the channel (type, channel id, message flag in the one template fill), so
            # the channel skips its per-record type check and stamping
            recs = make(n, type=tid, flags=flags | FLAG_CHANNEL_MSG, priority=priority,
                        tenant=0 if tenant is None else tenant, channel=chan.id, seq=seq,
                        payload_ptr=payload_ptr, payload_len=payload_len, meta0=meta0,
                        meta1=meta1)
            _check_payloads(self.kernel, recs)
            uniform = isinstance(priority, (int, np.integer))
            return chan.emit(recs, built=True, prio=int(priority) & PRIO_MASK if uniform else None)
        recs = make(n, type=tid, flags=flags, priority=priority,
                    tenant=0 if tenant is None else tenant, seq=seq, payload_ptr=payload_ptr,
                    payload_len=payload_len, meta0=meta0, meta1=meta1)
        _check_payloads(self.kernel, recs)
        self.flush()   # keep emit order: earlier per-message emits go first
        return self.kernel.sched.enqueue(recs, self.kernel.ROUTE_EMIT, self.worker)

    def yield_(self, phase: int | None = None) -> int:
        """Re-enqueue this task (meta0/meta1 kept); with ``phase``, set meta0 = phase first."""
        if phase is not None:
            self.task.meta0 = phase
        return YIELD

    def wait_(self, phase: int | None = None, *, meta1: int | None = None) -> int:
        """Come back later because a channel was full (an emit returned CHAN_FULL): the task
        runs again on a later tick with meta0/meta1 as left (``phase`` sets meta0, ``meta1``
        meta1 first: where to resume). Unlike ``yield_`` this is not counted toward
        ``max_yields``: waiting on a slow consumer is backpressure, not a runaway task.

        Example (resume at the message that did not fit)::

            @prod.handler("SAMPLE")
            def sample(ctx):
                send = ctx.emitter(out)
                for i in range(ctx.task.meta1, 100):      # meta1: the next message to send
                    if send(i):
                        return ctx.wait_(meta1=i)
                return OK
        """
        if phase is not None:
            self.task.meta0 = phase
        if meta1 is not None:
            self.task.meta1 = meta1
        return WAIT

    def retain(self, i: int | None = None) -> int:
        """Keep the current task's payload alive past the handler: one more reference, yours
        to release (``ctx.arena.release(ptr)``) whatever the task's outcome (OK, a failure, a
        yield, a retry, a wait: its own reference is released as usual). A batch handler
        names the task by its index in the batch, ``ctx.retain(i)``. Returns the payload's
        address (0, and nothing kept, for a task without one)."""
        return retain_payload(self.kernel.arena, self.batch, self.task, i)

    def alloc(self, nbytes: int) -> int:
        """``nbytes`` from the arena (its address); AllocError when it cannot, traced as
        ALLOC_FAIL (arg0 = the bytes asked for) on this worker's ring."""
        try:
            return self.kernel.arena.alloc_or_raise(nbytes)
        except AllocError:
            b = self.batch            # the running handler's type (a batch handler's batch)
            t = int(b.records["type"][0]) if b is not None and len(b) else self.task._type
            self.kernel.trace_alloc_fail(self.worker, t, nbytes)
            raise

    def bump_alloc(self, nbytes: int) -> int:
        """``nbytes`` of transient memory (16-byte aligned, no header, nothing to release)
        from this worker's bump region: its address (``ctx.arena.view(ptr, nbytes)``), or 0
        when the region is full (counted in ``arena.stats()["bump"]["fails"]``). Valid until
        this worker's next step begins, where the worker resets its region (SPEC §4's tick,
        per worker; poisoned in debug mode): scratch for this handler call and the rest of
        the step, never for a payload or anything kept."""
        return self._bump.alloc(nbytes)

    def flush(self) -> None:
        """Hand buffered per-message emits to the enqueue core and commit staged channel emits
        (the worker calls this per batch), then drain channels opportunistically."""
        q0 = self._q0
        if q0:
            k = self._qkey
            recs = np.empty(len(q0), TASK_DTYPE)
            recs.view(_V48)[:] = _REC.pack(
                (k >> 64) & _M32, k & _M16, (k >> 16) & _M16, 0, (k >> 32) & _M32,
                k >> 128, (k >> 96) & _M32, 0, 0, 0, 0)
            recs["meta0"] = u64(q0)
            q0.clear()
            self.kernel.sched.enqueue(recs, self.kernel.ROUTE_EMIT, self.worker)
        keys = self._ek
        if keys:
            # one record build per batch: usually every child of a batch has the same header
            # (one template fill); else the header fields are split out of the keys
            n = len(keys)
            k = keys[0]
            if n == 1:
                # one child (a request answered with one task, a lone chain's next hop): one
                # struct pack instead of make()'s per-field checks (its words were checked
                # by emit; a payload pointer is an arena address)
                recs = np.frombuffer(bytearray(_REC.pack(
                    (k >> 64) & _M32, k & _M16, (k >> 16) & _M16, 0, (k >> 32) & _M32,
                    k >> 128, (k >> 96) & _M32, 0, 0, self._e0[0], self._e1[0])), TASK_DTYPE)
            elif keys.count(k) == n:
                # one header: a template record filled n times, then the two word columns
                # (checked by emit already: make()'s column checks would cost ~30 us per 1 Ki)
                recs = np.empty(n, TASK_DTYPE)
                recs.view(_V48)[:] = _REC.pack(
                    (k >> 64) & _M32, k & _M16, (k >> 16) & _M16, 0, (k >> 32) & _M32,
                    k >> 128, (k >> 96) & _M32, 0, 0, 0, 0)
                recs["meta0"] = u64(self._e0)
                if self._e1.count(0) != n:        # (meta1 is mostly 0: the template's)
                    recs["meta1"] = u64(self._e1)
            else:
                m0 = u64(self._e0)
                m1 = u64(self._e1)
                recs = make(n, type=np.array([x >> 64 & _M32 for x in keys], np.uint32),
                            flags=np.array([x & _M16 for x in keys], np.uint16),
                            tenant=np.array([x >> 16 & _M16 for x in keys], np.uint16),
                            seq=np.array([x >> 32 & _M32 for x in keys], np.uint32),
                            payload_ptr=np.array([x >> 128 for x in keys], np.uint64),
                            payload_len=np.array([x >> 96 & _M32 for x in keys], np.uint32),
                            meta0=m0, meta1=m1)
            keys.clear()
            self._e0.clear()
            self._e1.clear()
            self.kernel.sched.enqueue(recs, self.kernel.ROUTE_EMIT, self.worker)
        act = self._emitters_active
        if act:
            for st in act:
                st.active = False
                st.commit()
            act.clear()
        chans = self.kernel.channels
        if chans is not None and chans._hot:
            chans.drain_some(self.worker)
