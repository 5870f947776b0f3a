"""SPEC §14 item 18: a 4 KB payload crosses the bridge both ways and arrives intact at a valid
local address; inline-only tasks cross without a payload copy."""
import numpy as np
import pytest

from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import TARGETS, boot, publish_all, wait_for


@pytest.mark.parametrize("target", TARGETS)
def test_4k_payload_both_ways_and_inline_without_copies(target):
    s = boot(device=target)
    try:
        data = (np.arange(4096) * 7 % 251).astype(np.uint8).tobytes()
        W.REC.expect_payload = data
        before = s.stats()["bridge"]
        publish_all(s, "cpu.in", 8, payload=data)
        assert s.run(timeout=120)
        assert len(W.REC.back) == 8
        for m0, m1, ok, addr, ptr in W.REC.back:
            assert m1 == sum(data)       # the GPU handler read the bytes at its arena address
            assert ok and addr           # the CPU handler read them back from the CPU arena
        assert sorted(b[0] for b in W.REC.back) == list(range(8))
        after = s.stats()["bridge"]
        assert after["payload_copies"] - before["payload_copies"] == 16     # 8 each way
        assert after["payload_bytes"] - before["payload_bytes"] == 16 * 4096
        # the senders' references were released: nothing left allocated in the CPU arena
        wait_for(lambda: s.cpu.arena.stats()["alloc_count"] - s.cpu.arena.stats()["free_count"]
                 == 0 if "alloc_count" in s.cpu.arena.stats() else True, 10, "arena release")
        # inline-only tasks: no copy at all
        W.REC.clear()
        publish_all(s, "cpu.in", 1000)
        assert s.run(timeout=120)
        assert W.REC.back_n == 1000
        final = s.stats()["bridge"]
        assert final["payload_copies"] == after["payload_copies"]
        assert final["inline_crossings"] >= after["inline_crossings"] + 2000
    finally:
        s.halt()


def test_payload_larger_than_the_device_pool_is_a_named_error(monkeypatch):
    # both arenas' largest block is 128 KiB by default, so the CPU cannot even hold a larger
    # payload; a device pool of 1 KiB (as a smaller device config would give) shows the path
    from ggmk.bridge import BRIDGE_PAYLOAD_TOO_LARGE
    from ggmk.bridge import device_side
    monkeypatch.setattr(device_side, "DEVICE_MAX_PAYLOAD", 1024)
    s = boot()
    try:
        big = bytes(4096)
        publish_all(s, "cpu.in", 1, payload=big)
        assert s.run(timeout=60)
        err, codes = s.dead_letters("sys.error")
        assert (codes == BRIDGE_PAYLOAD_TOO_LARGE).sum() == 1
        assert any("cpu.in" in e and "larger" in e for e in s.bridge.errors)
    finally:
        s.halt()
