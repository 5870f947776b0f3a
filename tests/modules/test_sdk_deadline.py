"""``sdk.send``'s deadline (the bound on a task's wait for a full channel), on real kernels:
each task has its own clock (keyed on its seq, which a waiting task keeps), per system; a
batch handler's sends are bounded too; the clock table stays small (entries of tasks that left
without a word age out)."""
from __future__ import annotations

import time

import ggmk
from ggmk import sdk
from ggmk import task as T
from ggmk.testing import Sandbox

D = 100                     # the deadline (ticks, 1 kHz)


def _producer(seen: dict, *, quit_after_wait=()):
    """PROD sends (meta0, meta1) on the lossless ``p.out`` (8 slots) with deadline ``D``.
    ``seen[meta1]`` = [tick of its first WAIT, tick of its CHAN_FULL]. A task whose meta1 is
    in ``quit_after_wait`` leaves on its run after a WAIT without sending (BAD_STATE-like:
    CHAN_CLOSED), as a task that fails, or a phase that moves on, does."""
    app = ggmk.Module("app")
    app.produces("p.out", "P_MSG", capacity=8)

    @app.handler("PROD")
    def prod(ctx):
        me = ctx.task.meta1
        now = ctx.system.wall_tick()
        if me in seen and me in quit_after_wait:
            return T.CHAN_CLOSED
        c = sdk.send(ctx, "p.out", ctx.task.meta0, me, deadline=D)
        if c == ggmk.WAIT:
            seen.setdefault(me, [now, None])
        elif c == T.CHAN_FULL:
            seen[me][1] = now
        return c
    return app


def _errors(system, got: list):
    """(meta1, code name) of every sys.error row so far (``dead_letters`` takes them: kept
    in ``got``)."""
    recs, codes = system.dead_letters("sys.error")
    got += [(int(r["meta1"]), T.CODE_NAMES.get(int(c), int(c))) for r, c in zip(recs, codes)]
    return sorted(got)


def _fill(system):
    """A subscriber that never reads, and the channel filled (8 fillers: meta0 7, meta1
    100..107)."""
    sub = system.channel("p.out").subscribe(name="stalled")
    system.submit("PROD", meta0=7, meta1=list(range(100, 108)))
    assert system.run(timeout=30)
    return sub


