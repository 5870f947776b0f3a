"""Observability fixes in the CPU kernel (audit of the trace and the metrics): stats while
channels open, the trace agreeing with the metrics when retries / yields run out, the events
SPEC §7 lists (worker park / wake, alloc fail, channel emit / drain), tick durations, the
exception counter and the trace options' bad input. Real threads (workers=2); waiting is on
a condition with a deadline."""
import threading

import numpy as np
import pytest

import ggmk
from ggmk import OK, RETRY
from ggmk.core.channel import Channel
from ggmk.core.trace import NullTracer, Tracer, make_tracer
from ggmk.errors import AllocError, BootError
from ggmk.events import SAMPLED_BIT, EventType as E
from ggmk.typereg import TypeRegistry

_MASK = SAMPLED_BIT - 1


def _nop_module(name="m", level=None):
    m = ggmk.Module(name, trace_level=level)

    @m.handler("NOP")
    def nop(ctx):
        return OK
    return m


def _codes(ev):
    return ev["event"] & _MASK


def _count(ev, event, **where):
    sel = _codes(ev) == event
    for k, v in where.items():
        sel &= ev[k] == v
    return int(sel.sum())


# -- 1. stats() while another thread opens a channel -------------------------------------------

def _open_meanwhile(s, name, wait_until):
    """Open channel ``name`` on another thread and return once it is in the registry (the
    caller is in the middle of iterating the registry's table)."""
    t = threading.Thread(target=s.open, args=(name, "NOP"),
                         kwargs={"mode": "p2p", "guarantee": "lossy"}, daemon=True)
    t.start()
    assert wait_until(lambda: name in s.channels.by_name, 10)
    return t


def test_stats_reads_a_snapshot_while_a_channel_opens(wait_until):
    s = ggmk.boot([_nop_module()], workers=2)
    try:
        reg = s.channels
        first = next(iter(reg.by_name.values()))
        real = first.stats
        opened = []

        def stats_opening_a_channel():
            if not opened:
                opened.append(_open_meanwhile(s, "late.c", wait_until))
            return real()

        first.stats = stats_opening_a_channel
        before = set(reg.by_name)
        st = s.stats()                       # was: dictionary changed size during iteration
        opened[0].join(10)
        assert set(st["channels"]) == before          # the snapshot, taken before the open
        assert "late.c" in s.stats()["channels"]
    finally:
        s.halt()


def test_channel_table_rebuilds_read_a_snapshot_and_the_newest_is_published(wait_until):
    """A rebuild of the drain lists while another thread opens a channel: it reads a copy
    of the table (iterating the dict itself raised), and the two rebuilds run one after the
    other, so the older table is never published last (the new deterministic channel was
    missing from the tick-boundary list)."""
    m = ggmk.Module("m")

    @m.handler("DNOP", deterministic=True)
    def dnop(ctx):
        return OK

    types = TypeRegistry()
    types.register("DNOP", deterministic=True)
    s = ggmk.boot([m], workers=2, deterministic=True, types=types)
    try:
        reg = s.channels
        first = next(iter(reg.by_name.values()))
        opened = []

        def in_det():
            return any(c.name == "late.d" for c in reg._det)

        class Hooked(Channel):                 # the rebuild reads `closed` of each channel
            @property
            def closed(self):
                if not opened and threading.current_thread() is threading.main_thread():
                    t = threading.Thread(target=s.open, args=("late.d", "DNOP"), daemon=True)
                    opened.append(t)
                    t.start()
                    assert wait_until(lambda: "late.d" in reg.by_name, 10)
                    # its own rebuild waits for this one (without the lock: done meanwhile)
                    wait_until(in_det, 0.5)
                return self.__dict__["closed"]

            @closed.setter
            def closed(self, v):
                self.__dict__["closed"] = v

        first.__class__ = Hooked
        s.open("obs.trigger", "DNOP")          # rebuilds the table, the hook fires
        first.__class__ = Channel
        opened[0].join(10)
        assert not opened[0].is_alive()
        assert [c.name for c in reg._det] == ["obs.trigger", "late.d"]     # ascending id
    finally:
        s.halt()


# -- 4. retries / yields that run out: traced as the failure only -----------------------------

