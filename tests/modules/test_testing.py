"""ggmk.testing.Sandbox: handlers without kernel threads; emits, traces, allocations."""
from __future__ import annotations

import pytest

import ggmk
import ggmk.task
from ggmk.modules import gate, kv, reduce, timer
from ggmk.testing import Sandbox


def test_feed_emit_trace_and_errors():
    m = ggmk.Module("m")
    out = m.produces("m.out", "M_OUT")

    @m.handler("M_IN")
    def h(ctx):
        if ctx.task.meta0 == 13:
            return ggmk.FAIL
        if ctx.task.yield_count == 0:
            return ctx.yield_()
        ctx.emit(out, ctx.task.meta0 + 1, payload=b"pp")
        return ggmk.OK

    with Sandbox(m) as sb:
        assert sb.feed("M_IN", meta0=[1, 13]) == [ggmk.YIELD, ggmk.FAIL]
        assert sb.pending() == 1
        sb.run()
        (e,) = sb.take("m.out")
        assert (e.meta0, e.payload, e.type) == (2, b"pp", "M_OUT")
        assert sb.errors == [("M_IN", 13, 0, ggmk.FAIL)]
        assert [t[0] for t in sb.trace].count("start") == 3
        assert sb.allocations()["live"] == 0


def test_take_of_a_type_forgets_and_retain_is_per_task():
    """take(type) handed the same records back every time; ctx.retain() in one task of a fed
    batch applied the last task's choice to all of them (a kept payload freed under it)."""
    m = ggmk.Module("probe")

    @m.handler("PROBE")
    def probe(ctx):
        ctx.emit("PROBE_NOTE", ctx.task.meta0)
        if ctx.task.meta1 == 1:
            ctx.retain()
        return ggmk.OK

    with Sandbox(m) as sb:
        sb.feed("PROBE", meta0=[1, 2])
        assert [e.meta0 for e in sb.take("PROBE_NOTE")] == [1, 2]
        assert sb.take("PROBE_NOTE") == []
        sb.feed("PROBE", meta0=3)
        assert [e.meta0 for e in sb.take("PROBE_NOTE")] == [3]
        for keep in ([1, 0], [0, 1], [0, 0, 1]):
            live = sb.allocations()["live"]
            sb.feed("PROBE", meta0=list(range(len(keep))), meta1=keep, payload=b"abcdefgh")
            assert sb.allocations()["live"] - live == 1, keep


def test_exception_propagates_or_is_recorded():
    m = ggmk.Module("m")

    @m.handler("BOOM")
    def boom(ctx):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        Sandbox(m).feed("BOOM")
    sb = Sandbox(m, raise_exceptions=False)
    assert sb.feed("BOOM") == ggmk.task.HANDLER_EXCEPTION
    assert isinstance(sb.exceptions[0], ValueError)
    with pytest.raises(KeyError, match="no handler for type"):
        sb.feed("NOPE")


def test_kv_module_in_the_sandbox_with_backpressure():
    store = kv.module(capacity=8, outbox_limit=2)
    with Sandbox(store) as sb:
        sb.capacity("kv.resp", 1)
        for k in range(4):
            sb.publish("kv.put", meta0=k, meta1=k * 10)
        sb.run()
        assert len(sb.take("kv.resp")) == 1                # one fitted, the rest wait
        assert store.kv.stats()["size"] >= 2
        for _ in range(10):
            sb.advance(1)
            sb.take("kv.resp")
        assert store.kv.stats()["size"] == 4 and sb.pending() == 0
        sb.capacity("kv.resp", None)
        sb.publish("kv.get", meta0=3, meta1=77)
        sb.run()
        (r,) = sb.take("kv.resp")
        assert kv.unpack(r.meta0) == (kv.OK, kv.OP_GET, 77) and r.meta1 == 30
        assert sb.allocations()["live"] == 0


def test_timer_and_reduce_and_gate_in_the_sandbox():
    tm, red, g = timer.module(), reduce.module(n=2, timeout=5), gate.module(n=2)
    with Sandbox([tm, red, g]) as sb:
        sb.feed("TIMER_SET", meta0=1, meta1=timer.arg(3))
        sb.advance(2)
        assert sb.take("timer.fire") == []
        sb.advance(1)
        assert [(e.meta0, e.meta1) for e in sb.take("timer.fire")] == [(1, 1)]
        sb.feed("REDUCE_PART", meta0=4, meta1=[5, 6])
        assert [(e.meta0, e.meta1) for e in sb.take("reduce.out")] == [(4, 11)]
        sb.feed("REDUCE_PART", meta0=5, meta1=1)
        sb.advance(6)
        assert [(e.meta0, e.meta1) for e in sb.take("reduce.missing")] == [(5, 1)]
        sb.feed("GATE_ARRIVE", meta0=1, meta1=[7, 8], payload=b"x")
        assert sorted(e.meta1 for e in sb.take("gate.open")) == [7, 8]
        assert sb.allocations()["live"] == 0
