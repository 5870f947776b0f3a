"""The one-record fast paths of a request/reply round trip (issue 16): ``Channel.emit_one``'s
scalar path (no array: the record packed once as bytes), ``WakingRing.push1`` and
``Ring.pop1_fields``, the ordered subscriber told by seq at a one-record batch's end
(``Channels.on_batch_done1``) and ``Channels.idle`` read in place. Each test makes sure the
fast path is the one taken (the general path's array builder is made to fail), and that it
accounts like the general path: seqs, counts, payload references, backpressure, order."""
import threading

import pytest

from ggmk import task as T
from ggmk.core import channel as channel_mod
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.ring import Ring, WakingRing


@pytest.fixture
def no_arrays(monkeypatch):
    """``emit_one``'s general path builds its record with ``T.make``: make that fail, so a
    test passes only on the scalar path. ``allow()`` puts it back."""
    real = channel_mod.T.make

    def refuse(*a, **k):
        raise AssertionError("emit_one took the general path (built an array)")

    class _T:
        def __getattr__(self, name):
            return refuse if name == "make" else getattr(T, name)
    monkeypatch.setattr(channel_mod, "T", _T())
    return lambda: monkeypatch.setattr(channel_mod, "T", T)


def _fan(got, types=("SUB_A", "SUB_B")):
    m = Module("fan")
    for t in types:
        def f(ctx, t=t):
            got.append((t, ctx.chan_seq, ctx.task.meta0, ctx.task.meta1,
                        bytes(ctx.payload) if ctx.task.payload_ptr else None,
                        int(ctx.arena.refcount(ctx.task.payload_ptr))
                        if ctx.task.payload_ptr else 0))
        f.__name__ = t.lower()
        m.handler(t)(f)
    return m


def test_emit_one_delivers_to_every_subscriber_in_seq_order_with_payload_refs(no_arrays):
    """Two handler subscribers (retyped copies) and a host-side one (the channel's type),
    real worker threads: every message reaches all three in channel-seq order, a payload is
    referenced once per delivery and freed once all are done."""
    got = []
    with boot([_fan(got)], workers=2, debug=True) as s:
        free0 = s.arena.stats()["total"]["free_bytes"]
        ch = s.open("data.fan", "MSG", mode="fanout", capacity=64)
        ch.subscribe("SUB_A")
        ch.subscribe("SUB_B")
        host = ch.subscribe()
        tid = s.type_id("MSG")
        for i in range(20):
            ptr = plen = 0
            if i % 4 == 0:
                ptr, plen = s.store_payload(tid, b"p%d" % i)
            assert ch.emit_one(tid, 0, 0, ptr, plen, i, 100 + i) == T.OK
        assert s.run(timeout=60)
        recs = host.take()
        assert recs["seq"].tolist() == list(range(1, 21))
        assert recs["type"].tolist() == [tid] * 20
        assert recs["meta0"].tolist() == list(range(20))
        assert (recs["flags"] & T.FLAG_CHANNEL_MSG).all() and (recs["channel"] == ch.id).all()
        for t in ("SUB_A", "SUB_B"):
            mine = [g for g in got if g[0] == t]
            assert [g[1] for g in mine] == list(range(1, 21))          # ordered, by seq
            assert [(g[2], g[3]) for g in mine] == [(i, 100 + i) for i in range(20)]
            assert [g[4] for g in mine] == [b"p%d" % i if i % 4 == 0 else None
                                            for i in range(20)]
        # the host's copy still holds a reference until it lets go of it
        for p in recs["payload_ptr"][recs["payload_ptr"] != 0].tolist():
            assert s.arena.refcount(p) == 1
            s.arena.release(p)
        assert s.arena.live_count() == 0
        assert s.arena.stats()["total"]["free_bytes"] == free0
        st = ch.stats()
        assert st["emitted"] == 20 and st["seq"] == 20 and st["full"] == 0
        assert [x["delivered"] for x in st["subs"]] == [20, 20, 20]
        types = s.stats()["types"]
        assert types["SUB_A"]["ok"] == types["SUB_B"]["ok"] == 20


