"""Audit fixes in the CPU timer, stats and reduce modules (and ``modules.defer``): a deferred
task the full event queue refuses is never waited for (the timer is not left armed, stats
schedules again, a reduce group times out), a too-large concat result is reported instead of
lost, folds follow seq order across batches, stats' outbox stays bounded, reduce keeps no
entry per group id ever seen. Real threads (workers=2); waits on Events, never on sleeps."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.modules import defer, reduce, stats, timer

FAR = 10_000_000                 # ticks: never due in a test


def nop_module():
    app = ggmk.Module("fill")

    @app.handler("FILL_NOP")
    def nop(ctx):
        pass
    return app


def fill_event_queue(system, leave: int = 0) -> None:
    """Fill the event queue with far-due no-ops, ``leave`` slots free."""
    ev = system.sched.events
    n = ev.capacity - len(ev) - leave
    assert n > 0
    due = system.wall_tick() + FAR
    assert system.submit("FILL_NOP", meta0=np.arange(n, dtype=np.uint64), due=due) == n


def unfill(system) -> None:
    """Take every deferred FILL_NOP back (the event queue has its room again)."""
    ev = system.sched.events
    tid = system.type_id("FILL_NOP")
    want: dict = {}
    with ev.lock:
        for d, _, r in ev.heap:
            r = r[r["type"] == tid]
            want.setdefault(d, set()).update(zip(r["meta0"].tolist(), r["meta1"].tolist()))
    system.withdraw_deferred("FILL_NOP", want)


def collector(name, chan, msg, on=None):
    m = ggmk.Module(name)
    got, lock = [], threading.Lock()

    @m.handler(f"{name.upper()}_IN", batch=True, consumes=chan, message=msg)
    def take(ctx, batch):
        rows = list(zip(batch.meta0.tolist(), batch.meta1.tolist()))
        with lock:
            got.extend(rows)
        if on is not None:
            on(rows)
    m.got = got
    return m


def errors_of(system, type_name):
    """sys.error's records of ``type_name`` and their codes (each record is handed once)."""
    err, codes = system.dead_letters("sys.error")
    sel = err["type"] == system.type_id(type_name)
    return err[sel], codes[sel]


# ------------------------------------------------------------------ 1. defer / event queue full
def test_defer_returns_how_many_the_event_queue_accepted():
    with ggmk.boot([nop_module()], workers=2) as system:
        fill_event_queue(system, leave=2)
        got = defer(system, "FILL_NOP", np.arange(5, dtype=np.uint64), 1,
                    due=system.wall_tick() + FAR)
        assert got == 2                           # the first two; three refused
        assert defer(system, "FILL_NOP", 9, 9, due=system.wall_tick() + FAR) == 0
        err, codes = errors_of(system, "FILL_NOP")
        assert len(err) == 4 and set(codes.tolist()) == {T.EVENT_FULL}
        unfill(system)
        assert system.run(timeout=10)
    assert defer(system, "FILL_NOP", due=1) == 0               # halted


def test_timer_set_refused_by_the_event_queue_acks_full_and_is_not_armed(wait_until):
    tm = timer.module()
    fired = threading.Event()
    acks = collector("acks", "timer.ack", "TIMER_ACK")
    fires = collector("fires", "timer.fire", "TIMER_FIRE", on=lambda rows: fired.set())
    with ggmk.boot([tm, acks, fires, nop_module()], workers=2) as system:
        fill_event_queue(system, leave=2)
        ids = list(range(100, 105))
        system.submit("TIMER_SET", meta0=ids, meta1=timer.arg(delay=FAR))
        assert wait_until(lambda: len(acks.got) == 5)   # (not idle: fillers, two timers)
        status = {m0: timer.ack_status(m1)[1] for m0, m1 in acks.got}
        assert sorted(status) == ids
        full = sorted(i for i, s in status.items() if s == timer.FULL)
        ok = sorted(i for i, s in status.items() if s == timer.OK)
        assert len(full) == 3 and len(ok) == 2
        assert sorted(tm.timer.armed) == ok and tm.timer.stats()["full"] == 3
        err, codes = errors_of(system, "TIMER_TICK")         # the refused ticks, accounted
        assert sorted(err["meta0"].tolist()) == full and set(codes.tolist()) == {T.EVENT_FULL}
        unfill(system)
        acks.got.clear()
        # a refused timer is not armed: cancel says UNKNOWN, a new set is taken and fires
        system.submit("TIMER_CANCEL", meta0=ok + [full[0]])
        assert system.run(timeout=10)
        system.submit("TIMER_SET", meta0=full[0], meta1=timer.arg(delay=1))
        assert system.run(timeout=10)
        assert fired.is_set() and fires.got == [(full[0], 1)]
        got = sorted((m0, *timer.ack_status(m1)) for m0, m1 in acks.got)
        assert got == sorted([(i, timer.OP_CANCEL, timer.OK) for i in ok]
                             + [(full[0], timer.OP_CANCEL, timer.UNKNOWN),
                                (full[0], timer.OP_SET, timer.OK)])


