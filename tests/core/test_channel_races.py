"""Channel races and edge cases (audit H): unsubscribe/close while a worker drains, one handler
type on two ordered channels, the same type twice on a fan-out channel, emitter credit without a
subscriber, emitter close counts, window= validation."""
import collections
import threading
import time

import numpy as np
import pytest

from ggmk import OK
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.sched import Route
from ggmk.errors import ChannelError


def _sink(types=("MSG",)):
    m = Module("sink")
    got = collections.Counter()
    lock = threading.Lock()
    for t in types:
        def f(ctx):
            with lock:
                got[(ctx.task.channel, ctx.chan_seq)] += 1
            return OK
        f.__name__ = t.lower()
        m.handler(t)(f)
    return m, got


def _dropped_seqs(s):
    recs, _codes = s.dead_letters("sys.dropped")
    return collections.Counter(recs["seq"].tolist())


# -- 1. unsubscribe / close while a worker drains ---------------------------------------------
@pytest.mark.parametrize("what,ordered", [("unsubscribe", False), ("close", False),
                                          ("unsubscribe", True), ("close", True)])
def test_flush_while_draining_is_delivered_xor_dropped(monkeypatch, what, ordered):
    m, got = _sink()
    with boot([m], workers=2) as s:
        ch = s.open("data.in", "MSG", capacity=64, ordered=ordered)
        sub = ch.subscribe("MSG")
        sched = s.sched
        orig = sched.enqueue
        in_drain, go_on = threading.Event(), threading.Event()

        def paused_enqueue(recs, route=None, *a, **kw):
            # the drainer: between head_view and consume, holding the drain lock
            if route == Route.CHANNEL and not in_drain.is_set():
                in_drain.set()
                go_on.wait(5)
            return orig(recs, route, *a, **kw)

        monkeypatch.setattr(sched, "enqueue", paused_enqueue)
        live0 = s.arena.live_count()
        pub = threading.Thread(target=lambda: ch.publish(meta0=np.arange(10), count=10,
                                                         payload=b"x" * 16))
        pub.start()
        assert in_drain.wait(5)
        flusher = threading.Thread(target=(lambda: ch.unsubscribe(sub)) if what == "unsubscribe"
                                   else ch.close)
        flusher.start()
        # the flusher holds the channel lock waiting for the drain lock (fixed), or has popped
        # the ring without it and is done (the bug)
        t_end = time.monotonic() + 5
        while flusher.is_alive() and not ch.lock.locked():
            assert time.monotonic() < t_end, "the flusher never got to the ring"
            time.sleep(0.0005)
        go_on.set()
        flusher.join(5)
        pub.join(5)
        assert s.run(timeout=5)
        monkeypatch.setattr(sched, "enqueue", orig)
        handled = collections.Counter(q for (_c, q), k in got.items() for _ in range(k))
        dropped = _dropped_seqs(s)
        assert not set(handled) & set(dropped), "delivered and dropped"
        assert all(c == 1 for c in handled.values()) and all(c == 1 for c in dropped.values())
        assert set(handled) | set(dropped) == set(range(1, 11))
        assert len(sub.ring) == 0
        assert s.arena.live_count() == live0


def test_unsubscribe_churn_delivered_xor_dropped():
    m = Module("c")
    got = collections.Counter()
    lk = threading.Lock()

    @m.handler("A")
    def ha(ctx):
        return OK

    @m.handler("B")
    def hb(ctx):
        with lk:
            got[ctx.chan_seq] += 1
        return OK

    with boot([m], workers=2) as s:
        live0 = s.arena.live_count()
        ch = s.open("t.f", "MSG", mode="fanout", capacity=256, ordered=False)
        ch.subscribe("A")
        stop = threading.Event()
        errs = []

        def pub():
            while not stop.is_set():
                try:
                    ch.publish(meta0=np.arange(32), count=32, payload=b"q" * 40)
                except Exception as e:  # noqa: BLE001
                    errs.append(repr(e))
                    return

        th = threading.Thread(target=pub)
        th.start()
        try:
            # (60 rounds: each takes several GIL hand-offs against a publisher that never
            # waits, ~600 publishes a round; 300 rounds took 20-45 s in a full run)
            for _ in range(60):
                b = ch.subscribe("B", name="B")
                time.sleep(0.001)
                ch.unsubscribe(b)
        finally:
            stop.set()
            th.join()
        assert s.run(timeout=10)
        recs, _codes = s.dead_letters("sys.dropped")
        dropB = collections.Counter(recs[recs["type"] == s.type_id("B")]["seq"].tolist())
        assert not errs and not list(s.exceptions)
        assert not [q for q in dropB if q in got]
        assert not [q for q, c in got.items() if c > 1]
        assert s.arena.live_count() == live0


