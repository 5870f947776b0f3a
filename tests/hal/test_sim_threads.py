"""The sim HAL with more than one host thread, and its caller-runs deadline.

sim steps every worker on the thread that waits; other host threads (a second ``run()``, an
sdk client, a halt from another thread) take turns with it, one step at a time, and
``stepping()`` answers for the calling thread only."""
import threading
import time

import ggmk
from ggmk import OK


def test_sim_help_stops_at_its_deadline_while_other_work_never_ends():
    """``submit_and_run(timeout=0.3)`` while a task re-emits itself forever: help() ignored
    its deadline on sim and stepped for good (the call never returned)."""
    m = ggmk.Module("m")
    stop = threading.Event()

    @m.handler("SPIN")
    def spin(ctx):
        if not stop.is_set():
            ctx.emit("SPIN")
        return OK

    @m.handler("D")
    def d(ctx):
        return OK

    s = ggmk.boot([m], hal="sim", seed=1, workers=2)
    s.submit("SPIN")
    out = []
    t = threading.Thread(target=lambda: out.append(s.submit_and_run("D", timeout=0.3)))
    t.start()
    t.join(30)
    hung = t.is_alive()
    stop.set()                       # (lets a hung call end, so the test can fail cleanly)
    t.join(30)
    assert not hung, "submit_and_run(timeout=0.3) on sim did not return within 30 s"
    assert out == [False]            # timed out: SPIN is still running
    assert s.halt(timeout=1)["outstanding"] == 0


def test_sim_halt_from_another_thread_while_a_handler_runs():
    """The main thread's ``run()`` is inside a handler when a second thread halts: that thread
    took the main thread's step for its own (a handler halting), did not wait for it and
    reported its task ``outstanding``."""
    m = ggmk.Module("m")
    inside = threading.Event()
    ran = []

    @m.handler("S")
    def s_(ctx):
        inside.set()
        end = time.monotonic() + 10
        while not ctx.kernel.halted and time.monotonic() < end:   # until the halt began
            time.sleep(0.001)
        ran.append(ctx.task.meta0)
        return OK

    s = ggmk.boot([m], hal="sim", seed=1, workers=2)
    s.submit("S", 1)
    rep = []

    def halter():
        inside.wait(10)
        rep.append(s.halt(timeout=5))

    t = threading.Thread(target=halter)
    t.start()
    s.run(timeout=10)
    t.join(30)
    assert ran == [1]
    assert rep == [{"drained": True, "halted": 0, "channel_dropped": 0, "outstanding": 0,
                    "stuck_workers": 0}]
    assert len(s.dead_letters("sys.error")[0]) == 0


def test_sim_stepping_answers_for_the_calling_thread_only():
    m = ggmk.Module("m")
    seen = {}

    @m.handler("S")
    def s_(ctx):
        hal = ctx.kernel.hal
        seen["mine"] = [w.id for w in hal.stepping()]
        t = threading.Thread(target=lambda: seen.__setitem__("other", hal.stepping()))
        t.start()
        t.join(10)
        return OK

    with ggmk.boot([m], hal="sim", seed=3, workers=2) as s:
        s.submit("S")
        assert s.run(timeout=5)
    assert len(seen["mine"]) == 1 and seen["other"] == []


def test_sim_two_host_threads_running_at_once_both_see_their_work_done():
    """Two threads each submit and ``run()``; the handlers let the GIL go, so their steps
    overlapped: a thread that found the other's worker mid-step took the system for idle,
    jumped the virtual clock to its timeout and returned False with work outstanding."""
    m = ggmk.Module("m")
    done = []

    @m.handler("S")
    def s_(ctx):
        time.sleep(0.001)            # (the workload: a handler that lets the GIL go)
        done.append(ctx.task.meta0)
        return OK

    s = ggmk.boot([m], hal="sim", seed=2, workers=2)
    res = []

    def user(base):
        for i in range(20):
            s.submit("S", base + i)
            res.append(s.run(timeout=5))

    ths = [threading.Thread(target=user, args=(b,)) for b in (0, 1000)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    assert not any(t.is_alive() for t in ths)
    assert res == [True] * 40
    assert sorted(done) == list(range(20)) + list(range(1000, 1020))
    assert s.hal.clock_ns() < 1_000_000_000      # no jump to a run's 5 s timeout
    assert s.halt(timeout=1)["outstanding"] == 0
