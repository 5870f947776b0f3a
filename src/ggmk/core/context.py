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

import numpy as np

from ggmk.core.emitter import Emitter   # the per-channel emit buffer
from ggmk.errors import EmitError
from ggmk.task import word
from ggmk.task import (CHAN_CLOSED, FLAG_CHANNEL_MSG, FLAG_DETERMINISTIC, PRIO_MASK, WAIT,
                       YIELD, Task, TaskBatch, check_count, make)

_HDR_FLAGS = PRIO_MASK | FLAG_DETERMINISTIC
_PRIORITIES = (0, 1, 2, 3)


class Context:
    __slots__ = ("kernel", "worker", "task", "batch", "module", "_emits", "_emits0", "_emits1",
                 "_retained", "_index", "_det", "_det_on", "_resolve", "_emitters",
                 "_emitters_active", "_pr", "_phdr")

    def __init__(self, kernel, worker: int):
        self.kernel = kernel
        self.worker = worker
        self.task = Task()
        self.batch: TaskBatch | None = None
        self.module = None
        # per-message emits to types, until the batch ends: (type, flags, tenant, seq,
        # payload_ptr, payload_len) per emit, and meta0 / meta1 in flat lists
        self._emits: list[tuple] = []
        self._emits0: list = []
        self._emits1: list = []
        self._retained: set[int] = set()
        self._index = 0
        self._det_on = kernel.deterministic
        self._resolve = kernel.resolve_target
        self._emitters: dict = {}          # channel target -> this worker's Emitter
        self._emitters_active: list = []
        self._pr = None                   # the parent record _phdr was computed from
        self._phdr = 0

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
        return int(self.task._r["seq"]) if int(self.task._r["channel"]) else 0

    @property
    def channel(self):
        """The Channel the current task came from, or None."""
        cid = int(self.task._r["channel"])
        return self.kernel.channels.by_id.get(cid) if cid else None

    @property
    def reason(self) -> int:
        """For a message from sys.error / sys.dropped: why it landed there (a code)."""
        v = int(self.task._r["_pad"])
        return v - 0x10000 if v >= 0x8000 else v

    @property
    def payload(self):
        """The current task's payload: a typed view when its type has a schema, else raw bytes."""
        return self.kernel.payload_view(self.task)

    # -- emitting -------------------------------------------------------------------------------
    def emit(self, target, meta0: int = 0, meta1: int = 0, *, payload=None, priority: int | None = None,
             tenant: int | None = None, flags: int = 0) -> int:
        """Emit one task of ``target`` (a type name/id, or a channel declared with ``produces``).

        Inherits the parent's tenant and priority unless given, and its deterministic flag.
        Returns OK, or a channel code (CHAN_FULL on a full lossless channel, CHAN_CLOSED); on a
        non-OK code the message was not sent and its payload is released.
        """
        st = self._emitters.get(target)
        if st is not None and payload is None and priority is None and tenant is None and not flags:
            # the hot path: per-message emit on a channel (credit already taken, no lock)
            r = self.task._r
            if r is not self._pr:
                self._pr = r
                self._phdr = 0 if r is None else (
                    (int(r["flags"]) & _HDR_FLAGS) | (int(r["tenant"]) << 16)
                    | ((int(r["seq"]) << 32) if self._det_on else 0))
            hdr = self._phdr
            m0 = st.m0
            # a word is checked here, inside the handler's guard: a bad value fails the task
            # that emitted it (converted later, at the batch's end, it would kill the worker)
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
        if chan is not None and st is None and payload is None:
            self._emitters[target] = Emitter(chan)     # next time: the hot path
        elif st is not None:
            st.commit()                              # keep this channel's emit order
        if priority is not None and priority not in _PRIORITIES:
            raise EmitError(f"priority={priority!r}: allowed 0 (highest), 1, 2, 3 (lowest)")
        if tenant is not None and (tenant.__class__ is not int or not 0 <= tenant <= 0xFFFF):
            raise EmitError(f"tenant={tenant!r}: allowed an integer in 0..65535")
        r = self.task._r
        if r is not None:
            pflags = int(r["flags"])
            if priority is None:
                priority = pflags & PRIO_MASK
            if tenant is None:
                tenant = int(r["tenant"])
            flags |= pflags & FLAG_DETERMINISTIC
            seq = int(r["seq"]) if self._det_on else 0
        else:
            seq = 0
        fl = (flags & ~PRIO_MASK) | ((priority or 0) & PRIO_MASK)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self.kernel.store_payload(tid, payload)
        if chan is not None:
            code = chan.emit_one(tid, fl, tenant or 0, ptr, plen, meta0, meta1, seq)
            if code and ptr:
                self.kernel.arena.release(ptr)
            return code
        self._emits.append((tid, fl, tenant or 0, seq, ptr, plen))
        self._emits0.append(meta0)
        self._emits1.append(meta1)
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
        r = self.task._r
        st.bind(self, 0 if r is None else (
            (int(r["flags"]) & _HDR_FLAGS) | (int(r["tenant"]) << 16)
            | ((int(r["seq"]) << 32) if self._det_on else 0)))
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
            if priority is None:
                priority = parent["flags"] & PRIO_MASK
            if tenant is None:
                tenant = parent["tenant"]
            flags = flags | (parent["flags"] & FLAG_DETERMINISTIC)
            seq = parent["seq"] if self._det_on else 0
        elif self.task._r is not None:
            r = self.task._r
            if priority is None:
                priority = int(r["flags"]) & PRIO_MASK
            if tenant is None:
                tenant = int(r["tenant"])
            flags |= int(r["flags"]) & FLAG_DETERMINISTIC
            seq = int(r["seq"]) if self._det_on else 0
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
            uniform = isinstance(priority, (int, np.integer))
            return chan.emit(recs, built=True, prio=int(priority) & PRIO_MASK if uniform else None)
        recs = make(n, type=tid, flags=flags, priority=priority,
                    tenant=0 if tenant is None else tenant, seq=seq, payload_ptr=payload_ptr,
                    payload_len=payload_len, meta0=meta0, meta1=meta1)
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

    def retain(self) -> None:
        """Keep the current task's payload alive past the handler (release it later yourself)."""
        self._retained.add(self._index)

    def alloc(self, nbytes: int) -> int:
        return self.kernel.arena.alloc_or_raise(nbytes)

    def flush(self) -> None:
        """Hand buffered per-message emits to the enqueue core and commit staged channel emits
        (the worker calls this per batch), then drain channels opportunistically."""
        hdrs = self._emits
        if hdrs:
            # headers apart from meta0/meta1 (a list of 11-field tuples converted to records
            # cost ~435 ns a record; usually every header of a batch is the same: one fill)
            m0 = np.array(self._emits0, dtype=np.uint64)
            m1 = np.array(self._emits1, dtype=np.uint64)
            h = hdrs[0]
            if hdrs.count(h) == len(hdrs):
                recs = make(len(hdrs), type=h[0], flags=h[1], tenant=h[2], seq=h[3],
                            payload_ptr=h[4], payload_len=h[5], meta0=m0, meta1=m1)
            else:
                cols = np.array(hdrs, dtype=np.uint64)
                recs = make(len(hdrs), type=cols[:, 0], flags=cols[:, 1], tenant=cols[:, 2],
                            seq=cols[:, 3], payload_ptr=cols[:, 4], payload_len=cols[:, 5],
                            meta0=m0, meta1=m1)
            hdrs.clear()
            self._emits0.clear()
            self._emits1.clear()
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