def test_exhausted_retries_and_yields_trace_as_the_metrics_count():
    m = ggmk.Module("m", trace_level="all")

    @m.handler("ALWAYS_RETRY")
    def r(ctx):
        return RETRY

    @m.handler("ALWAYS_YIELD")
    def y(ctx):
        return ctx.yield_()

    n = 200
    s = ggmk.boot([m], workers=2, max_retries=2, poison_threshold=1 << 30)
    try:
        s.submit("ALWAYS_RETRY", meta0=np.arange(n))
        s.submit("ALWAYS_YIELD", meta0=np.arange(n))
        assert s.run(until_idle=True, timeout=60)
        ev = s.tracer.drain()
        st = s.stats()["types"]
    finally:
        s.halt()
    assert s.tracer.stats()["total"]["overwritten"] == 0
    for name, event, key in (("ALWAYS_RETRY", E.TASK_RETRY, "retry"),
                             ("ALWAYS_YIELD", E.TASK_YIELD, "yield")):
        t = s.type_id(name)
        c = st[name]
        assert c["fail"] == n
        assert _count(ev, event, task_type=t) == c[key]
        assert _count(ev, E.TASK_FAIL, task_type=t) == c["fail"]
        assert _count(ev, E.TASK_START, task_type=t) == c["dequeued"] == c[key] + c["fail"]
    assert st["ALWAYS_RETRY"]["retry"] == 2 * n
    # the failing attempt carries the attempt number past the limit on its TASK_FAIL only
    rt = ev[(_codes(ev) == E.TASK_RETRY) & (ev["task_type"] == s.type_id("ALWAYS_RETRY"))]
    assert sorted(set(rt["arg1"].tolist())) == [1, 2]


# -- 3. the events SPEC §7 lists --------------------------------------------------------------

def _emit_drain_app(level="all"):
    m = ggmk.Module("m", trace_level=level)
    out = m.produces("m.out", "OUTMSG", mode="p2p", guarantee="lossless", capacity=64)
    fails = []

    @m.handler("WORK")
    def work(ctx):
        ctx.emit(out, meta0=ctx.task.meta0)
        try:
            ctx.alloc(1 << 30)                 # larger than any bin: an allocation failure
        except AllocError:
            fails.append(1)
        return OK

    c = ggmk.Module("c", trace_level=level)
    got = []

    @c.handler("SINK", batch=True, consumes="m.out", message="OUTMSG")
    def sink(ctx, b):
        got.append(len(b))
    return [m, c], fails, got


def test_cpu_kernel_records_park_wake_alloc_fail_emit_and_drain(wait_until):
    mods, fails, got = _emit_drain_app()
    s = ggmk.boot(mods, workers=2, trace_level="all")
    try:
        out = s.channel("m.out")
        for i in range(20):
            s.submit("WORK", meta0=np.arange(10))
            assert s.run(until_idle=True, timeout=10)
        assert out.publish(meta0=99) == OK            # a host emit: the one-record path
        assert s.run(until_idle=True, timeout=10)
        # every worker parks (and the park ends) at least once more
        p0 = [w.parks for w in s.workers]
        assert wait_until(lambda: all(w.parks > p for w, p in zip(s.workers, p0)), 10)
        cst = out.stats()
    finally:
        s.halt()                                       # every parked worker wakes and leaves
    ev = s.tracer.drain()
    assert s.tracer.stats()["total"]["overwritten"] == 0
    assert len(fails) == 200 and sum(got) == 201
    assert _count(ev, E.ALLOC_FAIL) == 200
    af = ev[_codes(ev) == E.ALLOC_FAIL]
    assert set(af["task_type"].tolist()) == {s.type_id("WORK")}
    assert set(af["arg0"].tolist()) == {1 << 30}
    # one CHAN_EMIT per emit call (a batch's commit, a publish), arg1 = the records accepted
    em = ev[(_codes(ev) == E.CHAN_EMIT) & (ev["arg0"] == out.id)]
    assert 0 < len(em) < cst["emitted"] and int(em["arg1"].sum()) == cst["emitted"] == 201
    # one CHAN_DRAIN per batch handed to the scheduler, arg1 = its records
    dr = ev[(_codes(ev) == E.CHAN_DRAIN) & (ev["arg0"] == out.id)]
    assert int(dr["arg1"].sum()) == cst["subs"][0]["delivered"] == 201
    assert set(em["task_type"].tolist()) == set(dr["task_type"].tolist()) == {out.type_id}
    # a park and its wake per park, on the worker's own ring, arg0 = the worker
    for w in s.workers:
        assert _count(ev, E.WORKER_PARK, arg0=w.id) == w.parks > 0
        assert _count(ev, E.WORKER_WAKE, arg0=w.id) == w.parks


