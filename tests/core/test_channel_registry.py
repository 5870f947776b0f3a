"""The channel registry (ggmk.core.channel_registry): the system channels, names to ids, open
again / conflicts, unknown names, dead letters (sys.error, sys.dropped, error handlers) and the
deterministic tick-boundary drain in channel id order."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.channel_registry import SYS_CHANNELS
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import ChannelError
from ggmk.task import CHAN_NO_SUBSCRIBER
from ggmk.typereg import load_types


def _sink(name="sink", types=("MSG",)):
    m = Module(name)
    got = {t: [] for t in types}
    for t in types:
        def f(ctx, t=t):
            got[t].append((ctx.chan_seq, ctx.task.meta0))
        f.__name__ = t.lower()
        m.handler(t)(f)
    return m, got


def test_system_channels_always_present():
    with boot([], hal="sim") as s:
        for name in SYS_CHANNELS:
            assert s.channel(name).name == name
        assert s.channel("sys.dropped").mode == "fanout"
        assert s.channel("sys.error").mode == "fanout"
        ids = [s.channel(n).id for n in SYS_CHANNELS]
        assert len(set(ids)) == len(ids)


def test_unknown_channel_name_is_a_clear_error_and_system_keeps_running():
    m, got = _sink()
    with boot([m], hal="sim") as s:
        s.open("data.in", "MSG")
        with pytest.raises(ChannelError) as e:
            s.channel("data.inn")
        assert e.value.code == T.CHAN_UNKNOWN
        assert "data.inn" in str(e.value) and "did you mean 'data.in'" in str(e.value)
        s.submit("MSG", meta0=1)
        assert s.run(timeout=5) and got["MSG"] == [(0, 1)]


def test_channel_error_handler_gets_failures_else_sys_error(hal):
    seen = []
    m = Module("bad")

    @m.handler("MSG")
    def fails(ctx):
        return -7

    @m.handler("OTHER")
    def fails2(ctx):
        return -8

    with boot([m], hal=hal) as s:
        a = s.open("with.handler", "MSG", error_handler=lambda r, c: seen.append(
            (r["meta0"].tolist(), c.tolist())))
        a.subscribe("MSG")
        b = s.open("without.handler", "OTHER")
        b.subscribe("OTHER")
        a.publish(meta0=1)
        b.publish(meta0=2)
        assert s.run(timeout=5)
        recs, codes = s.dead_letters("sys.error")
    assert seen == [([1], [-7])]
    assert codes.tolist() == [-8] and recs["meta0"].tolist() == [2]


def test_sys_dropped_subscriber_sees_reason():
    reasons = []
    m = Module("watch")

    @m.handler("DROP_SEEN")
    def seen(ctx):
        reasons.append(ctx.reason)

    with boot([m], hal="sim") as s:
        s.channel("sys.dropped").subscribe("DROP_SEEN")
        ch = s.open("data.x", "MSG")
        ch.publish(meta0=1)                       # no subscriber: undeliverable
        assert s.run(timeout=5)
        assert reasons == [CHAN_NO_SUBSCRIBER]
        assert len(s.dead_letters("sys.dropped")[0]) == 1   # the store kept it too


def test_deterministic_channel_drains_at_tick_boundaries_in_channel_id_order():
    reg = load_types('[types.STEP]\nid = 11\ndeterministic = true\n'
                     '[types.ON_A]\nid = 12\ndeterministic = true\n'
                     '[types.ON_B]\nid = 13\ndeterministic = true\n')

    def run(workers, hal, seed):
        order = []
        p = Module("prod")
        a = p.produces("det.a", "STEP", mode="fanout")
        b = p.produces("det.b", "STEP", mode="fanout")

        @p.handler("STEP", deterministic=True)
        def step(ctx):
            m0 = ctx.task.meta0
            if m0 < 40:
                ctx.emit(b if m0 % 2 else a, meta0=m0 + 10)
            return T.OK

        c = Module("cons")

        @c.handler("ON_A", consumes="det.a", message="STEP", deterministic=True)
        def on_a(ctx):
            order.append(("a", ctx.tick, ctx.task.meta0))

        @c.handler("ON_B", consumes="det.b", message="STEP", deterministic=True)
        def on_b(ctx):
            order.append(("b", ctx.tick, ctx.task.meta0))

        with boot([p, c], types=reg, hal=hal, workers=workers, deterministic=True, seed=seed) as s:
            assert s.channel("det.a").det and s.channel("det.a").id < s.channel("det.b").id
            s.submit("STEP", meta0=np.arange(8), deterministic=True)
            assert s.run(timeout=20)
            return order, s.trace_hash()

    o1, h1 = run(1, "sim", 1)
    o2, h2 = run(2, "threads", 2)
    o3, h3 = run(2, "sim", 3)
    assert len(o1) == 8 and o1 == o2 == o3 and h1 == h2 == h3
    # handler ticks: everything emitted in tick t runs at a later tick than t
    assert all(t >= 2 for _, t, _ in o1)


def test_open_again_returns_the_channel_and_conflicts_are_refused():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", mode="fanout")
        assert s.open("data.in", "MSG", mode="fanout") is ch
        assert s.channel(ch.id) is ch and "data.in" in s.channels
        for kw, code in (({"type": "OTHER"}, T.CHAN_TYPE_MISMATCH),
                         ({"mode": "p2p"}, T.CHAN_TYPE_MISMATCH),
                         ({"guarantee": "lossy"}, T.CHAN_TYPE_MISMATCH)):
            args = {"type": "MSG", "mode": "fanout", **kw}
            with pytest.raises(ChannelError) as e:
                s.open("data.in", args.pop("type"), **args)
            assert e.value.code == code and "data.in" in str(e.value)
        ids = [c.id for c in s.channels]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_bad_names_and_system_channels_that_cannot_close():
    with boot([], hal="sim") as s:
        for bad in ("", None, 3):
            with pytest.raises(ChannelError) as e:
                s.open(bad, "MSG")
            assert e.value.code == T.CHAN_UNKNOWN
        for name in ("sys.error", "sys.dropped"):
            with pytest.raises(ChannelError) as e:
                s.close(name)
            assert e.value.code == T.CHAN_CLOSED and name in str(e.value)
        with pytest.raises(ChannelError) as e:
            s.channels.take_dead("sys.trace")
        assert e.value.code == T.CHAN_UNKNOWN


def test_a_deterministic_channel_has_no_replay_log():
    reg = load_types('[types.STEP]\nid = 11\ndeterministic = true\n')
    with boot([], hal="sim", types=reg, deterministic=True) as s:
        with pytest.raises(ChannelError) as e:
            s.open("det.x", "STEP", replay=8)
        assert e.value.code == T.CHAN_UNKNOWN and "replay" in str(e.value)
        assert s.open("det.x", "STEP").det


def test_a_closed_channel_is_named_closed_not_unknown():
    """(before: after ``halt`` every channel was an "unknown channel", the list of open
    channels empty, as if the name had been mistyped)"""
    s = boot([], hal="sim")
    s.open("data.in", "MSG")
    s.open("data.out", "MSG")
    s.close("data.out")
    with pytest.raises(ChannelError, match=r"channel 'data.out' is closed$") as e:
        s.channel("data.out")
    assert e.value.code == T.CHAN_CLOSED
    s.halt()
    with pytest.raises(ChannelError, match=r"channel 'data.in' is closed \(the system was "
                                           r"halted\)") as e:
        s.channel("data.in")
    assert e.value.code == T.CHAN_CLOSED
    with pytest.raises(ChannelError, match="unknown channel 'data.nope'"):
        s.channel("data.nope")