def test_emit_one_backpressure_reserve_and_closed_fall_back_and_count(no_arrays):
    """A full ring (a host subscriber nobody drains): the fast path refuses nothing itself,
    the general path answers CHAN_FULL and counts it; the priority-0 reserve holds; a closed
    channel answers CHAN_CLOSED. Nothing is lost: what was accepted is all in the ring."""
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=8)
        sub = ch.subscribe()
        tid = s.type_id("MSG")
        assert ch.reserve == 1
        for i in range(7):
            assert ch.emit_one(tid, 1, 0, 0, 0, i, 0) == T.OK     # priority 1
        allow = no_arrays
        allow()                   # from here the general path runs (and may build arrays)
        assert ch.emit_one(tid, 1, 0, 0, 0, 99, 0) == T.CHAN_FULL  # the last slot: prio 0
        assert ch.emit_one(tid, 0, 0, 0, 0, 7, 0) == T.OK
        assert ch.emit_one(tid, 0, 0, 0, 0, 99, 0) == T.CHAN_FULL
        assert ch.stats()["full"] == 2
        got = sub.take()
        assert got["meta0"].tolist() == list(range(8)) and got["seq"].tolist() == list(range(1, 9))
        assert (got["flags"] & T.PRIO_MASK).tolist() == [1] * 7 + [0]
        ch.close()
        assert ch.emit_one(tid, 0, 0, 0, 0, 1, 0) == T.CHAN_CLOSED
        assert len(s.dead_letters("sys.dropped")[0]) == 0


def test_emit_one_bad_word_takes_the_general_path_and_names_it():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=8)
        ch.subscribe()
        with pytest.raises((ValueError, OverflowError), match="meta0"):
            ch.emit_one(s.type_id("MSG"), 0, 0, 0, 0, -1, 0)
        assert ch.stats()["emitted"] == 0


def test_waking_ring_push1_signals_and_pop1_fields_reads_fifo():
    calls = []
    r = WakingRing(4)
    r.hooks = (lambda: calls.append(1),)
    recs = T.make(5, type=7, meta0=list(range(5)), meta1=[10, 11, 12, 13, 14])
    assert not r.ready.is_set()
    assert [r.push1(recs[i:i + 1].tobytes()) for i in range(5)] == [True] * 4 + [False]
    assert r.ready.is_set() and calls == [1] * 4          # a refused push signals nothing
    out = [r.pop1_fields() for _ in range(5)]
    assert out[4] is None
    assert [(f[0], f[9], f[10]) for f in out[:4]] == [(7, i, 10 + i) for i in range(4)]
    assert r.pushed == 4 and r.popped == 4 and len(r) == 0 and r.high_watermark == 4
    plain = Ring(2)
    plain.push(T.make(2, type=1, meta0=[5, 6]))
    assert plain.pop1_fields()[9] == 5 and plain.pop1_fields()[9] == 6
    assert plain.pop1_fields() is None


def test_one_record_batches_of_an_ordered_subscriber_run_in_order_and_release_it(wait_until):
    """One message at a time through the normal path (host publishes, two real workers):
    each one-record batch's end tells the ordered subscriber by seq, so the next is
    delivered; a message of the batch in flight only. Nothing stays busy or pending."""
    seen = []
    m = Module("m")

    @m.handler("ONE")
    def one(ctx):
        seen.append((ctx.chan_seq, ctx.task.meta0))

    with boot([m], workers=2, host_helps=False) as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe("ONE")
        assert sub.ordered
        for i in range(200):
            while ch.publish(meta0=i) != T.OK:          # full: let the workers drain
                assert s.run(timeout=60)
        assert s.run(timeout=60)
        assert seen == [(i + 1, i) for i in range(200)]
        assert sub.busy == 0 and ch.pending() == 0 and s.channels.idle()
        t = s.stats()["types"]["ONE"]
        assert t["ok"] == t["dequeued"] == t["enqueued"] == 200


def test_batch_done1_ignores_a_seq_outside_the_batch_in_flight():
    m = Module("m")

    @m.handler("ONE")
    def one(ctx):
        pass

    with boot([m], hal="sim") as s:
        ch = s.open("data.in", "MSG")
        sub = ch.subscribe("ONE")
        ch.seq = ch.committed = 10                # (as if 10 messages had passed)
        sub.busy, sub.b_lo, sub.b_hi = 2, 5, 6
        s.channels.on_batch_done1(ch.id, s.type_id("ONE"), 9)     # not of the batch
        assert sub.busy == 2
        s.channels.on_batch_done1(ch.id, s.type_id("ONE"), 5)
        assert sub.busy == 1
        s.channels.on_batch_done1(ch.id, s.type_id("ONE"), 6)
        assert sub.busy == 0


