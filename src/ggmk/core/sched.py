"""The scheduler: ready queues (type-bucketed, 4 weighted priorities, per tenant), per-worker
local queues with the yield reserve, the shared yield-overflow queue, the bounded event queue,
and THE enqueue core (``Scheduler.enqueue``) that every scheduling path goes through.

Routes into the enqueue core (SPEC §3 "one enqueue core"):

========  =============================================  ==================================
route     who                                            where the records go
========  =============================================  ==================================
SUBMIT    the host (``system.submit``)                   ready queue, fresh seq
EMIT      a handler's emit on worker ``w``               w's local queue (75%), then ready;
                                                         with a tenant policy: ready
YIELD     a handler that yielded on worker ``w``          w's local queue incl. reserve, then
                                                         the overflow queue, then sys.error;
                                                         with a tenant policy: ready (seq kept)
EVENT     a due event fired by a worker                  ready queue
CHANNEL   a channel delivering to its subscriber         ready queue, seq = channel seq
BRIDGE    records arriving from the other kernel         ready queue, fresh seq
RETRY     a handler that returned RETRY (``due`` tick)   event queue
DEFER     anything scheduled for a later tick (``due``)  event queue
WAIT      a handler waiting for channel room             event queue, next tick
========  =============================================  ==================================

With a tenant policy nothing goes to a local queue: emits and yields go to their tenant's
ready queue, so the policy picks every batch a worker pops.

Before routing, the core sends records of unknown or poisoned types to ``sys.error`` with a
reason, and (in determinism mode) hands deterministic records to the tick stage.
"""
from __future__ import annotations

import heapq
import struct
import threading
from enum import IntEnum

import numpy as np

from ggmk import task as T
from ggmk.core.ring import Ring, TimedRing
from ggmk.task import (EVENT_FULL, FLAG_DETERMINISTIC, NUM_PRIORITIES, POISONED, PRIO_MASK, READY_FULL,
                       TASK_DTYPE, UNKNOWN_TYPE, YIELD_OVERFLOW, empty)

PRIO_WEIGHTS = (8, 4, 2, 1)
# The binary ruler interleaves priorities 8:4:2:1 over 15 pops: 0,1,0,2,0,1,0,3,...
_PRIO_CYCLE = tuple((i & -i).bit_length() - 1 for i in range(1, 16))
AGING_INTERVAL = 64
EVENT_CAPACITY = 64 * 1024
EVENT_DRAIN_MAX = 256
MAX_TYPES = 1 << 16
# the most tasks one batch takes, once a second tenant has had work, from a tenant policy
# without ``batch_limit`` (the built-in ones size batches by handler time)
SHARED_BATCH = 16


class Route(IntEnum):
    SUBMIT = 0
    EMIT = 1
    YIELD = 2
    EVENT = 3
    CHANNEL = 4
    BRIDGE = 5
    RETRY = 6
    DEFER = 7
    WAIT = 8


# CHANNEL keeps seq: it is the channel's sequence number, which subscribers use to detect gaps
_FRESH_SEQ = frozenset({Route.SUBMIT, Route.EMIT, Route.BRIDGE})
# routes whose single records take the scalar path (``Scheduler._enqueue_one``)
_ONE_ROUTES = frozenset({Route.SUBMIT, Route.EMIT, Route.BRIDGE, Route.CHANNEL, Route.EVENT})
# a record's header words as plain ints (TASK_DTYPE: type u4, flags u2, tenant u2 at 0..7;
# seq u4 at 12): one struct call instead of a NumPy view and scalar per field
_HDR = struct.Struct("<IHH")
_SEQ = struct.Struct("<I")
_SEQ_OFF = 12
_NO_RECS = empty(0)          # what a pop that found nothing returns (never written: 0 records)


class _Bucket:
    __slots__ = ("type", "rings", "last_pop", "size")

    def __init__(self, type_id: int):
        self.type = type_id
        self.rings: list[Ring | None] = [None] * NUM_PRIORITIES
        self.last_pop = 0
        self.size = 0


