"""ggmk.sdk on real threads (workers=2) with small channels."""
from __future__ import annotations

import time

import numpy as np
import pytest

import ggmk
from ggmk import sdk
from ggmk.modules import gate, kv, log, stats, timer


def sink(name, chan, msg, slow=0.0):
    m = ggmk.Module(name)
    m.got = []

    @m.handler(f"{name.upper()}_IN", batch=True, consumes=chan, message=msg)
    def take(ctx, batch):
        if slow:
            time.sleep(slow)
        m.got.extend(batch.meta0.tolist())
    return m


def test_send_all_resumes_after_backpressure():
    app = ggmk.Module("app")
    app.produces("out.q", "OUT_Q", capacity=8)
    vals = list(range(500))

    @app.handler("APP_GO")
    def go(ctx):
        return sdk.send_all(ctx, "out.q", vals)

    s = sink("s", "out.q", "OUT_Q", slow=0.002)
    with ggmk.boot([app, s], workers=2) as system:
        system.submit("APP_GO")
        assert system.run(timeout=60)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert s.got == vals                           # in order, none twice


def test_send_is_bounded_by_deadline():
    app = ggmk.Module("app")
    app.produces("stuck.q", "STUCK_Q", capacity=8)

    @app.handler("APP_GO")
    def go(ctx):
        for i in range(ctx.task.meta1, 100):
            code = sdk.send(ctx, "stuck.q", i, deadline=5)
            if code == ggmk.WAIT:
                return ctx.wait_(meta1=i)
            if code:
                return code
        return ggmk.OK

    with ggmk.boot([app], workers=2) as system:
        sub = system.channel("stuck.q").subscribe()     # a host subscriber that never reads
        system.submit("APP_GO")
        codes = []
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:   # the channel never drains: not idle
            system.run(0.02, until_idle=False)
            codes += system.dead_letters("sys.error")[1].tolist()
        assert codes == [ggmk.CHAN_FULL]
        assert len(sub.take()) < 100


def test_requests_reply_and_timeout_in_kernel():
    req = sdk.Requests(timeout=30)
    app = ggmk.Module("app")
    results = {}

    @app.handler("ASK")
    def ask(ctx):
        tag = ctx.task.meta1
        if tag == 0:
            tag = req.start(ctx)
            code = sdk.kv_get(ctx, ctx.task.meta0, tag)
            if code:
                return code
            return ctx.wait_(meta1=tag)
        r = req.poll(ctx, tag)
        if r is None:
            return ctx.wait_()
        results[ctx.task.meta0] = r
        return ggmk.OK

    @app.handler("ANSWER", consumes="kv.resp", message="KV_RESP")
    def answer(ctx):
        st, op, tag = kv.unpack(ctx.task.meta0)
        if ctx.task.meta0 and st == kv.OK:
            req.complete(tag, ctx.task.meta1)
        elif st == kv.NOT_FOUND:
            pass                                    # unanswered: the asker times out

    with ggmk.boot([kv.module(capacity=16), app], workers=2) as system:
        system.channel("kv.put").publish(meta0=3, meta1=33)
        system.run()
        system.submit("ASK", meta0=[3, 4])
        assert system.run(timeout=10)
    assert results == {3: 33, 4: sdk.TIMEOUT}
    assert req.timeouts == 1 and req.pending() == 0
    with pytest.raises(ValueError):
        sdk.Requests(timeout=0)


def test_host_kv_client():
    with ggmk.boot([kv.module(capacity=4)], workers=2) as system:
        c = sdk.KV(system, timeout=5)
        c.put(1, 100)
        c.put(2, 200)
        assert c.get(1) == 100 and c.get(9) is None and c.get(9, -1) == -1
        assert c.delete(1) is True and c.delete(1) is False
        assert c.get_many([2, 1, 2]) == [200, None, 200]
        for k in range(3, 6):
            c.put(k, k)
        with pytest.raises(sdk.KV.KVError, match="FULL"):
            c.put(77, 1)
        c.close()
    with ggmk.boot([kv.module(capacity=4, value_size=16, name="blob")], workers=2) as system:
        c = sdk.KV(system, "blob")
        c.put(5, b"sixteen bytes!!!")
        assert c.get(5) == b"sixteen bytes!!!"
        with pytest.raises(sdk.KV.KVError, match="TOO_BIG"):
            c.put(6, b"x" * 17)


