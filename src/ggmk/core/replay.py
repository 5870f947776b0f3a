"""The replay log of a lossless channel (SPEC §5, ``replay=N``): the last messages in sequence
order, so that a subscriber whose ring is full falls *behind* instead of blocking the producer.

With ``replay=N`` a lossless channel keeps up to N messages (rounded up to a power of two) in
a :class:`ReplayLog`: a subscriber whose ring is full falls *behind* and is fed from the log as
it drains (:meth:`ReplayMixin._catch_up`); the log evicts what every subscriber has
acknowledged (drained into the scheduler, or taken), and emit is refused when the log is full
of unacknowledged messages. A subscriber far behind the others (by half the log or more, while
every other subscriber has caught up: acknowledged everything; a handler subscriber also
stalled: its acknowledgement has not moved for ``STALL_NS`` across refused admissions) no
longer holds them back: the producer goes on, and what gets past its reach (its ring plus the
log) is evicted past it: it degrades to lossy (those copies go to ``sys.dropped`` with
CHAN_REPLAY_OVERFLOW, a REPLAY_OVERFLOW event is traced) until it catches up. Only that
subscriber degrades: what every other one has not acknowledged stays in the log. While any
other subscriber still has a backlog, or the slowest still makes progress, the producer waits
instead (subscribers that lag together, a slower one that keeps going, or one whose batch waits
for a worker, are not "far behind the others": under backpressure every subscriber moves at
the slowest's pace, so only a stall tells them apart).

:class:`ReplayMixin` is the channel's half that runs the log: admission against it
(``_log_room``), appending, eviction (acknowledged entries; forced past a far-behind
subscriber) and catching a behind subscriber up. It is mixed into
:class:`ggmk.core.channel.Channel` and works on the channel's state: ``log``, ``subs`` (each
with ``acked``, ``next``, ``behind``, ``degraded``, ``overflows``, ``ring``), ``committed``,
``granted``, ``held_n``, ``lock``, ``kernel`` (its arena and clock), ``reg`` (tracing),
``_drop`` and ``unwrap`` (sequence numbers here are the channel's unbounded ones; a record's
``seq`` column holds their low 32 bits). Every method but ``_log_evict_acked`` runs under the
channel lock.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ggmk.events import EventType
from ggmk.task import _RAW, CHAN_REPLAY_OVERFLOW, TASK_DTYPE, empty

if TYPE_CHECKING:
    from ggmk.core.channel import Subscriber


class ReplayLog:
    """The replay log: the last messages in sequence order (contiguous seqs), in a ring of
    ``capacity`` records. ``head``/``tail`` are monotonic positions, ``first`` the seq at the
    head; ``evicted`` counts every entry that left it."""

    def __init__(self, capacity: int):
        self.cap = capacity
        self.buf = empty(capacity)
        self.raw = self.buf.view(_RAW)     # records copied as raw bytes (see task.copy)
        self.head = 0           # monotonic positions
        self.tail = 0
        self.first = 1          # seq at head
        self.evicted = 0

    @classmethod
    def sized(cls, replay: int) -> "ReplayLog":
        """A log for ``replay=N``: N rounded up to a power of two."""
        return cls(1 << (int(replay) - 1).bit_length())

    def __len__(self) -> int:
        return self.tail - self.head

    def append(self, recs: np.ndarray, seq0: int | None = None) -> None:
        """Add ``recs`` (the channel's next messages, contiguous); ``seq0``: the channel
        seq of ``recs[0]`` (unbounded; default its ``seq`` column)."""
        n = len(recs)
        i = self.tail % self.cap
        first = min(n, self.cap - i)
        src = recs.view(_RAW)
        self.raw[i:i + first] = src[:first]
        self.raw[:n - first] = src[first:]
        if self.tail == self.head:
            self.first = int(recs["seq"][0]) if seq0 is None else seq0
        self.tail += n

    def get(self, seq: int, n: int) -> np.ndarray:
        start = self.head + (seq - self.first)
        idx = (start + np.arange(n)) % self.cap
        return self.raw[idx].view(TASK_DTYPE)

    def pop(self, n: int) -> np.ndarray:
        out = self.get(self.first, n)
        self.head += n
        self.first += n
        self.evicted += n
        return out


# how long (HAL clock: wall time on threads, virtual on sim) a handler subscriber's
# acknowledgement must stand still, across refused admissions, before it counts as far behind
STALL_NS = 100_000_000


class ReplayMixin:
    """The replay-log half of a channel (see the module docstring)."""

    # the far-behind handler subscriber the last refused admission saw: (subscriber, its
    # acked, HAL clock then); see _log_room
    _stall: tuple | None = None

    def _log_room(self, res: int) -> int:
        """Messages the channel can accept now with ``res`` ring slots reserved (under the
        lock). The log keeps every message some subscriber has not acknowledged, and a
        subscriber whose ring is full is fed from it later, so the log's room binds."""
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
        slow = None
        for sub in self.subs:
            if sub.acked != committed:
                if slow is not None:
                    return room
                slow = sub
        if slow is not None and slow.type_id:
            # A handler subscriber's acknowledgement also waits for the workers: its batch
            # may sit in the ready queue behind the others' (more subscribers than workers),
            # or the worker running it may be descheduled, and one snapshot took that for
            # far behind (equally fast subscribers were degraded, several in one run). So its
            # acknowledgement must not have moved across refused admissions for STALL_NS: a
            # subscriber still making progress, however slowly, makes the producer wait. A
            # host-side subscriber's waits for its reader alone: one look decides.
            st = self._stall
            now = self.kernel.clock()
            if st is None or st[0] is not slow or st[1] != slow.acked:
                self._stall = (slow, slow.acked, now)
                return room
            if now - st[2] < STALL_NS:
                return room
        return base + committed

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
        log.append(recs, self.unwrap(int(recs["seq"][0])))

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
        seqs = self.unwrap(gone["seq"])
        last = int(seqs[-1])
        for sub in self.subs:
            if sub.behind and sub.next <= last:
                lost = gone[seqs >= sub.next]
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


__all__ = ["ReplayLog", "ReplayMixin"]
