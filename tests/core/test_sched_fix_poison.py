"""Poison detection: its boot parameters are checked by name, its window is exactly the ticks
asked for, and in determinism mode a failing type that is not deterministic is poisoned on the
wall clock (its failures were counted in the tick stage's ticks, which only move with
deterministic work: every failure landed in one bucket and the type was never poisoned)."""
import math

import numpy as np
import pytest

import ggmk
from ggmk import FAIL, OK
from ggmk import task as T
from ggmk.core.faults import PoisonDetector
from ggmk.errors import BootError


# -- the parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, allowed", [
    ({"poison_fraction": "0.5"}, "allowed a number 0 < fraction <= 1"),
    ({"poison_fraction": None}, "allowed a number 0 < fraction <= 1"),
    ({"poison_fraction": True}, "allowed a number 0 < fraction <= 1"),
    ({"poison_fraction": 0}, "allowed a number 0 < fraction <= 1"),
    ({"poison_fraction": 1.5}, "allowed a number 0 < fraction <= 1"),
    ({"poison_fraction": math.nan}, "allowed a number 0 < fraction <= 1"),
    ({"poison_threshold": True}, "allowed an int >= 1"),
    ({"poison_threshold": 2.0}, "allowed an int >= 1"),
    ({"poison_threshold": "3"}, "allowed an int >= 1"),
    ({"poison_threshold": 0}, "allowed an int >= 1"),
    ({"poison_window": True}, "allowed an int >= 1"),
    ({"poison_window": 5.0}, "allowed an int >= 1"),
    ({"poison_window": None}, "allowed an int >= 1"),
    ({"poison_window": 0}, "allowed an int >= 1"),
])
def test_bad_poison_parameters_fail_the_boot_by_name(kw, allowed):
    """(before: "0.5" and None gave a raw TypeError naming nothing; True was taken for 1)"""
    (name, value), = kw.items()
    with pytest.raises(BootError) as e:
        ggmk.boot([], workers=2, **kw)
    assert f"{name}={value!r}: {allowed}" in str(e.value)


def test_numpy_and_int_poison_parameters_are_taken():
    with ggmk.boot([], workers=2, poison_threshold=np.int64(3), poison_window=np.int32(70),
                   poison_fraction=np.float64(0.25)) as s:
        assert (s.poison.threshold, s.poison.window, s.poison.fraction) == (3, 70, 0.25)
    with ggmk.boot([], workers=2, poison_fraction=1) as s:
        assert s.poison.fraction == 1.0


# -- the window --------------------------------------------------------------------------------
@pytest.mark.parametrize("window, gap, poisoned", [
    (5, 4, True), (5, 5, False), (5, 8, False),           # (before: 5 acted as 10 ticks)
    (19, 12, True), (19, 18, True), (19, 19, False),      # (before: 19 acted as 10 ticks)
    (7, 6, True), (7, 7, False),
    (1000, 999, True), (1000, 1000, False),               # the default, as before
    (1, 0, True), (1, 1, False),
])
def test_the_poison_window_is_the_ticks_asked_for(window, gap, poisoned):
    """Two failures ``gap`` ticks apart, the first at the start of a bucket (a window covers its
    buckets: the last ``window`` ticks, give or take the current bucket's part)."""
    d = PoisonDetector(threshold=2, window=window)
    t0 = 1000 * window                    # a window (and so a bucket) starts here
    assert not d.record(7, 1, t0)
    assert d.record(7, 1, t0 + gap) == poisoned
    assert bool(d.poisoned[7]) == poisoned


@pytest.mark.parametrize("window", [3, 10, 19, 64, 999, 1000, 1001])
def test_a_windows_buckets_cover_it_exactly(window):
    """Every tick falls in one bucket; one period of the window is split into its buckets."""
    d = PoisonDetector(threshold=2, window=window)
    g = [d.epoch(t) for t in range(3 * window)]
    assert g == sorted(g) and g[0] == 0
    assert g[window] == d.nb and g[2 * window] == 2 * d.nb       # a window is nb buckets
    assert len(set(g[:window])) == d.nb == min(10, window)


def test_a_spike_still_cannot_poison_by_itself_with_a_short_window():
    d = PoisonDetector(threshold=4, window=5)
    assert not d.record(3, 10_000, 50)
    assert not d.poisoned[3]


# -- determinism mode --------------------------------------------------------------------------
def _fail_module():
    m = ggmk.Module("m")

    @m.handler("F", batch=True)
    def f(ctx, batch):
        return FAIL

    @m.handler("D", deterministic=True)
    def d(ctx):
        return OK
    return m


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_det_mode_poisons_a_failing_type_that_is_not_deterministic(hal):
    """A type that is not deterministic and fails everything, fed over ~1000 wall ticks, is
    poisoned in determinism mode as it is without it (before: never)."""
    with ggmk.boot([_fail_module()], workers=2, hal=hal, deterministic=True, tick_hz=2000,
                   poison_threshold=4, poison_window=1000) as s:
        now = s.wall_tick()
        n = 0
        for i in range(20):
            n += s.submit("F", count=5, due=now + 1 + 50 * i)
        assert n == 100
        assert s.run(timeout=60)
        st = s.stats()
        assert st["poisoned"] == ["F"] and s.tick == 0          # the stage never moved
        f = st["types"]["F"]
        recs, codes = s.dead_letters("sys.error")
        assert len(recs) == 100 and set(codes.tolist()) == {FAIL, T.POISONED}
        assert f["fail"] == int((codes == FAIL).sum()) >= 4
        assert f["dropped"] == int((codes == T.POISONED).sum()) > 0
        assert f["fail"] + f["dropped"] == 100 and f["enqueued"] == 100
        rep = s.halt()
    assert rep["outstanding"] == 0 and rep["halted"] == 0


def _det_poison_run(hal, workers):
    """A deterministic type that fails, poisoned on the tick stage's ticks, beside a type that
    is not deterministic failing on the wall clock: the trace hash must not depend on the
    worker count, the HAL or the wall clock."""
    m = ggmk.Module("m")

    @m.handler("DF", deterministic=True)
    def df(ctx):
        if ctx.task.meta0 < 200:
            ctx.emit("DF", meta0=ctx.task.meta0 + 10)
        return FAIL

    @m.handler("F", batch=True)
    def f(ctx, batch):
        return FAIL

    with ggmk.boot([m], workers=workers, hal=hal, deterministic=True, tick_hz=2000,
                   poison_threshold=3, poison_window=10) as s:
        now = s.wall_tick()
        for i in range(10):
            s.submit("F", count=3, due=now + 1 + 20 * i)
        s.submit("DF", meta0=np.arange(10), deterministic=True)
        assert s.run(timeout=60)
        recs, codes = s.dead_letters("sys.error")
        df_codes = codes[recs["type"] == s.type_id("DF")]
        out = (s.trace_hash(), s.stats()["det"]["tasks"], sorted(df_codes.tolist()))
        assert "DF" in s.stats()["poisoned"]
    return out


def test_det_types_poison_stays_deterministic():
    ref = _det_poison_run("sim", 1)
    assert T.POISONED in ref[2]
    for hal, workers in (("threads", 1), ("threads", 2), ("sim", 2), ("threads", 2)):
        assert _det_poison_run(hal, workers) == ref, (hal, workers)
