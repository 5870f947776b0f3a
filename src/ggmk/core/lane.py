"""The call lane: one synchronous request and its reply, run on the caller's thread as one
channel delivery, with every count the kernel keeps for it.

Why it exists: a caller with one request in flight (``sdk.KV.get``) pays the whole general
path per request - the direct path's borrowed worker, a one-record batch through
``Worker._dispatch_group``, the module's batch handler, the reply's emit into the client's
subscription and the client's take of it: ~90 Python calls and 15 locks a get. The lane
takes ~20 calls and 10 locks. The lane keeps what an observer can see and drops
the general machinery: the request is accepted on its channel as a delivery (channel seq,
emitted and delivered counts, the per-type enqueue / dequeue / ok counts, the handler time
histogram, the scheduler's route count), the handler's one-task form computes the reply,
and the reply is emitted on the reply channel and taken by the caller's own subscription
(its seq, the ring's push and pop counts) without being written to the ring and read back.

It runs only where that changes nothing anyone can observe: caller runs on (the threads
HAL, a worker parked: a host thread runs handler code only while a worker is idle), no
determinism mode, no tenant policy, nothing traced at level ALL, the handler type not
poisoned and none of it queued or running; the request channel open with its one handler
subscriber, nothing waiting for it (an ordered one: no batch of it in flight; the request is
its batch of one), no replay log; the reply channel open, lossless, with exactly the
caller's subscription on it and nothing in that subscription's ring (so no reply is
overtaken); and the module says it can answer at once (``ready``).
Otherwise ``call`` does nothing and returns None: the caller takes the normal path. A reply
that finds the reply channel changed after the request was accepted (another subscriber
joined, a reply of another request is waiting) goes out the normal way (``send``), after
``expect`` so the caller's subscription files it: nothing accepted is lost.

The request is counted in ``outstanding`` from before its acceptance to the reply, so a
``halt`` waits for it; Ctrl-C on the main thread waits for the call's end (the caller-runs
SIGINT guard), so no accepted request is left half-counted.

What it does not do: run the lane where the reply would carry a payload, or a handler that
emits anything but its reply (the replier's contract), or count the run in a worker's
``tasks`` (it ran on no worker: ``System.direct_runs`` and ``CallLane.runs`` count it).
"""
from __future__ import annotations

import threading
import traceback
from typing import Protocol

from ggmk import task as T
from ggmk.core.metrics import TypeCounter
from ggmk.core.sched import Route
from ggmk.core.worker import _exc_code

_ENQ = int(TypeCounter.ENQUEUED)
_DEQ = int(TypeCounter.DEQUEUED)
_OK = int(TypeCounter.OK)
_R_CHANNEL = int(Route.CHANNEL)
SENT = object()       # ``call``: the reply went out the normal way (wait for it by tag)


class Replier(Protocol):
    """The answering module's side of a lane (for example ``modules.kv``'s gets)."""

    def answer(self, meta0: int, meta1: int) -> tuple[int, int]:
        """The reply (meta0, meta1) to one request, the module's own counts included;
        nothing emitted (the handler's one-task form). Should it raise, the request fails as
        a task whose handler raised (``fail``, sys.error) and the caller gets the exception."""

    def ready(self) -> bool:
        """Whether a reply may go to the caller directly now (nothing of the module's waits
        to be emitted before it)."""

    def taken(self) -> None:
        """A reply went to the caller directly (count it as the module counts one out;
        called under the reply channel's lock, which serializes these counts)."""

    def send(self, m0: int, m1: int) -> None:
        """Emit a reply the normal way (the module's own emit, outbox and all)."""


_BOOKS_LOCK = threading.Lock()


def _books(system, reply):
    """The metrics shard and trace tally of the lanes answering on ``reply`` (one pair per
    reply channel, made once): written under the reply channel's lock, which the lane holds
    anyway to hand a reply over, instead of taking the host shard's lock and the host trace
    slot's lock on every call. Readers sum them with the rest (``Metrics.add_shard``,
    ``Tracer.tally``)."""
    with _BOOKS_LOCK:
        books = system.__dict__.setdefault("_lane_books", {})
        got = books.get(reply.id)
        if got is None or got[0] is not reply:
            got = books[reply.id] = (reply, system.metrics.add_shard(),
                                     system.tracer.tally(system.nworkers))
        return got[1], got[2]


