"""Caller runs (``boot(host_helps=True)``, ``ThreadsHal.help``): a host thread that waits on
the system runs an idle worker's steps itself. On real threads with 2 workers: the round trip
costs no wake-up and the handler runs on the caller's thread; a busy system is waited on as
before; work the caller leaves behind is still run; a Ctrl-C while the caller runs a handler
is held until the step is over (nothing half finished); determinism mode never lets the
host step. Every accepted task is accounted for."""
from __future__ import annotations

import os
import signal
import threading

import pytest

import ggmk
from ggmk import sdk


def echo_server(block: threading.Event | None = None, follow_ons: int = 0):
    """``ask`` (meta0 = x, meta1 = tag) -> ``ans`` (meta0 = tag, meta1 = x + 1), noting the
    thread that ran it; ``follow_ons``: each request also emits that many ``HOP`` tasks."""
    app = ggmk.Module("echo_srv")
    app.produces("echo.ask", "ASK", capacity=8)
    app.produces("echo.ans", "ANS", mode="fanout", capacity=8)
    app.threads = []
    app.hops = 0
    app.entered = threading.Event()
    lock = threading.Lock()

    @app.handler("ECHO_ASK", consumes="echo.ask", message="ASK")
    def ask(ctx):
        app.threads.append(threading.get_ident())
        if block is not None:
            app.entered.set()
            assert block.wait(60), "the test never opened the gate"
        t = ctx.task
        for _ in range(follow_ons):
            ctx.emit("HOP")
        return ctx.emit("echo.ans", t.meta1, t.meta0 + 1)

    @app.handler("HOP")
    def hop(ctx):
        with lock:
            app.hops += 1
    return app


def accounted(system):
    assert system.run(timeout=60)
    assert len(system.dead_letters("sys.error")[0]) == 0
    assert len(system.dead_letters("sys.dropped")[0]) == 0


def test_the_caller_runs_the_handler_with_no_wake_up():
    srv = echo_server()
    with ggmk.boot([srv], workers=2, host_helps=True) as system:
        cl = sdk.Client(system, "echo.ask", "echo.ans")
        assert cl.call(1, 100, tag=100) == (100, 2, None)        # warm: both workers park
        hal = system.hal
        assert hal.helping
        w0, h0 = hal.wakes, hal.helped
        me = threading.get_ident()
        for i in range(200):
            assert cl.call(i, 1000 + i, tag=1000 + i) == (1000 + i, i + 1, None)
        assert hal.helped > h0
        # the caller ran (nearly) every handler itself; a worker's park can time out at the
        # moment of a call (every 2 ms), so not every one: but no submit woke a worker
        assert srv.threads[-200:].count(me) >= 100
        assert hal.wakes - w0 <= 200 - srv.threads[-200:].count(me)
        cl.close()
        accounted(system)


def test_on_by_default_off_on_request_and_in_determinism_mode():
    with ggmk.boot([echo_server()], workers=2) as system:
        assert system.hal.helping
    srv = echo_server()
    with ggmk.boot([srv], workers=2, host_helps=False) as system:
        assert not system.hal.helping
        cl = sdk.Client(system, "echo.ask", "echo.ans")
        for i in range(20):
            assert cl.call(i, i, tag=i) == (i, i + 1, None)
        assert threading.get_ident() not in srv.threads      # workers ran every one
        assert system.hal.helped == 0
        cl.close()
        accounted(system)
    with ggmk.boot([echo_server()], workers=2, deterministic=True, host_helps=True) as system:
        assert not system.hal.helping