class ReadyQueue:
    """Type-bucketed ready queue with 4 priorities (one per tenant).

    ``pop`` returns a homogeneous batch (one type, one priority). Priorities are popped in the
    weighted order 8:4:2:1; within a priority, types take turns. Every ``AGING_INTERVAL`` pops an
    aging scan serves the non-empty bucket with the largest priority-weight x age (pops since it
    was last served), so a cold type is never starved by a hot one.
    """

    def __init__(self, ring_capacity: int = 4096, max_capacity: int = 1 << 22, clock=None):
        self.clock = clock          # set: rings stamp pushes so pops report queueing latency
        self.last_waited = None
        self.ring_capacity = ring_capacity
        self.max_capacity = max_capacity
        self.buckets: dict[int, _Bucket] = {}
        self.active: list[list[int]] = [[] for _ in range(NUM_PRIORITIES)]  # types non-empty per prio
        self.rr = [0] * NUM_PRIORITIES
        self.pops = 0
        self.size = 0
        self.high_watermark = 0
        self.aging_picks = 0
        self.rejected: list[np.ndarray] = []   # records refused at max_capacity, for the caller

    def __len__(self) -> int:
        return self.size

    def _ring(self, t: int, p: int) -> Ring:
        b = self.buckets.get(t)
        if b is None:
            b = self.buckets[t] = _Bucket(t)
        r = b.rings[p]
        if r is None:
            name = f"ready.t{t}.p{p}"
            r = b.rings[p] = (TimedRing(self.ring_capacity, name, self.clock) if self.clock
                              else Ring(self.ring_capacity, name))
        return r

    def _push_one(self, t: int, p: int, recs: np.ndarray) -> int:
        r = self._ring(t, p)
        n = len(recs)
        if r.free < n:
            r.grow(n, self.max_capacity)
        was_empty = len(r) == 0
        n = r.push(recs)
        if n < len(recs):          # past max_capacity: the caller routes these to sys.error
            self.rejected.append(recs[n:])
        if n:
            if was_empty:
                self.active[p].append(t)
            self.buckets[t].size += n
            self.size += n
            if self.size > self.high_watermark:
                self.high_watermark = self.size
        return n

    def push(self, recs: np.ndarray, one_type: bool = False) -> int:
        """Push records (any mix of types and priorities); return how many were accepted.
        ``one_type``: the caller already knows they all have the same type."""
        n = len(recs)
        if n == 0:
            return 0
        types = recs["type"]
        prios = recs["flags"] & PRIO_MASK
        t0, p0 = int(types[0]), int(prios[0])
        if n == 1 or ((one_type or not np.count_nonzero(types != t0))
                       and not np.count_nonzero(prios != p0)):
            return self._push_one(t0, p0, recs)
        order = np.lexsort((prios, types))
        srt = T.select(recs, order)
        key = srt["type"].astype(np.int64) * NUM_PRIORITIES + (srt["flags"] & PRIO_MASK)
        cuts = np.flatnonzero(np.diff(key)) + 1
        accepted = 0
        for seg in np.split(srt, cuts):
            accepted += self._push_one(int(seg["type"][0]), int(seg["flags"][0]) & PRIO_MASK, seg)
        return accepted

    def _pick(self) -> tuple[int, int] | None:
        self.pops += 1
        if self.pops % AGING_INTERVAL == 0:
            best, best_score = None, -1
            for p in range(NUM_PRIORITIES):
                for t in self.active[p]:
                    score = PRIO_WEIGHTS[p] * (self.pops - self.buckets[t].last_pop)
                    if score > best_score:
                        best, best_score = (t, p), score
            if best is not None:
                self.aging_picks += 1
                return best
        want = _PRIO_CYCLE[self.pops % 15]
        for dp in range(NUM_PRIORITIES):
            p = (want + dp) % NUM_PRIORITIES
            act = self.active[p]
            if act:
                i = self.rr[p] % len(act)
                self.rr[p] = i + 1
                return act[i], p
        return None

    def pop(self, max_n: int) -> np.ndarray:
        pick = self._pick()
        if pick is None:
            return _NO_RECS
        t, p = pick
        b = self.buckets[t]
        r = b.rings[p]
        if self.clock:
            recs, self.last_waited = r.pop_timed(max_n)
        elif r.tail - r.head == 1:        # one record (a round trip): no general pop
            recs = r.pop1()
        else:
            recs = r.pop(max_n)
        n = len(recs)
        b.size -= n
        b.last_pop = self.pops
        self.size -= n
        if r.tail == r.head:
            self.active[p].remove(t)
        return recs

    def depth_by_type(self) -> dict[int, int]:
        return {t: b.size for t, b in self.buckets.items() if b.size}


