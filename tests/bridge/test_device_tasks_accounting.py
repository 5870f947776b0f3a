"""The GPU kernel's own tasks at a halt and a reset: tasks given with ``push_device`` (and
whatever else never crossed the bridge) that were still queued or waiting inside the GPU
kernel are named on sys.error, one record of their type each, with HALTED / BRIDGE_RESET
(before: they were gone without a word: 16 GEN tasks waiting on a full channel, and the
~16,000 values they had yet to produce, left no trace; the halt report said
``device_unfinished: 0``)."""
import threading

import numpy as np
import pytest

from ggmk import task as T
from tests.bridge import bridge_workloads as W
from tests.bridge import watchdog_workloads as WW
from tests.bridge.dualkit import boot, wait_for

N_GEN = 20


def _stalled_generators(s):
    """N_GEN generator tasks on the device with the CPU consumer stalled: most of them end up
    waiting for room on gpu.out. Returns once the device is quiet in its waiting."""
    W.REC.gate.clear()
    first = np.arange(N_GEN, dtype=np.uint64) * 1000
    assert s.push_device(T.make(N_GEN, type=W.TYPES["GEN"], meta0=first,
                                meta1=first + 1000)) == N_GEN
    gen = W.TYPES["GEN"]
    wait_for(lambda: s.kernel.metrics()["types"].get(gen, {}).get("wait", 0) > 0, 60,
             "a generator to wait on the full gpu.out")


@pytest.mark.parametrize("device_process", [True, False])
def test_halt_names_the_pushed_tasks_it_stopped(device_process):
    s = boot(device_process=device_process, bridge={"window": 8, "batch": 4})
    _stalled_generators(s)
    # the CPU consumer goes on once the halt has begun (its kernel's halt waits for it)
    opener = threading.Thread(target=lambda: (wait_for(lambda: s.halted, 60, "the halt"),
                                              W.REC.gate.set()))
    opener.start()
    rep = s.halt(timeout=0.5)
    opener.join(60)
    recs, codes = s.dead_letters("sys.error")
    gen = recs["type"] == W.TYPES["GEN"]
    assert (np.asarray(codes)[gen] == T.HALTED).all()
    finished = s.stats()["gpu"]["types"][W.TYPES["GEN"]]["ok"]
    assert finished + int(gen.sum()) == N_GEN, (finished, int(gen.sum()))
    assert int(gen.sum()) > 0
    assert rep["device_halted"] >= int(gen.sum())


def test_a_reset_names_the_pushed_tasks_it_lost():
    s = boot(device_process=True, bridge={"window": 8, "batch": 4})
    try:
        _stalled_generators(s)
        acct = s.reset_device("test", graceful=True)      # stopped first: its counts are final
        finished = s._last_gpu["types"][W.TYPES["GEN"]]["ok"]
        recs, codes = s.dead_letters("sys.error")
        gen = recs["type"] == W.TYPES["GEN"]
        assert (np.asarray(codes)[gen] == T.BRIDGE_RESET).all()
        assert finished + int(gen.sum()) == N_GEN, (finished, int(gen.sum()))
        assert acct["device_tasks"] == {W.TYPES["GEN"]: int(gen.sum())}
        W.REC.gate.set()
        assert s.run(timeout=60)
    finally:
        W.REC.gate.set()
        s.halt()


# -- tasks pushed while GPU worker 0 is stuck ------------------------------------------------------
# Only GPU worker 0 takes the host -> device ring in: while its handler never returns, every
# push_device stays on the ring, counted nowhere (before: all of them vanished at the reset or
# halt, ``device_tasks`` {}). One GPU worker, so the stuck one is worker 0; a watchdog that only
# warns says when it is stuck (the reset is by hand, so its accounting comes back here).
N_PUSH = 20
WARN_ONLY = {"interval_s": 0.1, "warn_after": 3, "reset_after": 10**6}


def _push_while_worker0_hangs(s, wait_until):
    assert s.channel("wd.in").publish(meta0=1, meta1=WW.HANG) == 0
    assert wait_until(lambda: s.watchdog.c["warnings"] >= 1, timeout=60), s.watchdog.stats()
    assert "worker 0" in s.watchdog.last_warning
    first = np.arange(N_PUSH, dtype=np.uint64) + 5000
    assert s.push_device(T.make(N_PUSH, type=WW.TYPES["WD_ECHO"], meta0=first)) == N_PUSH


def _pushed_accounting(s, code):
    """(ran, named on sys.error with ``code``) of the pushed values; no value twice."""
    recs, codes = s.dead_letters("sys.error")
    mine = recs["type"] == WW.TYPES["WD_ECHO"]
    assert (np.asarray(codes)[mine] == code).all()
    named = sorted(recs["meta0"][mine].tolist())
    ran = sorted(v for v in WW.STATE.back if v >= 5000)
    assert sorted(ran + named) == list(range(5000, 5000 + N_PUSH)), (ran, named)
    return ran, named


def test_a_reset_names_what_was_pushed_while_worker0_hung(wait_until):
    s = WW.boot(watchdog=WARN_ONLY, device_config={"workers": 1})
    try:
        _push_while_worker0_hangs(s, wait_until)
        acct = s.reset_device("test", hung=True)
        _, named = _pushed_accounting(s, T.BRIDGE_RESET)
        assert len(named) == N_PUSH                       # none could run: worker 0 was stuck
        assert acct["device_tasks"] == {WW.TYPES["WD_ECHO"]: N_PUSH}
        assert acct["lost"] == N_PUSH + 1                 # and the stuck wd.in message
        # the new kernel takes pushes again
        assert s.push_device(T.make(1, type=WW.TYPES["WD_ECHO"], meta0=7)) == 1
        assert s.run(timeout=60) and 7 in WW.STATE.back
    finally:
        s.halt()


def test_a_halt_names_what_was_pushed_while_worker0_hung(wait_until):
    s = WW.boot(watchdog=WARN_ONLY, device_config={"workers": 1})
    _push_while_worker0_hangs(s, wait_until)
    rep = s.halt(timeout=0.5)
    _, named = _pushed_accounting(s, T.HALTED)
    assert len(named) == N_PUSH
    assert rep["device_tasks"] == {WW.TYPES["WD_ECHO"]: N_PUSH}
    assert rep["device_halted"] == N_PUSH + 1


def test_a_reset_tried_again_after_a_failed_reboot_names_them_once(wait_until):
    s = WW.boot(watchdog=WARN_ONLY, device_config={"workers": 1})
    boot_process = s._boot_process
    try:
        _push_while_worker0_hangs(s, wait_until)

        def no_device():
            raise RuntimeError("device busy (test)")
        s._boot_process = no_device
        with pytest.raises(RuntimeError, match="device busy"):
            s.reset_device("test", hung=True)
        s._boot_process = boot_process
        acct = s.reset_device("again", hung=True)          # the same dead kernel's pages
        assert acct["device_tasks"] == {}
        _, named = _pushed_accounting(s, T.BRIDGE_RESET)    # (each value once)
        assert len(named) == N_PUSH
    finally:
        s._boot_process = boot_process
        s.halt()
