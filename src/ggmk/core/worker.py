"""A worker: gather a batch -> group by type -> dispatch -> route results -> emit -> account.

``step()`` does one round and says whether it found work; the HAL decides how steps are driven
(a thread that spins then parks, or the seeded simulator). Gather order: the yield-overflow queue
(top priority), the worker's local queue, due events (at most 256 per round, re-enqueued through
the core), the deterministic tick stage, then the ready queue.

A step is the worker's tick for its bump region (SPEC §4 "bump (transient, reset each tick)"):
it starts by resetting the region when a handler took from it (``ctx.bump_alloc``; one
integer test otherwise), since none of the worker's handlers runs then. A host that borrowed
the worker (``help``, a direct request) resets it as it gives the worker back (``has_work``).

Per-task handlers see their batch as plain Python values (``ctx.task`` is a ``TaskRow`` over
the columns read once with ``.tolist()``), and what they ``ctx.emit`` to their own type runs in
the same step as further rows of the batch (the worker would pop it from its local queue next
anyway), up to the batch budget and never on the ready queue's turn, nor with a tenant policy
or in determinism mode; those follow-ons become records once per step (``_follow_ons``) and are
counted, traced and finished like any task of the batch. When every task of the step returned
OK and none is traced, nothing would read those records: they are counted without being
built (``_count_follow_ons``). A one-task batch (a round trip) is read with one ``struct``
call, and the tracer's ``quiet_all`` lets a batch skip TASK_START/TASK_END offers when no type
is traced at that level and no task is flagged FLAG_EMIT_TRACE.

Per-type outcome counters: each run of a task (``dequeued``) counts once in ``ok``, ``fail``
(it failed for good: a failure code, a retry past max_retries, a yield past max_yields; counted
by ``kernel.fail``), ``retry``, ``yield`` or ``wait`` (re-enqueued: ``enqueued`` counts it
again); ``dropped`` counts tasks dead-lettered without failing in a handler (refused, poisoned
or unknown types, halted). So at quiescence, per type: enqueued == ok + fail + retry + yield +
wait + (dropped after they were enqueued), and every TASK_START a worker traces is closed on
its own ring by a TASK_END (ok, wait), TASK_YIELD, TASK_RETRY or TASK_FAIL.
"""
from __future__ import annotations

import traceback
from itertools import islice

import numpy as np

from ggmk import task as T
from ggmk.core.context import Context, u64
from ggmk.core.faults import backoff_ticks
from ggmk.core.metrics import TypeCounter as C
from ggmk.core.sched import EVENT_DRAIN_MAX, Route
from ggmk.errors import AllocError
from ggmk.events import EventType
from ggmk.task import (ALLOC_FAIL, BAD_RETURN, FAIL, FLAG_DETERMINISTIC, FLAG_EMIT_TRACE,
                       HANDLER_EXCEPTION, MAX_YIELDS, OK, RECORD_STRUCT, RETRY, RETRY_EXHAUSTED,
                       TASK_DTYPE, WAIT, YIELD, TaskBatch)


_CODE_MIN = -(1 << 31)
_DEQ, _OK = int(C.DEQUEUED), int(C.OK)
_REC = RECORD_STRUCT        # a whole record as plain ints: one struct call for one task
_V48 = np.dtype("V48")       # a record as raw bytes: copies without per-field work


def _task_code(r):
    """A per-task handler's return value as (code, None), or (BAD_RETURN, the error) when it
    is not one: OK / RETRY / YIELD / WAIT, a negative int32 failure code, or None."""
    if isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)):
        r = int(r)
        if r == OK or r == RETRY or r == YIELD or r == WAIT or _CODE_MIN <= r < 0:
            return r, None
    return BAD_RETURN, BadReturn(
        f"handler returned {r!r} ({type(r).__name__}); allowed: ggmk.OK (0) or None, RETRY, "
        f"ctx.yield_(), ctx.wait_(), or a negative failure code")


