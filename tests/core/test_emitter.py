"""The emitter (ggmk.core.emitter): a worker's per-channel emit buffer behind ``ctx.emitter``
and per-message ``ctx.emit`` on a channel: credit taken under the channel lock, lock-free
staging, one commit per header, synchronous backpressure, closed channels, bad words."""
from types import SimpleNamespace

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.emitter import STAGE_CREDIT, Emitter
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import EmitError
from ggmk.typereg import load_types


def _hdr(priority=0, tenant=0, seq=0):
    """An emitter header: the parent's flags, tenant and seq, as the context binds them."""
    return priority | (tenant << 16) | (seq << 32)


def test_per_message_emits_keep_sparse_meta1_and_each_parents_header(hal):
    """The staged path stores meta1 only when it is not 0, and commits before the header
    (tenant, priority) changes: every message keeps its own words and its parent's header."""
    seen = []
    p = Module("src")
    out = p.produces("data.mix", "MSG", capacity=4096)

    @p.handler("GEN", batch=False)
    def gen(ctx):
        send = ctx.emitter(out)
        base = ctx.task.meta0
        for i in range(50):
            if i % 2:
                send(base + i, base + i * 3)     # meta1 set on the odd ones
            else:
                ctx.emit(out, base + i)          # and the ctx.emit path on the even ones

    c = Module("sink")

    @c.handler("MSG", consumes="data.mix")
    def sink(ctx):
        seen.append((ctx.task.meta0, ctx.task.meta1, ctx.task.tenant, ctx.task.priority))

    with boot([p, c], hal=hal, workers=1) as s:
        for k, (tenant, prio) in enumerate([(1, 2), (2, 0), (1, 3)]):
            s.submit("GEN", meta0=1000 * (k + 1), tenant=tenant, priority=prio)
        assert s.run(timeout=20)
    want = {(1000 * (k + 1) + i, (1000 * (k + 1) + i * 3) if i % 2 else 0, t, pr)
            for k, (t, pr) in enumerate([(1, 2), (2, 0), (1, 3)]) for i in range(50)}
    assert len(seen) == 150 and set(seen) == want


def test_emitter_sends_per_message_with_backpressure(hal):
    seen = []
    p = Module("src")
    out = p.produces("data.p2p", "MSG", capacity=64, window=4)
    state = {"full": 0}

    @p.handler("GEN")
    def gen(ctx):
        send = ctx.emitter(out)
        i = ctx.task.meta1
        while i < 500:
            if send(i, 7) == T.CHAN_FULL:        # resume where it stopped
                state["full"] += 1
                ctx.task.meta1 = i
                return ctx.yield_()
            i += 1
        return T.OK

    c = Module("sink")

    @c.handler("MSG", consumes="data.p2p")
    def sink(ctx):
        seen.append((ctx.chan_seq, ctx.task.meta0, ctx.task.meta1, ctx.task.priority))

    reg = load_types("[types.GEN]\nid = 5\nmax_yields = 10000\n")   # it yields on every CHAN_FULL
    with boot([p, c], hal=hal, workers=1, types=reg) as s:
        s.submit("GEN", priority=2)
        assert s.run(timeout=20)
    assert [x[1] for x in seen] == list(range(500)) and state["full"] > 0
    assert [x[0] for x in seen] == list(range(1, 501))
    assert {(x[2], x[3]) for x in seen} == {(7, 2)}      # meta1 kept, parent priority inherited


