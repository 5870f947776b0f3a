"""Poison is a failure rate (core/faults.py): a count *and* a fraction of attempts."""
import numpy as np
import pytest

import ggmk
from ggmk import FAIL, OK
from ggmk.core.faults import PoisonDetector


def test_a_busy_type_failing_one_percent_is_not_poisoned():
    d = PoisonDetector(threshold=32, window=1000)
    for tick in range(0, 3000):                       # 6 tasks a tick = 6,000/s at 1 kHz
        if tick % 17 == 0:
            assert not d.record(1, 1, tick)           # ~1% of attempts fail: ~180 failures
        if d.tracking(1):
            d.attempted(1, 6, tick)
    assert not d.poisoned[1] and d.rate(1, 2999) >= 32


def test_a_type_failing_most_attempts_is_poisoned_and_the_fraction_is_configurable():
    for fraction, poisoned in ((0.5, True), (0.95, False)):
        d = PoisonDetector(threshold=32, window=1000, fraction=fraction)
        for tick in range(0, 1000, 10):
            d.record(2, 1, tick)                      # 9 of 10 attempts fail
            d.attempted(2, 0 if tick % 100 else 1, tick)
        assert bool(d.poisoned[2]) == poisoned, fraction


@pytest.mark.parametrize("kw", [{"threshold": 0}, {"window": 0}, {"fraction": 0},
                                {"fraction": 1.5}])
def test_bad_poison_settings_are_refused_by_name(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        PoisonDetector(**kw)


def test_on_real_threads_one_percent_failures_at_a_high_rate_do_not_poison():
    m = ggmk.Module("m")

    @m.handler("MSG")
    def msg(ctx):
        return FAIL if ctx.task.meta0 % 100 == 0 else OK

    with ggmk.boot([m], workers=2, tick_hz=1000) as s:
        for i in range(60):                            # 6,000 over 60 ticks: 60 failures
            s.submit("MSG", meta0=np.arange(i * 100, i * 100 + 100), due=s.tick + i + 1)
        assert s.run(timeout=30)
        assert s.stats()["poisoned"] == []
        assert s.stats()["types"]["MSG"]["fail"] == 60 and s.stats()["types"]["MSG"]["ok"] == 5940
        recs, codes = s.dead_letters("sys.error")
        assert len(recs) == 60 and set(codes.tolist()) == {FAIL}
