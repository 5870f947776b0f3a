"""``ggmk.modules.Outbox``: the answers a standard module could not publish yet, in order."""
import numpy as np

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.modules import Outbox


def _flusher():
    m = Module("flusher")                # the deferred flush task's type (flushed by hand here)
    m.handler("OUTBOX_FLUSH")(lambda ctx: None)
    return m


def test_a_backlog_behind_a_full_channel_is_emitted_in_order_a_room_at_a_time():
    """A flush builds at most what the channel has room for (not the whole backlog each
    call: a backlog of thousands behind a busy channel made every flush cost milliseconds),
    and every message comes out once, in order."""
    with boot([_flusher()], hal="sim") as s:
        ch = s.open("out.ch", "MSG", capacity=8)
        sub = ch.subscribe()
        box = Outbox("out.ch", "OUTBOX_FLUSH")
        box.put_many(np.arange(0, 500, dtype=np.uint64), np.arange(500, 1000, dtype=np.uint64))
        for i in range(500, 600):
            box.put(i, i + 500)
        sizes = []
        real = ch.emit

        def spy(recs, *a, **k):
            sizes.append(len(recs))
            return real(recs, *a, **k)
        ch.emit = spy
        got = []
        assert ch.publish(meta0=10**6) == T.OK           # 7 of 8 slots left
        while len(box):
            box.flush(s)
            got.append(sub.take())
        got = T.concat(got)
        assert got["meta0"].tolist() == [10**6] + list(range(600))
        assert got["meta1"].tolist()[1:] == list(range(500, 1100))
        assert max(sizes) <= 8 and sizes[0] == 7
        assert box.published == 600
        assert ch.room() == 8


def test_channel_room_is_what_an_emit_would_accept():
    with boot([], hal="sim") as s:
        ch = s.open("r.ch", "MSG", capacity=8)
        assert ch.room() == 1 << 30                      # nobody subscribed: takes anything
        sub = ch.subscribe()
        assert ch.room() == 8
        assert ch.publish(meta0=np.arange(5, dtype=np.uint64), count=5) == 5
        assert ch.room() == 3
        assert ch.publish(meta0=np.arange(9, dtype=np.uint64), count=9) == 3
        assert ch.room() == 0
        sub.take()
        assert ch.room() == 8


def test_results_nobody_subscribes_to_go_to_sys_dropped_not_away():
    """A reduce result and a gate release (with its payload) on channels nobody subscribes
    to were discarded, counted only in ``unheard``; a plain publish there lands on
    sys.dropped with CHAN_NO_SUBSCRIBER, and so do they now. Optional answers (kv responses,
    timer acks, stats snapshots: documented as sent "when something subscribes") are still
    only counted."""
    from ggmk.modules import gate, kv, reduce
    red, g, store = reduce.module(n=2), gate.module(n=2), kv.module()
    with boot([red, g, store], workers=2) as system:
        system.channel("reduce.in").publish(meta0=[1, 1], meta1=[10, 20])
        system.channel("gate.arrive").publish(meta0=5, meta1=[1, 2], payload=b"held")
        system.channel("kv.put").publish(meta0=3, meta1=30)
        assert system.run(timeout=10)
        drop, codes = system.dead_letters("sys.dropped")
        assert set(codes.tolist()) == {T.CHAN_NO_SUBSCRIBER}
        res = drop[drop["type"] == system.type_id("REDUCE_RESULT")]
        rel = drop[drop["type"] == system.type_id("GATE_PASS")]
        assert res["meta0"].tolist() == [1] and res["meta1"].tolist() == [30]
        assert sorted(rel["meta1"].tolist()) == [1, 2] and len(drop) == 3
        assert red.reduce.out.unheard == 1 and g.gate.out.unheard == 2
        assert store.kv.outbox.unheard == 1                           # optional: counted only
        assert system.arena.stats()["total"]["live"] == 0             # payloads given back
