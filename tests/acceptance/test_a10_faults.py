"""SPEC §14.10 (CPU kernel part): retry with backoff works; poison triggers on a sustained failure
rate, not on a spike. (The watchdog reset of a deadlocked GPU kernel belongs to the bridge.)"""
import numpy as np

from ggmk import FAIL, OK, RETRY, task as T
from ggmk.core.faults import PoisonDetector, backoff_ticks
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def test_retry_with_backoff_then_success(hal):
    m = Module("flaky")
    attempts = {}

    @m.handler("FLAKY")
    def flaky(ctx):
        k = ctx.task.meta0
        attempts.setdefault(k, []).append(ctx.tick)
        return RETRY if len(attempts[k]) < 4 else OK

    with boot([m], workers=2, hal=hal, tick_hz=2000) as s:
        s.submit("FLAKY", meta0=np.arange(20))
        assert s.run(timeout=10)
        st = s.stats()["types"]["FLAKY"]
    assert st["retry"] == 60 and st["ok"] == 20
    for ticks in attempts.values():
        gaps = np.diff(ticks)
        # attempt n waits at least backoff_ticks(n) ticks: 1, 2, 4
        assert all(g >= backoff_ticks(i + 1) for i, g in enumerate(gaps)), ticks


def test_retry_exhausted_goes_to_sys_error(hal):
    m = Module("flaky")

    @m.handler("NEVER")
    def never(ctx):
        return RETRY

    with boot([m], workers=1, hal=hal, max_retries=3, tick_hz=5000) as s:
        s.submit("NEVER")
        assert s.run(timeout=10)
        recs, codes = s.dead_letters()
    assert codes.tolist() == [T.RETRY_EXHAUSTED]


def test_poison_detector_spike_vs_sustained():
    d = PoisonDetector(threshold=32, window=1000)
    assert not any(d.record(1, 1000, tick=5) for _ in range(3))   # one huge spike
    assert not d.poisoned[1]
    d2 = PoisonDetector(threshold=32, window=1000)
    hit = [d2.record(2, 1, tick=t) for t in range(0, 1000, 25)]   # 40 per 1000 ticks, sustained
    assert any(hit) and d2.poisoned[2]
    d3 = PoisonDetector(threshold=32, window=1000)
    slow = [d3.record(3, 1, tick=t) for t in range(0, 5000, 50)]  # 20 per 1000: below the rate
    assert not any(slow)


def test_sustained_failures_poison_the_type_and_clear_poison_restores(hal):
    m = Module("bad")

    @m.handler("BAD")
    def bad(ctx):
        return FAIL

    @m.handler("GOOD")
    def good(ctx):
        return OK

    # a spike: 500 failures in one go do not poison
    with boot([m], workers=2, hal=hal, tick_hz=1000) as s:
        s.submit("BAD", meta0=np.arange(500))
        assert s.run(timeout=10)
        assert s.stats()["poisoned"] == []
        # sustained: failures spread over the window (deferred to later ticks) poison BAD
        for i in range(60):
            s.submit("BAD", due=s.tick + 20 * i + 1)
        assert s.run(timeout=30)
        assert s.stats()["poisoned"] == ["BAD"]
        _, codes = s.dead_letters()
        s.submit("BAD")
        s.submit("GOOD")
        assert s.run(timeout=5)
        _, codes = s.dead_letters()
        assert codes.tolist() == [T.POISONED]               # refused, with the reason
        assert s.stats()["types"]["GOOD"]["ok"] == 1        # other types unaffected
        s.clear_poison("BAD")
        s.submit("BAD")
        assert s.run(timeout=5)
        _, codes = s.dead_letters()
        assert codes.tolist() == [T.FAIL]                   # runs (and fails) again