def _batch_codes(r, n: int):
    """A batch handler's return value as (codes, None): one code for the batch or one per
    task; (codes with BAD_RETURN, the error) for anything else."""
    if isinstance(r, np.ndarray) and r.dtype.kind in "iu" and r.shape in ((), (n,)):
        codes = np.broadcast_to(r, (n,)).astype(np.int64)
        ok = ((codes < 0) & (codes >= _CODE_MIN)) | (codes == OK) | (codes == RETRY) \
            | (codes == YIELD) | (codes == WAIT)
        if ok.all():
            return codes.astype(np.int32), None
        i = int(np.flatnonzero(~ok)[0])
        code, err = _task_code(codes[i].item() if codes[i] < 1 << 63 else int(codes[i]))
        codes = codes.astype(np.int32, casting="unsafe")
        codes[~ok] = BAD_RETURN
        return codes, err
    if isinstance(r, (list, tuple)) and len(r) == n and n != 1:
        pairs = [_task_code(x) for x in r]
        err = next((e for _, e in pairs if e is not None), None)
        return np.array([c for c, _ in pairs], dtype=np.int32), err
    code, err = _task_code(r)
    return np.full(n, code, dtype=np.int32), err


def _exc_code(e: Exception) -> int:
    """The code of a task whose handler raised ``e``: ALLOC_FAIL when the arena ran out
    (``ctx.alloc``, a payload emit: memory pressure, not a handler bug), else
    HANDLER_EXCEPTION."""
    return ALLOC_FAIL if isinstance(e, AllocError) else HANDLER_EXCEPTION


def _keep(excs, e) -> list:
    """Add a failed task's exception to ``excs`` (None until the first failure: nothing to
    allocate on the success path)."""
    if excs is None:
        return [e]
    excs.append(e)
    return excs


def _note_code(bad: list, i: int, r):
    """Note a per-task handler's non-OK result ``r`` for row ``i`` in ``bad``; return the
    error when ``r`` is not a code (BAD_RETURN), else None."""
    e = None
    if r.__class__ is not int or not _CODE_MIN <= r <= WAIT:
        r, e = _task_code(r)
    if r:
        bad.append((i, r))
    return e


def _forced(recs) -> bool:
    """Whether a task of ``recs`` is flagged FLAG_EMIT_TRACE (traced whatever the level)."""
    fl = recs["flags"]
    return bool((fl[0] if len(fl) == 1 else np.bitwise_or.reduce(fl)) & FLAG_EMIT_TRACE)


class BadReturn(TypeError):
    """What ``system.exceptions`` records for a handler that returned a non-code."""


#: how many times one step may grow its follow-on budget (Worker._grow): with the default
#: budget, a few milliseconds of a long chain before the worker is back in its loop
GROW_ROUNDS = 7


