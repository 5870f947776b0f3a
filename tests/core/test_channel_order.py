"""Ordered delivery (SPEC §5: point-to-point is FIFO): a channel's handler subscriber sees its
messages in channel-sequence order even with several workers, because the channel hands the
scheduler at most one batch of it at a time (``Worker._finish`` -> ``Channels.on_batch_done``
delivers the next). ``ordered=False`` opts out. Every message is delivered exactly once or is
on sys.error / sys.dropped with a reason."""
import os
import threading
import time

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module

DEADLINE = 120.0


def _emit_all(s, ch, recs, chunk=512):
    """Emit every record; when the channel pushes back, wait (for idle) and go on."""
    off = 0
    end = time.monotonic() + DEADLINE
    while off < len(recs):
        assert time.monotonic() < end, f"emitted only {off} of {len(recs)}"
        m = min(chunk, len(recs) - off)
        k = ch.emit(recs[off:off + m].copy())
        off += k
        if k < m:
            assert s.run(timeout=DEADLINE)


def _io_sink(seen, path=None, chan="data.p2p", type_="MSG", message=None, **kw):
    """A per-task consumer doing a little I/O: list append, a GIL hand-off, a file write."""
    m = Module("sink")
    f = open(path, "ab") if path else None
    lock = threading.Lock()

    @m.handler(type_, consumes=chan, message=message, **kw)
    def sink(ctx):
        q = ctx.chan_seq
        seen.append(q)
        time.sleep(0)                       # a tiny bit of I/O: the GIL goes to the other worker
        if f is not None and q % 64 == 0:
            with lock:
                f.write(b"%d\n" % q)
        return T.OK
    return m, f


@pytest.mark.parametrize("hal", ["threads"])
def test_p2p_per_task_io_handler_sees_channel_order_with_2_workers(hal, tmp_path):
    n = 20_000
    seen = []
    c, f = _io_sink(seen, str(tmp_path / "io.log"))
    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=1024)         # small: backpressure is hit
    try:
        with boot([p, c], hal=hal, workers=2) as s:
            ch = s.channel("data.p2p")
            _emit_all(s, ch, T.make(n, type=s.type_id("MSG"), meta0=np.arange(n)))
            assert s.run(timeout=DEADLINE)
            st = ch.stats()
            err = s.dead_letters("sys.error")[0]
            drop = s.dead_letters("sys.dropped")[0]
    finally:
        f.close()
    assert len(err) == 0 and len(drop) == 0
    a = np.asarray(seen)
    late = np.maximum.accumulate(a) - a
    assert (np.diff(a) > 0).all(), (f"{int((np.diff(a) < 0).sum())} messages out of channel "
                                    f"order, up to {int(late.max())} places late")
    assert a.tolist() == list(range(1, n + 1))           # each exactly once, in order
    assert st["emitted"] == n and st["subs"][0]["ordered"] and st["subs"][0]["in_flight"] == 0


@pytest.mark.parametrize("seed", range(12))
def test_p2p_order_on_sim_interleavings(seed):
    n = 3000
    seen = []
    c, _ = _io_sink(seen)
    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=64)
    with boot([p, c], hal="sim", workers=3, seed=seed) as s:
        ch = s.channel("data.p2p")
        _emit_all(s, ch, T.make(n, type=s.type_id("MSG"), meta0=np.arange(n)), chunk=97)
        assert s.run(timeout=DEADLINE)
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert seen == list(range(1, n + 1)), f"seed {seed}"


def test_producer_handler_p2p_order_with_2_workers():
    """Emits from handlers on both workers (the per-message emitter, and batch emits): the
    consumer sees channel order; every emitted message arrives once."""
    seen = []
    c, _ = _io_sink(seen)
    p = Module("src")
    out = p.produces("data.p2p", "MSG", capacity=2048)

    @p.handler("GEN")
    def gen(ctx):
        i = ctx.task.meta1                  # resume point after backpressure
        send = ctx.emitter(out)
        while i < 150:
            if send(ctx.task.meta0 * 1000 + i):
                ctx.task.meta1 = i
                return ctx.yield_()
            i += 1
        return T.OK

    with boot([p, c], hal="threads", workers=2) as s:
        for wave in range(4):                # a wave fits the channel: few CHAN_FULL yields
            s.submit("GEN", meta0=np.arange(wave * 10, wave * 10 + 10, dtype=np.uint64))
            assert s.run(timeout=DEADLINE)
        assert len(s.dead_letters("sys.error")[0]) == 0
        st = s.channel("data.p2p").stats()
    assert seen == list(range(1, 40 * 150 + 1))
    assert st["emitted"] == 40 * 150