def test_at_the_default_level_only_alloc_fail_shows():
    mods, fails, got = _emit_drain_app(level=None)
    s = ggmk.boot(mods, workers=2)                      # default level: warn
    try:
        filtered0 = s.tracer.stats()["total"]["filtered"]        # (the channel opens)
        for i in range(5):
            s.submit("WORK", meta0=np.arange(10))
            assert s.run(until_idle=True, timeout=10)
        filtered = s.tracer.stats()["total"]["filtered"] - filtered0
    finally:
        s.halt()
    ev = s.tracer.drain()
    assert len(fails) == 50
    assert _count(ev, E.ALLOC_FAIL) == 50
    for e in (E.WORKER_PARK, E.WORKER_WAKE, E.CHAN_EMIT, E.CHAN_DRAIN):
        assert _count(ev, e) == 0
    # not even offered to the tracer (no type is traced at level all): TASK_START / TASK_END
    # of the 50 WORK and 50 SINK tasks are the only level-all events counted as filtered
    assert filtered == 2 * (50 + 50)


def test_alloc_fail_is_traced_for_the_type_that_asked_at_its_modules_level():
    calls = {"BIG": 0, "QBIG": 0}

    def mod(name, tname, level):
        m = ggmk.Module(name, trace_level=level)

        @m.handler(tname, batch=True)
        def big(ctx, b):
            for _ in range(len(b)):
                calls[tname] += 1
                with pytest.raises(AllocError):
                    ctx.alloc(1 << 20)
        return m

    s = ggmk.boot([mod("m", "BIG", None), mod("quiet", "QBIG", "off")], workers=2)
    try:
        s.submit("BIG", meta0=np.arange(30))
        s.submit("QBIG", meta0=np.arange(30))
        with pytest.raises(AllocError):           # a host's payload store: the host's ring
            s.submit("BIG", payload=np.zeros(1 << 18, dtype=np.uint8))
        assert s.run(until_idle=True, timeout=10)
        host = s.tracer._rings[s.nworkers].read(None)
    finally:
        s.halt()
    workers = s.tracer.drain()                      # (the host's ring was read above)
    assert calls == {"BIG": 30, "QBIG": 30}
    big = s.type_id("BIG")
    host = host[_codes(host) == E.ALLOC_FAIL]
    assert len(host) == 1 and host["arg0"][0] == 1 << 18 and host["task_type"][0] == big
    af = workers[_codes(workers) == E.ALLOC_FAIL]
    assert len(af) == 30 and set(af["task_type"].tolist()) == {big}
    assert set(af["arg0"].tolist()) == {1 << 20}


def test_tick_durations_are_measured_in_determinism_mode():
    m = ggmk.Module("m")

    @m.handler("HOP", deterministic=True)
    def hop(ctx):
        if ctx.task.meta0 < 5:
            ctx.emit("HOP", meta0=ctx.task.meta0 + 1)
        return OK

    s = ggmk.boot([m], workers=2, deterministic=True)
    try:
        s.submit("HOP", meta0=np.zeros(8, dtype=np.int64), deterministic=True)
        assert s.run(timeout=30)
        det = s.det
        td = s.stats()["tick_duration"]
    finally:
        s.halt()
    # ticks 1..6 ran; 1..5 were closed by the boundary that opened the next one, the last
    # stays open until more work comes (or the halt)
    assert det.ticks_run == 6 and td["ticks"] == 5
    assert td["nominal_ns"] == s.tick_ns
    assert 0 < td["last_ns"] <= td["max_ns"] and 0 < td["mean_ns"] <= td["max_ns"]


def test_tick_duration_without_determinism_is_the_nominal_tick():
    s = ggmk.boot([_nop_module()], workers=2, tick_hz=500)
    try:
        td = s.stats()["tick_duration"]
    finally:
        s.halt()
    assert td == {"nominal_ns": 2_000_000, "ticks": 0, "last_ns": 0, "max_ns": 0,
                  "mean_ns": 0}


# -- 5. every handler exception is counted ----------------------------------------------------

def test_every_exception_is_counted_and_the_list_stays_bounded():
    m = ggmk.Module("m")

    @m.handler("BOOM")
    def boom(ctx):
        raise RuntimeError("boom")

    s = ggmk.boot([m], workers=2, poison_threshold=1 << 30)
    try:
        for k in range(1, 4):
            s.submit("BOOM", meta0=np.arange(100))    # batches of up to 100 raising tasks
            assert s.run(until_idle=True, timeout=30)
            st = s.stats()
            assert st["types"]["BOOM"]["fail"] == 100 * k
            assert st["exceptions"] == s.exceptions_total == 100 * k
        assert len(s.exceptions) == 64
    finally:
        s.halt()


