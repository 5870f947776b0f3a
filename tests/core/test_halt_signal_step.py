"""halt() from a signal handler that interrupts the main thread while it runs a borrowed
worker's step (caller runs): the report named 256 tasks outstanding with no stuck worker, and
the lent worker's thread was still alive after run() returned."""
import signal
import threading
import time

import numpy as np

import ggmk
from ggmk import OK


def test_signal_halt_inside_a_caller_runs_step_reports_and_joins_the_lent_worker():
    m = ggmk.Module("sigstep")
    ran, fired = [], []

    @m.handler("SIG_T")
    def t(ctx):
        ran.append(int(ctx.task.meta0))
        if threading.current_thread() is threading.main_thread() and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGUSR1)     # its handler runs here, inside the step
        return OK

    s = ggmk.boot([m], workers=1, max_batch=32)
    reps = []
    old = signal.signal(signal.SIGUSR1, lambda *a: reps.append(s.halt(timeout=0)))
    n, sent = 200, 0
    try:
        # the step runs on the main thread when run() borrows the parked worker: retried
        # in the rare case that the worker's park timed out just then (its thread ran it)
        for _ in range(50):
            end = time.monotonic() + 5
            while s.hal.parked != 1 and time.monotonic() < end:
                time.sleep(0.0005)
            s.submit_and_run("SIG_T", meta0=np.arange(sent, sent + n), timeout=10)
            sent += n
            if fired:
                break
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert fired and len(reps) == 1
    rep = reps[0]
    # what the step held when the signal came: all of outstanding, no stuck worker
    assert rep["in_caller_step"] == rep["outstanding"] > 0 and rep["stuck_workers"] == 0, rep
    # the lent worker's thread is gone by the time run() returned
    assert [th.name for th in s.hal._thread_of.values() if th.is_alive()] == []
    assert s.hal.alive_threads() == 0
    # every accepted task ran once (the step's too, after the signal handler) or is on
    # sys.error with HALTED; nothing left outstanding
    err, codes = s.dead_letters("sys.error")
    assert set(codes.tolist()) <= {ggmk.task.HALTED}
    got = ran + err["meta0"].tolist()
    assert sorted(got) == list(range(sent))
    assert len(err) == rep["halted"] and s.sched.outstanding == 0
    assert s.halt() is rep or s.halt() == rep