def test_fanout_subscribers_each_see_channel_order_with_2_workers():
    subs = ("SUB_A", "SUB_B", "SUB_C")
    seen = {t: [] for t in subs}
    c = Module("subs")
    for t in subs:
        @c.handler(t, consumes="data.fan", message="MSG", name=t.lower())
        def f(ctx, t=t):
            seen[t].append(ctx.chan_seq)
            if t == "SUB_B":
                time.sleep(0)
            return T.OK
    p = Module("src")
    p.produces("data.fan", "MSG", mode="fanout", capacity=256)
    n = 12_000
    with boot([p, c], hal="threads", workers=2) as s:
        _emit_all(s, s.channel("data.fan"), T.make(n, type=s.type_id("MSG")))
        assert s.run(timeout=DEADLINE)
        assert len(s.dead_letters("sys.dropped")[0]) == 0
        assert len(s.dead_letters("sys.error")[0]) == 0
    for t in subs:
        assert seen[t] == list(range(1, n + 1)), t


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_mixed_priorities_and_tenants_keep_channel_order(hal):
    """An ordered batch never mixes tenants or priorities (the ready queue would split it and
    two workers could run the pieces at once): a p2p consumer sees pure channel order."""
    n = 6000
    seen = []
    c, _ = _io_sink(seen)
    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=256)
    rng = np.random.default_rng(7)
    with boot([p, c], hal=hal, workers=2) as s:
        ch = s.channel("data.p2p")
        recs = T.make(n, type=s.type_id("MSG"), meta0=np.arange(n),
                      priority=rng.integers(0, 4, n), tenant=rng.integers(0, 3, n))
        _emit_all(s, ch, recs, chunk=300)
        assert s.run(timeout=DEADLINE)
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert seen == list(range(1, n + 1))


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_failures_yields_and_retries_are_accounted_and_only_they_reorder(hal):
    """A handler that fails, yields or retries some messages: nothing hangs (the in-flight
    batch counts as finished), every message is handled once or is on sys.error, and the
    messages handled the first time come in channel order."""
    n = 4000
    first, again = [], []
    tried = set()
    m = Module("sink")

    @m.handler("MSG", consumes="data.p2p")
    def sink(ctx):
        q = ctx.chan_seq
        if q % 397 == 0:
            raise RuntimeError("boom")          # -> sys.error
        if q % 31 == 0 and q not in tried:
            tried.add(q)
            return ctx.yield_()                  # comes back later: reordered
        if q % 53 == 0 and q not in tried:
            tried.add(q)
            return T.RETRY                       # comes back after a backoff: reordered
        (again if q in tried else first).append(q)
        time.sleep(0)
        return T.OK

    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=128)
    with boot([p, m], hal=hal, workers=2) as s:
        ch = s.channel("data.p2p")
        _emit_all(s, ch, T.make(n, type=s.type_id("MSG"), meta0=np.arange(n)))
        assert s.run(timeout=DEADLINE)
        err, codes = s.dead_letters("sys.error")
        assert ch.stats()["subs"][0]["in_flight"] == 0
    failed = sorted(err["seq"].tolist())
    assert failed == [q for q in range(1, n + 1) if q % 397 == 0]
    assert set(codes.tolist()) == {T.HANDLER_EXCEPTION}
    assert first == sorted(first)                                  # channel order
    assert sorted(first + again + failed) == list(range(1, n + 1))  # each exactly once
    assert sorted(again) == sorted(tried - set(failed))