def test_timer_repeat_whose_next_tick_is_refused_stops(monkeypatch):
    tm = timer.module()
    fired = threading.Event()
    fires = collector("fires", "timer.fire", "TIMER_FIRE", on=lambda rows: fired.set())
    acks = collector("acks", "timer.ack", "TIMER_ACK")
    real = timer.defer

    def defer_into_a_full_queue(system, *a, **kw):
        if tm.timer.counters["fires"]:                        # the re-arm after the fire
            fill_event_queue(system)
        return real(system, *a, **kw)

    monkeypatch.setattr(timer, "defer", defer_into_a_full_queue)
    with ggmk.boot([tm, fires, acks, nop_module()], workers=2) as system:
        system.submit("TIMER_SET", meta0=7, meta1=timer.arg(delay=2, period=3))
        assert fired.wait(10)                    # (its fire is sent after the re-arm)
        assert fires.got == [(7, 1)]
        assert 7 not in tm.timer.armed and tm.timer.stats()["full"] == 1
        err, codes = errors_of(system, "TIMER_TICK")
        assert err["meta0"].tolist() == [7] and codes.tolist() == [T.EVENT_FULL]
        unfill(system)
        system.submit("TIMER_CANCEL", meta0=7)
        assert system.run(timeout=10)
        assert (7, timer.OP_CANCEL, timer.FIRED) in [(m0, *timer.ack_status(m1))
                                                      for m0, m1 in acks.got]


def test_stats_schedules_again_after_the_event_queue_refused_its_tick(wait_until):
    st = stats.module(period=2)
    with ggmk.boot([st, nop_module()], workers=2) as system:
        fill_event_queue(system)
        system.submit("STAT_ADD", meta0=1, meta1=1)
        seen = []                                 # (dead_letters hands each record once)
        assert wait_until(lambda: seen.extend(errors_of(system, "STATS_TICK")[1].tolist())
                          or seen)
        assert seen == [T.EVENT_FULL]
        assert wait_until(lambda: not st.stats.scheduled)      # (the handler's last step)
        assert not st.stats.scheduled and st.stats.number == 0
        unfill(system)
        system.submit("STAT_ADD", meta0=1, meta1=2)       # tries again: a snapshot follows
        assert system.run(timeout=10)
        assert st.stats.number == 1 and st.stats.snapshots[-1]["counters"]["#1"] == 3


def test_reduce_group_whose_timeout_check_is_refused_times_out_at_once():
    red = reduce.module(n=2, op="sum", timeout=5)
    reported = threading.Event()
    missing = collector("miss", "reduce.missing", "REDUCE_MISSING",
                        on=lambda rows: reported.set())
    with ggmk.boot([red, missing, nop_module()], workers=2) as system:
        fill_event_queue(system)
        system.submit("REDUCE_PART", meta0=42, meta1=1)   # 1 of 2; its check is refused
        assert reported.wait(10), red.reduce.stats()
        assert missing.got == [(42, 1)]
        st = red.reduce.stats()
        assert st["open"] == 0 and st["missing"] == 1
        err, codes = errors_of(system, "REDUCE_CHECK")
        assert err["meta0"].tolist() == [42] and codes.tolist() == [T.EVENT_FULL]
        unfill(system)
        system.submit("REDUCE_PART", meta0=42, meta1=1)   # late: fails, not a new round
        assert system.run(timeout=10)
        err, codes = errors_of(system, "REDUCE_PART")
        assert codes.tolist() == [reduce.REDUCE_LATE]


# ------------------------------------------------------- 2. a concat result larger than a block
def test_reduce_concat_result_that_does_not_fit_the_arena_is_reported():
    n = 17_000                                    # 136 000 bytes: over the largest block
    red = reduce.module(n=n, op="concat")
    out = collector("out", "reduce.out", "REDUCE_RESULT")
    with ggmk.boot([red, out], workers=2) as system:
        for k in range(0, n, 4250):               # several submits: several batches
            system.submit("REDUCE_PART", meta0=1, meta1=np.arange(k, k + 4250, dtype=np.uint64))
        assert system.run(timeout=30)
        err, codes = system.dead_letters("sys.error")
        assert [(system.type_name(int(t)), int(c)) for t, c in zip(err["type"], codes)] \
            == [("REDUCE_RESULT", T.ALLOC_FAIL)]
        assert (int(err["meta0"][0]), int(err["meta1"][0])) == (1, 8 * n)
        assert out.got == [] and list(system.exceptions) == []
        st = red.reduce.stats()
        assert (st["partials"], st["results"], st["failed"], st["open"]) == (n, 0, 1, 0)


