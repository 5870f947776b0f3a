"""The running system (core/kernel.py): halt() in the middle of work loses nothing accepted;
one Module object cannot be live in two systems at once."""
import threading
import time

import numpy as np
import pytest

import ggmk
from ggmk import OK
from ggmk import task as T
from ggmk.errors import BootError, ChannelError, KernelStopped


def _slow_system(hal, started, workers=2, **kw):
    m = ggmk.Module("m")
    done = []
    gate = threading.Event()

    @m.handler("WORK")
    def work(ctx):
        started.set()
        if ctx.task.meta0 % 2 == 0:
            ctx.emit("CHILD", meta0=ctx.task.meta0)
        gate.wait(0.0002)                       # a little blocking work per task
        done.append(ctx.task.meta0)
        return OK

    @m.handler("CHILD", batch=True)
    def child(ctx, batch):
        done.extend((batch.meta0 + 1_000_000).tolist())

    s = ggmk.boot([m], hal=hal, workers=workers, **kw)
    return s, done


@pytest.mark.parametrize("hal", ["threads"])
def test_halt_in_the_middle_of_work_accounts_for_every_accepted_task(hal):
    started = threading.Event()
    s, done = _slow_system(hal, started)
    n = 10_100
    assert s.submit("WORK", meta0=np.arange(n)) == n
    assert started.wait(10)
    report = s.halt(timeout=0.02)
    assert report["drained"] is False and report["halted"] > 0 and report["outstanding"] == 0
    recs, codes = s.dead_letters("sys.error")
    assert set(codes.tolist()) == {T.HALTED}
    # every WORK task ran or is on sys.error; every child of a WORK that ran likewise
    ran_work = {v for v in done if v < 1_000_000}
    halted_work = {int(v) for v, t in zip(recs["meta0"], recs["type"]) if t == s.type_id("WORK")}
    assert len(ran_work) + len(halted_work) == n and not ran_work & halted_work
    kids = {v - 1_000_000 for v in done if v >= 1_000_000}
    halted_kids = {int(v) for v, t in zip(recs["meta0"], recs["type"]) if t == s.type_id("CHILD")}
    assert kids | halted_kids == {v for v in ran_work if v % 2 == 0}
    assert report["halted"] == len(recs)
    assert s.halt() == report                                 # idempotent
    with pytest.raises(KernelStopped):
        s.submit("WORK", meta0=1)


def test_halt_with_time_drains_everything(hal):
    started = threading.Event()
    s, done = _slow_system(hal, started)
    s.submit("WORK", meta0=np.arange(500))
    report = s.halt(timeout=60)
    assert report == {"drained": True, "halted": 0, "channel_dropped": 0, "outstanding": 0,
                      "stuck_workers": 0}
    assert len(done) == 750


def test_halt_dead_letters_retries_waiting_in_the_event_queue(hal):
    m = ggmk.Module("m")

    @m.handler("FLAKY")
    def flaky(ctx):
        return ggmk.RETRY

    s = ggmk.boot([m], hal=hal, workers=2, max_retries=50)
    s.submit("FLAKY", meta0=np.arange(20))
    s.submit("FLAKY", meta0=np.arange(20, 30), due=10**9)    # deferred far into the future
    report = s.halt(timeout=0.01)
    recs, codes = s.dead_letters("sys.error")
    assert sorted(recs["meta0"].tolist()) == list(range(30))
    assert set(codes.tolist()) == {T.HALTED} and report["halted"] == 30


def test_halt_of_a_deterministic_system_takes_its_tick_stage_too(hal):
    m = ggmk.Module("m")

    @m.handler("STEP", deterministic=True)
    def step(ctx):
        ctx.emit("STEP", meta0=ctx.task.meta0 + 1)             # never ends
        return OK

    s = ggmk.boot([m], hal=hal, workers=2, deterministic=True)
    s.submit("STEP", meta0=np.arange(0, 1000, 10), deterministic=True)
    report = s.halt(timeout=0.002 if hal == "sim" else 0.05)    # sim: virtual seconds
    recs, codes = s.dead_letters("sys.error")
    assert report["halted"] == len(recs) >= 100 and set(codes.tolist()) == {T.HALTED}
    assert report["outstanding"] == 0


