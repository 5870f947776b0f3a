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

    reg = ggmk.TypeRegistry()
    reg.register("PROBE_NOTE")            # (emitting an unknown type fails, as in the kernel)
    with Sandbox(m, types=reg) as sb:
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


# -- the sandbox does what the kernel does with the same handler (an audit's findings) ----------

def _cmp_module():
    """Handlers whose outcome the kernel decides (codes, retries, yields, emit checks)."""
    m = ggmk.Module("cmp")

    @m.handler("CMP_RETRY")
    def always_retry(ctx):
        return ggmk.RETRY

    @m.handler("CMP_YIELD")
    def always_yield(ctx):
        return ctx.yield_()

    @m.handler("CMP_RET5")
    def ret5(ctx):
        return 5

    @m.handler("CMP_TRUE")
    def ret_true(ctx):
        return True

    @m.handler("CMP_STR")
    def ret_str(ctx):
        return "x"

    @m.handler("CMP_LIST", batch=True)
    def batch_list(ctx, batch):
        return [ggmk.OK] * len(batch)

    @m.handler("CMP_NOBODY")
    def emit_unknown(ctx):
        return ctx.emit("CMP_NOBODY_HANDLES_THIS", 1)

    @m.handler("CMP_TENANT")
    def emit_bad_tenant(ctx):
        return ctx.emit("CMP_RET5", 1, tenant=70000)
    return m


CMP_EXPECTED = {"CMP_RETRY": ggmk.task.RETRY_EXHAUSTED, "CMP_YIELD": ggmk.task.MAX_YIELDS,
                "CMP_RET5": ggmk.task.BAD_RETURN, "CMP_TRUE": ggmk.task.BAD_RETURN,
                "CMP_STR": ggmk.task.BAD_RETURN, "CMP_LIST": ggmk.task.BAD_RETURN,
                "CMP_NOBODY": ggmk.task.HANDLER_EXCEPTION,
                "CMP_TENANT": ggmk.task.HANDLER_EXCEPTION}


def test_sandbox_and_booted_kernel_fail_the_same_handlers_with_the_same_codes():
    """The sandbox recorded error code 5 for `return 5`, RETRY for `return True`, raised a
    ValueError for `return "x"`, accepted a batch handler's one-task list, retried and yielded
    forever, registered an emitted unknown type and ignored tenant=70000."""
    got = {}
    with Sandbox(_cmp_module(), raise_exceptions=False) as sb:
        for case in CMP_EXPECTED:
            sb.feed(case, 7)
        sb.advance(300)
        assert sb.pending() == 0
        for name, meta0, _, code in sb.errors:
            assert meta0 == 7
            got[name] = code
    assert got == CMP_EXPECTED
    kernel = {}
    with ggmk.boot([_cmp_module()], workers=2) as s:
        for case in CMP_EXPECTED:
            s.submit(case, meta0=7)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        for t, c in zip(recs["type"].tolist(), codes.tolist()):
            kernel[s.type_name(t)] = c
    assert kernel == got


def test_return_values_are_codes_or_bad_return():
    from ggmk.core.worker import BadReturn
    for raise_exceptions in (True, False):
        with Sandbox(_cmp_module(), raise_exceptions=raise_exceptions) as sb:
            assert sb.feed("CMP_RET5", 1) == ggmk.task.BAD_RETURN
            assert sb.feed("CMP_TRUE", 2) == ggmk.task.BAD_RETURN
            assert sb.feed("CMP_STR", 3) == ggmk.task.BAD_RETURN
            assert sb.feed("CMP_LIST", 4) == ggmk.task.BAD_RETURN     # a list for one task
            assert sb.feed("CMP_LIST", [5, 6]) == [ggmk.OK, ggmk.OK]  # one code per task
            assert sb.pending() == 0
            assert [e[3] for e in sb.errors] == [ggmk.task.BAD_RETURN] * 4
            assert all(isinstance(e, BadReturn) for e in sb.exceptions)
            assert "returned 'x' (str)" in str(sb.exceptions[2])
    m = ggmk.Module("b")

    @m.handler("B_CODES", batch=True)
    def codes(ctx, batch):
        return [ggmk.OK, 9, ggmk.FAIL]

    with Sandbox(m) as sb:
        assert sb.feed("B_CODES", [1, 2, 3]) == [ggmk.OK, ggmk.task.BAD_RETURN, ggmk.FAIL]