# ---------------------------------------------------------- 3. seq order across batches/workers
class FirstWaitsLock:
    """A lock whose first taker waits (outside it) until a second taker has been through: the
    batch that came first is folded last."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.first_in = threading.Event()
        self.second_out = threading.Event()

    def __enter__(self):
        with self.lock:
            self.n += 1
            k = self.n
        if k == 1:
            self.first_in.set()
            assert self.second_out.wait(30)
        self.lock.acquire()

    def __exit__(self, *exc):
        done = self.n >= 2
        self.lock.release()
        if done:
            self.second_out.set()


@pytest.mark.parametrize("op", ["concat", "custom", "f64"])
def test_reduce_folds_in_seq_order_when_a_later_batch_is_folded_first(op):
    seen = []

    def fold(vals):
        seen.append(list(vals))
        return sum(vals)

    red = reduce.module(n=6, op=fold if op == "custom" else "concat" if op == "concat"
                        else "sum", dtype="f64" if op == "f64" else "u64")
    gate = red.reduce.lock = FirstWaitsLock()
    app = ggmk.Module("app")
    body = []

    @app.handler("APP_OUT", consumes="reduce.out", message="REDUCE_RESULT")
    def keep(ctx):
        t = ctx.task
        body.append(bytes(ctx.system.arena.view(t.payload_ptr, t.payload_len)) if t.payload_ptr
                    else t.meta1)

    a = [0, 1, 2] if op != "f64" else [reduce.f64(x) for x in (1e16, 1.0, 1.0)]
    b = [3, 4, 5] if op != "f64" else [reduce.f64(x) for x in (-1e16, 0.0, 0.0)]
    with ggmk.boot([red, app], workers=2) as system:
        system.submit("REDUCE_PART", meta0=1, meta1=a)      # the lower seqs ...
        assert gate.first_in.wait(30)
        system.submit("REDUCE_PART", meta0=1, meta1=b)      # ... folded after these
        assert system.run(timeout=30)
    if op == "custom":
        assert seen == [[0, 1, 2, 3, 4, 5]] and body == [15]
    elif op == "concat":
        assert body == [np.arange(6, dtype="<u8").tobytes()]
    else:                      # ((1e16 + 1) + 1) - 1e16 in seq order; 2.0 the other way
        assert [reduce.as_f64(w) for w in body] == [0.0]


# --------------------------------------------------------------- 4. stats: a stalled consumer
def test_stats_outbox_stays_bounded_with_a_stalled_subscriber(wait_until):
    st = stats.module(period=1, capacity=2, outbox_limit=4)
    gate = threading.Event()
    app = ggmk.Module("app")
    got = []

    @app.handler("APP_SNAP", consumes="stats.snapshot", message="STATS_SNAPSHOT")
    def snap(ctx):
        assert gate.wait(60)
        got.append(ctx.task.meta0)

    with ggmk.boot([st, app], workers=2) as system:
        now = system.wall_tick()
        for k in range(1, 61):                    # a change in each of 60 ticks
            system.submit("STAT_ADD", meta0=1, meta1=1, due=now + k)
        try:                                      # every update in, no snapshot due
            assert wait_until(lambda: st.stats.updates == 60 and not st.stats.scheduled,
                              timeout=30)
            # the outbox stays at its limit; past what the stalled subscriber holds (1 in its
            # handler, its ring full: the ring has 8 slots, a channel's smallest) and the
            # outbox's 4, snapshots are counted unpublished; how many snapshots the 60 ticks'
            # updates fold into depends on the machine's timing, the accounting does not
            s = st.stats
            ring = system.channel("stats.snapshot").subs[0].ring.capacity
            assert len(s.out) <= 4
            assert s.out.published <= 1 + ring, vars(s)
            assert s.number == s.out.published + len(s.out) + s.unpublished, vars(s)
            assert s.unpublished == 0 or (s.out.published == 1 + ring and len(s.out) == 4)
        finally:
            gate.set()
        assert system.run(timeout=30)
        s = st.stats
        assert s.out.published + s.unpublished == s.number == len(s.snapshots)
        assert sorted(got) == sorted(set(got)) and len(got) == s.out.published
        assert sum(1 for x in s.snapshots if x.get("unpublished")) == s.unpublished
    assert len(system.dead_letters("sys.dropped")[0]) == 0


# ------------------------------------------------------------ 5. reduce: state per group id
def test_reduce_without_timeout_keeps_nothing_per_finished_group():
    red = reduce.module(n=1, op="sum")
    with ggmk.boot([red], workers=2) as system:
        system.submit("REDUCE_PART", meta0=np.arange(5000, dtype=np.uint64), meta1=1)
        assert system.run(timeout=30)
    st = red.reduce.stats()
    assert st["results"] == 5000 and st["open"] == 0
    sizes = {k: len(v) for k, v in vars(red.reduce).items() if isinstance(v, (dict, list))}
    assert max(sizes.values()) < 100, sizes       # (was: an entry per group id ever seen)