def test_channel_messages_in_the_scheduler_are_accounted_at_halt(hal):
    m = ggmk.Module("m")
    out = m.produces("m.out", "MSG", capacity=64)
    got = []
    gate = threading.Event()

    @m.handler("SRC")
    def src(ctx):
        send = ctx.emitter(out)
        for i in range(ctx.task.meta1, 1000):
            if send(ctx.task.meta0 * 1000 + i):
                return ctx.wait_(meta1=i)
        return OK

    @m.handler("MSG", consumes="m.out")
    def msg(ctx):
        gate.wait(0.0002)
        got.append(ctx.task.meta0)
        return OK

    s = ggmk.boot([m], hal=hal, workers=2)
    s.submit("SRC", meta0=np.arange(5))
    report = s.halt(timeout=0.05)
    recs, codes = s.dead_letters("sys.error")
    drecs, dcodes = s.dead_letters("sys.dropped")
    srcs_halted = recs[recs["type"] == s.type_id("SRC")]
    msgs = set(got) | set(recs[recs["type"] == s.type_id("MSG")]["meta0"].tolist()) \
        | set(drecs["meta0"].tolist())
    assert len(got) + int((recs["type"] == s.type_id("MSG")).sum()) + len(drecs) == len(msgs)
    # every message a producer sent before it stopped is accounted for, once
    for r in srcs_halted:
        sent = {int(r["meta0"]) * 1000 + i for i in range(int(r["meta1"]))}
        assert sent <= msgs
    assert report["outstanding"] == 0


def test_one_module_object_in_two_live_systems_does_not_cross_talk(hal):
    m = ggmk.Module("m")
    out = m.produces("m.out", "OUT")
    got = {}

    @m.handler("SRC")
    def src(ctx):
        assert ctx.emit(out, meta0=ctx.task.meta0) == OK          # by declaration
        return OK

    @m.handler("OUT", batch=True, consumes="m.out")
    def sink(ctx, batch):
        got.setdefault(id(ctx.system), []).extend(batch.meta0.tolist())

    with ggmk.boot([m], hal=hal, workers=2) as s1, ggmk.boot([m], hal=hal, workers=2) as s2:
        s1.submit("SRC", meta0=np.arange(10))
        s2.submit("SRC", meta0=np.arange(100, 105))
        assert s1.run(timeout=10) and s2.run(timeout=10)
        assert sorted(got[id(s1)]) == list(range(10))
        assert sorted(got[id(s2)]) == list(range(100, 105))


def test_gpu_modules_without_a_device_are_a_boot_error_naming_them():
    import ggmk.device as gd
    phys = gd.Module("physics")

    @phys.handler(10)
    def step(ctx, task):
        return 0

    with pytest.raises(BootError, match="physics.*device="):
        ggmk.boot([ggmk.Module("m"), phys])
    with pytest.raises(BootError, match="neither a ggmk.Module"):
        ggmk.boot([object()])


def test_dead_letter_releases_payloads_and_names_its_destination(hal):
    with ggmk.boot([ggmk.Module("m")], hal=hal, workers=2) as s:
        ptr, n = s.store_payload(s.type_id("X", register=True), b"abc")
        recs = T.make(2, type=s.type_id("X"), meta0=[1, 2], payload_ptr=[ptr, 0],
                      payload_len=[n, 0])
        assert s.dead_letter(recs, T.CHAN_CLOSED, which="sys.dropped") == 2
        got, codes = s.dead_letters("sys.dropped")
        assert got["meta0"].tolist() == [1, 2] and set(codes.tolist()) == {T.CHAN_CLOSED}
        assert not got["payload_ptr"].any() and s.arena.live_count() == 0
        with pytest.raises(ValueError, match="which='sys.oops'"):
            s.dead_letter(recs, T.FAIL, which="sys.oops")


@pytest.mark.parametrize("timeout", [-1, "5", None, float("nan")])
def test_halt_refuses_a_bad_timeout_and_stays_usable(timeout):
    s = ggmk.boot([ggmk.Module("m")], workers=2)
    with pytest.raises(ValueError, match="timeout"):
        s.halt(timeout=timeout)
    assert s.halt()["outstanding"] == 0


def test_halt_goes_on_without_a_handler_that_never_returns(monkeypatch, wait_until):
    """A handler blocked for good used to hold ``halt`` for good (the workers are joined);
    now halt leaves such a worker behind after ``STUCK_AFTER_S``, says so in its report and
    keeps the stuck task outstanding; if the handler ever returns, what it emits is refused."""
    monkeypatch.setattr(ggmk.System, "STUCK_AFTER_S", 0.2)
    release = threading.Event()
    entered = threading.Event()
    emitted = []
    m = ggmk.Module("stuck")
    OUT = m.produces("stuck.out", "STUCK_OUT")

    @m.handler("STUCK")
    def stuck(ctx):
        entered.set()
        release.wait()                       # a handler that does not return (until the test says)
        try:
            emitted.append(ctx.emit(OUT, meta0=1))
        except Exception as e:  # noqa: BLE001
            emitted.append(e)
        return OK

    s = ggmk.boot([m], workers=2)
    try:
        s.submit("STUCK")
        assert entered.wait(10)
        rep = s.halt(timeout=0.1)
        assert rep["stuck_workers"] == 1 and rep["outstanding"] == 1 and not rep["drained"]
        assert s.hal.alive_threads() == 1
    finally:
        release.set()
    assert wait_until(lambda: s.hal.alive_threads() == 0, timeout=10)
    assert len(emitted) == 1 and isinstance(emitted[0], ChannelError)
    assert emitted[0].code == T.CHAN_CLOSED and "halted" in str(emitted[0])