def test_retry_backs_off_as_the_kernel_and_is_exhausted():
    m = ggmk.Module("r")
    ticks = []

    @m.handler("R_AGAIN")
    def again(ctx):
        ticks.append((ctx.tick, ctx.task.retries, ctx.reason))
        ctx.flush()                       # the kernel Context's API: a no-op here
        return ggmk.RETRY

    with Sandbox(m) as sb:
        sb.feed("R_AGAIN", 1)
        sb.advance(1000)
        assert sb.pending() == 0
        assert sb.errors == [("R_AGAIN", 1, 0, ggmk.task.RETRY_EXHAUSTED)]
    # backoff_ticks: 1, 2, 4, ... capped at 64; max_retries 8 (boot's default)
    assert [t for t, _, _ in ticks] == [0, 1, 3, 7, 15, 31, 63, 127, 191]
    assert [r for _, r, _ in ticks] == list(range(9))
    assert [r for _, _, r in ticks] == list(range(9))
    ticks.clear()
    with Sandbox(m, max_retries=2) as sb:
        sb.feed("R_AGAIN", 1)
        sb.advance(100)
        assert sb.errors == [("R_AGAIN", 1, 0, ggmk.task.RETRY_EXHAUSTED)]
    assert len(ticks) == 3
    with pytest.raises(ValueError, match="max_retries"):
        Sandbox(m, max_retries=-1)


def test_yields_stop_at_the_types_max_yields():
    calls = []
    m = ggmk.Module("y")

    @m.handler("Y_LOOP")
    def loop(ctx):
        calls.append(ctx.task.yield_count)
        return ctx.yield_()

    with Sandbox(m) as sb:
        sb.feed("Y_LOOP", 1)
        sb.run()
        assert sb.errors == [("Y_LOOP", 1, 0, ggmk.task.MAX_YIELDS)]
    assert calls == list(range(17))           # 16 yields (the default), then MAX_YIELDS
    reg = ggmk.TypeRegistry()
    reg.register("Y_LOOP", max_yields=3)
    calls.clear()
    with Sandbox(m, types=reg) as sb:
        sb.feed("Y_LOOP", 1)
        sb.run()
        assert sb.errors == [("Y_LOOP", 1, 0, ggmk.task.MAX_YIELDS)]
    assert calls == [0, 1, 2, 3]


def test_emit_checks_its_target_and_header_as_the_kernel():
    from ggmk.errors import EmitError
    m = ggmk.Module("e")
    seen = []

    @m.handler("E_SEND")
    def send(ctx):
        kw = {("tenant", "priority", "flags")[ctx.task.meta1 - 1]: ctx.task.meta0} \
            if ctx.task.meta1 else {}
        return ctx.emit("E_CHILD", 1, **kw)

    @m.handler("E_CHILD")
    def child(ctx):
        seen.append((ctx.task.tenant, ctx.task.priority))

    @m.handler("E_UNKNOWN")
    def unknown(ctx):
        return ctx.emit("E_NOBODY_KNOWS", 1)

    with Sandbox(m) as sb:
        with pytest.raises(KeyError, match="unknown type 'E_NOBODY_KNOWS'"):
            sb.feed("E_UNKNOWN")
        assert "E_NOBODY_KNOWS" not in sb.types
        with pytest.raises(EmitError, match="tenant=70000: allowed an integer in 0..65535"):
            sb.feed("E_SEND", 70000, 1)
        with pytest.raises(EmitError, match="priority=7: allowed 0"):
            sb.feed("E_SEND", 7, 2)
        with pytest.raises(EmitError, match="flags=65536"):
            sb.feed("E_SEND", 65536, 3)
        with pytest.raises(KeyError, match="unknown type 'E_NOPE'"):
            sb.system.submit("E_NOPE")
        assert sb.pending() == 0 and sb.emitted == []
        assert sb.feed("E_SEND", 5, 1) == ggmk.OK
        assert sb.feed("E_SEND", 2, 2) == ggmk.OK
        sb.run()
        assert seen == [(5, 0), (0, 2)]
    with Sandbox(m, raise_exceptions=False) as sb:
        assert sb.feed("E_UNKNOWN") == ggmk.task.HANDLER_EXCEPTION
        assert sb.feed("E_SEND", 70000, 1) == ggmk.task.HANDLER_EXCEPTION
        assert [type(e).__name__ for e in sb.exceptions] == ["KeyError", "EmitError"]


