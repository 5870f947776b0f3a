"""Channels (SPEC §5): named, typed pipes between modules, with nothing lost silently.

A :class:`Channel` carries one task type (or any type, for the system channels). Each subscriber
has its own record ring; emit copies records into the rings, and *drain* moves them from a ring
into THE enqueue core (``sched.enqueue(recs, Route.CHANNEL)``) retyped to the subscriber's
handler type, with ``channel`` = the channel id, ``FLAG_CHANNEL_MSG`` set and ``seq`` = the
channel sequence number (``ctx.chan_seq``; the core keeps ``seq`` on CHANNEL routes).

The other pieces live in their own modules: the modes, guarantees and limits a channel is
declared with, and their validation, in ``core/channel_spec.py`` (p2p / fan-out, lossless /
lossy, the priority-0 reserve); the replay log of a lossless channel in ``core/replay.py``; the
registry (names to ids, the system channels, dead letters, draining every channel) in
``core/channel_registry.py``; the per-message emit buffer behind ``ctx.emitter`` in
``core/emitter.py``; a subscriber in ``core/subscriber.py``; delivery into the subscribers'
rings and draining them into the scheduler in ``core/delivery.py`` (a mixin of ``Channel``,
which keeps the producer side: subscribe, emit, publish, admission, sequencing, close).
``ggmk.core.chan`` re-exports them all.

Every accepted message is delivered to every subscriber or appears on ``sys.dropped`` with a
reason (CHAN_FULL, CHAN_CLOSED, CHAN_REPLAY_OVERFLOW, CHAN_NO_SUBSCRIBER).

Drain is opportunistic: after an emit, at the end of each handler batch and whenever a worker
finds no work. A subscriber never has more than ``window`` of its messages waiting in the ready
queue, so a slow subscriber's backlog stays in its ring, where lossless backpressure sees it.

Ordered delivery (``ordered=True``, the default for p2p and fan-out channels): a handler
subscriber sees its messages in channel-sequence order, with any number of workers. The channel
hands the scheduler at most one batch of the subscriber at a time: at most ``max_batch`` (the
kernel's, a worker's pop size) messages, all of one tenant and one priority (the ready queue
would split a mixed batch, and two workers could run the pieces at once), and the next batch
only once the worker finished that one (``Worker._finish`` -> :meth:`Channels.on_batch_done`,
one dict lookup per batch). So its handler runs on one worker at a time, in order; priorities
do not overtake within an ordered subscriber. A message the handler yields (``ctx.yield_()``) or
retries (``RETRY``) counts as finished for this purpose and comes back later: that message is
naturally reordered (the others keep their order); a failed one goes to the error handler or
sys.error. ``ordered=False`` (``produces(..., ordered=False)``, ``system.channels.open(...,
ordered=False)``, or per subscriber ``ch.subscribe(type, ordered=False)``) opts out for
throughput: up to ``window`` messages of the subscriber wait in the ready queue, and two
workers may run two of its batches at once (each batch is consecutive, the handler calls
interleave). Host-side subscribers (``take``) always pull in order.

Channels of deterministic types (in determinism mode) hold their messages until the tick
boundary, then sort them by their parent's sequence, number them and drain them whole
(:meth:`Channel.tick_boundary`; the registry calls it in ascending channel id order); a host
thread's publishes wait for the next ``System.run()`` first (host input, see ``core/det.py``). A
channel of another type becomes one at the first deterministic task's message on it (see
:meth:`Channel._det_message`).

Example::

    prod = ggmk.Module("prod")
    out = prod.produces("metrics.out", "METRIC", mode="fanout")

    @prod.handler("TICK")
    def tick(ctx):
        if ctx.emit(out, meta0=ctx.task.meta0) == ggmk.CHAN_FULL:
            return ggmk.RETRY
        return ggmk.OK

    cons = ggmk.Module("cons")

    @cons.handler("LOG_METRIC", consumes="metrics.out", message="METRIC")
    def log_metric(ctx):
        print(ctx.chan_seq, ctx.task.meta0)

    with ggmk.boot([prod, cons]) as system:
        ch = system.channel("metrics.out")
        ch.publish(meta0=1)                     # host-side emit of one message
        system.run()
        print(ch.stats())
"""
from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import numpy as np