def test_a_look_alike_task_does_not_inherit_a_gone_tasks_clock(wait_until):
    """(before: the clock was keyed on type/channel/tenant/meta0/payload: B, alike in those,
    took the first-wait tick A left behind and failed after waiting about D/2 ticks)"""
    seen, got = {}, []
    with ggmk.boot([_producer(seen, quit_after_wait={1})], workers=2) as system:
        sub = _fill(system)
        system.submit("PROD", meta0=0, meta1=1)                  # A: waits once, then leaves
        assert wait_until(lambda: _errors(system, got) == [(1, "CHAN_CLOSED")], 30)
        a_first = seen[1][0]
        assert wait_until(lambda: system.wall_tick() >= a_first + D // 2, 30)
        system.submit("PROD", meta0=0, meta1=2)                  # B: alike but for meta1
        assert wait_until(lambda: len(_errors(system, got)) == 2, 30)
        assert _errors(system, got) == [(1, "CHAN_CLOSED"), (2, "CHAN_FULL")]
        first, failed = seen[2]
        assert failed - first >= D, f"B failed after waiting {failed - first} ticks"
        assert len(sub.take()) == 8


def test_each_system_keeps_its_own_clocks(wait_until):
    """A task left waiting in one system (halted) does not shorten the wait of the task with
    the same type and seq in another. (before: one process-wide table measured in each
    system's own ticks: the second system's task failed at once)"""
    seen1, seen2, got = {}, {}, []
    with ggmk.boot([_producer(seen1)], workers=2) as s1:
        _fill(s1)
        s1.submit("PROD", meta0=0, meta1=1)
        assert wait_until(lambda: 1 in seen1, 30)
        s1.halt(timeout=0)
    assert _errors(s1, []) == [(1, "HALTED")]                    # it left at halt, waiting
    with ggmk.boot([_producer(seen2)], workers=2) as s2:
        _fill(s2)
        assert wait_until(lambda: s2.wall_tick() > seen1[1][0] + D + 10, 30)
        s2.submit("PROD", meta0=0, meta1=1)                      # the same type, seq, meta
        assert wait_until(lambda: _errors(s2, got) == [(1, "CHAN_FULL")], 30)
        first, failed = seen2[1]
        assert failed - first >= D, f"failed after waiting {failed - first} ticks"


def test_a_batch_handlers_send_reaches_its_deadline(wait_until):
    """A batch handler's send fails with CHAN_FULL once its batch's longest waiting record
    has waited past the deadline, even while new records keep joining its batches.
    (before: a batch handler's send always answered WAIT: the task waited for good)"""
    app = ggmk.Module("app")
    app.produces("p.out", "P_MSG", capacity=8)
    seen = {}

    @app.handler("PROD", batch=True)
    def prod(ctx, batch):
        now = ctx.system.wall_tick()
        for m0 in batch.meta0.tolist():
            c = sdk.send(ctx, "p.out", m0, deadline=50)
            if c in (ggmk.WAIT, T.CHAN_FULL):
                for k in batch.meta0.tolist():
                    seen.setdefault(k, [now, None])
                    if c == T.CHAN_FULL:
                        seen[k][1] = now
            if c:
                return c
        return ggmk.OK

    with ggmk.boot([app], workers=2) as system:
        sub = system.channel("p.out").subscribe(name="stalled")
        system.submit("PROD", meta0=list(range(8)))          # fills the channel
        assert system.run(timeout=30)
        system.submit("PROD", meta0=99)                      # finds it full
        n = 100
        t_end = time.monotonic() + 30
        while seen.get(99, [0, None])[1] is None and time.monotonic() < t_end:
            system.submit("PROD", meta0=n)                   # a newcomer every few ticks
            n += 1
            system.run(0.005, until_idle=False)
        assert seen[99][1] is not None and seen[99][1] - seen[99][0] >= 50
        assert system.run(timeout=30)                        # the newcomers fail in turn
        assert len(sub.take()) == 8
        recs, codes = system.dead_letters("sys.error")
    assert sorted(recs["meta0"].tolist()) == [99] + list(range(100, n))
    assert set(codes.tolist()) == {T.CHAN_FULL}
    # (the newcomers of 99's batch fail with it: a batch handler returns one code here)


def test_the_clock_table_stays_small():
    """Entries of tasks that leave without another send (they fail, or are halted) age out;
    one that sends (OK) or reaches its deadline is dropped at once. (before: a process-wide
    table kept them until 65536 entries)"""
    m = ggmk.Module("app")
    m.produces("p.out", "P_MSG")

    @m.handler("PROD")
    def prod(ctx):
        if ctx.task.meta1:                        # after its WAIT: leaves without a send
            return T.CHAN_CLOSED
        c = sdk.send(ctx, "p.out", ctx.task.meta0, deadline=D)
        return ctx.wait_(meta1=int(ctx.task.meta0 < 3000)) if c == ggmk.WAIT else c

    with Sandbox(m) as sb:
        sb.capacity("p.out", 0)
        sb.feed("PROD", meta0=list(range(3000)))
        w = sb.system._sdk_waits
        assert len(w.cur) + len(w.old) == 3000
        sb.advance(1)                             # they leave (CHAN_CLOSED)
        assert [e[3] for e in sb.errors] == [T.CHAN_CLOSED] * 3000
        for i in range(3):                        # a later waiter now and then
            sb.advance(sdk.sends._KEEP + 1)
            sb.feed("PROD", meta0=5000 + i)
        assert len(w.cur) + len(w.old) == 1       # the last one's
        assert [e[:2] for e in sb.errors[3000:]] == [("PROD", 5000), ("PROD", 5001)]
        assert sb.errors[-1][3] == T.CHAN_FULL    # (its deadline: dropped too)
        sb.capacity("p.out", None)                # room: the waiter sends, its entry goes
        sb.advance(1)
        assert len(w.cur) + len(w.old) == 0
        assert [e.meta0 for e in sb.take("p.out")] == [5002]


def test_sandbox_tasks_have_their_own_clocks():
    """In the sandbox too (its tasks get fresh seqs, as the kernel's submit and emit routes
    give): two look-alike tasks waiting from different ticks fail exactly D + 1 ticks after
    their own first WAIT."""
    m = ggmk.Module("app")
    m.produces("p.out", "P_MSG")
    failed = {}

    @m.handler("PROD")
    def prod(ctx):
        c = sdk.send(ctx, "p.out", ctx.task.meta0, deadline=D)
        if c == T.CHAN_FULL:
            failed[ctx.task.seq] = ctx.tick
        return c

    with Sandbox(m) as sb:
        sb.capacity("p.out", 0)
        assert sb.feed("PROD") == ggmk.WAIT                 # seq 1 at tick 0
        sb.advance(40)
        assert sb.feed("PROD") == ggmk.WAIT                 # seq 2 at tick 40
        sb.advance(200)
        assert failed == {1: D + 1, 2: 40 + D + 1}
        assert [e[3] for e in sb.errors] == [T.CHAN_FULL, T.CHAN_FULL]
        assert sb.pending() == 0
