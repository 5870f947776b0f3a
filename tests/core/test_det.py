"""The tick stage (core/det.py) where it can break: real threads with 2-3 workers, children
numbered by (parent seq, emit order), host input in several submit() calls, and retries of
non-deterministic tasks in a deterministic system."""
import time

import numpy as np
import pytest

import ggmk
from ggmk import OK, RETRY


def _tree_module():
    m = ggmk.Module("tree")

    @m.handler("NODE", deterministic=True)          # per-task: 2 children per task, depth 3
    def node(ctx):
        t = ctx.task
        if t.meta1 < 3:
            ctx.emit("NODE", meta0=t.meta0 * 2, meta1=t.meta1 + 1)
            ctx.emit("NODE", meta0=t.meta0 * 2 + 1, meta1=t.meta1 + 1)
        if t.meta0 % 7 == 0 and t.yield_count == 0:
            return ctx.yield_()
        if t.meta0 % 11 == 0 and t.retries == 0:
            return RETRY
        return OK

    @m.handler("LEAF", batch=True, deterministic=True)
    def leaf(ctx, batch):
        ctx.emit_batch("NODE", meta0=batch.meta0 + 1, meta1=np.full(len(batch), 3, np.uint64))

    return m


def _run(hal, workers, *, parts=1, seed=0, pause=0.0):
    with ggmk.boot([_tree_module()], workers=workers, hal=hal, seed=seed,
                   deterministic=True) as s:
        for part in np.array_split(np.arange(600, dtype=np.uint64), parts):
            s.submit("NODE", meta0=part, deterministic=True)
            s.submit("LEAF", meta0=part[:5], deterministic=True)
            if pause:
                time.sleep(pause)     # let the workers get going between submits (perturbation)
        assert s.run(timeout=60)
        assert s.stats()["sched"]["outstanding"] == 0
        return s.trace_hash()


def test_children_numbered_by_parent_not_by_flush_order():
    ref = _run("sim", 1)
    for workers in (2, 3):
        hashes = {_run("threads", workers) for _ in range(4)}
        assert hashes == {ref}, workers


def test_input_in_several_submits_is_one_tick_whatever_the_timing():
    ref = _run("sim", 1, parts=10)
    assert {_run("threads", 2, parts=10, pause=0.002) for _ in range(3)} == {ref}
    assert _run("threads", 3, parts=10) == ref


@pytest.mark.parametrize("seed", range(12))
def test_sim_seeds_agree(seed):
    assert _run("sim", 3, parts=3, seed=seed) == _run("sim", 1, parts=3)


def test_retry_of_a_non_deterministic_task_runs_in_a_deterministic_system(hal):
    m = ggmk.Module("m")
    seen = []

    @m.handler("FETCH")
    def fetch(ctx):
        seen.append(ctx.task.retries)
        return RETRY if ctx.task.retries < 2 else OK

    with ggmk.boot([m], workers=2, hal=hal, deterministic=True) as s:
        s.submit("FETCH", meta0=np.arange(50))
        assert s.run(timeout=20)
        st = s.stats()["types"]["FETCH"]
        assert sorted(seen) == sorted([0, 1, 2] * 50)
        assert st["ok"] == 50 and st["retry"] == 100
        # one enqueue per attempt, like the dequeues (a retry was counted twice)
        assert st["enqueued"] == st["dequeued"] == 150


def _due_module(seen):
    m = ggmk.Module("d")

    @m.handler("STEP", deterministic=True)
    def step(ctx):
        seen.append((ctx.tick, ctx.task.meta0 // 1000))
        if 2000 <= ctx.task.meta0 < 2003:     # a handler defers its next hop (a timer)
            ctx.system.submit("STEP", meta0=ctx.task.meta0 + 1, deterministic=True,
                              due=ctx.tick + 2)

    return m


def _due_run(hal, workers, wait_until=None):
    seen = []
    with ggmk.boot([_due_module(seen)], workers=workers, hal=hal, deterministic=True) as s:
        s.submit("STEP", meta0=np.arange(3), deterministic=True)
        s.submit("STEP", meta0=np.arange(1000, 1003), deterministic=True, due=5)
        s.submit("STEP", meta0=2000, deterministic=True, due=7)
        opened = False
        if wait_until is not None:
            # the host does something else before run(): a worker that could open a tick now
            # does (it opened tick 5 at once, and run() put the plain input in tick 6)
            opened = wait_until(lambda: s.det.tick > 0, 0.2)
        assert s.run(timeout=30)
        assert s.stats()["sched"]["outstanding"] == 0
        return s.trace_hash(), sorted(set(seen)), opened


def test_host_input_with_a_due_tick_waits_for_run_whatever_the_timing(wait_until):
    """A host's submit(due=T) went straight to the tick stage: a worker opened tick T before
    run(), and the plain input run() released then went to tick T+1 instead of tick 1, so the
    trace hash depended on when the host called run(). Now it waits for run() as plain input
    does: same hash with or without a pause before run(), on 1, 2 and 3 workers (and on sim).
    A handler's own deferral (due from inside a tick) still goes to its tick at once."""
    ref = _due_run("sim", 1)
    assert ref[1] == [(1, 0), (5, 1), (7, 2), (9, 2), (11, 2), (13, 2)]
    for workers in (1, 2, 3):
        h, ticks, opened = _due_run("threads", workers, wait_until)
        assert not opened and (h, ticks) == ref[:2], workers
        assert _due_run("threads", workers)[:2] == ref[:2]