def test_ordered_false_opts_out_several_batches_in_flight():
    """``produces(..., ordered=False)``: several batches of the subscriber may be in the
    scheduler at once (up to its window), so two workers run them concurrently; still every
    message is delivered exactly once."""
    n = 20_000
    seen = []
    c = Module("sink")

    @c.handler("MSG", consumes="data.p2p", batch=True)
    def sink(ctx, batch):
        seen.extend(batch.seq.tolist())
        time.sleep(0)
        return T.OK

    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=4096, ordered=False)
    with boot([p, c], hal="threads", workers=2, max_batch=64) as s:
        ch = s.channel("data.p2p")
        assert ch.ordered is False and ch.subs[0].ordered is False
        assert ch.stats()["subs"][0]["in_flight"] is None
        peak = 0
        recs = T.make(n, type=s.type_id("MSG"), meta0=np.arange(n))
        off = 0
        end = time.monotonic() + DEADLINE
        while off < n:
            assert time.monotonic() < end
            off += ch.emit(recs[off:off + 2048].copy())
            peak = max(peak, ch._inflight(ch.subs[0].type_id))
            if off < n:
                assert s.run(timeout=DEADLINE)
        assert s.run(timeout=DEADLINE)
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert sorted(seen) == list(range(1, n + 1))
    assert peak > 64            # more than one batch of the subscriber was in the ready queue


def test_ordered_option_on_open_subscribe_and_conflicts():
    from ggmk.errors import ChannelError
    m = Module("sink")

    @m.handler("MSG")
    def h(ctx):
        return T.OK

    @m.handler("OTHER")
    def h2(ctx):
        return T.OK

    with boot([m], hal="sim") as s:
        ch = s.channels.open("a.p2p", "MSG")
        assert ch.ordered and ch.subscribe("MSG").ordered
        fan = s.channels.open("a.fan", "MSG", mode="fanout", ordered=False)
        assert not fan.subscribe("MSG").ordered
        assert fan.subscribe("OTHER", ordered=True).ordered      # per subscriber
        assert not fan.subscribe().ordered       # host-side: take() pulls in order anyway
        with pytest.raises(ChannelError):
            s.channels.open("a.fan", "MSG", mode="fanout", ordered=True)
        assert s.channels.open("a.fan", "MSG", mode="fanout") is fan
        assert not s.channel("sys.dropped").ordered


def test_module_declaration_passes_ordered(tmp_path):
    m = Module("sink")

    @m.handler("MSG", consumes="x.p2p")
    def h(ctx):
        return T.OK

    p = Module("src")
    p.produces("x.p2p", "MSG", ordered=False)
    with boot([p, m], hal="sim") as s:
        ch = s.channel("x.p2p")
        assert ch.ordered is False and not ch.subs[0].ordered


def test_the_worker_that_finishes_an_ordered_batch_runs_the_next_without_waking_another(
        wait_until):
    """An ordered subscriber has one batch in flight; when it finishes, the thread that ran it
    hands the next to the scheduler *without* waking a parked worker: that thread looks for
    work right after (the worker loop's has_work, or a borrowed worker's give-back), and a
    woken worker could only race it for that one batch (a futex wake-up, a GIL hand-off and a
    park per batch). Here the host runs a borrowed worker's steps (caller runs) while the
    other worker is parked: all 128 batches run on the host's thread, each message once and
    in order, and the parked worker is never woken (without the hand-over: woken at the
    first batch's end)."""
    n, batch = 8192, 64
    seen = []
    m = Module("sink")

    @m.handler("MSG", consumes="data.p2p", batch=True)
    def sink(ctx, b):
        seen.extend(b.records["seq"].tolist())
        return T.OK
    p = Module("src")
    p.produces("data.p2p", "MSG", capacity=n)
    with boot([p, m], hal="threads", workers=2, max_batch=batch) as s:
        ch = s.channel("data.p2p")
        hal = s.hal
        assert wait_until(lambda: len(hal._parked) == 2, timeout=30)
        w0 = hal.wakes
        hal.help(lambda: len(seen) == n, time.monotonic() + DEADLINE,
                 before=lambda: ch.emit(T.make(n, type=s.type_id("MSG"))))
        wakes = hal.wakes - w0
        assert s.run(timeout=DEADLINE)
        st = ch.stats()
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert seen == list(range(1, n + 1))
    assert st["emitted"] == n and st["subs"][0]["in_flight"] == 0
    assert wakes == 0, f"{wakes} wake-up(s) of the parked worker"