def test_a_busy_system_is_waited_on_not_helped(wait_until):
    gate = threading.Event()
    srv = echo_server(block=gate)
    with ggmk.boot([srv], workers=1, host_helps=True) as system:
        cl = sdk.Client(system, "echo.ask", "echo.ans", timeout=60)
        first = threading.Thread(target=lambda: system.submit("ECHO_ASK", 1, 1))
        # the only worker takes the first request and blocks in it
        first.start()
        first.join()
        assert srv.entered.wait(60)
        assert not system.hal._parked
        out = []
        t = threading.Thread(target=lambda: out.append(cl.call(5, 50, tag=50)))
        t.start()
        # the call is published before the worker is let go: released earlier, the worker
        # could finish and park before the call began, and the caller would rightly help
        ask = system.channel("echo.ask")
        assert wait_until(lambda: ask.seq == 1, 60)
        gate.set()                    # the worker finishes the first, then runs the call's
        t.join(60)
        assert out == [(50, 6, None)]
        assert t.ident not in srv.threads                     # the caller ran nothing
        assert system.hal.helped == 0
        cl.close()
        accounted(system)


def test_work_the_caller_leaves_behind_is_run_by_the_workers(wait_until):
    srv = echo_server(follow_ons=64)
    with ggmk.boot([srv], workers=2, host_helps=True) as system:
        hal = system.hal
        # no park timeout to fall back on: both workers park again with an hour's timeout,
        # so only the hand-back's release can get the borrowed worker's leftovers run
        hal.park_timeout = 3600.0
        hal.wake(2)
        assert wait_until(lambda: len(hal._parked) == 2, 30)
        cl = sdk.Client(system, "echo.ask", "echo.ans")
        assert cl.call(1, 1, tag=1) == (1, 2, None)
        assert threading.get_ident() in srv.threads          # the caller ran the request
        # the call returned once its reply was in; the request's 64 hops were left in the
        # borrowed worker's local queue: that worker is released to run them
        assert wait_until(lambda: srv.hops == 64, 30)
        cl.close()
        accounted(system)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="SIGINT goes to the main thread")
def test_ctrl_c_inside_a_handler_the_caller_runs_waits_for_the_step_to_finish():
    app = ggmk.Module("interrupted")
    app.produces("echo.ask", "ASK", capacity=8)
    app.produces("echo.ans", "ANS", mode="fanout", capacity=8)
    app.done = 0

    @app.handler("INT_ASK", consumes="echo.ask", message="ASK")
    def ask(ctx):
        if ctx.task.meta0 == 7:
            os.kill(os.getpid(), signal.SIGINT)   # as if the user hit Ctrl-C right here
        app.done += 1
        return ctx.emit("echo.ans", ctx.task.meta1, 0)

    with ggmk.boot([app], workers=2, host_helps=True) as system:
        cl = sdk.Client(system, "echo.ask", "echo.ans")
        assert cl.call(1, 1, tag=1) == (1, 0, None)
        with pytest.raises(KeyboardInterrupt):
            cl.call(7, 2, tag=2)
        assert app.done == 2                              # the handler ran to its end
        assert cl.call(3, 3, tag=3) == (3, 0, None)       # and the system goes on
        cl.close()
        assert system.run(timeout=60)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # put back at halt


def test_run_lets_the_host_finish_the_work_itself():
    app = ggmk.Module("runner")
    app.threads = set()

    @app.handler("RUN_HOP")
    def hop(ctx):
        app.threads.add(threading.get_ident())
        if ctx.task.meta0:
            ctx.emit("RUN_HOP", ctx.task.meta0 - 1)

    with ggmk.boot([app], workers=2, host_helps=True) as system:
        for _ in range(20):
            system.submit("RUN_HOP", 10)
            assert system.run(timeout=60)
        assert threading.get_ident() in app.threads
        accounted(system)


def test_on_sim_a_client_call_steps_the_workers():
    srv = echo_server()
    with ggmk.boot([srv], workers=2, hal="sim", seed=3) as system:
        cl = sdk.Client(system, "echo.ask", "echo.ans")
        for i in range(20):
            assert cl.call(i, 500 + i, tag=500 + i) == (500 + i, i + 1, None)
        cl.close()
        accounted(system)


def test_submit_and_run_docstring_example_runs():
    import doctest

    from ggmk.core.kernel import System
    runner = doctest.DocTestRunner()
    for t in doctest.DocTestFinder().find(System.submit_and_run, "submit_and_run"):
        runner.run(t)
    assert runner.summarize(verbose=False).attempted >= 4
    assert runner.summarize(verbose=False).failed == 0
