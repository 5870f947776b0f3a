"""The GPU kernel's lifecycle at its edges, on a real device process: a reset whose reboot
fails is tried again by the watchdog until one boots (before: the watchdog took the
channels closed by the failed reset for a reset in progress and never tried again: the
bridge stayed closed for good); two threads halting at once get one accounting (before: one
crashed with a TypeError and the device channel's contents were named twice)."""
import os
import signal
import threading

import numpy as np

from ggmk import task as T
from tests.bridge import watchdog_workloads as WW

# ticks driven by hand (check()), so no interval can fire a reset on its own under load
WD = {"interval_s": 3600.0, "warn_after": 1, "reset_after": 2}


def test_a_failed_reboot_is_tried_again_and_traffic_resumes(wait_until):
    s = WW.boot(watchdog=WD)
    wd = s.watchdog
    try:
        ch = s.channel("wd.in")
        assert ch.publish(meta0=1) == 0
        assert s.run(timeout=60) and WW.STATE.back == [1]
        boot_process = s._boot_process
        fails = []

        def fail_once():                 # the device cannot be booted the first time
            if not fails:
                fails.append(1)
                raise RuntimeError("device busy (test)")
            return boot_process()
        s._boot_process = fail_once
        os.kill(s.process.pid, signal.SIGKILL)
        assert wait_until(lambda: not s.process.alive(), timeout=30)
        assert wd.check() == "reset_failed"
        assert not s.reset_in_progress()            # the failed reset is over,
        assert s.resetting()                        # but the channels stay closed:
        assert ch.publish(meta0=2) == T.CHAN_CLOSED  # no kernel to take it
        # the retry waits reset_after ticks, then boots a kernel
        outcomes = [wd.check() for _ in range(WD["reset_after"])]
        assert outcomes[:-1] == [None] * (WD["reset_after"] - 1)
        assert outcomes[-1] == "reset", outcomes
        assert s.process.alive() and wd.c["failed_resets"] == 1 and wd.c["resets"] == 1
        assert ch.publish(meta0=3) == 0
        assert s.run(timeout=60)
        assert sorted(WW.STATE.back) == [1, 3]
    finally:
        s.halt()


def test_two_threads_halting_at_once_get_one_accounting(wait_until):
    s = WW.boot()
    ch = s.channel("wd.in")
    n = 0
    while n < 300:                       # some traffic in flight when the halts start
        if ch.publish(meta0=n) == 0:
            n += 1
    reports, errors = [], []
    go = threading.Barrier(2)

    def halt():
        go.wait()
        try:
            reports.append(s.halt(timeout=5))
        except Exception as e:   # noqa: BLE001 - the test reports it
            errors.append(e)
    ts = [threading.Thread(target=halt) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    assert len(reports) == 2 and reports[0] is reports[1]
    # every accepted message once: delivered, or named on sys.error / sys.dropped (the
    # message, or its echo on wd.back)
    mine = (WW.TYPES["WD_WORK"], WW.TYPES["WD_BACK"])
    dead = sum(int(np.isin(s.cpu.dead_letters(w)[0]["type"], mine).sum())
               for w in ("sys.error", "sys.dropped"))
    assert len(WW.STATE.back) + dead == n, (len(WW.STATE.back), dead, n)