def _halting_module(got, n_kids=0):
    """W tasks record that they ran; STOP (meta0 = a halt timeout in ms) emits ``n_kids`` W
    tasks, then halts the system from its handler; fini is recorded."""
    m = ggmk.Module("m")
    ran = got.setdefault("ran", [])
    q = m.produces("q.ueue", "Q", capacity=64)

    @m.handler("W")
    def w(ctx):
        ran.append(ctx.task.meta0)

    @m.handler("STOP")
    def stop(ctx):
        for i in range(n_kids):
            ctx.emit("W", meta0=10_000 + i)
        t0 = time.monotonic()
        got["rep"] = ctx.system.halt(timeout=ctx.task.meta0 / 1000)
        got["took"] = time.monotonic() - t0
        got["thread"] = threading.current_thread()

    m.fini(lambda system: got.setdefault("fini", True))
    return m, q


def _halted_meta0(s, type_name):
    recs, codes = s.dead_letters("sys.error")
    assert set(codes.tolist()) <= {T.HALTED}
    return [int(v) for v, t in zip(recs["meta0"], recs["type"]) if t == s.type_id(type_name)]


def test_a_handler_on_a_worker_thread_halts_the_system_losing_nothing(wait_until):
    """halt() from a handler on a worker thread died half way ('cannot join current thread'):
    the system was marked halted, the queued tasks were neither run nor dead-lettered, the
    channels stayed open, fini never ran and every later halt() returned None. Now the halt
    completes without waiting for the calling handler's own step, and accounts: every W task
    ran or is on sys.error (HALTED), the channel's messages are on sys.dropped (CHAN_CLOSED)."""
    got = {}
    m, _ = _halting_module(got)
    s = ggmk.boot([m], workers=2, host_helps=False)
    sub = s.channel("q.ueue").subscribe()
    assert all(s.channel("q.ueue").publish(meta0=i) == OK for i in range(5))
    n = 3000
    assert s.submit("W", meta0=np.arange(n)) == n
    assert s.submit("W", meta0=n, due=10**9) == 1             # deferred: due long after
    assert s.submit("STOP", meta0=0) == 1
    assert wait_until(lambda: "took" in got, 30)
    rep = got["rep"]
    assert got["thread"].name.startswith("ggmk-worker")
    assert rep is not None and rep["stuck_workers"] == 0 and rep["channel_dropped"] == 5
    assert got["took"] < ggmk.System.STUCK_AFTER_S
    assert s.halt() == rep                                    # a second halt: the report
    assert got.get("fini") and not s.exceptions
    assert wait_until(lambda: s.hal.alive_threads() == 0 and s.sched.outstanding == 0, 30)
    halted = _halted_meta0(s, "W")
    assert rep["halted"] == len(halted) >= 1                  # (at least the deferred one)
    assert sorted(got["ran"] + halted) == list(range(n + 1))
    assert s.stats()["types"]["STOP"]["ok"] == 1
    drops, codes = s.dead_letters("sys.dropped")
    assert drops["meta0"].tolist() == list(range(5)) and set(codes.tolist()) == {T.CHAN_CLOSED}
    assert s.channels.closed and sub.chan.closed


