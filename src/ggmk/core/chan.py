"""Channels (SPEC §5): named, typed pipes between modules, with nothing lost silently.

A :class:`Channel` carries one task type (or any type, for the system channels). Each subscriber
has its own record ring; emit copies records into the rings, and *drain* moves them from a ring
into THE enqueue core (``sched.enqueue(recs, Route.CHANNEL)``) retyped to the subscriber's
handler type, with ``channel`` = the channel id, ``FLAG_CHANNEL_MSG`` set and ``seq`` = the
channel sequence number (``ctx.chan_seq``; the core keeps ``seq`` on CHANNEL routes).

Modes and guarantees
--------------------
* ``p2p``: one subscriber (a second gets CHAN_ALREADY_BOUND), FIFO.
* ``fanout``: up to 32 subscribers; each gets its own copy of the 48-byte header, the payload is
  shared read-only: its reference count becomes the number of copies handed out, and each
  subscriber's handler return (or a drop) releases one.
* ``lossless``: emit is refused (CHAN_FULL, or a short count for batch emit) unless every
  subscriber's ring has room, so an accepted message is always delivered. The last 10% of each
  ring is kept for priority-0 messages. With ``replay=N`` the channel also keeps up to N
  messages in a replay log: a subscriber whose ring is full falls *behind* and is fed from the
  log as it drains instead of blocking the producer; the log evicts what every subscriber has
  acknowledged (drained into the scheduler, or taken), and emit is refused when the log is full
  of unacknowledged messages. A subscriber far behind the others (by half the log or more,
  while every other subscriber has caught up: acknowledged everything) no longer holds them
  back: the producer goes on, and what gets past its reach (its ring plus the log) is evicted
  past it: it degrades to lossy (those copies go to ``sys.dropped`` with CHAN_REPLAY_OVERFLOW,
  a REPLAY_OVERFLOW event is traced) until it catches up. Only that subscriber degrades: what
  every other one has not acknowledged stays in the log. While any other subscriber still has a
  backlog, the producer waits instead (subscribers that lag together, or by a scheduling
  hiccup, are not "far behind the others").
* ``lossy`` (drop-slow): emit always succeeds; a full subscriber's copy is dropped: traced
  (CHAN_DROP), put on ``sys.dropped`` with CHAN_FULL, its payload reference released.

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
boundary, then sort them by their parent's sequence, number them and drain them whole, in
ascending channel id order.

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

import difflib
import threading
import time

import numpy as np

from ggmk import task as T
from ggmk.core.ring import Ring
from ggmk.core.sched import Route
from ggmk.errors import ChannelError
from ggmk.events import EventType
from ggmk.task import (CHAN_ALREADY_BOUND, CHAN_CLOSED, CHAN_FULL, CHAN_REPLAY_OVERFLOW,
                       CHAN_TYPE_MISMATCH, CHAN_UNKNOWN, FLAG_CHANNEL_MSG, FLAG_DETERMINISTIC,
                       PRIO_MASK, TASK_DTYPE, check_count, empty, make, word)

CHAN_NO_SUBSCRIBER = -106           # accepted on a channel nobody subscribes to: undeliverable
T.CODE_NAMES.setdefault(CHAN_NO_SUBSCRIBER, "CHAN_NO_SUBSCRIBER")

MAX_FANOUT = 32
DEFAULT_CAPACITY = 4096
RESERVE_FRACTION = 10               # last 1/10 of a ring: priority 0 only
STAGE_CREDIT = 1024                # per-worker emit credit taken from a channel at once
SYS_CHANNELS = ("sys.error", "sys.dropped", "sys.trace", "sys.tick", "sys.heartbeat",
                "host.rx", "host.tx")
_SYS_TYPES = {"sys.trace": "SYS_TRACE", "sys.tick": "SYS_TICK", "sys.heartbeat": "SYS_HEARTBEAT"}
MODES = ("p2p", "fanout")
GUARANTEES = ("lossy", "lossless")


class Subscriber:
    """One subscriber of a channel: its ring, its handler type (0 = pulled by the host with
    :meth:`take`), and its position for replay (``next``: the next sequence its ring needs)."""

    __slots__ = ("chan", "type_id", "ring", "name", "next", "behind", "degraded", "acked",
                 "delivered", "dropped", "overflows", "drain_lock", "window", "ordered", "busy",
                 "b_lo", "b_hi", "busy_lock")

    def __init__(self, chan: "Channel", type_id: int, name: str, window: int,
                 ordered: bool = False):
        self.chan = chan
        self.type_id = type_id
        self.name = name
        self.ring = Ring(chan.capacity, name=f"{chan.name}->{name}")
        self.next = chan.committed + 1
        self.behind = False
        self.degraded = False
        self.acked = chan.committed
        self.delivered = 0
        self.dropped = 0
        self.overflows = 0
        self.drain_lock = threading.Lock()
        self.window = window
        # ordered delivery: at most one delivered batch in the scheduler at a time; ``busy``
        # counts its messages not finished yet, ``b_lo``..``b_hi`` its channel seqs
        self.ordered = ordered
        self.busy = 0
        self.b_lo = self.b_hi = 0
        self.busy_lock = threading.Lock()

    @property
    def pull(self) -> bool:
        return self.type_id == 0

    def take(self, max_n: int = 1 << 30) -> np.ndarray:
        """Pull up to ``max_n`` messages (host-side subscriber); acknowledges them."""
        return self.chan._take(self, max_n)

    def stats(self) -> dict:
        r = self.ring
        return {"name": self.name, "type": self.type_id, "depth": len(r),
                "high_watermark": r.high_watermark, "delivered": self.delivered,
                "dropped": self.dropped, "acked": self.acked, "behind": self.behind,
                "degraded": self.degraded, "replay_overflows": self.overflows,
                "ordered": self.ordered, "in_flight": self.busy if self.ordered else None}


class _Log:
    """The replay log: the last messages in sequence order (contiguous seqs)."""

    def __init__(self, capacity: int):
        self.cap = capacity
        self.buf = empty(capacity)
        self.head = 0           # monotonic positions
        self.tail = 0
        self.first = 1          # seq at head
        self.evicted = 0

    def __len__(self) -> int:
        return self.tail - self.head

    def append(self, recs: np.ndarray) -> None:
        n = len(recs)
        i = self.tail % self.cap
        first = min(n, self.cap - i)
        self.buf[i:i + first] = recs[:first]
        self.buf[:n - first] = recs[first:]
        if self.tail == self.head:
            self.first = int(recs["seq"][0])
        self.tail += n

    def get(self, seq: int, n: int) -> np.ndarray:
        start = self.head + (seq - self.first)
        idx = (start + np.arange(n)) % self.cap
        return self.buf[idx]

    def pop(self, n: int) -> np.ndarray:
        out = self.get(self.first, n)
        self.head += n
        self.first += n
        self.evicted += n
        return out


class Channel:
    """A named, typed channel; see the module docstring. Create with ``system.open(...)`` or a
    module's ``produces``/``consumes`` declarations.

    ``ordered`` (default True; always False on a deterministic channel, which keeps its
    tick-boundary drain, and on the system channels): each handler subscriber gets its
    messages in channel-sequence order, one batch of at most ``max_batch`` in the scheduler at
    a time; a yielded or retried message is the exception (it comes back later). False: up to
    ``window`` in the scheduler, batches may run concurrently on several workers (throughput
    for a handler that does not care about order)."""

    def __init__(self, reg: "Channels", cid: int, name: str, type_id: int, *, mode: str = "p2p",
                 guarantee: str = "lossless", capacity: int = DEFAULT_CAPACITY, replay: int = 0,
                 error_handler=None, window: int | None = None, deterministic: bool = False,
                 system: bool = False, ordered: bool | None = None):
        if mode not in MODES:
            raise ChannelError(f"channel {name!r}: mode must be 'p2p' or 'fanout', got {mode!r}",
                               CHAN_UNKNOWN)
        if guarantee not in GUARANTEES:
            raise ChannelError(f"channel {name!r}: guarantee must be 'lossy' or 'lossless', got "
                               f"{guarantee!r}", CHAN_UNKNOWN)
        self.reg = reg
        self.kernel = reg.kernel
        self.id = cid
        self.name = name
        self.type_id = type_id               # 0: any type (system channels)
        self.mode = mode
        self.guarantee = guarantee
        self.lossy = guarantee == "lossy"
        self.capacity = 1 << (max(int(capacity), 8) - 1).bit_length()
        self.reserve = max(1, self.capacity // RESERVE_FRACTION)
        self.replay = int(replay)
        self.log = (_Log(1 << (self.replay - 1).bit_length())
                    if self.replay > 0 and not self.lossy else None)
        self.error_handler = error_handler
        self.window = window
        self.det = deterministic             # holds messages until the tick boundary
        self.system = system
        # ordered (default): each handler subscriber sees its messages in channel order, one
        # batch in the scheduler at a time. Deterministic channels keep their tick drain.
        self.ordered = (not deterministic and not system) if ordered is None else (
            bool(ordered) and not deterministic)
        self._osubs: dict[int, Subscriber] = {}   # ordered handler subscribers by handler type
        self.lock = threading.Lock()
        self.subs: list[Subscriber] = []
        self.seq = 0                         # last channel sequence handed out
        self.committed = 0
        self.granted = 0                     # emit credit handed to worker stagers
        self.held: list[np.ndarray] = []     # deterministic: waiting for the tick boundary
        self.held_n = 0
        self.closed = False
        self.t_open = time.monotonic()
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
                  ordered: bool | None = None) -> Subscriber:
        """Add a subscriber. ``type``: the handler type its messages are delivered as (a name
        or id with a handler); None: a host-side subscriber read with ``sub.take()``.
        ``ordered``: this subscriber's delivery order (default: the channel's ``ordered``).
        Raises ChannelError(CHAN_ALREADY_BOUND) for a second p2p subscriber or a 33rd fan-out one."""
        k = self.kernel
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
            limit = 1 if self.mode == "p2p" else MAX_FANOUT
            if len(self.subs) >= limit:
                raise ChannelError(
                    f"channel {self.name!r} is {self.mode} and already has {len(self.subs)} "
                    f"subscriber(s) ({', '.join(s.name for s in self.subs)}); "
                    + ("declare mode='fanout' for more" if self.mode == "p2p"
                       else f"fan-out allows at most {MAX_FANOUT}"), CHAN_ALREADY_BOUND)
            win = window or self.window or max(2 * k.max_batch, 256)
            ordered = self.ordered if ordered is None else (bool(ordered) and not self.det)
            sub = Subscriber(self, tid, name or (k.type_name(tid) if tid else "host"), win,
                             ordered=bool(tid) and ordered)
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
            # replay: the log keeps every message some subscriber has not acknowledged, and a
            # subscriber whose ring is full is fed from it later, so the log's room binds
            cap = self.log.cap
            acks = [s.acked for s in self.subs]
            lo = min(acks)
            base = cap - self.committed - res - self.granted - self.held_n
            room = base + lo
            if room > 0:
                return room
            # The slowest subscriber is far behind when it lags by half the log or more while
            # every other one has caught up (acknowledged everything: they wait for the
            # producer, which waits for the slowest). Then it alone holds the channel and no
            # longer holds the others back: the producer goes on, and it degrades to lossy for
            # what gets past its reach (its ring plus the log). While any other subscriber
            # still has a backlog the producer waits (lossless backpressure): subscribers that
            # lag together (equally fast ones, consumer-bound, or two slow ones) or by a
            # scheduling hiccup are not far behind the others. Everyone else binds what the
            # log must keep, so it is only ever forced past the far-behind one. (This used to
            # size the room by ring room alone once the slowest was half a log behind the
            # fastest, ignoring the log: a burst pushed the log past subscribers that kept up;
            # they lost messages and the slow one did not.)
            committed = self.committed
            if committed - lo < cap // 2 or len(acks) < 2:
                return room
            behind = 0
            for a in acks:
                if a != committed:
                    behind += 1
                    if behind > 1:
                        return room
            return base + committed
        else:
            free = min(s.ring.capacity - len(s.ring) for s in self.subs)
        return free - res - self.granted - self.held_n

    def _check_types(self, recs: np.ndarray) -> None:
        if self.type_id and (recs["type"] != self.type_id).any():
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
        payload)."""
        recs = T.make(1, type=tid, flags=fl | FLAG_CHANNEL_MSG, tenant=tenant, channel=self.id,
                      seq=seq, payload_ptr=ptr, payload_len=plen, meta0=meta0, meta1=meta1)
        if self.emit(recs, built=tid == self.type_id, prio=fl & PRIO_MASK):
            return 0
        return CHAN_CLOSED if self.closed else CHAN_FULL

    def publish(self, meta0=0, meta1=0, *, payload=None, priority: int = 0, tenant: int = 0,
                count: int | None = None, type=None) -> int:
        """Host-side emit: build the records (keywords take scalars or columns) and emit them.
        Returns OK for one message, or CHAN_FULL / CHAN_CLOSED; for ``count`` > 1 the accepted
        count. A payload (bytes, array or dict) is copied into the arena (one per call)."""
        k = self.kernel
        tid = self.type_id if type is None else k.type_id(type)
        n = check_count(count, meta0, meta1)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = k.store_payload(tid, payload)
            if n > 1:
                k.arena.retain(ptr, n - 1)
        recs = T.make(n, type=tid, priority=priority, tenant=tenant, payload_ptr=ptr,
                      payload_len=plen, meta0=meta0, meta1=meta1)
        try:
            acc = self.emit(recs)
        except ChannelError:
            if ptr:
                k.arena.release(ptr, n)
            raise
        if ptr and acc < n:
            k.arena.release(ptr, n - acc)
        if count is None and n == 1:
            return 0 if acc else (CHAN_CLOSED if self.closed else CHAN_FULL)
        return acc

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
        pr = recs["flags"] & PRIO_MASK
        if not pr.any():
            return min(n, room0)
        if (pr != 0).all():
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
        if self.det:
            self.held.append(recs.copy())       # seq: the parent's, for canonical order
            self.held_n += n
            return
        s = self.seq
        recs["seq"] = np.arange(s + 1, s + n + 1, dtype=np.int64)
        self.seq = s + n
        self._deliver(recs)

    def _deliver(self, recs: np.ndarray) -> None:
        """Copy stamped, sequenced records into every subscriber's ring (under the lock)."""
        n = len(recs)
        self.committed = int(recs["seq"][-1])
        subs = self.subs
        if not subs:
            self._drop(recs, CHAN_NO_SUBSCRIBER, None, release=True)
            return
        k = self.kernel
        plan = []
        for sub in subs:
            if sub.behind:
                plan.append(0)
                continue
            free = sub.ring.capacity - len(sub.ring)
            if self.lossy:
                m = self._lossy_fit(recs, free)
            else:
                m = min(n, free)
            plan.append(m)
        ptrs = recs["payload_ptr"]
        if ptrs.any():
            # references first, pushes second: a subscriber may run and release at once
            copies = np.zeros(n, dtype=np.int64)
            for m in plan:
                if isinstance(m, np.ndarray):
                    copies += m
                else:
                    copies[:m] += 1
            if self.log is not None:
                copies += 1
            arena = k.arena
            for j in np.flatnonzero(ptrs):
                c = int(copies[j])
                if c > 1:
                    arena.retain(int(ptrs[j]), c - 1)
                elif c == 0:
                    arena.release(int(ptrs[j]))
        for sub, m in zip(subs, plan):
            if isinstance(m, np.ndarray):
                got, lost = recs[m], recs[~m]
            else:
                got, lost = (recs if m == n else recs[:m]), recs[m:]
            if len(got):
                if sub.type_id and sub.type_id != got["type"][0]:
                    got = got.copy()
                    got["type"] = sub.type_id
                sub.ring.push(got)
                if not sub.behind:
                    sub.next = int(got["seq"][-1]) + 1
            if len(lost):
                if self.log is not None and not self.lossy:
                    sub.behind = True      # the log holds its copies; it catches up on drain
                else:
                    self._drop(lost, CHAN_FULL, sub, release=False)
        if self.log is not None:
            self._log_append(recs)

    def _lossy_fit(self, recs: np.ndarray, free: int):
        """Drop-slow admission for one ring: an int prefix when simple, else a bool mask."""
        n = len(recs)
        pr = recs["flags"] & PRIO_MASK
        if not pr.any():
            return min(n, free)
        lim_hi = free - self.reserve
        if (pr != 0).all():
            return max(0, min(n, lim_hi))
        mask = np.zeros(n, dtype=bool)
        used = 0
        for j, p in enumerate(pr.tolist()):
            if used < (free if p == 0 else lim_hi):
                mask[j] = True
                used += 1
        return mask

    def _drop(self, recs: np.ndarray, code: int, sub: Subscriber | None, *, release: bool) -> None:
        """Copies that will not be delivered: sys.dropped with ``code`` (payload ref released
        when ``release``; a copy that never got a reference passes release=False)."""
        n = len(recs)
        if n == 0:
            return
        out = recs.copy()
        if sub is not None:
            sub.dropped += n
            if sub.type_id:
                out["type"] = sub.type_id     # whose copy it was
        if release and out["payload_ptr"].any():
            self.kernel.arena.release_many(out["payload_ptr"])
        out["payload_ptr"] = 0
        self.reg.to_sys_dropped(out, code, count_on=self)
        ev = EventType.REPLAY_OVERFLOW if code == CHAN_REPLAY_OVERFLOW else EventType.CHAN_DROP
        self.reg._trace(ev, self.type_id, self.id, code & 0xFFFFFFFF, recs=out)

    # -- replay log -----------------------------------------------------------------------------
    def _log_append(self, recs: np.ndarray) -> None:
        log = self.log
        n = len(recs)
        if len(log) + n > log.cap:
            self._log_evict(force=False)
        over = len(log) + n - log.cap
        if over > 0 and len(log):
            self._log_force(min(over, len(log)))
        if n > log.cap:                        # bigger than the whole log: keep the newest
            extra = n - log.cap
            log.evicted += extra
            self._log_force_recs(recs[:extra])
            recs = recs[extra:]
        log.append(recs)

    def _log_evict(self, force: bool) -> None:
        """Evict log entries every subscriber has acknowledged."""
        log = self.log
        if log is None or not len(log):
            return
        low = min((s.acked for s in self.subs), default=self.committed)
        k = min(len(log), low - log.first + 1)
        if k > 0:
            gone = log.pop(k)
            self._release_log(gone)

    def _log_evict_acked(self, wait: bool = False) -> None:
        """Evict what every subscriber acknowledged. A drainer (``wait=False``) skips it when
        the lock is taken: the next drain, an append that needs room or ``stats`` evicts."""
        log = self.log
        if len(log) and min((s.acked for s in self.subs), default=self.committed) >= log.first:
            if self.lock.acquire(wait):
                try:
                    self._log_evict(force=False)
                finally:
                    self.lock.release()

    def _log_force(self, k: int) -> None:
        gone = self.log.pop(k)
        self._log_force_recs(gone, popped=True)

    def _log_force_recs(self, gone: np.ndarray, popped: bool = False) -> None:
        """Evict entries some behind subscriber still needs: it degrades to lossy for them."""
        if not len(gone):
            return
        last = int(gone["seq"][-1])
        for sub in self.subs:
            if sub.behind and sub.next <= last:
                lost = gone[gone["seq"] >= sub.next]
                sub.next = last + 1
                sub.overflows += len(lost)
                sub.degraded = True
                self._drop(lost, CHAN_REPLAY_OVERFLOW, sub, release=False)
        self._release_log(gone)   # the log's own reference (taken at delivery)

    def _release_log(self, gone: np.ndarray) -> None:
        p = gone["payload_ptr"]
        if p.any():
            self.kernel.arena.release_many(p)

    def _catch_up(self, sub: Subscriber) -> None:
        """Feed a behind subscriber's ring from the log (under the lock)."""
        log = self.log
        if sub.next < log.first:             # the log moved past it: those were dropped
            sub.next = log.first
        avail = self.committed - sub.next + 1
        room = sub.ring.capacity - len(sub.ring)
        m = min(avail, room)
        if m > 0:
            got = log.get(sub.next, m)
            p = got["payload_ptr"]
            if p.any():
                for ptr in p[p != 0].tolist():
                    self.kernel.arena.retain(ptr)
            if sub.type_id:
                got["type"] = sub.type_id
            sub.ring.push(got)
            sub.next += m
        if sub.next > self.committed:
            sub.behind = False
            if sub.degraded:
                sub.degraded = False
                self.reg._trace(EventType.REPLAY_OVERFLOW, self.type_id, self.id, 0)

    # -- draining -------------------------------------------------------------------------------
    def _drain_channel(self) -> int:
        n = 0
        for sub in self.subs:
            if sub.type_id:
                n += self._drain_sub(sub)
        return n

    def _inflight(self, t: int) -> int:
        n = 0
        for rq in self.kernel.sched.tenants.values():
            b = rq.buckets.get(t)
            if b is not None:
                n += b.size
        return n

    def _drain_sub(self, sub: Subscriber, all_: bool = False) -> int:
        """Move a subscriber's messages into the enqueue core (FIFO: one drainer at a time).

        A drainer never waits for the channel lock: a busy producer retakes it again and again,
        and Python's locks are not fair, so a worker waiting for it (holding the subscriber's
        drain lock, as it used to) could wait for milliseconds. Nobody could drain that
        subscriber meanwhile; it fell a whole log behind subscribers just as fast as it and was
        degraded. So a behind subscriber is fed from the log only when the lock is free (see
        :meth:`_feed`), and acknowledged log entries are evicted the same way."""
        if sub.ordered:
            return self._drain_ordered(sub)
        total = 0
        while True:
            if sub.behind:
                self._feed(sub)
            if not sub.drain_lock.acquire(False):
                break
            try:
                n = self._drain_ring(sub, all_)
            finally:
                sub.drain_lock.release()
            total += n
            if not n or not sub.behind:
                break                   # behind: more is waiting in the log
        if total and self.log is not None:
            self._log_evict_acked()
        return total

    def _feed(self, sub: Subscriber) -> None:
        """Feed a behind subscriber's ring from the log if the channel lock is free. When it is
        not, its holder is an emitter, which drains every subscriber after its emit (or a
        drainer, which will release it soon: an idle worker drains again within a step)."""
        if self.lock.acquire(False):
            try:
                if sub.behind:
                    self._catch_up(sub)
            finally:
                self.lock.release()

    def _drain_ring(self, sub: Subscriber, all_: bool) -> int:
        """Drain what the ring holds, up to the subscriber's window (holding its drain lock)."""
        total = 0
        ring = sub.ring
        while ring.tail != ring.head:
            credit = (1 << 30) if all_ else sub.window - self._inflight(sub.type_id)
            if credit <= 0:
                break
            # in place: the enqueue core copies them into the ready queue, then they are
            # consumed (one copy per delivery instead of two)
            recs = ring.head_view(credit)
            n = len(recs)
            if not n:
                break
            sub.delivered += n
            sub.acked = int(recs["seq"][-1]) if not self.det else sub.acked + n
            self.kernel.sched.enqueue(recs, Route.CHANNEL)
            ring.consume(n)
            total += n
            if n >= credit:
                break                   # else: the view stopped at the buffer's end
        return total

    def _drain_ordered(self, sub: Subscriber) -> int:
        """Ordered subscriber: hand the scheduler one batch (at most ``max_batch`` messages,
        one tenant and priority, so the ready queue keeps it whole and one worker pops it), and
        the next only once ``on_batch_done`` says that one is finished. Two workers can then
        never run two of its batches at once, so its handler sees channel-sequence order."""
        total = 0
        if sub.behind and sub.busy:
            self._feed(sub)             # fill its ring meanwhile: the log is forced past it later
        while not sub.busy:
            if sub.behind:
                self._feed(sub)
            if not sub.drain_lock.acquire(False):
                break
            n = 0
            try:
                if not sub.busy:
                    n = self._deliver_one(sub)
            finally:
                sub.drain_lock.release()
            total += n
            # loop: a batch that finished while we held the drain lock could not deliver the
            # next one (its worker's try-acquire failed), so look again unless the ring is
            # empty (behind with the channel lock taken: its holder drains, see _feed)
            if not n and sub.ring.tail == sub.ring.head:
                break
        if total and self.log is not None:
            self._log_evict_acked()
        return total

    def _deliver_one(self, sub: Subscriber) -> int:
        ring = sub.ring
        if ring.tail == ring.head:
            return 0
        recs = ring.head_view(min(self.kernel.max_batch, sub.window))
        n = len(recs)
        if n > 1:
            # one tenant and one priority: the ready queue splits a batch by those, and two
            # pieces could run on two workers at once
            ten = recs["tenant"]
            pri = recs["flags"] & PRIO_MASK
            diff = (ten != ten[0]) | (pri != pri[0])
            if diff.any():
                n = int(np.argmax(diff))
                recs = recs[:n]
        seq = recs["seq"]
        last = int(seq[-1])
        sub.b_lo, sub.b_hi = int(seq[0]), last
        sub.busy = n                    # before the enqueue: a worker may finish it at once
        sub.delivered += n
        sub.acked = last
        acc = self.kernel.sched.enqueue(recs, Route.CHANNEL)
        ring.consume(n)
        if acc < n:                     # refused ones went to sys.error: they never finish
            with sub.busy_lock:
                sub.busy = max(0, sub.busy - (n - acc))
        return n

    def _batch_done(self, sub: Subscriber, recs: np.ndarray) -> None:
        """``recs`` (one worker batch of ``sub``'s handler type from this channel) finished."""
        n = len(recs)
        seq = recs["seq"]
        lo, hi = sub.b_lo, sub.b_hi
        if n == sub.busy and int(seq[0]) == lo and int(seq[-1]) == hi:
            done = n                    # the usual case: the whole in-flight batch
        else:                           # a piece of it, or other messages of the same type
            done = int(((recs["channel"] == self.id) & (seq >= lo) & (seq <= hi)).sum())
            if not done:
                return
        with sub.busy_lock:
            left = sub.busy - done
            sub.busy = left if left > 0 else 0
        if left <= 0:
            self._drain_ordered(sub)

    def _take(self, sub: Subscriber, max_n: int) -> np.ndarray:
        if sub.behind:
            with self.lock:
                self._catch_up(sub)
        recs = sub.ring.pop(max_n)
        if len(recs):
            sub.delivered += len(recs)
            sub.acked = int(recs["seq"][-1])
            if self.log is not None:
                with self.lock:
                    self._log_evict(force=False)
        return recs

    def tick_boundary(self) -> None:
        """Deterministic channel: number what this tick emitted in canonical order (parent seq,
        then emit order) and move it all into the scheduler."""
        with self.lock:
            if self.held:
                recs = np.concatenate(self.held) if len(self.held) > 1 else self.held[0]
                self.held = []
                self.held_n = 0
                recs = recs[np.argsort(recs["seq"], kind="stable")]
                s = self.seq
                recs["seq"] = np.arange(s + 1, s + len(recs) + 1, dtype=np.int64)
                self.seq = s + len(recs)
                recs["flags"] |= FLAG_DETERMINISTIC
                self._deliver(recs)
        for sub in self.subs:
            if sub.type_id:
                self._drain_sub(sub, all_=True)

    def pending(self) -> int:
        """Messages the channel holds for handler subscribers (not yet in the scheduler)."""
        n = self.held_n
        for s in self.subs:
            if s.type_id:
                n += len(s.ring)
                if s.behind:
                    n += max(0, self.committed - s.next + 1)
        return n

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> int:
        """Close the channel: later emits get CHAN_CLOSED; every message it still holds goes to
        sys.dropped with CHAN_CLOSED (payload references released). Returns how many."""
        with self.lock:
            if self.closed:
                return 0
            self.closed = True
            n = 0
            if self.held:
                recs = np.concatenate(self.held)
                self.held, self.held_n = [], 0
                n += len(recs)
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
        return n

    def _flush_sub(self, sub: Subscriber, code: int) -> int:
        """Drop everything a subscriber has not received yet (under the lock)."""
        # no drain lock here (a drainer holds it while taking ours): a record is popped once,
        # by the drainer (delivered) or by us (dropped)
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
        dt = max(time.monotonic() - self.t_open, 1e-9)
        subs = [s.stats() for s in self.subs]
        return {
            "id": self.id, "name": self.name,
            "type": self.kernel.type_name(self.type_id) if self.type_id else "*",
            "mode": self.mode, "guarantee": self.guarantee, "capacity": self.capacity,
            "reserve": self.reserve, "closed": self.closed, "deterministic": self.det,
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


class SysChannel(Channel):
    """``sys.error`` / ``sys.dropped``: fan-out, never blocks the kernel. Records are kept with
    their reason code in a bounded store until ``system.dead_letters`` takes them (overflow is
    counted as ``rejected`` in stats); handler subscribers also get a copy (lossy) whose
    ``_pad`` holds the reason (``ctx.reason``)."""

    def __init__(self, reg, cid, name, store):
        super().__init__(reg, cid, name, 0, mode="fanout", guarantee="lossy",
                         capacity=store.capacity, system=True)
        self.store = store

    def put(self, recs: np.ndarray, codes) -> None:
        n = len(recs)
        if n == 0:
            return
        self.store.push_coded(recs, codes)
        self.emitted += n
        if self.subs:
            out = recs.copy()
            out["channel"] = self.id
            out["flags"] |= FLAG_CHANNEL_MSG
            out["_pad"] = np.broadcast_to(np.asarray(codes, dtype=np.int64), (n,)) & 0xFFFF
            with self.lock:
                s = self.seq
                out["seq"] = np.arange(s + 1, s + n + 1, dtype=np.int64)
                self.seq = s + n
                self.committed = self.seq
                for sub in self.subs:
                    got = out.copy() if sub.type_id else out
                    if sub.type_id:
                        got["type"] = sub.type_id
                    k = sub.ring.push(got)
                    sub.dropped += n - k          # never blocks: the overflow is counted

    def emit(self, recs: np.ndarray) -> int:
        recs = recs.copy()
        if recs["payload_ptr"].any():
            self.kernel.arena.release_many(recs["payload_ptr"])
            recs["payload_ptr"] = 0
        self.put(recs, T.FAIL)
        return len(recs)

    def take_coded(self, max_n: int):
        return self.store.pop_coded(max_n)

    def stats(self) -> dict:
        d = super().stats()
        st = self.store.stats()
        d.update(stored=st["depth"], overflow=st["rejected"])
        return d


class Channels:
    """The channel registry of one CPU kernel: names to ids, open/get/close, the system
    channels, dead letters, draining and per-channel metrics.

    ``open(..., ordered=None)``: see :class:`Channel` (None: the default, True unless the
    channel is deterministic). ``on_batch_done(recs)`` is the worker's hook after every
    finished batch of channel messages: it lets an ordered subscriber's next batch go."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.by_name: dict[str, Channel] = {}
        self.by_id: dict[int, Channel] = {}
        self._next_id = 1
        self.lock = threading.Lock()
        self._hot: list[Channel] = []        # channels with handler subscribers (drain targets)
        self._det: list[Channel] = []        # deterministic ones, ascending id
        self._ordered: dict[int, Channel] = {}   # id -> channel with ordered handler subscribers
        self.closed: list[Channel] = []
        self.sys_error = self._add(SysChannel(self, self._take_id(), "sys.error", kernel.sys_error))
        self.sys_dropped = self._add(SysChannel(self, self._take_id(), "sys.dropped",
                                                kernel.sys_dropped))
        for name in SYS_CHANNELS[2:]:
            tname = _SYS_TYPES.get(name)
            tid = kernel.type_id(tname, register=True) if tname else 0
            self.open(name, tid, mode="fanout", guarantee="lossy", system=True)

    def _take_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def _add(self, ch: Channel) -> Channel:
        self.by_name[ch.name] = ch
        self.by_id[ch.id] = ch
        return ch

    # -- registry -------------------------------------------------------------------------------
    def open(self, name: str, type=0, *, mode: str = "p2p", guarantee: str = "lossless",
             capacity: int = DEFAULT_CAPACITY, replay: int = 0, error_handler=None,
             window: int | None = None, system: bool = False, ordered: bool | None = None,
             **_ignored) -> Channel:
        """Open (or return the already open) channel ``name`` carrying ``type``. Opening an
        existing name with a different type, mode, guarantee or ``ordered`` raises ChannelError.
        ``ordered`` (default True; ignored on a deterministic channel): each handler subscriber
        gets its messages in channel order, one batch of at most ``max_batch`` in flight at a
        time; False lets several batches of one subscriber run at once, on several workers
        (more throughput for a handler that does not care about order). See :class:`Channel`."""
        if not isinstance(name, str) or not name:
            raise ChannelError(f"channel name must be a non-empty string, got {name!r}",
                               CHAN_UNKNOWN)
        k = self.kernel
        tid = k.type_id(type, register=True, where=f"channel {name!r}") if type else 0
        with self.lock:
            ch = self.by_name.get(name)
            if ch is not None:
                if ch.type_id != tid:
                    raise ChannelError(
                        f"channel {name!r} carries {k.type_name(ch.type_id)!r}, cannot open it "
                        f"for {k.type_name(tid)!r}", CHAN_TYPE_MISMATCH)
                for attr, v in (("mode", mode), ("guarantee", guarantee), ("ordered", ordered)):
                    if v is not None and not (attr == "ordered" and ch.det) and getattr(ch, attr) != v:
                        raise ChannelError(f"channel {name!r} is {getattr(ch, attr)}, cannot "
                                           f"open it as {v}", CHAN_TYPE_MISMATCH)
                if error_handler is not None:
                    ch.error_handler = error_handler
                if replay and ch.log is None:
                    ch.replay = replay
                    ch.log = _Log(1 << (int(replay) - 1).bit_length())
                return ch
            det = bool(tid) and k.det is not None and k.types.info(tid).deterministic
            if det and replay:
                raise ChannelError(f"channel {name!r}: a deterministic channel has no replay log",
                                   CHAN_UNKNOWN)
            ch = self._add(Channel(self, self._take_id(), name, tid, mode=mode,
                                   guarantee=guarantee, capacity=capacity, replay=replay,
                                   error_handler=error_handler, window=window,
                                   deterministic=det, system=system, ordered=ordered))
        self._rebuild()
        self._trace(EventType.CHAN_OPEN, tid, ch.id, 0)
        return ch

    def get(self, name) -> Channel:
        """The open channel ``name`` (or id); ChannelError(CHAN_UNKNOWN) naming it otherwise."""
        ch = self.by_id.get(name) if isinstance(name, int) else self.by_name.get(name)
        if ch is None:
            close = difflib.get_close_matches(str(name), list(self.by_name), n=1)
            raise ChannelError(
                f"unknown channel {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; open channels: {', '.join(sorted(self.by_name))}", CHAN_UNKNOWN)
        return ch

    def __contains__(self, name) -> bool:
        return name in self.by_name

    def __iter__(self):
        return iter(list(self.by_name.values()))

    def close(self, name) -> int:
        ch = self.get(name)
        if ch.system and ch.name in ("sys.error", "sys.dropped"):
            raise ChannelError(f"channel {ch.name!r} cannot be closed", CHAN_CLOSED)
        return ch.close()

    def _closed(self, ch: Channel) -> None:
        with self.lock:
            if self.by_name.get(ch.name) is ch:
                del self.by_name[ch.name]
            self.closed.append(ch)
        self.kernel._chan_cache.clear()
        self._rebuild()

    def _rebuild(self) -> None:
        chans = sorted((c for c in self.by_name.values() if not c.closed), key=lambda c: c.id)
        self._hot = [c for c in chans if not c.det and any(s.type_id for s in c.subs)]
        self._det = [c for c in chans if c.det]
        self._ordered = {c.id: c for c in chans if c._osubs}

    # -- dead letters ---------------------------------------------------------------------------
    def to_sys_error(self, recs, code) -> None:
        self.sys_error.put(recs, code)

    def to_sys_dropped(self, recs, code, count_on: Channel | None = None) -> None:
        if count_on is not None:
            count_on.dropped += len(recs)
            count_on.drop_reasons[code] = count_on.drop_reasons.get(code, 0) + len(recs)
        self.sys_dropped.put(recs, code)

    def take_dead(self, which: str = "sys.error"):
        if which not in ("sys.error", "sys.dropped"):
            raise ChannelError(f"dead letters live on 'sys.error' or 'sys.dropped', not {which!r}",
                               CHAN_UNKNOWN)
        ch = self.sys_error if which == "sys.error" else self.sys_dropped
        return ch.take_coded(ch.store.capacity)

    def route_failures(self, recs, codes):
        """Failed channel messages go to their channel's error handler when it has one.
        Returns (records, codes) left for sys.error."""
        cids = recs["channel"]
        codes = np.broadcast_to(np.asarray(codes, dtype=np.int32), (len(recs),))
        keep = np.ones(len(recs), dtype=bool)
        for cid in np.unique(cids[(recs["flags"] & FLAG_CHANNEL_MSG) != 0]).tolist():
            ch = self.by_id.get(cid)
            if ch is None or ch.error_handler is None:
                continue
            sel = cids == cid
            try:
                ch.error_handler(recs[sel], codes[sel].copy())
            except Exception as e:   # noqa: BLE001 - a broken error handler: fall back to sys.error
                self.kernel.exceptions.append((ch.name, "error_handler", repr(e), ""))
                continue
            keep &= ~sel
            p = recs["payload_ptr"][sel]
            if p.any():
                self.kernel.arena.release_many(p)
        return recs[keep], codes[keep]

    # -- draining -------------------------------------------------------------------------------
    def on_batch_done(self, recs: np.ndarray) -> None:
        """A worker finished a batch of channel messages (whatever their outcome: done, failed,
        yielded or retried). An ordered subscriber's in-flight batch is over once all of its
        messages were finished: deliver its next one now."""
        r0 = recs[0]
        ch = self._ordered.get(int(r0["channel"]))
        if ch is not None:
            sub = ch._osubs.get(int(r0["type"]))
            if sub is not None and sub.busy:
                ch._batch_done(sub, recs)

    def drain_some(self, worker: int = -1) -> int:
        """Opportunistic drain: called after each handler batch and by idle workers."""
        n = 0
        for ch in self._hot:
            for sub in ch.subs:
                if sub.type_id and (sub.ring.tail != sub.ring.head or sub.behind):
                    n += ch._drain_sub(sub)
        if self._det:
            det = self.kernel.det
            if det is not None and any(c.held_n for c in self._det) and not det.has_work():
                with det.lock:   # nothing runs this tick: open the boundary ourselves
                    if not det.has_work() and not det.inflight:
                        self.tick_boundary(det.tick)
        return n

    def _drain_channel(self, ch: Channel) -> int:
        return 0 if ch.det else ch._drain_channel()

    def tick_boundary(self, tick: int) -> None:
        """Deterministic channels drain here only, in ascending channel id (under DetStage's lock)."""
        for ch in self._det:
            ch.tick_boundary()

    def idle(self) -> bool:
        for ch in self._hot:
            if ch.pending():
                return False
        return not any(c.held_n for c in self._det)

    def _trace(self, event, task_type: int, cid: int, arg1: int, recs=None) -> None:
        k = self.kernel
        tr = k.tracer
        if not tr.enabled:
            return
        with k._host_lock:
            if recs is not None:
                tr.emit_batch(k.nworkers, event, recs, arg0=recs["seq"],
                              arg1=np.full(len(recs), arg1 & 0xFFFFFFFF))
            else:
                tr.emit(k.nworkers, event, 0, task_type, cid, arg1 & 0xFFFFFFFF)

    def stats(self) -> dict:
        out = {ch.name: ch.stats() for ch in self.by_name.values()}
        for ch in self.closed:
            out.setdefault(ch.name, ch.stats())
        return out


class Stager:
    """A worker's per-channel emit buffer: credit taken from the channel under its lock, then
    per-message emits append to plain lists with no lock; the handler batch's end commits them
    (one array, one stamp, one push per subscriber). Backpressure stays synchronous: a message
    is accepted only against credit, i.e. room already reserved in every ring.

    Everything staged shares one header (``hdr``: flags, tenant, parent seq); ``bind`` commits
    before the header changes. ``send`` is a closure over the lists (no attribute lookups: ~30
    ns a message against ~100 for a method): it stages while ``len(m0) < lim[0]``, the credit
    granted, and meta1 only when it is not 0 (sparse: most messages carry one word)."""

    __slots__ = ("chan", "hdr", "grant", "m0", "m1", "lim", "active", "ctx", "send")

    def __init__(self, chan: Channel):
        self.chan = chan
        self.hdr = -1
        self.grant = 0
        self.m0: list = []                # meta0 of each staged message
        self.m1: list = []                # (index, meta1) of those whose meta1 != 0
        self.lim = [0]                    # messages the current grant allows
        self.active = False
        self.ctx = None
        self.send = self._sender()

    def _sender(self):
        m0, m1, lim = self.m0, self.m1, self.lim
        add0, add1 = m0.append, m1.append
        slow = self.slow

        def send(meta0, meta1=0) -> int:
            """Per-message emit with the header bound by ``ctx.emitter`` (the leanest path):
            returns OK, CHAN_FULL or CHAN_CLOSED."""
            # the word is checked here, inside the handler's guard (at commit it would
            # fail outside it); anything but a plain int in range takes the slow path
            if len(m0) < lim[0] and meta0.__class__ is int and not meta0 >> 64:
                if meta1:
                    add1((len(m0), word("meta1", meta1)))
                add0(meta0)
                return 0
            return slow(meta0, meta1)
        return send

    def bind(self, ctx, hdr: int) -> None:
        """Stage under header ``hdr`` from now on (what was staged under another is committed)."""
        self.ctx = ctx
        if hdr != self.hdr:
            if self.m0 or self.grant:
                self.commit()
            self.hdr = hdr

    def slow(self, meta0, meta1=0) -> int:
        """Credit ran out (or none yet): commit, take new credit, stage one. Also where a
        word that is not a plain int comes (checked: EmitError names it; a NumPy integer is
        staged while credit lasts)."""
        meta0 = word("meta0", meta0)
        meta1 = word("meta1", meta1)
        if len(self.m0) < self.lim[0]:
            if meta1:
                self.m1.append((len(self.m0), meta1))
            self.m0.append(meta0)
            return 0
        ch = self.chan
        hdr = self.hdr
        self.commit()
        prio0 = (hdr & PRIO_MASK) == 0
        for attempt in (0, 1):
            with ch.lock:
                if ch.closed:
                    return CHAN_CLOSED
                room = ch._room(True)
                if not prio0:
                    room -= 0 if (ch.lossy or not ch.subs) else ch.reserve
                g = min(STAGE_CREDIT, room)
                if g > 0:
                    ch.granted += g
                    self.grant = self.lim[0] = g
                    break
            if attempt == 0:
                ch.reg._drain_channel(ch)
        else:
            ch._count_full(1, None)
            return CHAN_FULL
        if not self.active:
            self.active = True
            self.ctx._stagers_active.append(self)
        self.m0.append(meta0)
        if meta1:
            self.m1.append((0, meta1))
        return 0

    def commit(self) -> None:
        m0, m1 = self.m0, self.m1
        n = len(m0)
        ch = self.chan
        if n:
            hdr = self.hdr
            meta1 = np.zeros(n, dtype=np.uint64)
            if m1:
                idx, val = zip(*m1)
                meta1[list(idx)] = val
            # seq: the parent's (determinism order), restamped by the channel
            recs = make(n, type=ch.type_id, flags=(hdr & 0xFFFF) | FLAG_CHANNEL_MSG,
                        tenant=(hdr >> 16) & 0xFFFF, channel=ch.id, seq=hdr >> 32,
                        meta0=np.array(m0, dtype=np.uint64), meta1=meta1)
            m0.clear()                    # in place: the send closure holds these lists
            m1.clear()
        with ch.lock:
            ch.granted -= self.grant
            self.grant = self.lim[0] = 0
            if n:
                if ch.closed:
                    recs["channel"] = ch.id
                    for sub in ch.subs or [None]:
                        ch._drop(recs, CHAN_CLOSED, sub, release=False)
                else:
                    ch._stamp_commit(recs, built=True)
        if n and not ch.det:
            ch._drain_channel()


__all__ = ["Channel", "Channels", "Subscriber", "SysChannel", "Stager", "CHAN_NO_SUBSCRIBER",
           "MAX_FANOUT", "SYS_CHANNELS", "TASK_DTYPE"]
