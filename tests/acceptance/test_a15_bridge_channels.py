"""SPEC §14 item 15: a GPU module emits on a bridge channel and a CPU module receives it, in
order, with backpressure; lossy and lossless both hold across the bridge (every message
counted). 100K messages in CI; >= 1M with GGMK_LONG=1. On ``cpu``, and on ``cuda`` where a GPU
is present (marked)."""
import numpy as np
import pytest

from tests.bridge import bridge_workloads as W
from ggmk.task import CHAN_FULL
from tests.bridge.dualkit import TARGETS, assert_sink_exact, LONG, boot, gen, wait_for

N = 1_000_000 if LONG else 100_000


@pytest.fixture(scope="module", params=TARGETS)
def system(request):
    s = boot(device=request.param)
    assert s.target == request.param
    yield s
    s.halt()


def test_lossless_gpu_to_cpu_in_order_with_backpressure(system):
    s = system
    W.REC.clear()
    W.REC.gate.clear()                      # the CPU consumer is stuck: the far side fills
    gen(s, "GEN", N)
    wait_for(lambda: s.kernel.metrics()["channels"]["gpu.out"]["full"] > 0, 120,
             "the GPU producer to get CHAN_FULL from the bridge channel")
    full_before = s.kernel.metrics()["channels"]["gpu.out"]["full"]
    W.REC.gate.set()
    assert s.run(timeout=600)
    assert full_before > 0
    # every message exactly once, in channel-sequence order, nothing dead-lettered
    assert_sink_exact(s, N)
    b = s.stats()["bridge"]
    assert b["channels"]["gpu.out"]["crossed"] == N
    assert b["transfers"] < b["records"]


def test_lossy_gpu_to_cpu_every_message_delivered_or_dropped_with_reason(system):
    s = system
    W.REC.clear()
    s.dead_letters("sys.dropped")
    W.REC.gate.clear()
    n = N // 10
    taken = []                  # dead letters taken as they come: their store is bounded

    def producer_done():
        taken.append(s.dead_letters("sys.dropped"))
        return s.kernel.metrics()["types"][W.TYPES["GEN_LOSSY"]]["ok"] == 1
    gen(s, "GEN_LOSSY", n)
    wait_for(producer_done, 120, "the lossy producer to finish")
    W.REC.gate.set()
    assert s.run(timeout=300)
    got = W.REC.lsink_val
    taken.append(s.dead_letters("sys.dropped"))
    drop = np.concatenate([d for d, _ in taken])
    codes = np.concatenate([np.asarray(c) for _, c in taken])
    assert s.cpu.stats()["sys_dropped"]["rejected"] == 0     # none past the store
    mine = drop["type"] != W.TYPES["READING"]
    dropped = drop["meta0"][mine].tolist()
    assert sorted(got + dropped) == list(range(n))          # each exactly once
    assert len(dropped) > 0                                  # the consumer was stuck: drops
    assert set(codes[mine].tolist()) == {CHAN_FULL}          # with the reason
    assert got == sorted(got)                                # what arrives is in order