def test_credit_then_staged_sends_then_one_commit():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=4096)
        sub = ch.subscribe()                          # host-side: nothing drains it
        ctx = SimpleNamespace(_emitters_active=[])
        em = Emitter(ch)
        em.bind(ctx, _hdr(priority=1, tenant=3))
        assert em.send(0) == T.OK                     # no credit yet: takes some
        assert em.grant == ch.granted == min(STAGE_CREDIT, 4096 - ch.reserve)
        assert ctx._emitters_active == [em]
        for i in range(1, 10):
            assert em.send(i, i * 10 if i % 2 else 0) == T.OK
        assert len(sub.ring) == 0 and ch.emitted == 0  # staged: nothing delivered yet
        em.commit()
        assert em.grant == ch.granted == 0
        got = sub.take()
        assert got["meta0"].tolist() == list(range(10))
        assert got["meta1"].tolist() == [i * 10 if i % 2 else 0 for i in range(10)]
        assert got["seq"].tolist() == list(range(1, 11))
        assert set(got["tenant"].tolist()) == {3} and set((got["flags"] & 3).tolist()) == {1}
        assert ((got["flags"] & T.FLAG_CHANNEL_MSG) != 0).all()
        assert set(got["channel"].tolist()) == {ch.id}
        assert set(got["type"].tolist()) == {s.type_id("MSG")}


def test_a_new_header_commits_what_was_staged_under_the_old_one():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG")
        sub = ch.subscribe()
        ctx = SimpleNamespace(_emitters_active=[])
        em = Emitter(ch)
        em.bind(ctx, _hdr(priority=2, tenant=5))
        for i in range(3):
            em.send(i)
        em.bind(ctx, _hdr(priority=2, tenant=5))      # same header: nothing committed
        assert len(sub.ring) == 0
        em.bind(ctx, _hdr(priority=0, tenant=7))
        assert len(sub.ring) == 3 and ch.granted == 0
        em.send(3)
        em.commit()
        got = sub.take()
        assert got["meta0"].tolist() == [0, 1, 2, 3]
        assert got["tenant"].tolist() == [5, 5, 5, 7]
        assert (got["flags"] & 3).tolist() == [2, 2, 2, 0]


def test_backpressure_is_synchronous_and_keeps_the_priority_0_reserve():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe()
        ctx = SimpleNamespace(_emitters_active=[])
        em = Emitter(ch)
        em.bind(ctx, _hdr(priority=1))
        sent = [em.send(i) for i in range(20)]
        assert sent == [T.OK] * 15 + [T.CHAN_FULL] * 5  # 16 minus the reserve
        assert ch.stats()["full"] == 5
        em.commit()
        assert len(sub.take(4)) == 4                  # room again
        assert em.send(99) == T.OK
        em.bind(ctx, _hdr(priority=0))                # priority 0 may use the reserve
        assert [em.send(i) for i in range(5)] == [T.OK] * 4 + [T.CHAN_FULL]
        em.commit()
        assert len(sub.take()) == 16 and ch.granted == 0


def test_staged_messages_of_a_channel_closed_meanwhile_go_to_sys_dropped():
    with boot([], hal="sim", debug=True) as s:
        ch = s.open("data.in", "MSG")
        ch.subscribe()
        ctx = SimpleNamespace(_emitters_active=[])
        em = Emitter(ch)
        em.bind(ctx, 0)
        for i in range(3):
            assert em.send(i) == T.OK
        s.close("data.in")
        em.commit()
        recs, codes = s.dead_letters("sys.dropped")
        assert codes.tolist() == [T.CHAN_CLOSED] * 3 and recs["meta0"].tolist() == [0, 1, 2]
        assert em.send(9) == T.CHAN_CLOSED and ch.granted == 0


def test_a_word_that_does_not_fit_is_refused_by_send():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG")
        sub = ch.subscribe()
        em = Emitter(ch)
        em.bind(SimpleNamespace(_emitters_active=[]), 0)
        for bad in (-1, 1 << 64, 1.5, "7", True):
            with pytest.raises(EmitError):
                em.send(bad)
        with pytest.raises(EmitError):
            em.send(1, -2)
        assert em.send(np.uint64(5), np.uint64(6)) == T.OK   # a NumPy integer is a word
        em.commit()
        got = sub.take()
        assert got["meta0"].tolist() == [5] and got["meta1"].tolist() == [6]