@pytest.mark.parametrize("bad", [3.9, True, "12", -1, 1 << 64, None])
def test_kv_put_refuses_a_value_it_would_convert(bad):
    """3.9 was stored as 3, True as 1, "12" as 12; -1 and 2**64 raised a bare OverflowError."""
    with ggmk.boot([kv.module(capacity=4)], workers=2) as system:
        c = sdk.KV(system, timeout=5)
        with pytest.raises(TypeError, match=r"KV.put: value=.*: allowed bytes or an int "
                                            r"0\.\.2\*\*64-1"):
            c.put(1, bad)
        assert c.get(1) is None                       # nothing stored
        c.put(1, np.uint64((1 << 64) - 1))
        assert c.get(1) == (1 << 64) - 1
        c.close()


def test_client_timeout_names_the_tag():
    with ggmk.boot([kv.module(capacity=4)], workers=2) as system:
        cl = sdk.Client(system, "kv.get", "kv.resp", timeout=0.05)
        with pytest.raises(TimeoutError, match="tag 12345"):
            cl.wait(12345)


def test_helpers_log_timers_gates_stats():
    lines = []
    lg = log.module(sink=lambda lv, s: lines.append((lv, s)))
    st = stats.module(period=3, names={1: "calls"})
    tm = timer.module()
    gt = gate.module(n=2)
    app = ggmk.Module("app")
    fired, passed = [], []

    @app.handler("APP_GO")
    def go(ctx):
        i = ctx.task.meta0
        for code in (sdk.count(ctx, 1), sdk.gauge(ctx, 2, i), sdk.observe(ctx, 3, i * 10),
                     sdk.logf(ctx, "info", "go %d of %d", i, 2), sdk.log(ctx, "warn", "100%"),
                     sdk.gate_arrive(ctx, 7, i)):
            assert code == ggmk.OK
        if i == 0:
            assert sdk.timer_once(ctx, 11, 3) == ggmk.OK
            assert sdk.timer_every(ctx, 12, 2) == ggmk.OK

    @app.handler("APP_FIRE", consumes="timer.fire", message="TIMER_FIRE")
    def on_fire(ctx):
        fired.append(ctx.task.meta0)
        if ctx.task.meta0 == 12 and ctx.task.meta1 == 2:
            sdk.timer_cancel(ctx, 12)

    @app.handler("APP_PASS", consumes="gate.open", message="GATE_PASS")
    def on_pass(ctx):
        passed.append(ctx.task.meta1)

    with ggmk.boot([lg, st, tm, gt, app], workers=2) as system:
        system.submit("APP_GO", meta0=np.arange(2))
        assert system.run(timeout=10)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert sorted(passed) == [0, 1]
    # 12 repeats until the cancel (sent at its 2nd fire) lands: a fire may slip in meanwhile
    assert fired.count(11) == 1 and fired.count(12) >= 2
    assert tm.timer.stats()["armed"] == 0
    assert (20, "go 0 of 2") in lines and (30, "100%") in lines
    snap = st.stats.snapshots[-1]
    assert snap["counters"]["calls"] == 2 and snap["histograms"]["#3"]["count"] == 2


def test_host_kv_client_on_a_narrow_inline_table():
    with ggmk.boot([kv.module(capacity=4, value_size=2)], workers=2) as system:
        c = sdk.KV(system)
        c.put(1, 65535)
        c.put(2, 0)
        assert c.get(1) == 65535 and c.get(2) == 0
        with pytest.raises(sdk.KV.KVError, match="TOO_BIG"):
            c.put(3, 65536)
