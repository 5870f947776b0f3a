"""``DualSystem.submit`` of a GPU-only type when the host -> device ring cannot take it all:
it returns the count that fitted, nothing of the rest is queued or dead-lettered, and
submitting the rest again delivers every message exactly once (push_device's accounting)."""
import numpy as np

from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, wait_for


def test_a_submit_larger_than_the_ring_takes_what_fits_and_the_rest_goes_again():
    with boot(device_process=False) as s:
        cap = s.kernel.config.rx_cap
        n = cap + cap // 2                   # more GEN tasks than the ring holds
        first = np.arange(n, dtype=np.uint64)
        took = s.submit("GEN", meta0=first, meta1=first + 1)    # each GEN emits its meta0
        assert 0 < took < n, (took, n)
        err, _ = s.dead_letters("sys.error")
        assert len(err) == 0                 # the rest was refused, not dead-lettered
        calls = 1
        while took < n:                      # as a user does: submit the rest again
            took += s.submit("GEN", meta0=first[took:], meta1=first[took:] + 1)
            calls += 1
            assert calls < 10_000
        assert s.run(timeout=120)
        wait_for(lambda: len(W.REC.sink_val) >= n, what=f"{n} messages at the CPU sink")
        assert sorted(W.REC.sink_val) == list(range(n))         # every one, exactly once
        err, _ = s.dead_letters("sys.error")
        drop, _ = s.dead_letters("sys.dropped")
        assert len(err) == 0 and len(drop) == 0
