"""SPEC §14 item 19: >= 100K tasks/s on a bridge channel, fewer transfers than tasks,
throughput grows with batch size (the property; figures in bench/bridge.py)."""
import time

import pytest

from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import LONG, TARGETS, boot, gen

N = 1_000_000 if LONG else 200_000


def _rate(batch, n, target="cpu"):
    s = boot(bridge={"batch": batch}, device=target)
    try:
        t0 = time.perf_counter()
        gen(s, "GEN", n)
        assert s.run(timeout=600)
        dt = time.perf_counter() - t0
        b = s.stats()["bridge"]
        assert W.REC.sink_val == list(range(n))
        return n / dt, b
    finally:
        s.halt()


@pytest.mark.parametrize("target", TARGETS)
def test_throughput_transfers_and_batch_size(target):
    # rates are wall-clock: a machine busy with other work can halve one run, so the floor and
    # the ordering are judged on the best of up to 3 tries (the counts hold in every run)
    rates = []
    for _ in range(3):
        small, b_small = _rate(8, N // 4, target)
        big, b_big = _rate(256, N, target)
        assert b_big["transfers"] < b_big["records"] / 16
        assert b_small["transfers"] > b_big["transfers"] / 4 * (8 / 256) * 4  # more per task
        rates.append((small, big))
        if big >= 100_000 and big > small:
            break
    assert max(b for _, b in rates) >= 100_000, rates
    assert any(b > s for s, b in rates), rates
