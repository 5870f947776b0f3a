"""The per-task fast paths (issue 14): the enqueue core's one-record path (a host's one-task
``submit``, one emit, one channel delivery), a one-task batch read with one struct call,
``ctx.emit`` as a per-batch sender while follow-ons run in the step, follow-ons counted
instead of built, and the tracer's level-ALL skip. Each must account for every task exactly
like the general paths do."""
import threading

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.events import EventType


def test_one_task_submits_into_a_full_ready_queue_account_for_every_task(wait_until):
    """Two real workers held in their handlers, a ready queue that holds 8: one-task
    submits past that are refused with READY_FULL (on sys.error), the rest all run."""
    gate = threading.Event()
    ran = []
    m = Module("m")

    @m.handler("HOLD")
    def hold(ctx):
        gate.wait(30)
        ran.append(ctx.task.meta0)

    with boot([m], workers=2, max_batch=1) as s:
        s.sched.ready_capacity, s.sched.ready_max_capacity = 4, 8   # before the first push
        tid = s.type_id("HOLD")
        accepted = 0
        for i in range(40):
            accepted += s.submit_batch(T.make(1, type=tid, meta0=i))
        refused = 40 - accepted
        assert 8 <= accepted <= 10 and refused >= 30     # 8 queued + at most 1 per worker
        gate.set()
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()
        assert s.sched.outstanding == 0
    assert len(recs) == refused and set(codes.tolist()) == {T.READY_FULL}
    assert sorted(ran + recs["meta0"].tolist()) == list(range(40))
    hs = st["types"]["HOLD"]
    assert hs["ok"] == hs["dequeued"] == hs["enqueued"] == accepted
    assert hs["dropped"] == refused
    assert st["sched"]["routes"]["submit"] == 40


def test_one_task_submits_count_and_number_like_a_batch_submit(hal):
    seen = []
    m = Module("m")

    @m.handler("T1")
    def t1(ctx):
        t = ctx.task
        seen.append((t.meta0, t.meta1, t.seq, t.tenant, t.priority))

    with boot([m], hal=hal, workers=2) as s:
        for i in range(50):
            assert s.submit("T1", meta0=i, meta1=i * 7, tenant=i % 3, priority=i % 4) == 1
        assert s.run(timeout=30)
        st = s.stats()
    assert sorted(x[:2] for x in seen) == [(i, i * 7) for i in range(50)]
    assert sorted(x[2] for x in seen) == list(range(1, 51))          # fresh, unique seqs
    assert {(x[0] % 3, x[0] % 4) == (x[3], x[4]) for x in seen} == {True}
    assert st["types"]["T1"]["enqueued"] == st["types"]["T1"]["ok"] == 50
    assert st["sched"]["routes"]["submit"] == 50


def test_one_record_of_an_unknown_or_poisoned_type_goes_to_sys_error_with_its_reason(hal):
    m = Module("m")

    @m.handler("P")
    def p(ctx):
        return None

    with boot([m], hal=hal, workers=2) as s:
        tid = s.type_id("P")
        assert s.submit_batch(T.make(1, type=tid + 100)) == 0
        s.poison.poisoned[tid] = True
        assert s.submit_batch(T.make(1, type=tid, meta0=5)) == 0
        s.poison.poisoned[tid] = False
        assert s.submit_batch(T.make(1, type=tid, meta0=6)) == 1
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()
    assert codes.tolist() == [T.UNKNOWN_TYPE, T.POISONED]
    assert recs["meta0"].tolist() == [0, 5]
    assert st["types"]["P"]["ok"] == 1 and s.sched.outstanding == 0


@pytest.mark.parametrize("max_batch", [1, 4, 256])
def test_counted_follow_ons_keep_the_tracers_counts(hal, max_batch):
    """A chain whose seed is flagged FLAG_EMIT_TRACE at the default level: only the seed's
    TASK_START / TASK_END are recorded (children do not inherit the flag); every other
    level-ALL event is counted as filtered, whether it was offered or skipped."""
    n = 60
    m = Module("m")

    @m.handler("C")
    def c(ctx):
        if ctx.task.meta0 < n:
            ctx.emit("C", meta0=ctx.task.meta0 + 1)

    with boot([m], hal=hal, workers=2, max_batch=max_batch) as s:
        before = s.tracer.stats()["total"]["filtered"]      # boot's own events
        s.submit("C", meta0=1, trace=True)
        assert s.run(timeout=30)
        ev = s.tracer.drain()
        filtered = s.tracer.stats()["total"]["filtered"] - before
        st = s.stats()
    starts = ev[ev["event"] == EventType.TASK_START]
    ends = ev[ev["event"] == EventType.TASK_END]
    assert len(starts) == len(ends) == 1 and starts["arg0"][0] == ends["arg0"][0]
    assert filtered == 2 * n - 2
    assert st["types"]["C"]["ok"] == st["types"]["C"]["enqueued"] == n
    assert st["sched"]["routes"]["emit"] == n - 1