class EventQueue:
    """Bounded min-heap of record batches keyed by due tick (capacity counts records)."""

    def __init__(self, capacity: int = EVENT_CAPACITY):
        self.capacity = capacity
        self.heap: list[tuple[int, int, np.ndarray]] = []
        self.size = 0
        self._n = 0
        self.high_watermark = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def push(self, recs: np.ndarray, due: int) -> int:
        with self.lock:
            n = min(len(recs), self.capacity - self.size)
            if n > 0:
                self._n += 1
                heapq.heappush(self.heap, (int(due), self._n, recs[:n].copy()))
                self.size += n
                self.high_watermark = max(self.high_watermark, self.size)
            return max(n, 0)

    def next_due(self) -> int | None:
        with self.lock:
            return self.heap[0][0] if self.heap else None

    def withdraw(self, type_id: int, wanted: dict, out: list | None = None) -> int:
        """Remove the records of type ``type_id`` whose (meta0, meta1) is in ``wanted[due]``
        from the batches due at ``due`` (only those ticks' entries are looked into); returns
        how many were removed. ``out``: a list the removed records are appended to (arrays of
        their own), for a caller that finishes them (their payload references are theirs)."""
        n = 0
        with self.lock:
            heap = self.heap
            emptied = False
            for i, (due, k, recs) in enumerate(heap):
                want = wanted.get(due)
                if want is None:
                    continue
                hit = np.flatnonzero(recs["type"] == type_id)
                drop = [j for j, m0, m1 in zip(hit.tolist(), recs["meta0"][hit].tolist(),
                                                recs["meta1"][hit].tolist()) if (m0, m1) in want]
                if not drop:
                    continue
                keep = np.ones(len(recs), dtype=bool)
                keep[drop] = False
                if out is not None:
                    out.append(recs[~keep])
                heap[i] = (due, k, recs[keep])        # same key: the heap order holds
                emptied |= not keep.any()
                n += len(drop)
            if emptied:
                heap[:] = [e for e in heap if len(e[2])]
                heapq.heapify(heap)
            self.size -= n
        return n

    def pop_due(self, tick: int, max_n: int = EVENT_DRAIN_MAX) -> np.ndarray:
        """Remove up to ``max_n`` records due at or before ``tick`` (earliest first)."""
        with self.lock:
            if not self.heap or self.heap[0][0] > tick:
                return _NO_RECS
            out = []
            n = 0
            while self.heap and self.heap[0][0] <= tick and n < max_n:
                due, k, recs = heapq.heappop(self.heap)
                take = min(len(recs), max_n - n)
                out.append(recs[:take])
                if take < len(recs):
                    heapq.heappush(self.heap, (due, k, recs[take:]))
                n += take
            self.size -= n
            return out[0] if len(out) == 1 else T.concat(out)


class _PolicySlot:
    """``Scheduler.policy``. Setting it binds the policy to the scheduler (``bind``, which the
    built-in policies have): one reused for a second boot ran on the first system's tenant
    state, under another lock, and failed only at ``tenants=`` with "tenant 0 is already
    added". Reading it is a plain instance attribute (no ``__get__``: the hot paths read it)."""

    def __set__(self, sched, policy) -> None:
        bind = getattr(policy, "bind", None)
        if bind is not None:
            bind(sched)
        sched.__dict__["policy"] = policy
        sched._batch_limit = getattr(policy, "batch_limit", None)


