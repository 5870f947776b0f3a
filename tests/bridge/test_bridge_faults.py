"""Bridge transfers under injected faults, and pushing while the GPU kernel is being reset."""
import pytest

from ggmk.bridge import BRIDGE_TRANSFER_FAILED, BridgeError, FaultyTransport
from tests.bridge import bridge_workloads as W
from ggmk import task as T
from tests.bridge.dualkit import boot, publish_all


def test_failed_transfers_are_retried_nothing_lost():
    wrap = lambda tr: FaultyTransport(tr, fail_send=lambda i: i % 3 == 1,   # noqa: E731
                                      fail_recv=lambda i: i % 5 == 2)
    s = boot(transport_wrap=wrap)
    try:
        publish_all(s, "cpu.in", 5000)
        assert s.run(timeout=120)
        assert sorted(b[0] for b in W.REC.back) == list(range(5000))
        st = s.stats()["bridge"]
        assert st["retries"] > 0 and st["failed_transfers"] == 0
    finally:
        s.halt()


def test_persistent_failure_sends_the_batch_to_sys_error():
    wrap = lambda tr: FaultyTransport(tr, fail_send=lambda i: True)   # noqa: E731
    s = boot(transport_wrap=wrap, bridge={"max_retries": 2, "retry_backoff_us": 1})
    try:
        publish_all(s, "cpu.in", 100)
        assert s.run(timeout=60)
        err, codes = s.dead_letters("sys.error")
        mine = err["type"] == W.TYPES["WORK"]
        assert sorted(err["meta0"][mine].tolist()) == list(range(100))
        assert set(codes[mine].tolist()) == {BRIDGE_TRANSFER_FAILED}
        assert s.stats()["bridge"]["failed_transfers"] >= 1
    finally:
        s.halt()


def test_push_while_the_gpu_kernel_is_reset_is_refused_and_nothing_lost():
    s = boot()
    try:
        s.pause_device("watchdog reset")
        with pytest.raises(BridgeError, match="being reset"):
            s.push_device(T.make(1, type=W.TYPES["GEN"], meta0=0, meta1=1))
        publish_all(s, "cpu.in", 200)            # held by the bridge meanwhile
        s.resume_device()
        assert s.run(timeout=60)
        assert W.REC.back_n == 200
    finally:
        s.halt()
