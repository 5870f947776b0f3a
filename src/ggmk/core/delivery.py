"""A channel's delivery side (a mixin of :class:`ggmk.core.channel.Channel`): stamped records
copied into every subscriber's ring (lossy subscribers that cannot take them drop to
``sys.dropped`` with the reason), and drained from the rings into THE enqueue core: all at once,
or, for an ordered subscriber, one batch in flight at a time, the next when a batch is done;
the host's pulls (``take``)."""
from __future__ import annotations


import numpy as np

from ggmk import task as T
from ggmk.core.det import check_int
from ggmk.core.sched import Route
from ggmk.core.subscriber import Subscriber
from ggmk.events import EventType
from ggmk.task import CHAN_FULL, CHAN_NO_SUBSCRIBER, CHAN_REPLAY_OVERFLOW, PRIO_MASK

_M32 = 0xFFFF_FFFF


class Delivery:
    """Delivery to subscribers (mixed into ``Channel``)."""

    def _deliver(self, recs: np.ndarray) -> None:
        """Copy stamped, sequenced records into every subscriber's ring (under the lock)."""
        n = len(recs)
        self.committed = self.unwrap(int(recs["seq"][-1]))
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
        if (ptrs[0] if n == 1 else np.count_nonzero(ptrs)):
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
                got, lost = T.select(recs, m), T.select(recs, ~m)
            else:
                got, lost = (recs if m == n else recs[:m]), recs[m:]
            if len(got):
                if sub.type_id and sub.type_id != got["type"][0]:
                    got = T.copy(got)
                    got["type"] = sub.type_id
                sub.ring.push(got)
                if not sub.behind:
                    sub.next = self.unwrap(int(got["seq"][-1])) + 1
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
        out = T.copy(recs)
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

    # -- draining -------------------------------------------------------------------------------
    def _drain_channel(self) -> int:
        n = 0
        for sub in self.subs:
            if sub.type_id:
                n += self._drain_sub(sub)
            elif sub.after:
                for fn in sub.after:
                    try:
                        fn()
                    except Exception as e:  # noqa: BLE001 - reported; the emit stands
                        sub.hook_failed(fn, e)
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
        tr = self.kernel.tracer
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
            if not tr.quiet_all:        # one CHAN_DRAIN per batch handed over (level all)
                self.reg._trace(EventType.CHAN_DRAIN, self.type_id, self.id, n)
            sub.delivered += n
            sub.acked = self.unwrap(int(recs["seq"][-1])) if not self.det else sub.acked + n
            self.kernel.sched.enqueue(recs, Route.CHANNEL)
            ring.consume(n)
            total += n
            if n >= credit:
                break                   # else: the view stopped at the buffer's end
        return total

    def _drain_ordered(self, sub: Subscriber, wake: bool = True) -> int:
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
                    n = self._deliver_one(sub, wake)
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

    def _deliver_one(self, sub: Subscriber, wake: bool = True) -> int:
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
            if np.count_nonzero(diff):
                n = int(np.argmax(diff))
                recs = recs[:n]
        if not self.kernel.tracer.quiet_all:     # one CHAN_DRAIN per batch (level all)
            self.reg._trace(EventType.CHAN_DRAIN, self.type_id, self.id, n)
        seq = recs["seq"]
        last = self.unwrap(int(seq[-1]))
        sub.b_lo, sub.b_hi = self.unwrap(int(seq[0])), last
        sub.busy = n                    # before the enqueue: a worker may finish it at once
        sub.delivered += n
        sub.acked = last
        acc = self.kernel.sched.enqueue(recs, Route.CHANNEL, wake=wake)
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
        if n == sub.busy and int(seq[0]) == lo & _M32 and int(seq[-1]) == hi & _M32:
            done = n                    # the usual case: the whole in-flight batch
        else:                           # a piece of it, or other messages of the same type
            seq = self.unwrap(seq)
            done = int(((recs["channel"] == self.id) & (seq >= lo) & (seq <= hi)).sum())
            if not done:
                return
        with sub.busy_lock:
            left = sub.busy - done
            sub.busy = left if left > 0 else 0
        if left <= 0:
            # the next batch, without waking a parked worker: this thread runs worker steps
            # and looks for work right after (the worker loop's has_work, or the give-back of
            # a borrowed worker), and the subscriber has one batch in flight at a time: a
            # woken worker would only race it for that batch (a futex wake-up, a GIL hand-off
            # and a park per batch)
            self._drain_ordered(sub, wake=False)

    def _batch_done1(self, sub: Subscriber, seq: int) -> None:
        """``_batch_done`` for one record of this channel with channel seq ``seq`` (as the
        record carries it: its low 32 bits)."""
        top = self.seq                  # (unwrap's int case, inline: once per round trip)
        if not sub.b_lo <= top - ((top - seq) & _M32) <= sub.b_hi:
            return                      # not of the batch in flight
        with sub.busy_lock:
            left = sub.busy - 1
            sub.busy = left if left > 0 else 0
        if left <= 0:
            r = sub.ring
            # nothing behind it (the usual round trip: the ring empty, not behind): the drain
            # would take the drain lock only to find nothing. A message pushed after this look
            # is drained by its emitter, which finds the subscriber no longer busy
            if r.tail != r.head or sub.behind:
                self._drain_ordered(sub, wake=False)      # (see _batch_done)

    def _take(self, sub: Subscriber, max_n: int) -> np.ndarray:
        if max_n.__class__ is not int or max_n < 0:     # ('x' was a raw TypeError)
            max_n = check_int("max_n", max_n, 0,
                              what=f" (messages to take from channel {self.name!r})")
        if sub.behind:
            with self.lock:
                self._catch_up(sub)
        recs = sub.ring.pop(max_n)
        if len(recs):
            if not self.kernel.tracer.quiet_all:     # a host pull is a drained batch too
                self.reg._trace(EventType.CHAN_DRAIN, self.type_id, self.id, len(recs))
            sub.delivered += len(recs)
            sub.acked = self.unwrap(int(recs["seq"][-1]))
            if self.log is not None:
                with self.lock:
                    self._log_evict(force=False)
        return recs