class Worker:
    def __init__(self, kernel, wid: int, max_batch: int = 256):
        self.kernel = kernel
        self.id = wid
        self.max_batch = max_batch
        self.ctx = Context(kernel, wid)
        self._bump = self.ctx._bump       # this worker's bump region (ctx.bump_alloc)
        self.sched = kernel.sched
        self.local = kernel.sched.local[wid]
        self.tasks = 0
        self.batches = 0
        self.idle_steps = 0
        self.parks = 0
        self.gathers = 0
        self._full = False
        # the tasks of the step running (outstanding until it ends): what a handler that halts
        # the system holds, which the halt cannot wait for (kernel._halt)
        self.in_hand = 0
        # growing the step's follow-on budget (_grow): rounds left, the seq block taken so far
        self._grow_left = 0
        self._grow_base = 0
        self._grow_seqs = 0
        self._grow_by = 0
        # the HAL's list of parked workers, where it has one: a worker that pops a batch and
        # leaves work in the ready queue wakes the next parked worker
        self._parked = getattr(kernel.hal, "parked_list", ())

    def on_park(self):
        """The HAL parks this worker's thread: count it and, when the tracer records level-all
        events for some type, trace WORKER_PARK (arg0 = the worker; filtered by the default
        level, task type 0) on the worker's own ring. Returns the hook the HAL calls when
        the park ends (``on_wake(woken)``), or None when there is nothing to trace: one
        attribute test per park while no type is traced at level all."""
        self.parks += 1
        tr = self.kernel.tracer
        if tr.quiet_all:
            return None
        tr.emit(self.id, EventType.WORKER_PARK, 0, 0, self.id, 0)
        return self.on_wake

    def on_wake(self, woken: bool) -> None:
        """The park ended: WORKER_WAKE (arg0 = the worker, arg1 = 1 when a wake-up ended it,
        0 when it timed out)."""
        self.kernel.tracer.emit(self.id, EventType.WORKER_WAKE, 0, 0, self.id, int(woken))

    # -- gather ---------------------------------------------------------------------------------
    def step(self) -> bool:
        # the worker's tick for its bump region (SPEC §4 "reset each tick", per worker): no
        # handler of this worker runs between steps, so what they took is dropped here
        if self._bump.top:
            self._bump.reset()
        k = self.kernel
        s = self.sched
        tick = k.update_tick()
        if k.det is not None:
            tick = k.wall_tick()      # the event queue runs on wall ticks (see wall_tick)
        ev = s.events
        if ev.size and ev.heap and ev.heap[0][0] <= tick:
            due = ev.pop_due(tick, EVENT_DRAIN_MAX)
            if len(due):
                s.enqueue(due, Route.EVENT)
                s.done(len(due))
        B = self.max_batch
        self.gathers += 1
        ov = s.overflow
        loc = self.local
        # (ring depths read as tail - head: Ring.__len__ is a Python call, ~4 per step)
        if ov.tail != ov.head:
            recs = ov.pop(B)
        elif loc.tail != loc.head and self.gathers & 3:
            # every 4th gather looks at the ready queue first, so a handler that keeps feeding
            # its own local queue cannot starve the ready queue (and its aging scan)
            recs = loc.pop(B)
        else:
            recs = None
        if recs is None or not len(recs):
            det = k.det
            if det is not None and det.has_work():
                got = det.pop(B)
                if got is not None:
                    recs, start = got
                    self.in_hand = len(recs)
                    k.tick = det.tick   # the pop may have opened a new tick; it can't move while we run
                    codes = self._dispatch_group(recs, want_codes=True)
                    det.finish(start, codes)
                    s.done(len(recs))
                    return True
            recs = s.pop_ready(B)
            if len(recs):
                if self._parked and s.ready_any():
                    s.wake(1)     # more is ready: pass the wake-up on (a submit wakes one worker)
            elif loc.tail != loc.head:
                recs = loc.pop(B)
            if not len(recs):
                k.poll_idle(self.id)
                self.idle_steps += 1
                return False
        n = self.in_hand = len(recs)
        self._full = n >= B
        if n < B and k.det is None and s.policy is None and loc.tail == loc.head \
                and ov.tail == ov.head and (self.gathers & 3 or not s.ready_any()):
            # the worker may run what this batch emits to its own type in the same step (the
            # next thing it would pop from its local queue anyway), up to the batch budget;
            # never on the ready queue's turn (every 4th gather), so aging and tenants hold
            if n == 1:
                self._dispatch_group(recs, False, B)
            else:
                self.dispatch(recs, B)
        else:
            self.dispatch(recs)
        s.done(n)
        return True

    def has_work(self, exact: bool = False) -> bool:
        """Whether a step now could find work (a cheap look, no pop): the HAL parks a worker
        whose step did work and that sees nothing more, without an empty step first. Due
        events are seen when due; later ones wake the worker by its park timeout. Channels
        with handler subscribers count as work unless ``exact`` (then: if one has messages
        pending; what the HAL asks before it parks a worker a host borrowed).

        ``exact`` is also where a host gives back a worker it borrowed (``help``, ``lend``):
        its run is over, so its bump region is reset here as its next step would; a direct
        request (``System._direct_run``) runs a handler outside any step."""
        if exact and self._bump.top:
            self._bump.reset()
        if self._full:                    # the last batch was a full one: likely more
            return True
        s = self.sched
        loc, ov = self.local, s.overflow
        if loc.tail != loc.head or ov.tail != ov.head:
            return True
        for rq in s.tenants.values():
            if rq.size:
                return True
        k = self.kernel
        ev = s.events
        if ev.size and ev.heap and ev.heap[0][0] <= k.wall_tick():
            return True
        if k.det is not None and k.det.has_work():
            return True
        ch = k.channels
        if ch is None or not ch._hot:
            return False
        return not exact or not ch.idle()

    def dispatch(self, recs: np.ndarray, budget: int = 0) -> None:
        if len(recs) == 1:
            self._dispatch_group(recs, budget=budget)
            return
        types = recs["type"]
        if not np.count_nonzero(types != types[0]):
            self._dispatch_group(recs, budget=budget)
            return
        order = np.argsort(types, kind="stable")
        srt = T.select(recs, order)
        cuts = np.flatnonzero(np.diff(srt["type"])) + 1
        for g in np.split(srt, cuts):
            self._dispatch_group(g)

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch_group(self, recs: np.ndarray, want_codes: bool = False, budget: int = 0,
                        one: tuple | None = None):
        k = self.kernel
        n = len(recs)
        # one task (a round trip, a lone chain): its fields as plain ints from one struct call
        # (``one``: given by a caller that built the record from them, System._direct_run)
        if n == 1 and one is None:
            try:
                one = _REC.unpack_from(recs)
            except (BufferError, TypeError, ValueError):   # a strided 1-record view
                pass
        t = one[0] if one is not None else int(recs["type"][0])
        h = k.handler_of[t]
        cap = h.max_batch
        if cap and n > cap:               # the handler asked for batches of at most cap tasks
            parts = [self._dispatch_group(recs[i:i + cap], want_codes) for i in range(0, n, cap)]
            return np.concatenate(parts) if want_codes else None
        ctx = self.ctx
        trace = k.tracer
        traced = trace.enabled
        if traced:
            if trace.quiet_all and not (one[1] & FLAG_EMIT_TRACE if one is not None
                                        else _forced(recs)):
                traced = False            # nothing can pass: count, don't offer (same stats)
                trace.skipped(self.id, n)
            else:
                trace.emit_batch(self.id, EventType.TASK_START, recs, arg0=recs["seq"])
        ctx.module = h.module
        codes = None
        exc = None
        extra = 0                         # follow-ons run in the step, counted, not built
        # tenants are billed handler CPU time (SPEC §3): wall time would bill a tenant for the
        # time its worker thread was preempted or blocked (the HAL says what CPU time is);
        # unused without a policy
        cpu = k.cpu_clock if k.sched.policy is not None else None
        t0 = k.clock()
        c0 = cpu() if cpu is not None else 0
        if h.batch:
            batch = TaskBatch(recs)
            ctx.batch = batch
            ctx._bhdr = -1
            try:
                r = h.fn(ctx, batch)
            except Exception as e:  # noqa: BLE001 - a handler bug must not kill the worker
                r, exc = _exc_code(e), [e]
            ctx.batch = None
            if r is not None and not (r.__class__ is int and r == OK):
                codes, bad_return = _batch_codes(r, n)
                if bad_return is not None:
                    exc = [bad_return]
        else:
            fn = h.fn
            task = ctx.task
            ctx.batch = None
            bad = []
            # the batch's columns as plain Python values, read once (TaskRow); meta0/meta1 are
            # written back once at the end if a handler set them
            if one is not None:
                m0 = [one[9]]
                m1 = [one[10]]
            else:
                m0 = recs["meta0"].tolist()
                m1 = recs["meta1"].tolist()
            lim = 0
            if budget > n and not k.sched.poisoned[t]:
                lim = min(budget, cap) if cap else budget
                ctx._inl_t = t
            task._start(recs, t, m0, m1, lim)
            ctx._pi = -1
            ctx._bhdr = -2
            if lim:
                ctx._km0, ctx._klim = m0, lim
            d = task._d                  # the current row's meta0 lives here (_Meta0)
            for i, d["meta0"] in zip(range(n), m0):
                task._i = i
                try:
                    r = fn(ctx)
                except Exception as e:  # noqa: BLE001
                    r, exc = _exc_code(e), _keep(exc, e)
                if r is not None and (r.__class__ is not int or r):
                    e = _note_code(bad, i, r)
                    if e is not None:
                        exc = _keep(exc, e)
            seqs = 0
            growing = False
            if len(m0) > n:
                # follow-ons of this type, run in this step as further rows of the batch (each
                # may add more, up to lim). They get fresh seqs from the enqueue core's counter:
                # one block for what this step can run, the rest given back below if nobody
                # took one meanwhile
                seqs = lim - n
                with k.sched.count_lock:
                    base = k.sched.seq
                    k.sched.seq = base + seqs
                task._seq0 = base + 1
                if not cap:               # (a handler's own max_batch bounds its rows)
                    growing = True
                    self._grow_left = GROW_ROUNDS
                    self._grow_base, self._grow_seqs, self._grow_by = base, seqs, lim
                    ctx._grow[0] = self._grow
                # a list's iterator sees what is appended meanwhile: the follow-ons the
                # handlers emit here run in this loop too (no length check per hop)
                for i, d["meta0"] in enumerate(islice(m0, n, None), n):
                    task._i = i
                    try:
                        r = fn(ctx)
                    except Exception as e:  # noqa: BLE001
                        r, exc = _exc_code(e), _keep(exc, e)
                    if r is not None and (r.__class__ is not int or r):
                        e = _note_code(bad, i, r)
                        if e is not None:
                            exc = _keep(exc, e)
            if growing:
                seqs = self._grow_seqs        # grown or not: the block taken (contiguous)
                self._grow_left = 0
                ctx._grow[0] = None
            ctx._inl_t = -1
            ctx._pi = -1
            ctx._bhdr = -1
            if lim:
                ctx._km0, ctx._klim = (), 0
                if ctx.emit is not ctx._general:     # the batch's sender: retire it
                    ctx._room[0] = 0
                    ctx.emit = ctx._general
            if len(m0) > n:
                used = len(m0) - n
                if used < seqs:
                    with k.sched.count_lock:
                        if k.sched.seq == base + seqs:
                            k.sched.seq = base + used
                if bad or traced:
                    recs = self._follow_ons(recs, task, t, traced)
                    one = None
                else:
                    # every task finished OK and no event needs their records: count them
                    extra = self._count_follow_ons(task, t, used)
            elif task._dirty:
                task._write_back()
            task._unbind()
            if bad:
                codes = np.zeros(len(recs), dtype=np.int32)
                for i, r in bad:
                    codes[i] = r
        elapsed = k.clock() - t0
        cpu_ns = cpu() - c0 if cpu is not None else elapsed
        if ctx._ek or ctx._q0 or ctx._emitters_active or k.channels is not None:
            ctx.flush()
        if exc is not None:
            # one entry per failed task; only the newest the bounded deque keeps are formatted
            keep = k.exceptions.maxlen
            if keep and len(exc) > keep:
                k.note_exception(None, len(exc) - keep)      # counted, not formatted
            for e in exc[-keep:] if keep else exc:
                k.report_exception(h, e, "".join(traceback.format_exception(e)))
        if codes is None and one is not None and not traced and cpu is None \
                and not one[5] and t not in k.poison.counts:
            # one task (and its counted follow-ons) finished OK, untraced, no payload, no
            # tenants: what _finish does for it, without its general checks (this runs
            # between the handler and the park, while a host the handler woke may be
            # waiting for the GIL; a channel message's ordered subscriber is told by seq)
            nn = 1 + extra
            m = k.metrics_shard[self.id]
            tv = m.tv
            tv[_DEQ, t] += nn
            tv[_OK, t] += nn
            if trace.enabled:
                trace.skipped(self.id, nn)
            m.observe_int(k.h_batch_ns, elapsed)
            if one[3] and k.channels is not None:
                k.channels.on_batch_done1(one[3], t, one[4])
        else:
            self._finish(recs, codes, h, t, elapsed, cpu_ns, n, traced, one, extra)
        self.tasks += len(recs) + extra
        self.batches += 1
        if want_codes:
            return codes if codes is not None else np.zeros(n, dtype=np.int32)
        return None

    def _grow(self) -> bool:
        """The batch's sender found the step's follow-on budget used up: run one more budget's
        worth in this step when that is what the next step would do anyway, i.e. nothing else
        waits (the ready queue, this worker's local queue, the overflow, a due event, a
        channel's messages) and no one took a seq since this step's block (the follow-ons'
        seqs stay one contiguous block). At most GROW_ROUNDS times a step, so the worker
        still comes back to its loop (halt, parking) every few milliseconds. What it saves:
        the follow-ons past the budget built as records, queued, gathered and read back
        (~15% of a long per-task chain). False from then on in this step once it says no."""
        s = self.sched
        k = self.kernel
        ev = s.events
        ch = k.channels
        by = self._grow_by
        ok = not (self._grow_left <= 0 or s.ready_any() or self.local.tail != self.local.head
                  or s.overflow.tail != s.overflow.head
                  or (ev.size and ev.heap and ev.heap[0][0] <= k.wall_tick())
                  or (ch is not None and not ch.idle()))
        if ok:
            with s.count_lock:
                ok = s.seq == self._grow_base + self._grow_seqs
                if ok:
                    s.seq += by
        if not ok:
            self._grow_left = 0
            self.ctx._grow[0] = None
            return False
        self._grow_seqs += by
        self._grow_left -= 1
        ctx = self.ctx
        ctx._room[0] += by
        ctx._klim += by
        self.gathers += 1                 # a round like a gather (the ready queue's turn)
        return True

    def _follow_ons(self, recs, task, t: int, traced: bool = True) -> np.ndarray:
        """The records of the follow-ons this batch ran in the same step (``ctx.emit`` to the
        batch's own type): built once, counted as emitted (route, per-type enqueue counter,
        TASK_START) and returned appended to ``recs``, so that results, yields, retries,
        failures, metrics and trace see them like any other task of the batch. They never sat
        in a queue, so they never counted as outstanding."""
        k = self.kernel
        s = self.sched
        n = len(recs)
        kids = task._kids
        nk = len(task._m0) - n
        task._m1_full()                   # (follow-ons with meta1 = 0 left it short)
        # one array for the batch and its follow-ons: the batch's records copied as raw bytes,
        # the follow-ons' header as one template fill, then their columns
        out = np.empty(n + nk, TASK_DTYPE)
        raw = out.view(_V48)
        raw[:n] = recs.view(_V48)         # (a same-size view: strided records too)
        if task._khdr >= 0:
            h0, uniform = task._khdr, True
        else:
            h0 = kids[0]
            uniform = kids.count(h0) == nk
        tmpl = np.zeros(1, TASK_DTYPE)
        tmpl["type"] = t
        if uniform:
            tmpl["flags"] = h0 & 0xFFFF
            tmpl["tenant"] = (h0 >> 16) & 0xFFFF
        raw[n:] = tmpl.view(_V48)[0]
        ch = out[n:]
        if not uniform:
            ch["flags"] = np.array([x & 0xFFFF for x in kids], np.uint16)
            ch["tenant"] = np.array([(x >> 16) & 0xFFFF for x in kids], np.uint16)
        # fresh seqs (u4: they wrap like the enqueue core's)
        ch["seq"] = np.arange(task._seq0, task._seq0 + nk, dtype=np.uint64) & 0xFFFF_FFFF
        if task._dirty:       # a handler set meta0/meta1 of a task of the batch: all of them
            out["meta0"] = u64(task._m0)
            out["meta1"] = u64(task._m1)
            task._dirty = False
        else:
            ch["meta0"] = u64(task._m0[n:])
            ch["meta1"] = u64(task._m1[n:])
        s.route_counts[Route.EMIT] += nk
        oe = s.on_enqueued
        if oe is not None:
            if oe == k._count_enqueued:       # the kernel's per-type counter: one add
                k.metrics_shard[self.id].add_type(C.ENQUEUED, t, nk)
            else:
                oe(ch["type"], self.id)
        if traced:
            k.tracer.emit_batch(self.id, EventType.TASK_START, ch, arg0=ch["seq"])
        elif k.tracer.enabled:            # follow-ons never carry FLAG_EMIT_TRACE
            k.tracer.skipped(self.id, nk)
        return out

    def _count_follow_ons(self, task, t: int, nk: int) -> int:
        """``_follow_ons`` for a batch whose tasks all returned OK, untraced: the ``nk``
        follow-ons are counted as emitted (route, per-type enqueue counter, the tracer's
        filtered count) but no record is built: nothing would read it.
        Their seqs were taken all the same, so later tasks are numbered as if they had been
        built. Returns ``nk``."""
        k = self.kernel
        s = self.sched
        if task._dirty:                   # a handler set meta0/meta1 of a task of the batch
            task._write_back()
        s.route_counts[Route.EMIT] += nk
        oe = s.on_enqueued
        if oe is not None:
            if oe == k._count_enqueued:       # the kernel's per-type counter: one add
                k.metrics_shard[self.id].add_type(C.ENQUEUED, t, nk)
            else:
                oe(np.full(nk, t, np.uint32), self.id)
        if k.tracer.enabled:              # TASK_START, not offered (see Tracer.quiet_all)
            k.tracer.skipped(self.id, nk)
        return nk

    def _finish(self, recs, codes, h, t, elapsed, cpu_ns, n0: int | None = None,
                traced: bool = True, one=None, extra: int = 0) -> None:
        """Results, counters, trace, payloads, billing of a dispatched batch. ``one``: the
        fields of the batch's only record, where the worker read them (``_REC``), so that its
        payload pointer and channel are read without NumPy. ``extra``: follow-ons that ran
        OK in the step without records (``_count_follow_ons``; only with ``codes`` None)."""
        k = self.kernel
        n = len(recs) + extra
        m = k.metrics_shard[self.id]
        if codes is None:
            tv = m.tv                     # t is a dispatched type: in range, no check needed
            tv[_DEQ, t] += n
            tv[_OK, t] += n
            if traced:
                k.tracer.emit_batch(self.id, EventType.TASK_END, recs, arg0=recs["seq"])
            elif k.tracer.enabled:
                k.tracer.skipped(self.id, n)
            if one is None or one[5]:    # (follow-ons carry no payload)
                self._release(recs, None, h)
        else:
            m.add_type(C.DEQUEUED, t, n)
            ok = codes == OK
            m.add_type(C.OK, t, int(ok.sum()))
            y = codes == YIELD
            rt = codes == RETRY
            wt = codes == WAIT
            fail = ~(ok | y | rt | wt)
            # every TASK_START is closed on this track: TASK_END for the ones that finished OK
            # and for the waiting ones (no event of their own; they start again when re-run);
            # yields, retries and failures close theirs with TASK_YIELD / _RETRY / _FAIL
            done = ok | wt
            nd = int(done.sum())
            if nd:
                if traced:
                    d = recs if nd == len(recs) else T.select(recs, done)
                    k.tracer.emit_batch(self.id, EventType.TASK_END, d, arg0=d["seq"])
                elif k.tracer.enabled:
                    k.tracer.skipped(self.id, nd)
            if y.any():
                self._yield(T.select(recs, y), h, t)
            if wt.any():
                self._wait(T.select(recs, wt), t)
            if rt.any():
                self._retry(T.select(recs, rt), t)
            if fail.any():            # (kernel.fail counts them in `fail`)
                k.fail(T.select(recs, fail), codes[fail], t, self.id)
            self._release(recs, ok, h)   # failed ones: released by kernel.fail
        pd = k.poison
        if t in pd.counts:        # a type that failed lately: count its attempts (poison rate)
            pd.attempted(t, n if codes is None else int((codes >= 0).sum()),
                          *k.poison_tick(recs))
        if k.sched.policy is None:
            m.observe_int(k.h_batch_ns, elapsed)  # all that account() does without tenants
        else:
            k.account(self.id, recs, elapsed, cpu_ns)
        if one is not None:
            if one[3] and k.channels is not None:    # (the record's fields: no NumPy)
                k.channels.on_batch_done1(one[3], t, one[4])
        elif k.channels is not None:
            # ordered channels deliver the next batch (follow-ons run in the step are not theirs;
            # a batch may mix channels, or direct tasks with messages, of one handler type;
            # nothing to do, and no column pass, without ordered channels)
            k.channels.on_batch_done(recs if n0 is None or n0 == n else recs[:n0])

    def _release(self, recs, mask, h) -> None:
        """The payload references of the tasks that finished (``mask``: which; None: all);
        a bad one is reported against ``h``, the worker and the accounting go on."""
        ptrs = recs["payload_ptr"]
        if mask is not None:
            ptrs = np.where(mask, ptrs, 0)
        if not np.count_nonzero(ptrs):   # (~4x cheaper than .any() on a short column)
            return
        self.kernel.release_payloads(ptrs, h)

    def _yield(self, recs, h, t) -> None:
        k = self.kernel
        yc = recs["yield_count"]          # (a u16: max_yields may be 65535, its top)
        over = yc >= k.max_yields[t]      # compared before the bump, which saturates: bumped
        yc += yc != 0xFFFF                # first, 65535 wrapped to 0 and never passed the limit
        nover = int(over.sum())
        # a yield past max_yields is a failure (counted in `fail` and traced as TASK_FAIL by
        # kernel.fail), not a yield: neither counted nor traced as one
        if nover:
            k.fail(T.select(recs, over), MAX_YIELDS, t, self.id)
            recs = T.select(recs, ~over)
        if not len(recs):
            return
        k.metrics_shard[self.id].add_type(C.YIELD, t, len(recs))
        if k.tracer.enabled:
            k.tracer.emit_batch(self.id, EventType.TASK_YIELD, recs, arg0=recs["seq"],
                                arg1=recs["yield_count"])
        k.sched.enqueue(recs, Route.YIELD, self.id)

    def _wait(self, recs, t) -> None:
        """ctx.wait_(): the task waits for room on a full channel. Not a yield (it does not
        count toward max_yields): it runs again on the next tick, meta0/meta1 as it left them."""
        k = self.kernel
        k.metrics_shard[self.id].add_type(C.WAIT, t, len(recs))
        if k.det is not None:
            k.sched.enqueue(recs, Route.WAIT, self.id)
        else:
            k.sched.enqueue(recs, Route.WAIT, self.id, due=k.wall_tick() + 1)

    def _retry(self, recs, t) -> None:
        k = self.kernel
        pad = recs["_pad"]                # _pad is the runtime's retry counter (a u16)
        over = pad >= k.max_retries       # compared before the bump, which saturates (as
        pad += pad != 0xFFFF              # _yield's): max_retries may be 65535
        nover = int(over.sum())
        # a retry past max_retries is a failure (counted in `fail` and traced as TASK_FAIL by
        # kernel.fail), not a retry: neither counted nor traced as one
        if nover:
            k.fail(T.select(recs, over), RETRY_EXHAUSTED, t, self.id)
            recs = T.select(recs, ~over)
        if not len(recs):
            return
        k.metrics_shard[self.id].add_type(C.RETRY, t, len(recs))
        if k.tracer.enabled:
            k.tracer.emit_batch(self.id, EventType.TASK_RETRY, recs, arg0=recs["seq"],
                                arg1=recs["_pad"])
        if k.det is not None:
            # deterministic tasks back off in the tick stage's ticks; the rest on the wall clock
            det = (recs["flags"] & FLAG_DETERMINISTIC) != 0
            groups = [(T.select(recs, det), k.tick), (T.select(recs, ~det), k.wall_tick())]
        else:
            groups = [(recs, k.tick)]
        for g, now in groups:
            for attempt in np.unique(g["_pad"]):
                sel = g[g["_pad"] == attempt]
                k.sched.enqueue(sel, Route.RETRY, self.id, due=now + backoff_ticks(int(attempt)))


__all__ = ["Worker", "FAIL"]