def test_channels_idle_sees_a_message_waiting_in_a_handler_ring(wait_until):
    gate = threading.Event()
    started = threading.Event()
    m = Module("m")

    @m.handler("SLOW")
    def slow(ctx):
        started.set()
        gate.wait(60)

    with boot([m], workers=2, host_helps=False, max_batch=1) as s:
        ch = s.open("data.in", "MSG", capacity=16)
        ch.subscribe("SLOW")                 # ordered: one batch in flight, the rest waits
        assert s.channels.idle()
        assert ch.publish(meta0=1) == T.OK
        assert started.wait(60)
        assert ch.publish(meta0=2) == T.OK   # in the ring while the first one runs
        assert not s.channels.idle() and ch.pending() == 1
        gate.set()
        assert s.run(timeout=60)
        assert s.channels.idle() and ch.pending() == 0
        assert s.stats()["types"]["SLOW"]["ok"] == 2


def test_publish_of_one_message_of_plain_ints_takes_the_scalar_path_and_accounts(no_arrays):
    """``Channel.publish(meta0=, meta1=, priority=, tenant=)`` of one message (what a host
    sends per request or tick) is ``emit_one``: no array is built. It is accepted exactly as
    before: channel seq, priority and tenant on the record, the host subscriber's notify and
    after-emit hooks run once per message, the returns (OK, then CHAN_FULL on the full channel,
    CHAN_CLOSED once closed) and the full count."""
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=8)
        sub = ch.subscribe()
        notes, afters = [], []
        sub.add_notify(lambda: notes.append(1))
        sub.add_after(lambda: afters.append(1))
        for i in range(7):
            assert ch.publish(meta0=i, meta1=100 + i, priority=2, tenant=3) == T.OK
        assert len(notes) == len(afters) == 7
        no_arrays()                # the full and closed answers come from the general path
        assert ch.publish(meta0=7) == T.OK                         # the reserve: priority 0
        assert ch.publish(meta0=99) == T.CHAN_FULL
        got = sub.take()
        assert got["meta0"].tolist() == list(range(8))
        assert got["meta1"].tolist() == [100 + i for i in range(7)] + [0]
        assert got["seq"].tolist() == list(range(1, 9))
        assert (got["flags"] & T.PRIO_MASK).tolist() == [2] * 7 + [0]
        assert got["tenant"].tolist() == [3] * 7 + [0]
        assert ch.stats()["full"] == 1 and ch.stats()["emitted"] == 8
        ch.close()
        assert ch.publish(meta0=1) == T.CHAN_CLOSED


@pytest.mark.parametrize("kw", [{"meta0": -1}, {"meta1": 1 << 64}, {"tenant": -2},
                                {"tenant": 1 << 16}])
def test_publish_of_one_bad_word_is_named_and_accepts_nothing(kw):
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=8)
        ch.subscribe()
        with pytest.raises((ValueError, OverflowError), match=next(iter(kw))):
            ch.publish(**kw)
        assert ch.stats()["emitted"] == 0


def test_publish_of_one_message_with_a_payload_takes_the_scalar_path_and_gives_refusals_back(
        no_arrays):
    """``publish(meta0=, payload=)`` of one message (a host sending a frame, a request with
    data) is ``store_payload`` + ``emit_one``: no array is built. The payload arrives intact at
    an arena address; a refused message (CHAN_FULL, CHAN_CLOSED) or a bad word gives its
    payload back, so the arena holds nothing once the taken ones are released."""
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=8)
        sub = ch.subscribe()
        for i in range(8):
            assert ch.publish(meta0=i, payload=bytes([i]) * (100 + i)) == T.OK
        no_arrays()                # the full and closed answers come from the general path
        assert ch.publish(meta0=9, payload=b"x" * 64) == T.CHAN_FULL
        with pytest.raises((ValueError, OverflowError), match="meta1"):
            ch.publish(meta0=1, meta1=-1, payload=b"y")
        got = sub.take()
        assert got["meta0"].tolist() == list(range(8))
        with pytest.raises((ValueError, OverflowError), match="meta1"):   # (columns: general)
            ch.publish(meta0=[1, 2], meta1=[0, -1], count=2, payload=b"y")
        for i, r in enumerate(got):
            ptr, n = int(r["payload_ptr"]), int(r["payload_len"])
            assert n == 100 + i and bytes(s.arena.view(ptr, n)) == bytes([i]) * n
        s.arena.release_many(got["payload_ptr"])
        ch.close()
        assert ch.publish(meta0=5, payload=b"z") == T.CHAN_CLOSED
        assert s.arena.live_count() == 0