def test_a_broken_error_handler_is_counted_too():
    m = ggmk.Module("m")

    @m.handler("FAILS")
    def fails(ctx):
        return ggmk.FAIL

    def broken(recs, codes):
        raise ValueError("broken error handler")

    s = ggmk.boot([m], workers=2, poison_threshold=1 << 30)
    try:
        ch = s.open("obs.in", "FAILS", error_handler=broken)
        ch.subscribe("FAILS")
        assert ch.publish(meta0=np.arange(3), count=3) == 3
        assert s.run(until_idle=True, timeout=10)
        assert s.stats()["exceptions"] == s.exceptions_total
        assert s.exceptions_total == len(s.exceptions) >= 1
    finally:
        s.halt()


# -- 6. bad input to the trace options --------------------------------------------------------

@pytest.mark.parametrize("trace", [True, False])
@pytest.mark.parametrize("kw, names", [
    ({"trace_level": "verbose"}, ["trace_level", "'verbose'", "off, error, warn, info, all"]),
    ({"trace_level": 7}, ["trace_level", "7", "0..4"]),
    ({"trace_level": None}, ["trace_level", "None"]),
    ({"sample_rate": -1}, ["sample_rate", "-1", "an int >= 1"]),
    ({"sample_rate": 0}, ["sample_rate", "0"]),
    ({"sample_rate": 2.5}, ["sample_rate", "2.5"]),
    ({"sample_rate": True}, ["sample_rate", "True", "an int >= 1"]),
    ({"sample_rate": "10"}, ["sample_rate", "'10'"]),
])
def test_bad_trace_options_are_refused_naming_the_argument(trace, kw, names):
    with pytest.raises(BootError) as ei:
        ggmk.boot([_nop_module()], workers=2, trace=trace, **kw)
    msg = str(ei.value)
    for part in names:
        assert part in msg, (part, msg)
    assert "Tracer" not in msg


@pytest.mark.parametrize("trace", ["yes", 1, 0, "no"])
def test_trace_is_a_bool(trace):
    with pytest.raises(BootError, match=rf"trace={trace!r}: allowed True, False or None"):
        ggmk.boot([_nop_module()], workers=2, trace=trace)


@pytest.mark.parametrize("trace", [True, False])
@pytest.mark.parametrize("level", ["loud", 99, -1])
def test_a_bad_module_trace_level_is_refused_with_tracing_off_too(trace, level):
    with pytest.raises(BootError) as ei:
        ggmk.boot([_nop_module("noisy", level)], workers=2, trace=trace)
    msg = str(ei.value)
    assert "'noisy'" in msg and "trace_level" in msg and repr(level) in msg


def test_trace_off_still_boots_with_good_options():
    s = ggmk.boot([_nop_module("m", "all")], workers=2, trace=False, trace_level="info",
                  sample_rate=np.int64(4))
    try:
        assert isinstance(s.tracer, NullTracer)
    finally:
        s.halt()


def test_make_tracer_validates_before_it_strips():
    for kw, part in (({"sample_rate": 0}, "sample_rate"), ({"sample_rate": True}, "sample_rate"),
                     ({"default_level": "loud"}, "default_level"),
                     ({"capacity": 1000}, "capacity"), ({"nworkers": 0}, "nworkers")):
        for enabled in (True, False):
            with pytest.raises(ValueError, match=part):
                make_tracer(enabled, **{"nworkers": 2, **kw})
    with pytest.raises(ValueError, match="enabled='yes'"):
        make_tracer("yes", nworkers=2)
    assert isinstance(make_tracer(False, nworkers=2, sample_rate=3), NullTracer)


@pytest.mark.parametrize("tracer", [Tracer(2, capacity=16), NullTracer(2)],
                         ids=["Tracer", "NullTracer"])
@pytest.mark.parametrize("bad", [2.5, "5", True, -1, [3]])
def test_drain_names_a_bad_max_events(tracer, bad):
    with pytest.raises(ValueError) as ei:
        tracer.drain(bad)
    msg = str(ei.value)
    assert f"max_events={bad!r}" in msg and "None or an int >= 0" in msg


def test_drain_takes_numpy_ints():
    tr = Tracer(1, capacity=16)
    for i in range(5):
        tr.emit(0, E.TASK_FAIL, 0, 0, arg0=i)
    assert len(tr.drain(np.int64(3))) == 3 and len(tr.drain(0)) == 0
    assert len(tr.drain(None)) == 2
