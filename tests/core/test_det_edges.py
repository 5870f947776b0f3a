"""Determinism mode at its edges: a deterministic task's messages on a channel whose type is
not deterministic, halt() in the middle of a tick, poison set mid-tick, and the option checks
(boot's deterministic= / seed= / tick_hz= / workers=, submit's deterministic= / due=)."""
import threading

import numpy as np
import pytest

import ggmk
from ggmk import FAIL, OK
from ggmk import task as T
from ggmk.core.det import DetStage
from ggmk.core.sched import Route
from ggmk.core.trace import TraceHasher
from ggmk.errors import BootError
from ggmk.typereg import load_types


# -- a deterministic producer on a channel of a type that is not deterministic ------------------
def _plain_channel_run(hal, workers, cons_det=True, replay=0):
    p = ggmk.Module("prod")
    out = p.produces("data.out", "MSG", mode="p2p", **({"replay": replay} if replay else {}))

    @p.handler("STEP", deterministic=True)
    def step(ctx):
        t = ctx.task
        send = ctx.emitter(out)
        for i in range(t.meta1, 3):
            if send(t.meta0 * 10 + i):
                return ctx.wait_(meta1=i)
        if t.meta0 < 200:
            ctx.emit("STEP", meta0=t.meta0 + 50)
        return OK

    c = ggmk.Module("cons")
    seen = []

    @c.handler("ON_MSG", consumes="data.out", message="MSG", deterministic=cons_det)
    def on_msg(ctx):
        seen.append((int(ctx.tick), int(ctx.task.meta0)))
        return OK

    with ggmk.boot([p, c], workers=workers, hal=hal, deterministic=True, max_batch=8) as s:
        s.submit("STEP", meta0=np.arange(50), deterministic=True)
        assert s.run(timeout=30), s.stats()["det"]
        return s.trace_hash(), sorted(seen)


@pytest.mark.parametrize("cons_det", [True, False])
def test_det_task_on_plain_ordered_channel_finishes_with_one_hash(cons_det):
    ref_hash, ref_seen = _plain_channel_run("sim", 1, cons_det)
    assert sorted(m for _, m in ref_seen) == sorted(m * 10 + i for m in range(250)
                                                     for i in range(3))
    for workers in (2, 3, 2):
        assert _plain_channel_run("threads", workers, cons_det) == (ref_hash, ref_seen), workers


def test_system_not_idle_while_a_det_channel_moves_its_messages_at_the_boundary():
    # held_n drops to 0 before the drain counts the messages as outstanding: a host waiting in
    # run() could return in between and read the trace hash before the last tick opened
    types = load_types('[types.PING]\nid = 21\ndeterministic = true\n'
                       '[types.ON_PING]\nid = 22\ndeterministic = true\n')
    p = ggmk.Module("p")
    out = p.produces("det.ping", "PING", mode="p2p")

    @p.handler("SRC", deterministic=True)
    def src(ctx):
        ctx.emit(out, meta0=ctx.task.meta0)
        return OK

    @p.handler("ON_PING", consumes="det.ping", message="PING", deterministic=True)
    def on_ping(ctx):
        return OK

    with ggmk.boot([p], types=types, hal="sim", workers=1, deterministic=True) as s:
        ch = s.channel("det.ping")
        assert ch.det
        idle_at_drain = []
        drain = ch._drain_sub

        def spy(sub, all_=False):
            idle_at_drain.append(s.idle())
            return drain(sub, all_)
        ch._drain_sub = spy
        s.submit("SRC", meta0=np.arange(5), deterministic=True)
        assert s.run(timeout=30)
        assert s.stats()["types"]["ON_PING"]["ok"] == 5
    assert idle_at_drain and not any(idle_at_drain)


def test_det_task_on_replay_channel_finishes():
    # a channel with a replay log cannot hold messages for the tick boundary: they are
    # delivered as ordinary messages (no hang of its ordered subscriber)
    _, seen = _plain_channel_run("threads", 2, replay=4096)
    assert len(seen) == 750


# -- halt() in the middle of a tick ---------------------------------------------------------
def test_take_all_mid_tick_keeps_codes_in_step():
    st = DetStage(TraceHasher())
    st.take(T.make(10, type=5, flags=T.FLAG_DETERMINISTIC, meta0=np.arange(10)), Route.SUBMIT,
            due=1)
    recs, start = st.pop(4)
    st.finish(start, np.zeros(len(recs), dtype=np.int32))
    left = st.take_all()
    assert sum(len(r) for r in left) == 6
    st.flush()                                  # raised: broadcast (10,) into (4,)
    assert st.tasks_run == 4