def test_a_handler_the_host_runs_by_caller_runs_halts_the_system_losing_nothing(wait_until):
    """halt() from a handler that the host thread runs by caller runs (run() borrowed the
    parked worker): the stop joined that worker's thread, which waits for the host to give it
    back, for STUCK_AFTER_S (5 s), and reported it stuck with its task outstanding. Now halt
    returns at once (its timeout: nothing else can run what the handler emitted) and accounts:
    every W the handler emitted ran or is on sys.error (HALTED)."""
    got = {}
    m, _ = _halting_module(got, n_kids=20)
    s = ggmk.boot([m], workers=1, host_helps=True)
    sub = s.channel("q.ueue").subscribe()
    assert all(s.channel("q.ueue").publish(meta0=i) == OK for i in range(3))
    # the worker parks with no timed wake-up (one could take the task before the host does)
    s.hal.park_timeout = 30.0
    assert wait_until(lambda: s.hal.parked == 1)
    s.hal.wake(1)                                             # re-parks with the new timeout
    assert wait_until(lambda: s.hal.parked == 1)
    assert s.submit_and_run("STOP", meta0=50, timeout=30)    # halt(timeout=0.05) inside
    assert got["thread"] is threading.current_thread()        # the host ran the handler
    rep = got["rep"]
    assert rep is not None and rep["stuck_workers"] == 0 and rep["channel_dropped"] == 3
    assert got["took"] < ggmk.System.STUCK_AFTER_S
    assert s.halt() == rep and got.get("fini") and not s.exceptions
    assert wait_until(lambda: s.hal.alive_threads() == 0, 30) and s.sched.outstanding == 0
    halted = _halted_meta0(s, "W")
    # (what the handler emitted is handed over when it returns, after the halt's report:
    # dead-lettered then, on sys.error all the same)
    assert rep["halted"] <= len(halted)
    assert sorted(got["ran"] + halted) == list(range(10_000, 10_020))
    assert s.stats()["types"]["STOP"]["ok"] == 1
    drops, codes = s.dead_letters("sys.dropped")
    assert drops["meta0"].tolist() == [0, 1, 2] and set(codes.tolist()) == {T.CHAN_CLOSED}
    assert sub.chan.closed


def test_a_handler_halts_a_sim_system_losing_nothing():
    """On sim the halt's drain steps the workers on the calling thread: it must not step the
    worker whose handler called it (a step inside its own step), only the others."""
    got = {}
    m, _ = _halting_module(got)
    s = ggmk.boot([m], hal="sim", workers=3, seed=3)
    n = 2000
    assert s.submit("W", meta0=np.arange(n)) == n
    assert s.submit("STOP", meta0=1000) == 1                 # halt(timeout=1) inside
    assert s.run(timeout=60)
    rep = got["rep"]
    assert rep["drained"] and rep["outstanding"] == 1 and s.sched.outstanding == 0
    assert s.halt() == rep and got.get("fini") and not s.exceptions
    halted = _halted_meta0(s, "W")
    assert rep["halted"] == len(halted)
    assert sorted(got["ran"] + halted) == list(range(n))
    assert s.stats()["types"]["STOP"]["ok"] == 1


def test_halt_closes_every_channel_whatever_one_of_them_does(monkeypatch):
    """A channel whose close raised stopped the halt there: the channels after it stayed open
    with their messages never dropped, fini never ran, a second halt() returned None. Now the
    error is reported (system.exceptions) and halt goes on."""
    fini = []
    m = ggmk.Module("m")
    m.fini(lambda system: fini.append(1))
    s = ggmk.boot([m], workers=2)
    chans = [s.open(f"c{i}.chan", f"C{i}") for i in range(3)]
    subs = [c.subscribe() for c in chans]
    for c in chans:
        assert c.publish(meta0=1) == OK

    def broken():
        raise RuntimeError("close bug")

    monkeypatch.setattr(chans[0], "close", broken)
    rep = s.halt()
    assert rep["channel_dropped"] == 2 and chans[1].closed and chans[2].closed
    assert fini == [1] and s.halt() == rep
    assert any("close bug" in e[2] and "c0.chan" in e[1] for e in s.exceptions)
    drops, codes = s.dead_letters("sys.dropped")
    assert len(drops) == 2 and set(codes.tolist()) == {T.CHAN_CLOSED} and len(subs) == 3


def test_an_emit_to_a_channel_closed_with_close_answers_chan_closed():
    """ctx.emit on a channel closed with system.close() raised ChannelError "not bound in this
    system" (the task failed with HANDLER_EXCEPTION) on every worker but one whose emitter
    was cached (CHAN_CLOSED, once). Now every emit answers CHAN_CLOSED, by declaration or by
    name."""
    m = ggmk.Module("m")
    out = m.produces("c.x", "X", capacity=64)
    res = []

    @m.handler("P")
    def p(ctx):
        res.append((ctx.emit(out, meta0=1), ctx.emit("c.x", meta0=2)))

    @m.handler("C", consumes="c.x", message="X")
    def c(ctx):
        pass

    with ggmk.boot([m], workers=2, host_helps=False) as s:
        assert s.submit_and_run("P", timeout=30)             # a worker's emitter is cached
        assert res == [(OK, OK)]
        s.close("c.x")
        n = 40
        assert s.submit("P", meta0=np.arange(n)) == n
        assert s.run(timeout=30)
        assert res[1:] == [(T.CHAN_CLOSED, T.CHAN_CLOSED)] * n
        assert not s.exceptions and len(s.dead_letters("sys.error")[0]) == 0
        assert s.stats()["types"]["P"]["ok"] == n + 1