class CallLane:
    """The lane of one request channel to its handler and back on one reply channel.

    ``system``: the CPU kernel; ``request`` / ``reply``: its Channels; ``handler_type``: the
    type id of the handler subscribed to ``request`` that answers; ``hub``: the caller's
    reply side, any object with ``sub`` (its host Subscription of ``reply``, read per call:
    it may be replaced) and ``lock`` (held while its subscription's delivered / acked counts
    change: taken before the reply channel's lock, as its own take does);
    ``replier``: the module's side (``Replier``)."""

    __slots__ = ("k", "hal", "ch", "rc", "t", "hub", "_replier", "runs", "answer", "ready",
                 "taken", "shard", "tally")

    def __init__(self, system, request, reply, handler_type: int, hub, replier: Replier):
        self.k = system
        self.hal = system.hal
        self.ch = request
        self.rc = reply
        self.t = handler_type
        self.hub = hub
        self.replier = replier
        self.shard, self.tally = _books(system, reply)
        self.runs = 0

    @property
    def replier(self) -> Replier:
        return self._replier

    @replier.setter
    def replier(self, rp: Replier) -> None:
        # (its methods looked up once: ``call`` reads them from slots)
        self._replier = rp
        self.answer = rp.answer
        self.ready = rp.ready
        self.taken = rp.taken

    def usable(self) -> bool:
        """Whether the system can ever run this lane: caller runs on a threads HAL, no
        determinism mode (nor deterministic channels), no tenant policy, the kernel's own
        per-type enqueue counter, no replay log on either channel, a lossless reply channel
        (all fixed at boot; what changes is looked at per call)."""
        k, s, ch, rc = self.k, self.k.sched, self.ch, self.rc
        return hasattr(self.hal, "parked_list") and hasattr(self.hal, "sigint_guard") \
            and k.det is None and s.policy is None and s.on_enqueued == k._count_enqueued \
            and ch.log is None and not ch.det and rc.log is None and not rc.det \
            and not rc.lossy

    def call(self, meta0: int, meta1: int, expect):
        """Run one request (``meta0``/``meta1``: ints 0..2**64-1, checked by the caller).
        Returns the reply's ``(meta0, meta1)``; ``SENT`` when the request ran but its reply
        must go out the normal way: ``expect(m0) -> m0`` is called first (the caller awaits
        a tag and returns the reply's meta0 carrying it), then the reply is sent; wait for
        it. None when the lane could not run it (nothing was done).

        One function on purpose (the acceptance, the answer, the hand-over and the counts
        inline): each call saved is ~5% of a get."""
        k = self.k
        hal = self.hal
        s = k.sched
        t = self.t
        # (what is fixed at boot was looked at once: ``usable``)
        if not hal.parked_list or not hal.helping or not k.tracer.quiet_all or s.poisoned[t] \
                or not self.ready() or (s.outstanding and k._pending_of_type(t)):
            return None
        guard = hal.sigint_guard()
        # (locks as acquire/release pairs: a ``with`` costs ~2.5x a pair on CPython 3.11;
        # nothing between a pair can raise but what the try covers, and a KeyboardInterrupt
        # waits for the guard's leave)
        cl = s.count_lock
        cl.acquire()
        s.outstanding += 1                  # first: a halt from here on waits for this request
        cl.release()
        sub = None
        try:
            if k.halted:
                return None
            # -- the request, accepted on ``ch`` as a delivery to its one handler subscriber
            # (as ``System._direct_run`` accepts one: an ordered subscriber is marked busy
            # with it, a batch of one); not now: nothing changed, the caller goes on as usual
            ch = self.ch
            lk = ch.lock
            lk.acquire()
            try:
                subs = ch.subs
                if ch.closed or ch.granted or ch.held_n or len(subs) != 1:
                    return None
                s0 = subs[0]
                r = s0.ring
                if s0.type_id != t or s0.behind or r.tail != r.head:
                    return None
                cseq = ch.seq + 1
                if s0.ordered:
                    dl = s0.drain_lock
                    if not dl.acquire(False):
                        return None
                    busy = s0.busy
                    if not busy:
                        s0.b_lo = s0.b_hi = cseq
                        s0.busy = 1
                    dl.release()
                    if busy:
                        return None
                ch.seq = cseq
                ch.emitted += 1
                ch.committed = cseq
                s0.next = cseq + 1
                s0.delivered += 1
                s0.acked = cseq
                sub = s0
            finally:
                lk.release()
            s.route_counts[_R_CHANNEL] += 1
            t0 = k.clock()
            try:
                m0, m1 = self.answer(meta0, meta1)
            except Exception as e:      # noqa: BLE001 - a replier bug: the task failed
                self._failed(k, ch, cseq, t, meta0, meta1, e)
                raise
            elapsed = k.clock() - t0
            if elapsed < 0:                 # (a clock that went back: counted as 0)
                elapsed = 0
            # -- the reply, emitted on ``rc`` and taken by the hub's subscription at once
            # (counted as ``Channel.emit_one``'s push and the hub's take of it; ``taken``
            # under the channel's lock). The ring's own lock is not needed: its pushers hold
            # the channel's lock and its taker the hub's, both held here. The run's counts
            # go to this reply channel's lane shard and trace tally under the same lock.
            hub = self.hub
            hl = hub.lock
            hl.acquire()
            try:
                hsub = hub.sub
                rc = self.rc
                lk = rc.lock
                lk.acquire()
                try:
                    subs = rc.subs
                    r = None if hsub is None else hsub.ring
                    if rc.closed or rc.granted or rc.held_n or len(subs) != 1 \
                            or subs[0] is not hsub or hsub is None or hsub.behind \
                            or r.tail != r.head or not self.ready():
                        taken = False       # (a reply waiting there: this one must not pass)
                    else:
                        taken = True
                        r.tail += 1
                        r.head += 1
                        r.pushed += 1
                        r.popped += 1
                        if r.high_watermark < 1:
                            r.high_watermark = 1
                        q = rc.seq = rc.seq + 1
                        rc.emitted += 1
                        rc.committed = q
                        hsub.next = q + 1
                        hsub.delivered += 1
                        hsub.acked = q
                        self.taken()
                        # (_count inline)
                        sh = self.shard
                        tv = sh.tv
                        tv[_ENQ, t] += 1
                        tv[_DEQ, t] += 1
                        tv[_OK, t] += 1
                        h = k.h_batch_ns
                        sh._hv[h, elapsed.bit_length()] += 1
                        sh._hsv[h] += elapsed
                        if elapsed > sh._hmv[h]:
                            sh._hmv[h] = elapsed
                        self.tally[2] += 2  # TASK_START, TASK_END: not offered (quiet_all)
                finally:
                    lk.release()
            finally:
                hl.release()
            if taken:
                return m0, m1
            hl = k._host_lock
            hl.acquire()
            self._count(k.host_shard, t, k.h_batch_ns, elapsed)
            hl.release()
            tr = k.tracer
            if tr.enabled:
                tr.skipped(k.nworkers, 2)
            try:
                m0 = expect(m0)
            finally:                    # (a closed caller: the reply goes out unawaited)
                self._replier.send(m0, m1)
            return SENT
        finally:
            if sub is not None and sub.ordered:
                # the ordered subscriber's batch of one is done (``Delivery._batch_done1``):
                # what arrived meanwhile goes to the workers
                bl = sub.busy_lock
                bl.acquire()
                sub.busy = 0
                bl.release()
                r = sub.ring
                if r.tail != r.head or sub.behind:
                    self.ch._drain_ordered(sub)
            # Scheduler.done, with this lane's counts under the same lock
            cl.acquire()
            left = s.outstanding = s.outstanding - 1
            if sub is not None:
                k.direct_runs += 1
                self.runs += 1
            cl.release()
            if left == 0:
                s.on_idle()
            if guard is not None:
                guard.leave()

    @staticmethod
    def _count(sh, t: int, h: int, elapsed: int) -> None:
        """The run's per-type counts (enqueued, dequeued, ok) and handler time (histogram
        ``h``) in shard ``sh``, its writer's lock held."""
        tv = sh.tv
        tv[_ENQ, t] += 1
        tv[_DEQ, t] += 1
        tv[_OK, t] += 1
        sh.observe_int(h, elapsed)

    @staticmethod
    def _failed(k, ch, cseq: int, t: int, meta0: int, meta1: int, e: Exception) -> None:
        """``answer`` raised: the request failed as a task whose handler raised does (counted
        in ``fail`` and toward poison, the exception reported, the record on sys.error with
        its code, or the channel's error handler)."""
        k.report_exception(k.handler_of[t], e, "".join(traceback.format_exception(e)))
        hs = k.host_shard
        hl = k._host_lock
        hl.acquire()
        tv = hs.tv
        tv[_ENQ, t] += 1
        tv[_DEQ, t] += 1
        hl.release()
        rec = T.make(1, type=t, flags=T.FLAG_CHANNEL_MSG, channel=ch.id,
                     seq=cseq & 0xFFFF_FFFF, meta0=meta0, meta1=meta1)
        k.fail(rec, _exc_code(e), t, k.nworkers)