def test_counted_follow_ons_take_their_seqs(hal):
    """Follow-ons that were counted, not built, still took their seqs: a task submitted
    after the chain is numbered after all of them."""
    seqs = {}
    m = Module("m")

    @m.handler("C")
    def c(ctx):
        seqs[ctx.task.meta0] = ctx.task.seq
        if 0 < ctx.task.meta0 < 30:
            ctx.emit("C", meta0=ctx.task.meta0 + 1)

    with boot([m], hal=hal, workers=1) as s:
        s.submit("C", meta0=1)
        assert s.run(timeout=30)
        s.submit("C", meta0=0)
        assert s.run(timeout=30)
    assert seqs[0] == 31 and sorted(seqs.values()) == list(range(1, 32))


def test_an_emit_sender_kept_past_its_batch_still_delivers(hal):
    """``ctx.emit`` is a per-batch sender while follow-ons may run; one kept past its batch
    takes the general path (nothing appended to a finished batch's columns)."""
    kept = []
    got = []
    m = Module("m")

    @m.handler("A")
    def a(ctx):
        kept.append(ctx.emit)
        ctx.emit("A2", meta0=1)

    @m.handler("A2")
    def a2(ctx):
        got.append(("A2", ctx.task.meta0))

    @m.handler("B")
    def b(ctx):
        assert kept[0]("A", meta0=9) == T.OK or True   # stale sender, other ctx state
        kept[0]("SINK", meta0=ctx.task.meta0)

    @m.handler("SINK")
    def sink(ctx):
        got.append(("SINK", ctx.task.meta0))

    with boot([m], hal=hal, workers=1) as s:
        s.submit("A")
        assert s.run(timeout=30)
        s.submit("B", meta0=7)
        assert s.run(timeout=30)
        st = s.stats()["types"]
    assert sorted(got) == [("A2", 1), ("A2", 1), ("SINK", 7)]
    assert st["A"]["ok"] == 2 and st["SINK"]["ok"] == 1 and st["A2"]["ok"] == 2


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.5, True, np.float64(2.0)])
def test_a_bad_word_through_the_batch_sender_fails_only_its_task(hal, bad):
    m = Module("m")
    done = []

    @m.handler("H")
    def h(ctx):
        n = ctx.task.meta0
        if n == 3:
            ctx.emit("H", meta0=bad)
        done.append(n)
        if n < 5:
            ctx.emit("H", meta0=n + 1)

    with boot([m], hal=hal, workers=1) as s:
        s.submit("H", meta0=1)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
    assert done == [1, 2]
    assert recs["meta0"].tolist() == [3] and codes.tolist() == [T.HANDLER_EXCEPTION]


def test_one_message_deliveries_keep_the_channel_seq_and_full_is_accounted(hal):
    """One message at a time over a small lossless channel: each delivery is a one-record
    CHANNEL enqueue (channel seqs kept, no gap); emits the channel refuses are CHAN_FULL and
    were never delivered."""
    p = Module("src")
    out = p.produces("one.by.one", "MSG", capacity=8)
    sent, full, got = [], [], []

    @p.handler("GEN")
    def gen(ctx):
        i = ctx.task.meta0
        (full if ctx.emit(out, i) == T.CHAN_FULL else sent).append(i)

    c = Module("sink")

    @c.handler("MSG", consumes="one.by.one")
    def sink(ctx):
        got.append((ctx.chan_seq, ctx.task.meta0))

    with boot([p, c], hal=hal, workers=2, max_batch=1) as s:
        for i in range(200):
            s.submit("GEN", meta0=i)
        assert s.run(timeout=30)
    assert len(sent) + len(full) == 200
    assert sorted(x[1] for x in got) == sorted(sent)
    assert sorted(x[0] for x in got) == list(range(1, len(sent) + 1))


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_a_one_task_submit_of_plain_ints_gives_the_same_record_as_the_column_path(hal):
    """System.submit packs one task of plain ints with one struct call; what the handler
    sees (every header field) is what the column path (``count=1``) builds."""
    seen = []
    m = Module("m")

    @m.handler("REC")
    def rec(ctx):
        t = ctx.task
        seen.append({f: getattr(t, f) for f in ("type", "flags", "tenant", "channel",
                                                "payload_ptr", "payload_len", "meta0", "meta1")})

    with boot([m], workers=2, hal=hal) as s:
        for kw in ({}, {"priority": 3, "tenant": 7, "trace": True},
                   {"meta0": (1 << 64) - 1, "meta1": 5}):
            s.submit("REC", **kw)
            assert s.run(timeout=30)
            s.submit("REC", count=1, **kw)
            assert s.run(timeout=30)
            assert seen[-2] == seen[-1]
        assert seen[-1]["meta0"] == (1 << 64) - 1
        with pytest.raises(ValueError, match="meta0"):
            s.submit("REC", meta0=-1)
        with pytest.raises(ValueError, match="priority"):
            s.submit("REC", priority=4)
        assert s.run(timeout=30) and len(seen) == 6
        assert len(s.dead_letters("sys.error")[0]) == 0