def test_trace_hash_after_halt_mid_tick():
    m = ggmk.Module("m")
    gate = threading.Event()
    started = threading.Event()

    @m.handler("SLOW", deterministic=True)
    def slow(ctx):
        started.set()
        gate.wait(10)
        return OK

    s = ggmk.boot([m], workers=2, deterministic=True, max_batch=4)
    s.submit("SLOW", meta0=np.arange(400), deterministic=True)
    assert not s.run(timeout=0.2)
    assert started.wait(10)
    gate.set()          # the batches in flight finish; halt dead-letters the rest of the tick
    rep = s.halt(timeout=0)
    assert rep["halted"] > 0
    finished = s.stats()["types"]["SLOW"]["ok"]
    assert len(s.trace_hash()) == 32
    assert s.stats()["det"]["tasks"] == finished


# -- poison set mid-tick -------------------------------------------------------------------
_POISON_TYPES = ('[types.FAILER]\nid = 11\ndeterministic = true\n'
                 '[types.SPAWN]\nid = 12\ndeterministic = true\n')


def _poison_run(hal, workers, wait_for_spawn):
    m = ggmk.Module("m")
    spawned = threading.Event()

    @m.handler("FAILER", deterministic=True)
    def failer(ctx):
        if wait_for_spawn:
            # fail only after another worker's SPAWN batch emitted FAILER children this tick:
            # the order that used to let those children through
            assert spawned.wait(10)
        return FAIL

    @m.handler("SPAWN", deterministic=True)
    def spawn(ctx):
        ctx.emit("FAILER", meta0=ctx.task.meta0)
        spawned.set()
        return OK

    with ggmk.boot([m], types=load_types(_POISON_TYPES), hal=hal, workers=workers,
                   deterministic=True, max_batch=4, poison_threshold=1,
                   poison_window=10) as s:
        s.submit("FAILER", meta0=0, deterministic=True)
        s.submit("SPAWN", meta0=np.arange(1, 41), deterministic=True)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        return s.trace_hash(), s.stats()["det"]["tasks"], len(recs)


def test_poison_set_mid_tick_refuses_at_the_boundary_on_any_worker_count():
    ref = _poison_run("threads", 1, wait_for_spawn=False)
    assert ref[1:] == (41, 41)     # FAILER + 40 SPAWN ran; FAILER + its 40 refused children
    assert _poison_run("sim", 1, wait_for_spawn=False) == ref
    for workers in (2, 3):
        assert _poison_run("threads", workers, wait_for_spawn=True) == ref, workers


# -- option checks ---------------------------------------------------------------------------
def _mod():
    m = ggmk.Module("m")

    @m.handler("T", deterministic=True)
    def t(ctx):
        return OK
    return m


@pytest.mark.parametrize("kw, msg", [
    ({"deterministic": "no"}, "deterministic='no': allowed True or False"),
    ({"deterministic": 2}, "deterministic=2: allowed True or False"),
    ({"seed": "abc"}, "seed='abc': allowed an int >= 0"),
    ({"seed": -5}, "seed=-5: allowed an int >= 0"),
    ({"seed": 1.5}, "seed=1.5: allowed an int >= 0"),
    ({"tick_hz": 0}, "tick_hz=0: allowed a number > 0"),
    ({"tick_hz": -10}, "tick_hz=-10: allowed a number > 0"),
    ({"workers": "2"}, "workers='2': allowed an int >= 1"),
    ({"workers": 0}, "workers=0: allowed an int >= 1"),
    # max_batch=0 ran nothing (run() never returned), 2.5 crashed a worker thread
    ({"max_batch": 0}, "max_batch=0: allowed an int 1..1073741824"),
    ({"max_batch": 2.5}, "max_batch=2.5: allowed an int 1..1073741824"),
    ({"max_batch": "4"}, "max_batch='4': allowed an int 1..1073741824"),
])
def test_bad_boot_options_are_named(kw, msg):
    with pytest.raises(BootError) as e:
        ggmk.boot([_mod()], hal="sim", **kw)
    assert msg in str(e.value)


def test_numpy_ints_accepted_for_boot_options():
    with ggmk.boot([_mod()], hal="sim", workers=np.int64(2), seed=np.uint32(3),
                   deterministic=np.bool_(True), tick_hz=np.int64(100)) as s:
        assert s.nworkers == 2 and s.seed == 3 and s.det is not None


def test_submit_option_checks():
    with ggmk.boot([_mod()], hal="sim", deterministic=True) as s:
        with pytest.raises(ValueError, match="deterministic='no': allowed True or False"):
            s.submit("T", deterministic="no")
        for bad in (True, -1, 2**63, 2**70, 1.0):
            with pytest.raises(ValueError, match=r"due=.*: allowed an int 0\.\.9223372036854775807"):
                s.submit("T", meta0=np.arange(3), deterministic=True, due=bad)
        assert s.submit("T", deterministic=True, due=np.int64(3)) == 1
        assert s.submit("T", meta0=np.arange(2), deterministic=True, due=2**63 - 1) == 2
        assert s.run(timeout=10)
        assert s.stats()["det"]["tick"] == 2**63 - 1
        assert len(s.trace_hash()) == 32
        assert s.stats()["det"]["tasks"] == 3
