"""SPEC §14.11 on the CPU kernel: a worker popping one bucket gets only that type; aging prevents
starvation under a hot-type flood."""
import numpy as np

from ggmk import OK
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def test_batches_from_the_ready_queue_are_homogeneous(hal):
    m = Module("b")
    mixed = []
    for t in ("A", "B", "C", "D"):
        @m.handler(t, batch=True)
        def h(ctx, b):
            if len(set(b.type.tolist())) != 1:
                mixed.append(b.type.copy())
    with boot([m], workers=2, hal=hal) as s:
        rng = np.random.default_rng(0)
        for _ in range(50):
            s.submit(["A", "B", "C", "D"][rng.integers(4)], meta0=np.arange(rng.integers(1, 200)))
        assert s.run(timeout=10)
    assert not mixed


def test_aging_serves_a_cold_low_priority_type_during_a_hot_flood(hal):
    m = Module("flood")
    order = []

    @m.handler("HOT", batch=True)
    def hot(ctx, b):
        order.append("HOT")
        if ctx.tick < 10_000 and b.meta0[0] < 400:  # keep flooding at top priority
            ctx.emit_batch("HOT", meta0=b.meta0 + 1, priority=0)

    @m.handler("COLD")
    def cold(ctx):
        order.append("COLD")
        return OK

    with boot([m], workers=1, hal=hal, max_batch=8) as s:
        s.submit("HOT", meta0=np.zeros(64, dtype=np.int64), priority=0)
        s.submit("COLD", priority=3)
        assert s.run(timeout=30)
    i = order.index("COLD")
    assert i < 200, f"cold type waited {i} batches"
    assert order.count("HOT") > 1000          # the flood kept going meanwhile