def test_emit_batch_and_emitter_check_as_the_kernel():
    m = ggmk.Module("eb")
    out = m.produces("eb.out", "EB_OUT")

    @m.handler("EB_GO")
    def go(ctx):
        if ctx.task.meta0 == 1:
            ctx.emitter("EB_GO")          # not a channel
        if ctx.task.meta0 == 2:
            return ctx.emit_batch("EB_NOBODY", [1, 2]) and ggmk.OK
        if ctx.task.meta0 == 3:
            return ctx.emit_batch(out, [1, 2], tenant=70000) and ggmk.OK
        ctx.emit_batch(out, [1, 2], tenant=4)
        return ggmk.OK

    with Sandbox(m) as sb:
        with pytest.raises(TypeError, match="not a channel"):
            sb.feed("EB_GO", 1)
        with pytest.raises(KeyError, match="unknown type"):
            sb.feed("EB_GO", 2)
        with pytest.raises(ValueError, match="tenant"):
            sb.feed("EB_GO", 3)
        assert sb.feed("EB_GO", 4) == ggmk.OK
        assert [e.meta0 for e in sb.take(out)] == [1, 2]


def test_exit_with_work_left_dead_letters_as_the_kernel_halts():
    """A gate or reduce group left open made __exit__ raise AttributeError (the sandbox's
    system had no dead_letter); tasks still queued stayed there with their payloads."""
    for mod, publish in ((gate.module(2), ("gate.arrive", 1, 0)),
                         (reduce.module(3), ("reduce.in", 1, 5))):
        with Sandbox(mod) as sb:
            sb.publish(*publish)
            sb.run()
        assert [d[3] for d in sb.dropped] == [ggmk.task.CHAN_CLOSED], mod.name
        assert sb.allocations()["live"] == 0
    m = ggmk.Module("w")

    @m.handler("W_LATER")
    def later(ctx):
        return ctx.wait_()

    with Sandbox(m) as sb:
        sb.feed("W_LATER", 3, payload=b"abc")
        assert sb.pending() == 1 and sb.allocations()["live"] == 1
    assert sb.errors == [("W_LATER", 3, 0, ggmk.task.HALTED)]
    assert sb.pending() == 0 and sb.allocations()["live"] == 0
    recs = ggmk.task.make(1, type=sb.type_id("W_LATER"), meta0=4,
                          payload_ptr=sb.arena.alloc_or_raise(8), payload_len=8)
    assert sb.system.dead_letter(recs, ggmk.FAIL) == 1
    assert sb.errors[-1] == ("W_LATER", 4, 0, ggmk.FAIL)
    assert sb.allocations()["live"] == 0
    with pytest.raises(ValueError, match="which='sys.nope'"):
        sb.system.dead_letter(recs, ggmk.FAIL, which="sys.nope")


def test_the_kv_module_answers_single_gets_again_and_again_in_the_sandbox():
    """kv's one-get path looked up its reply channel's ``kernel``, which a sandbox channel
    has not: the second single get raised AttributeError."""
    from ggmk.modules import kv
    with Sandbox(kv.module(capacity=16)) as sb:
        assert sb.feed("KV_PUT", meta0=5, meta1=1, payload=b"\x07") == ggmk.OK
        for tag in (2, 3, 4):
            assert sb.feed("KV_GET", meta0=5, meta1=tag) == ggmk.OK
        assert sb.feed("KV_GET", meta0=6, meta1=5) == ggmk.OK
        got = [(e.meta0 & (2**48 - 1), e.meta1) for e in sb.take("kv.resp")]
    assert got == [(1, 5), (2, 7), (3, 7), (4, 7), (5, 6)]
