"""Bridge transfers under injected faults, and pushing while the GPU kernel is being reset."""
import time

import numpy as np
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



def _all_100_fail_to_sys_error(s):
    """Publish 100 messages over a bridge whose sends always fail: each one ends on
    sys.error with BRIDGE_TRANSFER_FAILED, none lost, none delivered."""
    publish_all(s, "cpu.in", 100)
    assert s.run(timeout=60)
    err, codes = s.dead_letters("sys.error")
    mine = err["type"] == W.TYPES["WORK"]
    assert sorted(err["meta0"][mine].tolist()) == list(range(100))
    assert set(codes[mine].tolist()) == {BRIDGE_TRANSFER_FAILED}

def test_persistent_failure_sends_the_batch_to_sys_error():
    wrap = lambda tr: FaultyTransport(tr, fail_send=lambda i: True)   # noqa: E731
    s = boot(transport_wrap=wrap, bridge={"max_retries": 2, "retry_backoff_us": 1})
    try:
        _all_100_fail_to_sys_error(s)
        assert s.stats()["bridge"]["failed_transfers"] >= 1
    finally:
        s.halt()


# a failed send waits 0.2, 0.4, 0.8, 1.6 and 3.2 s between its 6 attempts (6.2 s in all)
SLOW_RETRIES = {"max_retries": 5, "retry_backoff_us": 200_000}


def test_a_failing_send_blocks_neither_publish_nor_run():
    """The backoff between retries is the pump's to wait, not a sleep: before, it slept under
    the bridge's lock on the sending thread, so a host publish() (sent from the emitting
    thread) blocked for the whole retry sequence, and run(timeout=) waited for it too."""
    wrap = lambda tr: FaultyTransport(tr, fail_send=lambda i: True)   # noqa: E731
    s = boot(transport_wrap=wrap, bridge=SLOW_RETRIES)
    try:
        t0 = time.monotonic()
        assert s.channel("cpu.in").publish(meta0=1) == 0
        assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        assert not s.run(timeout=1.0)                 # the retries go on meanwhile
        assert time.monotonic() - t0 < 4.0
        assert s.stats()["bridge"]["failed_transfers"] == 0
        assert s.run(timeout=60)                      # given up after max_retries
        err, codes = s.dead_letters("sys.error")
        mine = err["type"] == W.TYPES["WORK"]
        assert err["meta0"][mine].tolist() == [1]
        assert codes[mine].tolist() == [BRIDGE_TRANSFER_FAILED]
        st = s.stats()["bridge"]
        assert st["retries"] == 6 and st["failed_transfers"] == 1
        assert W.REC.back_n == 0
    finally:
        s.halt()


def test_a_send_that_fails_for_a_while_is_delivered_once_by_the_pump():
    """4 failed sends (3 s of backoff), then the pump's retry goes: delivered, once."""
    wrap = lambda tr: FaultyTransport(tr, fail_send=lambda i: i < 4)   # noqa: E731
    s = boot(transport_wrap=wrap, bridge=SLOW_RETRIES)
    try:
        t0 = time.monotonic()
        assert s.channel("cpu.in").publish(meta0=np.arange(5, dtype=np.uint64), count=5) == 5
        assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        assert not s.run(timeout=0.5)                 # still retrying
        assert time.monotonic() - t0 < 2.0
        assert s.run(timeout=60)
        assert sorted(b[0] for b in W.REC.back) == list(range(5))
        st = s.stats()["bridge"]
        assert st["retries"] == 4 and st["failed_transfers"] == 0
        err, _ = s.dead_letters("sys.error")
        assert not (err["type"] == W.TYPES["WORK"]).any()
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


class _Raising(FaultyTransport):
    """A transport whose send raises something other than TransferError (a bug in it)."""

    def __init__(self, inner, fail):
        super().__init__(inner)
        self._fail = fail

    def send(self, records, *a, **kw):
        i = self.sends
        self.sends += 1
        if self._fail(i):
            raise RuntimeError(f"transport bug (attempt {i})")
        return self.inner.send(records, *a, **kw)


def test_a_send_that_raises_anything_is_a_failed_transfer_nothing_lost():
    # (it lost the staged batch: _flush had taken it off the stage before the raise)
    s = boot(transport_wrap=lambda tr: _Raising(tr, lambda i: i % 3 == 1))
    try:
        publish_all(s, "cpu.in", 3000)
        assert s.run(timeout=120)
        assert sorted(b[0] for b in W.REC.back) == list(range(3000))
        assert s.stats()["bridge"]["retries"] > 0
    finally:
        s.halt()
    s = boot(transport_wrap=lambda tr: _Raising(tr, lambda i: True),
             bridge={"max_retries": 2, "retry_backoff_us": 1})
    try:
        _all_100_fail_to_sys_error(s)
    finally:
        s.halt()
