"""Determinism mode: a host thread's publish on a deterministic channel is host input, like a
submit. It waits for the next ``run()`` and its subscribers' tasks run in that run()'s tick,
beside its submissions, so the trace hash and the tick count do not depend on the HAL, the
worker count or what the workers did between the publish and run().

Before the fix the message went straight to the channel's held list, and an idle worker's
``drain_some`` opened the channel boundary before ``run()``. The messages then ran in a tick of
their own (threads: a worker woken by the submit got there first; sim: nothing runs before
run(), so they joined the submit's tick). The hash and the tick count changed with the HAL."""
import numpy as np
import pytest

import ggmk
from ggmk import OK
from ggmk.typereg import load_types

TYPES = ("[types.STEP]\nid = 100\ndeterministic = true\n"
         "[types.CMD]\nid = 101\ndeterministic = true\n")
N_STEP, N_CMD = 4, 10


def _mods(ran):
    a = ggmk.Module("a")
    a.produces("cmd.in", "CMD")

    @a.handler("STEP", deterministic=True)
    def step(ctx):
        if ctx.task.meta1 < 5:
            ctx.emit("STEP", meta0=ctx.task.meta0, meta1=ctx.task.meta1 + 1)
        return OK

    @a.handler("CMD", deterministic=True, consumes="cmd.in")
    def cmd(ctx):
        ran.append((int(ctx.tick), int(ctx.task.meta0)))
        return OK

    return [a]


def _run(hal, workers, seed=0, *, poll=False, split=False):
    """submit 4 STEP, publish 10 CMD on the deterministic channel cmd.in, run(). ``poll``:
    then do what an idle worker does (``drain_some``) before run(), from this thread, so the
    window the workers had before the fix is taken every time. ``split``: publish in two
    calls with such a poll in between. Returns (hash, ticks, CMD runs by tick)."""
    ran = []
    with ggmk.boot(_mods(ran), workers=workers, hal=hal, seed=seed, deterministic=True,
                   types=load_types(TYPES)) as s:
        ch = s.channel("cmd.in")
        assert ch.det
        s.submit("STEP", meta0=np.arange(N_STEP, dtype=np.uint64), deterministic=True)
        if split:
            assert ch.publish(meta0=np.arange(4, dtype=np.uint64), count=4) == 4
            s.channels.drain_some()
            assert ch.publish(meta0=np.arange(4, N_CMD, dtype=np.uint64), count=N_CMD - 4) \
                == N_CMD - 4
        else:
            assert ch.publish(meta0=np.arange(N_CMD, dtype=np.uint64), count=N_CMD) == N_CMD
        if poll:
            s.channels.drain_some()
            # still waiting for run(), and taking the channel's room meanwhile
            assert ch.stats()["depth"] == N_CMD and not s.idle()
        assert s.run(timeout=60)
        h, ticks = s.trace_hash(), s.stats()["det"]["tick"]
        # accounting: every message ran once, nothing dead-lettered
        assert len(s.dead_letters("sys.dropped")[0]) == 0
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert sorted(m for _, m in ran) == list(range(N_CMD))
    return h, ticks, sorted(ran)


def test_host_publish_runs_in_the_tick_of_run_on_every_hal_and_worker_count():
    ref = _run("sim", 1)
    h, ticks, ran = ref
    # the publish is run()'s input: its tasks run in tick 1, with the submitted STEPs
    assert ran == [(1, m) for m in range(N_CMD)] and ticks == 6
    seen = {("sim", 1, 0): ref}
    for seed in range(3):
        for workers in (1, 3):
            seen[("sim", workers, seed)] = _run("sim", workers, seed)
    for i in range(10):
        seen[("threads", 2, i)] = _run("threads", 2)
    for workers in (1, 3):
        seen[("threads", workers, "poll")] = _run("threads", workers, poll=True)
    bad = {k: v[:2] for k, v in seen.items() if v != ref}
    assert not bad, (ref[:2], bad)


@pytest.mark.parametrize("hal,workers", [("sim", 2), ("threads", 2)])
def test_an_idle_workers_poll_before_run_does_not_open_the_boundary(hal, workers):
    # what a worker may do between the publish and run(), done every time: the same hash as
    # a run where nothing happened in between, whether published in one call or two
    ref = _run("sim", 1)
    assert _run(hal, workers, poll=True) == ref
    assert _run(hal, workers, split=True) == ref


def test_host_publish_on_a_det_channel_is_dropped_by_close_and_halt_counts_it():
    # staged host input is accounted like held messages: close() drops it, one per copy
    ran = []
    with ggmk.boot(_mods(ran), workers=2, hal="threads", deterministic=True,
                   types=load_types(TYPES)) as s:
        ch = s.channel("cmd.in")
        assert ch.publish(meta0=np.arange(3, dtype=np.uint64), count=3) == 3
        assert s.channels.close("cmd.in") == 3
        recs, codes = s.dead_letters("sys.dropped")
        assert len(recs) == 3 and set(codes.tolist()) == {ggmk.CHAN_CLOSED}
        assert s.run(timeout=30)
    assert ran == []