class Scheduler:
    """Queues plus THE enqueue core. One per CPU kernel.

    ``dead(recs, code)`` sends records to ``sys.error``; ``wake(n)`` wakes parked workers;
    ``det`` (optional) is the determinism stage that takes deterministic records.
    """

    policy = _PolicySlot()

    def __init__(self, nworkers: int, *, local_capacity: int = 4096, overflow_capacity: int = 8192,
                 ready_capacity: int = 4096, ready_max_capacity: int = 1 << 22, policy=None,
                 dead=None, wake=None,
                 clock=None):
        self.nworkers = nworkers
        self.lock = threading.Lock()
        self.tenants: dict[int, ReadyQueue] = {}
        self._rqs: list[ReadyQueue] = []    # the tenant queues in order, for the rotation
        self._rr = 0                        # without a policy: the next tenant queue to look at
        self.ready_capacity = ready_capacity
        self.ready_max_capacity = ready_max_capacity
        self.policy = policy
        self.local = [Ring(local_capacity, name=f"local.w{w}") for w in range(nworkers)]
        self.local_limit = self.local[0].capacity * 3 // 4   # last 25% kept for yields
        self.overflow = Ring(overflow_capacity, name="yield.overflow")
        self.events = EventQueue()
        self.known = np.zeros(MAX_TYPES, dtype=bool)
        self.poisoned = np.zeros(MAX_TYPES, dtype=bool)
        self.det = None
        self.dead = dead or (lambda recs, code: None)
        self.wake = wake or (lambda n: None)
        self.on_enqueued = None       # (types, worker) -> None: per-type enqueue counters
        self.on_idle = lambda: None   # the last outstanding task finished (wakes a waiting host)
        self.clock = clock
        self.seq = 0
        self.outstanding = 0          # accepted and not yet finished (idle detection)
        self.count_lock = threading.Lock()
        self.route_counts = [0] * len(Route)   # Python ints: one add per one-record enqueue

    # -- tenants ------------------------------------------------------------------------------
    def _rq(self, tenant: int) -> ReadyQueue:
        rq = self.tenants.get(tenant)
        if rq is None:
            pol = self.policy
            if pol is not None and tenant not in pol:
                # first: a policy that raises here leaves no queue behind that it never picks
                pol.add_tenant(tenant)
            rq = self.tenants[tenant] = ReadyQueue(
                self.ready_capacity, self.ready_max_capacity,
                clock=self.clock if pol is not None else None)
            self._rqs.append(rq)
        return rq

    def _policy_wake(self, tenant: int) -> BaseException | None:
        """``policy.wake`` (under ``lock``), returning what it raises instead of raising it: the
        records it is about are queued already, and the enqueue core counts them (enqueued,
        outstanding) before it raises that."""
        try:
            self.policy.wake(tenant, self.clock())
        except BaseException as e:  # noqa: BLE001 - the enqueue core raises it once it counted
            return e
        return None

    # -- the enqueue core -----------------------------------------------------------------------
    def enqueue(self, recs: np.ndarray, route: Route, worker: int = -1, due: int = 0,
                wake: bool = True) -> int:
        """Schedule ``recs``; return how many were accepted (the rest went to sys.error with a reason).

        ``recs`` is consumed: the core may rewrite its ``seq`` column. ``wake=False``: no
        parked worker is woken for what goes to a ready queue; only for a caller that runs
        worker steps and looks for work right after (the worker loop's ``has_work``, the
        give-back of a borrowed worker), see ``Channel._batch_done``.
        """
        n = len(recs)
        if n == 1 and route in _ONE_ROUTES and recs.dtype is TASK_DTYPE:
            k = self._enqueue_one(recs, route, worker, wake)
            if k >= 0:
                return k
        if n == 0:
            return 0
        self.route_counts[route] += n
        types = recs["type"]
        t0 = int(types[0])
        one_type = n == 1 or not np.count_nonzero(types != t0)
        if one_type and t0 < MAX_TYPES:
            # one type (the usual batch: a channel drain, a handler's emit_batch): scalar checks
            if not self.known[t0]:
                self.dead(recs, UNKNOWN_TYPE)
                return 0
            if self.poisoned[t0]:
                if self.det is None:
                    self.dead(recs, POISONED)
                    return 0
                # deterministic records: the tick stage refuses them at the tick boundary
                # (DetStage._boundary), so what a poison flag set mid-tick refuses does not
                # depend on which worker got there first
                keep = (recs["flags"] & FLAG_DETERMINISTIC) != 0
                if not keep.all():
                    self.dead(T.select(recs, ~keep), POISONED)
                    recs = T.select(recs, keep)
                    n = len(recs)
                    if n == 0:
                        return 0
        else:
            one_type = False
            if types.max() >= MAX_TYPES or not self.known[types].all():
                bad = (types >= MAX_TYPES) | ~self.known[np.minimum(types, MAX_TYPES - 1)]
                self.dead(T.select(recs, bad), UNKNOWN_TYPE)
                recs = T.select(recs, ~bad)
                types = recs["type"]
            if self.poisoned[types].any():
                bad = self.poisoned[types]
                if self.det is not None:      # (deterministic ones: at the tick boundary)
                    bad &= (recs["flags"] & FLAG_DETERMINISTIC) == 0
                self.dead(T.select(recs, bad), POISONED)
                recs = T.select(recs, ~bad)
            n = len(recs)
            if n == 0:
                return 0
        ndet = 0
        if self.det is not None:
            # before any seq stamping: the tick stage numbers deterministic records itself, and
            # an EMIT record's seq still holds its parent's seq, the canonical order of children
            det_mask = (recs["flags"] & FLAG_DETERMINISTIC) != 0
            if det_mask.any():
                d = T.select(recs, det_mask)
                ndet = len(d)
                self._count(ndet)
                self.det.take(d, route, due, self)
                if self.on_enqueued is not None and route != Route.EVENT:
                    self.on_enqueued(d["type"], worker)
                recs = T.select(recs, ~det_mask)
                n = len(recs)
                if n == 0:
                    self.wake(1)
                    return ndet
        if route in _FRESH_SEQ:
            with self.count_lock:
                s = self.seq
                self.seq = s + n
            recs["seq"] = np.arange(s + 1, s + n + 1, dtype=np.uint64).astype(np.uint32)
        accepted, ready, err = self._route(recs, route, worker, due, one_type)
        if self.on_enqueued is not None and route != Route.EVENT:
            # a due event was counted when it was scheduled (RETRY / DEFER): once per attempt
            self.on_enqueued(recs["type"][:accepted], worker)
        if ready and wake:
            # one parked worker (it wakes the next if it leaves work behind: Worker.step), and
            # last: the woken thread needs the GIL this one holds until it is done here
            self.wake(1)
        if err is not None:
            raise err       # the tenant policy's wake, once what it was about is counted
        return accepted + ndet

    def _enqueue_one(self, recs: np.ndarray, route: Route, worker: int, wake: bool = True) -> int:
        """One record to a ready or local queue (a host's ``submit`` of one task, one emit, a
        due event, one channel delivery): what ``enqueue`` does, with the header read as plain
        ints (one struct call) instead of NumPy reductions over columns, ~3x cheaper. Returns
        -1, having done nothing, for what needs the general path: an unknown or poisoned type
        (it says why, on sys.error) or a deterministic record for the tick stage."""
        t, fl, tn = _HDR.unpack_from(recs)
        if t >= MAX_TYPES or not self.known[t] or self.poisoned[t] \
                or (fl & FLAG_DETERMINISTIC and self.det is not None):
            return -1
        self.route_counts[route] += 1
        with self.count_lock:             # one lock round: the seq and the outstanding count
            if route in _FRESH_SEQ:
                seq = self.seq + 1
                self.seq = seq
            else:
                seq = -1
            self.outstanding += 1
        if seq >= 0:
            _SEQ.pack_into(recs, _SEQ_OFF, seq & 0xFFFF_FFFF)
        ready = True
        if route == Route.EMIT and worker >= 0 and self.policy is None \
                and self.local[worker].push(recs, limit=self.local_limit):
            ready = False
        else:
            try:
                r = self._push_ready_one(recs, t, fl & PRIO_MASK, tn)
            except BaseException:
                self._count(-1)   # the tenant policy refused a new tenant: nothing was queued
                raise
            if r is not True:
                if r is False:
                    self.dead(recs, READY_FULL)
                    self._count(-1)
                    return 0
                # the tenant policy's wake raised, the record queued: counted, then raised
                if self.on_enqueued is not None and route != Route.EVENT:
                    self.on_enqueued(t, worker)
                if wake:
                    self.wake(1)
                raise r
        if self.on_enqueued is not None and route != Route.EVENT:
            self.on_enqueued(t, worker)
        if ready and wake:
            self.wake(1)
        return 1

    def _push_ready_one(self, rec: np.ndarray, t: int, p: int,
                        tenant: int) -> bool | BaseException:
        """``_push_ready`` for one record whose header is known; True: queued, False: refused
        (full), an exception: queued, and the tenant policy's ``wake`` raised that. A plain
        ring with room takes it through ``Ring.push1`` (the round trip's path); a full ring (it
        grows), a new bucket or a timed ring take the general ``_push_one``. Raises what the
        policy raises adding a new tenant (nothing queued)."""
        with self.lock:
            rq = self.tenants.get(tenant)
            if rq is None:
                rq = self._rq(tenant)
            was_empty = rq.size == 0
            b = rq.buckets.get(t)
            r = b.rings[p] if b is not None else None
            if r is not None and r.__class__ is Ring and r.tail == r.head and r.push1(rec.tobytes()):
                # (an empty ring: the usual round trip; a deeper one keeps the general path)
                rq.active[p].append(t)
                b.size += 1
                n = rq.size = rq.size + 1
                if n > rq.high_watermark:
                    rq.high_watermark = n
                k = 1
            else:
                k = rq._push_one(t, p, rec)
                if rq.rejected:
                    rq.rejected.clear()
            if was_empty and self.policy is not None:
                err = self._policy_wake(tenant)
                if err is not None and k == 1:
                    return err
        return k == 1

    def _count(self, n: int) -> None:
        with self.count_lock:
            self.outstanding += n

    def _route(self, recs: np.ndarray, route: Route, worker: int, due: int,
               one_type: bool = False) -> tuple[int, bool, BaseException | None]:
        """Put ``recs`` where ``route`` says; (accepted, whether any went to a ready queue, what
        the tenant policy's ``wake`` raised: for the caller to raise once it has counted)."""
        n = len(recs)
        self._count(n)
        if route in (Route.RETRY, Route.DEFER, Route.WAIT):
            k = self.events.push(recs, due)
            if k < n:
                self.dead(recs[k:], EVENT_FULL)
                self._count(k - n)
            return k, False, None
        if route == Route.YIELD and self.policy is None:
            # a yield runs again soon on the worker that ran it (the local queue's reserve);
            # with a tenant policy it goes to its tenant's ready queue below instead, as an
            # emit does: the gather serves the local queue first 3 gathers in 4, so a yield
            # kept there would run without the policy picking it (a tenant that yields would
            # escape its share, and an interactive tenant waited ~2x as long behind it)
            k = self.local[worker].push(recs)
            if k < n:
                k2 = self.overflow.push(recs[k:])
                if k + k2 < n:
                    self.dead(recs[k + k2:], YIELD_OVERFLOW)
                    self._count(k + k2 - n)
                k += k2
            return k, False, None
        if route == Route.EMIT and worker >= 0 and self.policy is None:
            # children stay on the emitting worker (cache-warm chains); with a tenant policy they
            # go to their tenant's ready queue instead, so the policy chooses who runs next
            k = self.local[worker].push(recs, limit=self.local_limit)
            if k == n:
                return n, False, None
            recs = recs[k:]
        else:
            k = 0
        try:
            refused, err = self._push_ready(recs, one_type)
        except BaseException:
            # the tenant policy refused a new tenant: nothing of recs was queued (they were
            # counted outstanding above, and nothing would ever finish them)
            self._count(-len(recs))
            raise
        if refused is not None:
            # (a yield the ready queue refuses, past its max capacity, did not fit anywhere:
            # the code a yield without room gets)
            self.dead(refused, YIELD_OVERFLOW if route == Route.YIELD else READY_FULL)
            self._count(-len(refused))
            return n - len(refused), True, err
        return n, True, err

    def _push_ready(self, recs: np.ndarray, one_type: bool = False):
        """Push to the tenants' ready queues; return (the records refused at capacity or None,
        what the tenant policy's ``wake`` raised or None). Raises what the policy raises adding
        a new tenant, with nothing of ``recs`` queued: every tenant's queue is found before
        anything is pushed, and the policy is woken after."""
        tenants = recs["tenant"]
        t0 = int(tenants[0])
        one_tenant = len(recs) == 1 or not np.count_nonzero(tenants != t0)   # outside the lock
        refused = []
        err = None
        with self.lock:
            if one_tenant:
                rq = self._rq(t0)
                if self._push_tenant(rq, recs, refused, one_type) and self.policy is not None:
                    err = self._policy_wake(t0)
            else:
                ids = np.unique(tenants).tolist()
                rqs = [self._rq(t) for t in ids]
                woken = [t for t, rq in zip(ids, rqs)
                         if self._push_tenant(rq, T.select(recs, tenants == t), refused,
                                              one_type)]
                if self.policy is not None:
                    for t in woken:
                        e = self._policy_wake(t)
                        if err is None:
                            err = e
        return (T.concat(refused) if refused else None), err

    @staticmethod
    def _push_tenant(rq: ReadyQueue, recs: np.ndarray, refused: list,
                     one_type: bool = False) -> bool:
        """Push one tenant's ``recs`` to its queue ``rq`` (what it refuses to ``refused``);
        True when the queue was empty before (the policy is to be woken for it)."""
        was_empty = len(rq) == 0
        rq.push(recs, one_type)
        if rq.rejected:
            refused.extend(rq.rejected)
            rq.rejected.clear()
        return was_empty

    # -- popping ------------------------------------------------------------------------------
    def pop_ready(self, max_n: int) -> np.ndarray:
        """Pop one homogeneous batch from the tenant the policy picks; without a policy, from
        the next tenant queue with work in turn (one pop each)."""
        with self.lock:
            pol = self.policy
            if pol is None:
                rqs = self._rqs
                n = len(rqs)
                if n == 1:
                    rq = rqs[0]
                    return rq.pop(max_n) if rq.size else _NO_RECS
                # taking turns: the first queue with work, in creation order, starved every
                # later tenant for as long as one tenant's flood lasted
                i = self._rr
                for k in range(n):
                    rq = rqs[(i + k) % n]
                    if rq.size:
                        self._rr = (i + k + 1) % n
                        return rq.pop(max_n)
                return _NO_RECS
            now = self.clock()
            tenant = pol.pick(now)
            if tenant is None:
                return _NO_RECS
            rq = self.tenants[tenant]
            if max_n > 1:
                # tenants share the workers: a batch of about the policy's batch time of this
                # tenant's handler time, not max_n tasks whatever they cost (a flood's 256
                # tasks of 200 us held both workers 50 ms). Capped whether or not another
                # tenant has work queued now: one whose task arrives while the batch runs
                # waits for it
                lim = self._batch_limit
                if lim is not None:
                    max_n = min(max_n, lim(tenant))
                elif len(self._rqs) > 1:
                    max_n = min(max_n, SHARED_BATCH)
            recs = rq.pop(max_n)
            if len(recs):
                pol.observe_latency(tenant, rq.last_waited)
            if len(rq) == 0:
                pol.sleep(tenant, now)
            return recs

    def take_all(self) -> list[np.ndarray]:
        """Remove every queued record (ready, local, overflow, event queues) for ``halt``;
        call only once the workers are stopped. ``outstanding`` drops by what was taken."""
        out = []
        with self.lock:
            for rq in self.tenants.values():
                for b in rq.buckets.values():
                    for r in b.rings:
                        if r is not None and len(r):
                            out.append(r.pop(len(r)))
                    b.size = 0
                rq.size = 0
                rq.active = [[] for _ in range(NUM_PRIORITIES)]
        for r in (*self.local, self.overflow):
            if len(r):
                out.append(r.pop(len(r)))
        with self.events.lock:
            out.extend(recs for _, _, recs in self.events.heap)
            self.events.heap.clear()
            self.events.size = 0
        with self.count_lock:
            self.outstanding -= sum(len(r) for r in out)
        return out

    def ready_len(self) -> int:
        return sum(len(rq) for rq in self.tenants.values())

    def ready_any(self) -> bool:
        """Whether any ready queue holds a record (``ready_len() > 0`` without the sum)."""
        for rq in self.tenants.values():
            if rq.size:
                return True
        return False

    def done(self, n: int) -> None:
        """Workers call this when ``n`` popped tasks are finished (whatever their outcome)."""
        with self.count_lock:
            left = self.outstanding - n
            self.outstanding = left
        if left == 0:
            self.on_idle()

    def idle(self) -> bool:
        return self.outstanding == 0

    def stats(self) -> dict:
        ready_hw = sum(rq.high_watermark for rq in self.tenants.values())
        return {
            "outstanding": self.outstanding,
            "ready_depth": self.ready_len(),
            "ready_high_watermark": ready_hw,
            "aging_picks": sum(rq.aging_picks for rq in self.tenants.values()),
            "local": [r.stats() for r in self.local],
            "overflow": self.overflow.stats(),
            "events": {"depth": len(self.events), "high_watermark": self.events.high_watermark},
            "routes": {r.name.lower(): int(self.route_counts[r]) for r in Route},
        }
