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


# -- the documented backpressure pattern, at capacities small enough to be hit all the time ------

def _producer_consumer(hal, *, capacity, producers, per_producer, wait_for_room):
    got = {}
    m = Module("sensors")
    out = m.produces("sensor.readings", "READING", mode="p2p", capacity=capacity)

    @m.handler("SAMPLE")
    def sample(ctx):
        send = ctx.emitter(out)
        for i in range(ctx.task.meta1, per_producer):       # meta1: where to resume
            if send(ctx.task.meta0 * 100_000 + i):
                return wait_for_room(ctx, i)
        return T.OK

    log = Module("log")

    @log.handler("LOG_READING", consumes="sensor.readings", message="READING")
    def log_reading(ctx):
        v = ctx.task.meta0
        got.setdefault(v // 100_000, []).append(v % 100_000)
        return T.OK

    s = boot([m, log], hal=hal, workers=2)
    s.submit("SAMPLE", meta0=np.arange(producers))
    return s, got


def test_wait_resumes_where_it_stopped_and_is_not_a_runaway_yield(hal):
    s, got = _producer_consumer(hal, capacity=16, producers=40, per_producer=200,
                                wait_for_room=lambda ctx, i: ctx.wait_(meta1=i))
    with s:
        assert s.run(timeout=60)
        assert s.dead_letters("sys.error")[0].size == 0
        assert s.dead_letters("sys.dropped")[0].size == 0
        assert {p: sorted(v) for p, v in got.items()} == {p: list(range(200)) for p in range(40)}
        st = s.stats()["types"]["SAMPLE"]
        assert st["wait"] > 16 and st["yield"] == 0        # the channel was full, often

