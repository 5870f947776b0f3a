"""The handler context's per-message emits to task types: buffered per batch, handed to the
enqueue core at the batch's end with every record's own header and words, in emit order."""
import numpy as np

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def test_mixed_headers_in_one_batch_keep_their_own_fields(hal):
    got = []
    m = Module("m")

    @m.handler("SRC")
    def src(ctx):
        i = ctx.task.meta0
        ctx.emit("A", meta0=i, meta1=i * 7)                   # parent's priority and tenant
        ctx.emit("B", meta0=i, priority=0, tenant=9)         # its own header
        if i == 3:
            ctx.emit("A", meta0=100, payload=b"xyz")          # with a payload

    @m.handler("A")
    def a(ctx):
        got.append(("A", ctx.task.meta0, ctx.task.meta1, ctx.task.priority, ctx.task.tenant,
                    bytes(ctx.payload) if ctx.task.payload_len else b""))

    @m.handler("B")
    def b(ctx):
        got.append(("B", ctx.task.meta0, ctx.task.meta1, ctx.task.priority, ctx.task.tenant, b""))

    with boot([m], hal=hal, workers=1) as s:
        s.submit("SRC", meta0=np.arange(6), priority=2, tenant=4)
        assert s.run(timeout=30)
        assert s.arena.live_count() == 0
    want = {("A", i, i * 7, 2, 4, b"") for i in range(6)} | {("B", i, 0, 0, 9, b"")
                                                            for i in range(6)}
    want.add(("A", 100, 0, 2, 4, b"xyz"))
    assert len(got) == 13 and set(got) == want


def test_children_of_one_batch_are_enqueued_in_emit_order():
    order = []
    m = Module("m")

    @m.handler("SRC", batch=False)
    def src(ctx):
        for k in range(3):
            ctx.emit("DST", meta0=ctx.task.meta0 * 10 + k)

    @m.handler("DST", batch=True)
    def dst(ctx, batch):
        order.extend(batch.meta0.tolist())

    with boot([m], hal="sim", workers=1) as s:
        s.submit_batch(T.make(4, type=s.type_id("SRC"), meta0=np.arange(4)))
        assert s.run(timeout=30)
    assert order == [i * 10 + k for i in range(4) for k in range(3)]
