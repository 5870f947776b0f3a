"""Follow-ons run in the step keep meta1 exactly, though the worker stores it sparsely (a
follow-on emitted with meta1 = 0 appends nothing to the meta1 column; issue 14), and the
one-record ring and metrics paths count like the general ones."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.metrics import Metrics
from ggmk.core.module import Module
from ggmk.core.ring import Ring

LANES, HOPS, FAIL = 8, 40, -7


def _expected_meta1(m0: int) -> int:
    """meta1 of the task with meta0 ``m0``: what its parent emitted (seeds carry 0)."""
    h = m0 % 1000
    return 0 if h == 0 or (h - 1) % 3 else (m0 - 1) * 7


@pytest.mark.parametrize("max_batch", [4, 256])
def test_follow_ons_keep_meta1_whether_zero_or_not(hal, max_batch):
    """Lanes of a chain whose hops emit meta1 = 0 or not (mixed within a batch), a handler
    that sets meta1 of some follow-ons and fails them: every task sees its own meta1, and the
    failed ones land on sys.error with the meta1 they set (their records are built from the
    sparse column). max_batch 4: most follow-ons go past the budget (queued as records)."""
    seen = []
    m = Module("m")

    @m.handler("C")
    def c(ctx):
        t = ctx.task
        m0 = t.meta0
        seen.append((m0, t.meta1))
        h = m0 % 1000
        if h < HOPS:
            ctx.emit("C", meta0=m0 + 1, meta1=(m0 * 7 if h % 3 == 0 else 0))
        if h % 10 == 9:
            t.meta1 = 5
            return FAIL
        return None

    with boot([m], hal=hal, workers=2, max_batch=max_batch) as s:
        tid = s.type_id("C")
        assert s.submit_batch(T.make(LANES, type=tid,
                                     meta0=np.arange(LANES, dtype=np.uint64) * 1000)) == LANES
        assert s.run(timeout=60)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()
        assert s.sched.outstanding == 0
    total = LANES * (HOPS + 1)
    want = sorted((lane * 1000 + h, _expected_meta1(lane * 1000 + h))
                  for lane in range(LANES) for h in range(HOPS + 1))
    assert sorted(seen) == want
    failed = sorted(m0 for m0, _ in want if m0 % 1000 % 10 == 9)
    assert sorted(recs["meta0"].tolist()) == failed
    assert set(recs["meta1"].tolist()) == {5} and set(codes.tolist()) == {FAIL}
    ts = st["types"]["C"]
    assert ts["dequeued"] == total and ts["ok"] == total - len(failed)
    assert ts["fail"] == len(failed)
    assert ts["enqueued"] == total


def test_a_handler_reads_and_sets_meta1_of_a_follow_on(hal):
    """A follow-on emitted with meta1 = 0 reads 0; one that sets its meta1 and yields comes
    back with it (the yield's record is built from the column)."""
    got = []
    m = Module("m")

    @m.handler("Y")
    def y(ctx):
        t = ctx.task
        got.append((t.meta0, t.meta1, t.yield_count))
        if t.meta0 == 0:
            ctx.emit("Y", meta0=1)                # a follow-on run in the step, meta1 = 0
        elif t.meta0 == 1 and t.yield_count == 0:
            t.meta1 = 77
            return ctx.yield_()
        return None

    with boot([m], hal=hal, workers=2) as s:
        s.submit("Y")
        assert s.run(timeout=30)
        st = s.stats()
        assert s.sched.outstanding == 0
    assert sorted(got) == [(0, 0, 0), (1, 0, 0), (1, 77, 1)]
    assert st["types"]["Y"]["ok"] == 2 and st["types"]["Y"]["yield"] == 1


def test_ring_push1_pop1_are_fifo_bounded_and_counted():
    r = Ring(4, "r")
    recs = T.make(5, type=3, meta0=np.arange(5, dtype=np.uint64))
    assert [r.push1(recs[i:i + 1].tobytes()) for i in range(5)] == [True] * 4 + [False]
    assert len(r) == 4 and r.high_watermark == 4 and r.pushed == 4
    out = [r.pop1() for _ in range(5)]
    assert out[4] is None
    assert [int(x["meta0"][0]) for x in out[:4]] == [0, 1, 2, 3]
    assert all(x.dtype == T.TASK_DTYPE and x.flags.writeable for x in out[:4])
    assert r.popped == 4 and len(r) == 0
    # the general pop sees what push1 wrote, across the wrap
    assert r.push1(recs[4:5].tobytes()) and int(r.pop(8)["meta0"][0]) == 4


def test_observe_int_sums_like_observe():
    m = Metrics(1)
    a, b = m.histogram("a"), m.histogram("b")
    sh = m.shard(0)
    vals = [0, 1, 5, 1000, 123456789, -3, 1 << 40]
    for v in vals:
        sh.observe(a, v)
        sh.observe_int(b, v)
    assert np.array_equal(sh.hist[a], sh.hist[b])
    assert sh.hist_sum[a] == sh.hist_sum[b] == sum(max(v, 0) for v in vals)
    assert sh.hist_max[a] == sh.hist_max[b] == 1 << 40
