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



def test_follow_ons_inherit_each_parents_own_header(hal):
    """A batch mixing tenants and priorities: every child (run in the same step or queued)
    carries its own parent's tenant and priority."""
    got = []
    m = Module("m")

    @m.handler("N")
    def n(ctx):
        t = ctx.task
        got.append((t.meta1, t.meta0, t.tenant, t.priority))
        if t.meta0 < 4:
            ctx.emit("N", meta0=t.meta0 + 1, meta1=t.meta1)

    with boot([m], hal=hal, workers=1) as s:
        recs = T.make(6, type=s.type_id("N"), meta0=1, meta1=np.arange(6),
                      tenant=np.arange(6) % 3, priority=np.arange(6) % 4)
        s.submit_batch(recs)
        assert s.run(timeout=30)
    assert sorted(got) == [(lane, hop, lane % 3, lane % 4) for lane in range(6)
                           for hop in range(1, 5)]


def test_a_per_task_handler_sees_its_records_fields_as_plain_ints(hal):
    got = []
    m = Module("m")
    out = m.produces("t.out", "MSG")

    @m.handler("SRC")
    def src(ctx):
        assert ctx.chan_seq == 0 and ctx.channel is None
        ctx.emit(out, meta0=ctx.task.meta0, payload=b"ab" * ctx.task.meta0)

    @m.handler("MSG", consumes="t.out")
    def msg(ctx):
        t = ctx.task
        vals = (t.type, t.flags, t.tenant, t.channel, t.seq, t.payload_ptr, t.payload_len,
                t.yield_count, t.retries, t.meta0, t.meta1, ctx.chan_seq)
        assert all(v.__class__ is int for v in vals), vals
        r = t.record()
        assert int(r["meta0"]) == t.meta0 and int(r["payload_len"]) == t.payload_len
        got.append((t.meta0, bytes(ctx.payload), ctx.channel.name, ctx.chan_seq, ctx.reason))

    with boot([m], hal=hal, workers=2) as s:
        s.submit("SRC", meta0=np.arange(1, 4))
        assert s.run(timeout=30)
        assert s.arena.live_count() == 0
    assert sorted(x[:3] for x in got) == [(i, b"ab" * i, "t.out") for i in range(1, 4)]
    assert sorted(x[3] for x in got) == [1, 2, 3] and {x[4] for x in got} == {0}


def test_bad_words_fail_the_emitting_task_on_every_emit_path(hal):
    m = Module("m")
    out = m.produces("w.out", "W")
    bad = [-1, 2**64, 1.0, True, "1", None]

    @m.handler("E")
    def e(ctx):
        i = ctx.task.meta0
        kind, v = divmod(i, len(bad))
        tgt = ("E", "OTHER", out)[kind]
        ctx.emit(tgt, meta0=1, meta1=bad[v])       # meta1 wrong
        return T.OK

    @m.handler("OTHER")
    def other(ctx):
        pass

    @m.handler("W", consumes="w.out")
    def w(ctx):
        pass

    with boot([m], hal=hal, workers=1) as s:
        s.submit("E", meta0=np.arange(3 * len(bad)))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()["types"]
    assert sorted(recs["meta0"].tolist()) == list(range(3 * len(bad)))
    assert set(codes.tolist()) == {T.HANDLER_EXCEPTION}
    assert "OTHER" not in st and st.get("W", {}).get("ok", 0) == 0
