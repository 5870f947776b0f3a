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