# -- 2. one handler type, ordered on two channels (and submitted directly) ---------------------
@pytest.mark.parametrize("mix_submit", [False, True])
def test_one_handler_two_ordered_channels_no_stall(mix_submit):
    m, got = _sink()
    with boot([m], workers=2) as s:
        a = s.open("t.a", "MSG", capacity=64)
        a.subscribe("MSG", name="on_a")
        chans = [a]
        if not mix_submit:
            b = s.open("t.b", "MSG", capacity=64)
            b.subscribe("MSG", name="on_b")
            chans.append(b)
        N = 1000
        sent = {c.name: 0 for c in chans}
        end = time.monotonic() + 20
        while any(v < N for v in sent.values()):
            assert time.monotonic() < end, f"stalled: sent {sent}"
            for c in chans:
                k = min(10, N - sent[c.name])
                if k:
                    sent[c.name] += c.publish(meta0=np.arange(k), count=k)
            if mix_submit:
                s.submit("MSG", meta0=1)
        assert s.run(timeout=10)
        for c in chans:
            st = c.stats()["subs"][0]
            assert st["delivered"] == N and st["depth"] == 0 and not st["in_flight"], (c.name, st)


def test_on_batch_done_mixed_batch_clears_every_channel():
    """A batch whose first record is a direct task (channel 0) or another channel's message
    still finishes each ordered subscriber's in-flight batch."""
    m, _got = _sink()
    with boot([m], workers=1) as s:
        a = s.open("t.a", "MSG", capacity=64)
        b = s.open("t.b", "MSG", capacity=64)
        sa, sb = a.subscribe("MSG"), b.subscribe("MSG")
        reg = s.channels
        t = s.type_id("MSG")
        for sub in (sa, sb):
            sub.busy, sub.b_lo, sub.b_hi = 2, 1, 2
        recs = T.make(5, type=t)
        recs["channel"] = [0, a.id, b.id, a.id, b.id]
        recs["seq"] = [0, 1, 1, 2, 2]
        recs["flags"][1:] |= T.FLAG_CHANNEL_MSG
        reg.on_batch_done(recs)
        assert sa.busy == 0 and sb.busy == 0


# -- 3. the same type twice on a fan-out channel ------------------------------------------------
def test_same_type_twice_refused():
    m, _got = _sink()
    with boot([m], workers=1) as s:
        ch = s.open("data.fan", "MSG", mode="fanout", capacity=64)
        ch.subscribe("MSG", name="a")
        with pytest.raises(ChannelError) as ei:
            ch.subscribe("MSG", name="b")
        assert ei.value.code == T.CHAN_ALREADY_BOUND
        assert "data.fan" in str(ei.value) and "MSG" in str(ei.value)
        assert len(ch.subs) == 1


# -- 4. emitter credit without a subscriber -----------------------------------------------------
def test_emitter_credit_capped_without_subscriber():
    prod = Module("prod")
    out = prod.produces("data.out", "MSG", capacity=8)
    started, go_on = threading.Event(), threading.Event()
    codes = []

    @prod.handler("GO")
    def go(ctx):
        send = ctx.emitter(out)
        for i in range(100):
            codes.append(send(i))
            if i == 0:
                started.set()
                go_on.wait(5)
        return OK

    with boot([prod], workers=2) as s:
        ch = s.channel("data.out")
        s.submit("GO")
        assert started.wait(5)
        assert ch.granted <= ch.capacity
        sub = ch.subscribe()
        go_on.set()
        assert s.run(timeout=5)
        recs, dcodes = s.dead_letters("sys.dropped")
        taken = sub.take()
        n_ok = codes.count(0)
        full = [c for c in np.asarray(dcodes).tolist() if c == T.CHAN_FULL]
        assert not full, "a lossless channel dropped messages send() answered OK"
        assert len(taken) == n_ok


# -- 5. emitter close counts ---------------------------------------------------------------------
def test_emitter_staged_dropped_at_close_count_emitted():
    prod = Module("prod")
    out = prod.produces("data.out", "MSG", capacity=64)
    started, go_on = threading.Event(), threading.Event()

    @prod.handler("GO")
    def go(ctx):
        send = ctx.emitter(out)
        for i in range(5):
            assert send(i) == OK
        started.set()
        go_on.wait(5)
        return OK

    m, _got = _sink()
    with boot([prod, m], workers=2) as s:
        ch = s.channel("data.out")
        s.submit("GO")
        assert started.wait(5)
        ch.close()
        go_on.set()
        assert s.run(timeout=5)
        st = ch.stats()
        delivered = sum(x["delivered"] for x in st["subs"])
        assert st["dropped"] == 5
        assert st["emitted"] == delivered + st["dropped"]


# -- 6. window= validation -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 0, 0.5, "8", True])
@pytest.mark.parametrize("where", ["open", "subscribe"])
def test_bad_window_refused(where, bad):
    m, _got = _sink()
    with boot([m], workers=1) as s:
        with pytest.raises(ChannelError) as ei:
            if where == "open":
                s.open("t.c", "MSG", window=bad)
            else:
                s.open("t.c", "MSG").subscribe("MSG", window=bad)
        msg = str(ei.value)
        assert "'t.c'" in msg and "window=" in msg and repr(bad) in msg


def test_good_window_accepted():
    m, got = _sink()
    with boot([m], workers=1) as s:
        ch = s.open("t.c", "MSG", window=4)
        ch.subscribe("MSG", window=np.int64(2))
        assert ch.publish(meta0=np.arange(10), count=10) == 10
        assert s.run(timeout=5)
        assert sum(got.values()) == 10