from ggmk import task as T
from ggmk.core.channel_spec import (DEFAULT_CAPACITY, MAX_FANOUT, max_subscribers, priority_reserve,
                                    ring_capacity, validate_channel_spec, validate_hook,
                                    validate_ordered, validate_window)
from ggmk.core.delivery import Delivery
from ggmk.core.replay import ReplayLog, ReplayMixin
from ggmk.core.subscriber import Subscriber
from ggmk.errors import ChannelError
from ggmk.events import EventType
from ggmk.task import (CHAN_ALREADY_BOUND, CHAN_CLOSED, CHAN_FULL, CHAN_NO_SUBSCRIBER,
                       CHAN_TYPE_MISMATCH, CHAN_UNKNOWN, FLAG_CHANNEL_MSG, FLAG_DETERMINISTIC,
                       PRIO_MASK, check_count)

_REC = T.RECORD_STRUCT            # one record as plain ints (emit_one)
_U32 = struct.Struct("<I")        # a record's type (offset 0) or seq (offset 12)
_M32 = 0xFFFF_FFFF

if TYPE_CHECKING:
    from ggmk.core.channel_registry import Channels


class Channel(Delivery, ReplayMixin):
    """A named, typed channel; see the module docstring. Create with ``system.open(...)`` or a
    module's ``produces``/``consumes`` declarations.

    ``ordered`` (default True; always False on a deterministic channel, which keeps its
    tick-boundary drain, and on the system channels): each handler subscriber gets its
    messages in channel-sequence order, one batch of at most ``max_batch`` in the scheduler at
    a time; a yielded or retried message is the exception (it comes back later). False: up to
    ``window`` in the scheduler, batches may run concurrently on several workers (throughput
    for a handler that does not care about order).

    With ``replay=N`` (lossless only) the replay log's half of the channel, admission against
    the log, eviction and catching a behind subscriber up, comes from
    :class:`~ggmk.core.replay.ReplayMixin`."""

    def __init__(self, reg: "Channels", cid: int, name: str, type_id: int, *, mode: str = "p2p",
                 guarantee: str = "lossless", capacity: int = DEFAULT_CAPACITY, replay: int = 0,
                 error_handler=None, window: int | None = None, deterministic: bool = False,
                 system: bool = False, ordered: bool | None = None):
        validate_channel_spec(name, mode, guarantee)
        self.reg = reg
        self.kernel = reg.kernel
        self.id = cid
        self.name = name
        self.type_id = type_id               # 0: any type (system channels)
        self.mode = mode
        self.guarantee = guarantee
        self.lossy = guarantee == "lossy"
        self.capacity = ring_capacity(capacity)
        self.reserve = priority_reserve(self.capacity)
        self.replay = int(replay)
        self.log = ReplayLog.sized(self.replay) if self.replay > 0 and not self.lossy else None
        self.error_handler = error_handler
        self.window = window
        self.det = deterministic             # holds messages until the tick boundary
        self.system = system
        # ordered (default): each handler subscriber sees its messages in channel order, one
        # batch in the scheduler at a time. Deterministic channels keep their tick drain.
        ordered = validate_ordered(name, ordered)
        self.ordered = (not deterministic and not system) if ordered is None else (
            ordered and not deterministic)
        self._osubs: dict[int, Subscriber] = {}   # ordered handler subscribers by handler type
        self.lock = threading.Lock()
        self.subs: list[Subscriber] = []
        self.seq = 0                         # last channel sequence handed out
        self.committed = 0
        self.granted = 0                     # emit credit handed to worker emitters
        self.held: list[np.ndarray] = []     # deterministic: waiting for the tick boundary
        # deterministic, a host thread's publishes: waiting for System.run() (DetStage.
        # release_input), then held; counted in held_n (the room they take) meanwhile
        self.host_held: list[np.ndarray] = []
        self.held_n = 0
        self.closed = False
        self.suspended = False               # closed by suspend(), reopened by resume()
        # the kernel's clock (virtual on the sim HAL: the same seed, the same stats)
        self.t_open = self.kernel.clock()
        # metrics
        self.emitted = 0
        self.full = 0
        self.dropped = 0
        self.drop_reasons: dict[int, int] = {}

    def __repr__(self) -> str:
        return (f"Channel({self.name!r}, id={self.id}, type={self.type_id}, {self.mode}, "
                f"{self.guarantee}, subscribers={len(self.subs)})")

    # -- subscribing ----------------------------------------------------------------------------
    def subscribe(self, type=None, *, name: str | None = None, window: int | None = None,
                  ordered: bool | None = None, notify=None) -> Subscriber:
        """Add a subscriber. ``type``: the handler type its messages are delivered as (a name
        or id with a handler); None: a host-side subscriber read with ``sub.take()`` (block
        for messages with ``sub.wait(timeout)``; ``notify``: a cheap callable run after each
        delivery into its ring, see :meth:`Subscriber.add_notify`).
        ``ordered``: this subscriber's delivery order (default: the channel's ``ordered``).
        Raises ChannelError(CHAN_ALREADY_BOUND) for a second p2p subscriber or a 33rd fan-out one."""
        k = self.kernel
        window = validate_window(self.name, window)
        ordered = validate_ordered(self.name, ordered)
        validate_hook(self.name, "notify", notify, "called with no arguments after each "
                      "delivery")
        tid = 0
        if type is not None:
            tid = k.type_id(type)
            if k.handler_of[tid] is None:
                raise ChannelError(f"channel {self.name!r}: cannot subscribe type "
                                   f"{k.type_name(tid)!r}: no handler is registered for it",
                                   CHAN_UNKNOWN)
        with self.lock:
            if self.closed:
                raise ChannelError(f"channel {self.name!r} is closed", CHAN_CLOSED)
            if len(self.subs) >= max_subscribers(self.mode):
                raise ChannelError(
                    f"channel {self.name!r} is {self.mode} and already has {len(self.subs)} "
                    f"subscriber(s) ({', '.join(s.name for s in self.subs)}); "
                    + ("declare mode='fanout' for more" if self.mode == "p2p"
                       else f"fan-out allows at most {MAX_FANOUT}"), CHAN_ALREADY_BOUND)
            if tid and any(s.type_id == tid for s in self.subs):
                raise ChannelError(
                    f"channel {self.name!r}: handler type {k.type_name(tid)!r} is already "
                    f"subscribed to it; a type subscribes to a channel once (deliveries and "
                    f"ordered bookkeeping are per type)", CHAN_ALREADY_BOUND)
            win = window or self.window or max(2 * k.max_batch, 256)
            ordered = self.ordered if ordered is None else (ordered and not self.det)
            sub = Subscriber(self, tid, name or (k.type_name(tid) if tid else "host"), win,
                             ordered=bool(tid) and ordered)
            if notify is not None:
                sub.add_notify(notify)
            self.subs.append(sub)
            self._osubs = {s.type_id: s for s in self.subs if s.ordered}
        self.reg._rebuild()
        self.reg._trace(EventType.CHAN_OPEN, self.type_id, self.id, len(self.subs))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Remove a subscriber; what its ring still holds goes to sys.dropped (CHAN_CLOSED)."""
        with self.lock:
            if sub not in self.subs:
                return
            self.subs.remove(sub)
            self._osubs = {s.type_id: s for s in self.subs if s.ordered}
            self._flush_sub(sub, CHAN_CLOSED)
            self._log_evict(force=False)
        self.reg._rebuild()

    # -- admission ------------------------------------------------------------------------------
    def _room(self, prio0: bool) -> int:
        """Messages of one priority class the channel can accept now (under the lock)."""
        if self.lossy or not self.subs:
            return 1 << 30
        res = 0 if prio0 else self.reserve
        if self.log is not None:
            return self._log_room(res)      # replay: the log's room binds (core/replay.py)
        free = min(s.ring.capacity - len(s.ring) for s in self.subs)
        return free - res - self.granted - self.held_n

    def room(self) -> int:
        """How many priority-0 messages the channel could accept now (0 when full; a lossy
        channel, or one without subscribers, takes any number: 2**30). An estimate read
        without the lock, the emit decides: what a producer with a backlog sizes its next
        emit by."""
        try:
            return max(0, self._room(True))
        except ValueError:         # (the last subscriber left meanwhile: min() of nothing)
            return 1 << 30

    def wait_room(self, timeout: float | None = None) -> bool:
        """Block until the channel could accept a priority-0 message: True; False when
        ``timeout`` seconds passed first or the channel is closed for good. A suspended channel
        (the bridge's, while the GPU kernel is reset) is waited out: its producers get room
        again once it resumes (it answered False at once, and the documented loop below
        raised on every reset while a loop that went on spun). What a host producer with a
        backlog does on CHAN_FULL instead of polling with sleeps: each pop from a subscriber
        ring wakes it (``Ring.on_free``, then the HAL's host wait, which also runs a parked
        worker's steps on this thread while the system is idle and steps the workers on
        ``sim``).

        Example::

            while off < n:
                off += ch.publish(meta0=col[off:], count=n - off)
                if off < n and not ch.wait_room(timeout=10):
                    raise TimeoutError(f"{ch.name}: no room for 10 s")
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or not timeout >= 0):
            raise ValueError(f"channel {self.name!r}: wait_room(timeout={timeout!r}): allowed "
                             f"None or a number of seconds >= 0")
        if self.closed and not self.suspended:
            return False
        if not self.closed and self.room() > 0:
            return True
        hal = self.kernel.hal
        for sub in self.subs:       # (left set: from now on a pop costs one call more)
            sub.ring.on_free = hal.notify_host
        return hal.wait(lambda: (not self.suspended if self.closed else self.room() > 0),
                        timeout) and not self.closed

    def _check_types(self, recs: np.ndarray) -> None:
        # (one record, a round trip's: an index instead of a ~1.5 us .any())
        if self.type_id and (recs["type"][0] != self.type_id if len(recs) == 1
                             else np.count_nonzero(recs["type"] != self.type_id)):
            bad = recs[recs["type"] != self.type_id]
            k = self.kernel
            got = sorted({k.type_name(int(t)) for t in np.unique(bad["type"])})
            copy = bad.copy()
            copy["payload_ptr"] = 0       # not accepted: the caller still owns the payload
            copy["channel"] = self.id
            self.reg.to_sys_dropped(copy, CHAN_TYPE_MISMATCH, count_on=self)
            raise ChannelError(
                f"channel {self.name!r} carries {k.type_name(self.type_id)!r} but "
                f"{len(bad)} record(s) of type {', '.join(repr(g) for g in got)} were emitted on "
                f"it (CHAN_TYPE_MISMATCH; copies are on sys.dropped)", CHAN_TYPE_MISMATCH)

    # -- emitting -------------------------------------------------------------------------------
    def emit(self, recs: np.ndarray, *, built: bool = False, prio: int | None = None) -> int:
        """Batch emit (the hot path). Returns how many records were accepted: all of them on a
        lossy channel, a prefix on a lossless one (the rest got CHAN_FULL; the caller still owns
        their payloads). 0 on a closed channel. ``recs`` is consumed (its header is stamped).
        A record of the wrong type raises ChannelError(CHAN_TYPE_MISMATCH), accepting nothing.

        ``built=True`` (the runtime's own callers): the records were made for this channel, of
        its type, with ``channel`` and FLAG_CHANNEL_MSG set, so those column passes are skipped;
        ``prio`` says every record has that priority (skips the reserve's per-record check)."""
        n = len(recs)
        if n == 0:
            return 0
        if not built:
            self._check_types(recs)
        k = 0
        for attempt in (0, 1):
            with self.lock:
                if self.closed:
                    return 0
                k = self._admit(recs, prio)
                if k:
                    acc = recs[:k] if k < n else recs
                    self._stamp_commit(acc, built)
            if k or attempt or self.lossy:
                break
            self.reg._drain_channel(self)   # make room, then try once more
        if k < n:
            self._count_full(n - k, recs[k:k + 1])
        if k and not self.det:
            self._drain_channel()
        return k

    def emit_one(self, tid: int, fl: int, tenant: int, ptr: int, plen: int, meta0, meta1,
                 seq: int = 0) -> int:
        """Emit one message; returns OK, CHAN_FULL or CHAN_CLOSED (then the caller keeps the
        payload).

        The usual case (a lossless channel without a replay log, not deterministic, open,
        with room in every subscriber's ring, the message of the channel's type) is what
        ``emit`` does for one record, with plain ints: the record is packed once as bytes,
        given its channel seq under the lock and copied into each ring (retyped to a handler
        subscriber's type), the payload retained once per extra subscriber, then drained.
        Why: a request's reply is one record, and ``emit``'s NumPy column passes, plan list
        and generator cost several times what the copy does. Anything else (full, closed, a
        log, lossy, a behind subscriber, a word out of range) takes ``emit``'s general path."""
        if self.log is None and not self.det and not self.lossy and (
                tid == self.type_id or not self.type_id) and not (
                fl & FLAG_DETERMINISTIC and self.kernel.det is not None):
            try:
                buf = bytearray(_REC.pack(tid, fl | FLAG_CHANNEL_MSG, tenant, self.id, 0, ptr,
                                          plen, 0, 0, meta0, meta1))
            except struct.error:
                buf = None                # a bad word: make() names it
            if buf is not None:
                subs = self.subs
                done = False
                with self.lock:
                    if not self.closed and subs:
                        room = 1 << 62
                        for sub in subs:
                            r = sub.ring
                            free = r.capacity - (r.tail - r.head)
                            if sub.behind:
                                free = 0
                            if free < room:
                                room = free
                        room -= self.granted + self.held_n
                        if fl & PRIO_MASK:
                            room -= self.reserve
                        if room > 0:
                            self.seq += 1
                            q = self.seq & _M32
                            self.emitted += 1
                            self.committed = self.seq
                            _U32.pack_into(buf, 12, q)
                            if ptr and len(subs) > 1:   # references first: a subscriber may
                                self.kernel.arena.retain(ptr, len(subs) - 1)   # release at once
                            cur = tid
                            for sub in subs:
                                t = sub.type_id or tid
                                if t != cur:
                                    _U32.pack_into(buf, 0, t)
                                    cur = t
                                sub.ring.push1(buf)
                                sub.next = self.seq + 1
                            done = True
                if done:
                    if not self.kernel.tracer.quiet_all:     # (CHAN_EMIT is level all)
                        self.reg._trace(EventType.CHAN_EMIT, self.type_id, self.id, 1)
                    self._drain_channel()
                    return 0
        recs = T.make(1, type=tid, flags=fl | FLAG_CHANNEL_MSG, tenant=tenant, channel=self.id,
                      seq=seq, payload_ptr=ptr, payload_len=plen, meta0=meta0, meta1=meta1)
        if self.emit(recs, built=tid == self.type_id, prio=fl & PRIO_MASK):
            return 0
        return CHAN_CLOSED if self.closed else CHAN_FULL

    def publish(self, meta0=0, meta1=0, *, payload=None, priority: int = 0, tenant: int = 0,
                count: int | None = None, type=None) -> int:
        """Host-side emit: build the records (keywords take scalars or columns) and emit them.
        Returns OK for one message, or CHAN_FULL / CHAN_CLOSED; for ``count`` > 1 the accepted
        count, a prefix (publish the rest again: only what the channel has room for is built,
        so a loop over a big column into a small channel costs the records accepted, not the
        column per call). A payload (bytes, array or dict) is copied into the arena (one per
        call)."""
        if count is None and type is None and meta0.__class__ is int \
                and meta1.__class__ is int and priority.__class__ is int and \
                0 <= priority <= PRIO_MASK and tenant.__class__ is int:
            # one message of plain ints (a request, a tick, a round trip), with or without a
            # payload: emit_one packs it as bytes (bad words fall back to make(), which names
            # them)
            if payload is None:
                return self.emit_one(self.type_id, priority, tenant, 0, 0, meta0, meta1)
            return self._publish_one(payload, priority, tenant, meta0, meta1)
        k = self.kernel
        tid = self.type_id if type is None else k.type_id(type)
        n = n0 = check_count(count, meta0, meta1)
        if n > 1:
            n, (meta0, meta1, priority, tenant) = self._fitting(n, meta0, meta1, priority, tenant)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = k.store_payload(tid, payload)
            if n > 1:
                k.arena.retain(ptr, n - 1)
        try:
            recs = T.make(n, type=tid, priority=priority, tenant=tenant, payload_ptr=ptr,
                          payload_len=plen, meta0=meta0, meta1=meta1)
            acc = self.emit(recs)
        except BaseException:              # (a bad word or column: nothing accepted)
            if ptr:
                k.arena.release(ptr, n)
            raise
        if ptr and acc < n:
            k.arena.release(ptr, n - acc)
        if count is None and n0 == 1:
            return 0 if acc else (CHAN_CLOSED if self.closed else CHAN_FULL)
        return acc

    def _publish_one(self, payload, priority: int, tenant: int, meta0: int, meta1: int) -> int:
        """``publish`` of one message with a payload: stored, then ``emit_one``; a refused
        message gives its payload back."""
        arena = self.kernel.arena
        ptr, plen = self.kernel.store_payload(self.type_id, payload)
        try:
            code = self.emit_one(self.type_id, priority, tenant, ptr, plen, meta0, meta1)
        except BaseException:              # (a bad word, named by make(): nothing accepted)
            arena.release(ptr)
            raise
        if code:
            arena.release(ptr)
        return code

    def _fitting(self, n: int, *cols) -> tuple:
        """``publish``'s columns cut to the records the channel has room for now (at least
        one: its emit then makes room if it can): a big column published into a small channel
        would otherwise build every record on every call, only to have a prefix accepted
        (the caller publishes the rest again: ``publish`` returns the accepted count). The
        room is read without the lock, an estimate: the emit's admission decides. Columns of
        another length are left as they are, for ``make`` to name."""
        m = self.room()
        if m >= n:
            return n, cols
        m = max(1, m)
        out = []
        for v in cols:
            if v.__class__ is not int and np.ndim(v):
                if len(v) != n:
                    return n, cols
                v = v[:m]
            out.append(v)
        return m, out

    def _admit(self, recs: np.ndarray, prio: int | None = None) -> int:
        """How many of ``recs`` (a prefix) fit now (under the lock)."""
        n = len(recs)
        if self.lossy or not self.subs:
            return n
        room0 = self._room(True)
        if room0 <= 0:
            return 0
        room_hi = room0 - self.reserve
        if prio is not None:
            return min(n, room0) if prio == 0 else max(0, min(n, room_hi))
        if n == 1:
            return min(1, room0) if not recs["flags"][0] & PRIO_MASK else max(0, min(1, room_hi))
        pr = recs["flags"] & PRIO_MASK
        hi = np.count_nonzero(pr)
        if not hi:
            return min(n, room0)
        if hi == n:
            return max(0, min(n, room_hi))
        need = np.arange(1, n + 1)
        ok = need <= np.where(pr == 0, room0, room_hi)
        return n if ok.all() else int(np.argmin(ok))

    def _count_full(self, n: int, first: np.ndarray) -> None:
        self.full += n
        self.reg._trace(EventType.CHAN_FULL, self.type_id, self.id, n)

    def _stamp_commit(self, recs: np.ndarray, built: bool = False) -> None:
        """Stamp accepted records and hand them to the rings (under the lock)."""
        n = len(recs)
        if not built:
            recs["channel"] = self.id
            recs["flags"] |= FLAG_CHANNEL_MSG
        self.emitted += n
        if not self.kernel.tracer.quiet_all:     # one CHAN_EMIT per emit call (level all)
            self.reg._trace(EventType.CHAN_EMIT, self.type_id, self.id, n)
        if not self.det and self.kernel.det is not None and not self.system and np.count_nonzero(
                recs["flags"] & FLAG_DETERMINISTIC):
            self._det_message(recs)
        if self.det:
            self.held_n += n
            det = self.kernel.det
            if det is not None and det.from_host is not None and not np.count_nonzero(
                    recs["flags"] & FLAG_DETERMINISTIC) and det.from_host():
                # host input: which tick it belongs to is run()'s, not the first idle
                # worker's to open a boundary (the hash then depended on the HAL and timing).
                # (Flagged records come from deterministic work, placed already: the
                # bridge's fence delivery, on whatever thread the pump emits them)
                recs = T.copy(recs)
                recs["seq"] = 0                  # no parent: publish order
                if not self.host_held:
                    with det.staged_lock:
                        det.staged_chans.append(self)
                self.host_held.append(recs)
                return
            self.held.append(T.copy(recs))       # seq: the parent's, for canonical order
            return
        s = self.seq
        # (the u4 column keeps the low 32 bits, as the int64 column's cast does)
        recs["seq"] = (s + 1) & 0xFFFF_FFFF if n == 1 else np.arange(s + 1, s + n + 1,
                                                                      dtype=np.int64)
        self.seq = s + n
        self._deliver(recs)

    def _det_message(self, recs: np.ndarray) -> None:
        """A deterministic task's message on a channel that is not deterministic, in
        determinism mode (under the lock). Its subscribers' tasks would inherit the flag and
        run on the tick stage, but in the order the workers happened to emit, and an ordered
        subscriber would never see its batch finish (the stage renumbers seqs). So the channel
        becomes deterministic from here on: it holds its messages until the tick boundary and
        numbers them in canonical order, like a channel of a deterministic type (no ordered
        subscribers: the tick stage's order is the order). A channel with a replay log cannot
        (a deterministic channel has none): its messages lose the flag and are delivered as
        ordinary ones."""
        if self.log is not None:
            recs["flags"] &= ~FLAG_DETERMINISTIC & 0xFFFF
            return
        self.det = True
        self.ordered = False
        for sub in self.subs:
            sub.ordered = False
            sub.busy = 0
        self._osubs = {}
        self.reg._rebuild()

    def release_host(self) -> None:
        """Deterministic channel: what host threads published since the last ``run()`` joins
        the held messages, for the next tick boundary (``DetStage.release_input``, under the
        stage's lock)."""
        with self.lock:
            if self.host_held:
                self.held.extend(self.host_held)
                self.host_held = []

    def tick_boundary(self) -> None:
        """Deterministic channel: number what this tick emitted in canonical order (parent seq,
        then emit order) and move it all into the scheduler.

        While they move (out of ``held``, into the rings, into the scheduler) the system counts
        one task outstanding: ``held_n`` is 0 before the drain counts them, and a host waiting
        in ``run()`` must not see the system idle in between (it read the trace hash before
        the last tick had opened)."""
        sched = self.kernel.sched
        sched._count(1)
        try:
            self._tick_boundary()
        finally:
            sched.done(1)

    def _tick_boundary(self) -> None:
        with self.lock:
            if self.held:
                recs = T.concat(self.held) if len(self.held) > 1 else self.held[0]
                self.held = []
                self.held_n -= len(recs)        # (the host's, not released yet, stay counted)
                recs = recs[np.argsort(recs["seq"], kind="stable")]
                s = self.seq
                recs["seq"] = np.arange(s + 1, s + len(recs) + 1, dtype=np.int64)
                self.seq = s + len(recs)
                recs["flags"] |= FLAG_DETERMINISTIC
                self._deliver(recs)
        for sub in self.subs:
            if sub.type_id:
                self._drain_sub(sub, all_=True)

    def unwrap(self, seq):
        """The channel's own sequence number (unbounded, as ``seq``, ``committed`` and the
        subscribers' ``next``/``acked`` count) of ``seq``, a record's ``seq`` column (its low
        32 bits; an int or an array): the nearest at or below the last one handed out. A
        record in flight is always fewer than 2**32 messages behind it. Comparing the column
        itself broke after 2**32 messages: an ordered subscriber whose batch straddled the
        wrap never saw it finish, and a replay log took the wrap for 4 billion messages of
        room."""
        top = self.seq
        if isinstance(seq, np.ndarray):
            return top - ((top - seq.astype(np.int64)) & _M32)
        return top - ((top - seq) & _M32)

    def pending(self) -> int:
        """Messages the channel holds for handler subscribers (not yet in the scheduler)."""
        n = self.held_n
        for s in self.subs:
            if s.type_id:
                n += len(s.ring)
                if s.behind:
                    n += max(0, self.committed - s.next + 1)
        return n

    # -- suspending -----------------------------------------------------------------------------
    def suspend(self) -> bool:
        """Refuse new messages for a while without losing any: producers get CHAN_CLOSED
        (``emit`` accepts 0, ``publish`` returns CHAN_CLOSED) until :meth:`resume`; what the
        channel already accepted stays queued and subscribers keep receiving it. Why not
        ``close``: close drops what it holds and is for good. The bridge suspends its CPU -> GPU
        channels while the GPU kernel is reset, so their producers see the far side gone
        instead of filling a ring nobody reads. Taken under the channel lock: once this returns
        no emit can still be admitting. Returns False (nothing done) on a closed channel or one
        already suspended::

            ch.suspend()
            assert ch.publish(meta0=1) == CHAN_CLOSED
            ch.resume()
            assert ch.publish(meta0=1) == OK
        """
        with self.lock:
            if self.closed:
                return False
            self.suspended = True
            self.closed = True            # the flag every producer path already checks
            return True

    def resume(self) -> bool:
        """Accept messages again after :meth:`suspend`. Returns False if it was not suspended
        (a channel closed for good stays closed)."""
        with self.lock:
            if not self.suspended:
                return False
            self.suspended = False
            self.closed = False
        self.kernel.hal.notify_host()       # (a producer in wait_room waits for this)
        return True

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> int:
        """Close the channel: later emits get CHAN_CLOSED; every message it still holds goes to
        sys.dropped with CHAN_CLOSED (payload references released). Returns how many records
        that put on sys.dropped: one per subscriber copy not delivered (a message of a fan-out
        channel still held for two subscribers counts 2; one held without any subscriber, on
        sys.dropped once with CHAN_NO_SUBSCRIBER, counts 1), what halt's ``channel_dropped``
        adds up. A suspended channel is closed for good (no resume)."""
        with self.lock:
            if self.closed and not self.suspended:
                return 0
            self.suspended = False
            self.closed = True
            n = 0
            if self.held or self.host_held:
                recs = T.concat(self.held + self.host_held)
                self.held, self.host_held, self.held_n = [], [], 0
                # copies, as the subscribers' rings below count: one a subscriber (one for a
                # message without any), each a record on sys.dropped
                n += len(recs) * max(1, len(self.subs))
                # never delivered: each subscriber's copy is dropped; one reference to release
                for sub in self.subs or [None]:
                    self._drop(recs, CHAN_CLOSED if self.subs else CHAN_NO_SUBSCRIBER, sub,
                               release=False)
                if recs["payload_ptr"].any():
                    self.kernel.arena.release_many(recs["payload_ptr"])
            for sub in self.subs:
                n += self._flush_sub(sub, CHAN_CLOSED)
            if self.log is not None and len(self.log):
                self._release_log(self.log.pop(len(self.log)))
        self.reg._closed(self)
        self.reg._trace(EventType.CHAN_CLOSE, self.type_id, self.id, n)
        for sub in self.subs:
            if not sub.type_id:       # a host reader waiting for a message that cannot come
                sub.ring.signal()
        return n

    def _flush_sub(self, sub: Subscriber, code: int) -> int:
        """Drop everything a subscriber has not received yet (under the lock)."""
        # the drain lock too: a drainer holds only it between head_view and consume, so
        # without it a record could be both delivered and dropped (payload released twice).
        # Lock order: channel lock, then drain lock; a drainer holding the drain lock never
        # waits for the channel lock (_feed only try-acquires it, outside the drain lock).
        with sub.drain_lock:
            recs = sub.ring.pop(sub.ring.capacity)
        n = len(recs)
        self._drop(recs, code, sub, release=True)
        if sub.behind and self.log is not None:
            lo = max(sub.next, self.log.first)
            m = self.committed - lo + 1
            if m > 0:
                self._drop(self.log.get(lo, m), code, sub, release=False)
                n += m
            sub.behind = False
        return n

    # -- metrics --------------------------------------------------------------------------------
    def stats(self) -> dict:
        if self.log is not None:
            self._log_evict_acked(wait=True)
        dt = max((self.kernel.clock() - self.t_open) / 1e9, 1e-9)
        subs = [s.stats() for s in self.subs]
        return {
            "id": self.id, "name": self.name,
            "type": self.kernel.type_name(self.type_id) if self.type_id else "*",
            "mode": self.mode, "guarantee": self.guarantee, "capacity": self.capacity,
            "reserve": self.reserve, "closed": self.closed, "suspended": self.suspended,
            "deterministic": self.det,
            "depth": max((s["depth"] for s in subs), default=0) + self.held_n,
            "high_watermark": max((s["high_watermark"] for s in subs), default=0),
            "emitted": self.emitted, "emit_rate": self.emitted / dt, "seq": self.seq,
            "full": self.full, "dropped": self.dropped,
            "drop_reasons": {T.code_name(c): v for c, v in self.drop_reasons.items()},
            "subscribers": len(subs), "subs": subs,
            "replay": None if self.log is None else {
                "capacity": self.log.cap, "depth": len(self.log), "first_seq": self.log.first,
                "evicted": self.log.evicted},
        }


__all__ = ["Channel", "Subscriber"]
