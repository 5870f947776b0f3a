"""SPEC §14.8: a handler that yields 3 times produces the right result; yield under a full local
queue uses the reserve; the overflow queue drains correctly under stress."""

import numpy as np
import pytest

from ggmk import OK, task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def test_yield_three_times_in_phases(hal):
    m = Module("phased")
    results = []

    @m.handler("ACC")
    def acc(ctx):
        t = ctx.task
        phase = t.yield_count          # runtime-owned, lives in the header
        t.meta1 = t.meta1 + (phase + 1) * t.meta0
        if phase < 3:
            return ctx.yield_()
        results.append((t.meta0, t.meta1, t.yield_count))
        return OK

    with boot([m], workers=2, hal=hal) as s:
        s.submit("ACC", meta0=np.arange(1, 101), meta1=0)
        assert s.run(timeout=10)
        st = s.stats()["types"]["ACC"]
    assert sorted(results) == [(k, 10 * k, 3) for k in range(1, 101)]
    assert st["yield"] == 300 and st["ok"] == 100


def test_yield_at_phase_sets_meta0(hal):
    m = Module("p")
    phases = []

    @m.handler("P")
    def p(ctx):
        phases.append(ctx.task.meta0)
        return ctx.yield_(phase=ctx.task.meta0 + 10) if ctx.task.meta0 < 30 else OK

    with boot([m], workers=1, hal=hal) as s:
        s.submit("P", meta0=0)
        assert s.run(timeout=5)
    assert phases == [0, 10, 20, 30]


def _small_local_queues(s, cap=16, limit=12):
    for w, worker in enumerate(s.workers):
        s.sched.local[w] = type(s.sched.local[w])(cap)
        worker.local = s.sched.local[w]
    s.sched.local_limit = limit


def test_yield_under_full_local_queue_uses_reserve_then_overflow_drains():
    """A handler fills its local queue to the 75% emit limit, then its whole batch yields: the
    yields take the 25% reserve, the excess goes to the overflow queue, and all complete."""
    m = Module("y")
    done = []

    @m.handler("Y", batch=True)
    def y(ctx, b):
        first = b.yield_count == 0
        if first.any():
            ctx.emit_batch("Z", meta0=np.arange(16))      # fills the local queue to its limit
        done.extend(b.meta0[~first].tolist())
        return np.where(first, T.YIELD, T.OK)

    @m.handler("Z", batch=True)
    def z(ctx, b):
        pass

    with boot([m], workers=1, hal="sim", seed=1) as s:
        _small_local_queues(s)
        s.submit("Y", meta0=np.arange(64))
        assert s.run(timeout=30)
        local = s.sched.local[0]
        assert local.high_watermark == local.capacity        # the reserve above 75% was used
        assert s.sched.overflow.pushed > 0                   # and the overflow took the excess
        assert len(s.dead_letters()[0]) == 0
    assert sorted(done) == list(range(64))


@pytest.mark.parametrize("seed", range(200))
def test_overflow_under_stress_sim_seeds(seed):
    m = Module("y")
    done = []

    @m.handler("Y", batch=True)
    def y(ctx, b):
        again = b.yield_count < 2
        done.extend(b.meta0[~again].tolist())
        return np.where(again, T.YIELD, T.OK)

    with boot([m], workers=2, hal="sim", seed=seed) as s:
        _small_local_queues(s)
        s.submit("Y", meta0=np.arange(300))
        assert s.run(timeout=30), seed
        assert s.sched.overflow.pushed > 0, seed
    assert sorted(done) == list(range(300)), seed
