"""Per-worker bump regions (SPEC §4 "bump (transient, reset each tick)"): ``ctx.bump_alloc``
takes transient memory from the handler's worker's own region, reset (poisoned in debug mode)
at the start of that worker's next step, or as a host gives back a worker it borrowed for a
direct request. On real threads with 2 workers: handlers of both workers allocate and check
their memory while the other worker resets its region; the poison after a reset; fails
counted; ``arena.stats()["bump"]`` totals over the shared and the worker regions; the sandbox's
``ctx.bump_alloc``."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.core.alloc import MIN_SIZE, POISON, Arena
from ggmk.testing import Sandbox


@pytest.fixture
def fast_switch():
    """Threads switch the GIL often, so handlers of both workers interleave with resets."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _in_region(region, ptr, n) -> bool:
    off = ptr - region.arena.base
    return region.start <= off and off + n <= region.start + region.size


# ----------------------------------------------------------------------------- the arena
def test_worker_regions_split_the_bump_area_and_stats_sum_them():
    a = Arena(MIN_SIZE)
    s0 = a.bump_alloc(100)                       # the shared region, before any split
    r0, r1 = a.worker_bump(0, 2), a.worker_bump(1, 2)
    assert a.worker_bump(1, 2) is r1             # asked again: the same region
    shared = a.stats()["bump"]["shared_bytes"]
    assert shared == (a.bump_size // 2) & ~15
    assert r0.start == a.bump_start + shared and r1.start == r0.start + r0.size
    assert r1.start + r1.size <= a.bump_start + a.bump_size

    p0 = r0.alloc(1)
    p1, p2 = r1.alloc(17), r1.alloc(0)
    assert (p0 - a.base) % 16 == 0 and p2 == p1 + 32
    assert _in_region(r0, p0, 16) and _in_region(r1, p1, 48)
    assert r1.alloc(r1.size) == 0                # full: 0, counted
    assert a.bump_alloc(shared) == 0             # the shared region kept only its half
    a.view(p1, 48)[:] = 7                        # bounded by what the region handed out
    with pytest.raises(ValueError, match="past the bump"):
        a.view(p1, 49)
    with pytest.raises(ValueError, match="past the bump"):
        a.view(s0, 200)

    b = a.stats()["bump"]
    assert b["allocs"] == 4 and b["fails"] == 2 and b["live"] == 4 and b["frees"] == 0
    assert b["used_bytes"] == 112 + 16 + 48
    assert b["free_bytes"] == a.bump_size - b["used_bytes"]
    assert b["high_watermark"] == 112 + 16 + 48
    assert [w["allocs"] for w in b["workers"]] == [1, 2]
    assert [w["fails"] for w in b["workers"]] == [0, 1]
    assert a.stats()["total"]["used_bytes"] == b["used_bytes"]

    assert r1.reset() == 2                       # a worker's reset leaves the rest alone
    assert a.bump_reset() == 1
    b = a.stats()["bump"]
    assert b["frees"] == 3 and b["live"] == 1 and b["used_bytes"] == 16 and b["resets"] == 2
    assert b["high_watermark"] == 112 + 16 + 48  # peaks stay
    assert r1.alloc(5) == p1                     # the region is reused from its start
    a.check()


def test_worker_bump_arguments():
    a = Arena(MIN_SIZE)
    r = a.worker_bump(0, 3)
    with pytest.raises(ValueError, match="split into 3 worker regions"):
        a.worker_bump(0, 2)
    with pytest.raises(ValueError, match="wid"):
        a.worker_bump(3, 3)
    with pytest.raises(TypeError, match="ctx.bump_alloc: nbytes"):
        r.alloc(True)
    with pytest.raises(ValueError, match="ctx.bump_alloc: nbytes"):
        r.alloc(-1)
    assert r.alloc(np.int64(8)) and r.allocs == 1
    b = Arena(MIN_SIZE)
    b.bump_alloc(b.bump_size - 16)               # the shared region holds more than its half
    with pytest.raises(ValueError, match="bump_reset"):
        b.worker_bump(0, 2)


def test_debug_worker_reset_poisons_only_its_region():
    a = Arena(MIN_SIZE, debug=True)
    r0, r1 = a.worker_bump(0, 2), a.worker_bump(1, 2)
    p0, p1 = r0.alloc(40), r1.alloc(40)
    a.view(p0, 40)[:] = 1
    a.view(p1, 40)[:] = 2
    r0.reset()
    assert (a.buffer[p0 - a.base:p0 - a.base + 48] == POISON).all()
    assert (a.view(p1, 40) == 2).all()


# ----------------------------------------------------------------------------- the kernel
def test_both_workers_allocate_while_the_other_resets(fast_switch, wait_until):
    """Steps of 8 tasks, batches of 4, on 2 workers; each batch takes one bump block per task, fills it with
    its own token, gives the GIL away, then checks every block of the batch: a reset of the
    other worker's region (poisoned: debug) or a block handed out twice would show."""
    m = ggmk.Module("bumpw")
    bad, runs = [], [0, 0]                        # (runs: each worker writes its own)

    @m.handler("BW", batch=True, max_batch=4)
    def bw(ctx, batch):
        a = ctx.arena
        region = a.worker_bump(ctx.worker, 2)
        blocks = []
        for tok in batch.records["meta0"].tolist():
            p = ctx.bump_alloc(256)
            if not p or not _in_region(region, p, 256):
                bad.append(("where", ctx.worker, p))
                continue
            a.view(p, 256)[:] = tok & 0x7F        # (never POISON)
            blocks.append((p, tok & 0x7F))
        time.sleep(0)                             # the other worker runs, and resets
        for p, v in blocks:
            if not (a.view(p, 256) == v).all():
                bad.append(("clobbered", ctx.worker, p))
        runs[ctx.worker] += 1
        return ggmk.OK

    with ggmk.boot([m], workers=2, debug=True, max_batch=8) as system:
        tok = 0

        def both_busy():
            nonlocal tok
            system.submit_batch(T.make(400, type=system.type_id("BW"),
                                       meta0=np.arange(tok, tok + 400, dtype=np.uint64)))
            tok += 400
            system.run(timeout=60)
            return min(runs) >= 50 or bad
        assert wait_until(both_busy, 60)
        assert system.run(timeout=60)
        st = system.stats()
    assert bad == []
    assert all(w["resets"] >= 20 for w in st["arena"]["bump"]["workers"])
    t = st["types"]["BW"]
    assert t["enqueued"] == t["dequeued"] == t["ok"] == tok and t["fail"] == 0
    b = st["arena"]["bump"]
    assert b["allocs"] == tok and b["fails"] == 0
    assert b["allocs"] == sum(w["allocs"] for w in b["workers"])
    # every allocation is dropped by a reset (the workers' next steps) or still live
    assert b["frees"] + b["live"] == tok
    # reset at each step: a region never held more than one step's tasks (8) at a time
    assert all(w["high_watermark"] <= 8 * 256 for w in b["workers"])


def _one_task_system(m, **kw):
    return ggmk.boot([m], workers=1, debug=True, **kw)


def test_debug_the_next_step_poisons_what_the_last_one_took(wait_until):
    m = ggmk.Module("bumpp")
    got = {}

    @m.handler("BP")
    def bp(ctx):
        if ctx.task.meta0 == 0:
            p = ctx.bump_alloc(64)
            ctx.arena.view(p, 64)[:] = 0x11
            got["p"] = p
        else:                          # a later step of the only worker: it was reset first
            p = got["p"]
            got["then"] = bytes(ctx.arena.buffer[p - ctx.arena.base:p - ctx.arena.base + 64])
            got["again"] = ctx.bump_alloc(64)
        return ggmk.OK

    with _one_task_system(m) as system:
        system.submit("BP", 0)
        assert system.run(timeout=60)
        system.submit("BP", 1)
        assert system.run(timeout=60)
        b = system.stats()["arena"]["bump"]
    assert got["then"] == bytes([POISON]) * 64
    assert got["again"] == got["p"]            # the region starts over
    assert b["allocs"] == 2 and b["frees"] >= 1


def test_a_full_region_answers_0_and_counts_the_fail():
    m = ggmk.Module("bumpf")
    got = []

    @m.handler("BF")
    def bf(ctx):
        size = ctx.arena.worker_bump(0, 1).size
        got.append((ctx.bump_alloc(size), ctx.bump_alloc(1), size))
        return ggmk.OK

    with _one_task_system(m) as system:
        system.submit("BF", 0)
        assert system.run(timeout=60)
        b = system.stats()["arena"]["bump"]
        t = system.stats()["types"]["BF"]
    (whole, more, size), = got
    assert whole and more == 0
    assert b["fails"] == 1 == b["workers"][0]["fails"] and b["allocs"] == 1
    assert b["high_watermark"] == size
    assert t["ok"] == 1 and t["fail"] == 0


def test_a_direct_request_resets_its_borrowed_worker_as_it_gives_it_back(wait_until):
    """System.direct runs the handler on this thread as a parked worker's one-record batch,
    outside any step: the region is reset when the worker is given back (poisoned: debug),
    never during the handler."""
    m = ggmk.Module("bumpd")
    m.produces("bumpd.req", "BD_REQ")
    got = []

    @m.handler("BD_REQ", consumes="bumpd.req")
    def bd(ctx):
        p = ctx.bump_alloc(32)
        ctx.arena.view(p, 32)[:] = 0x22
        q = ctx.bump_alloc(32)                 # still valid: nothing reset mid-handler
        got.append((ctx.worker, p, bytes(ctx.arena.view(p, 32)), q))
        return ggmk.OK

    with ggmk.boot([m], workers=2, debug=True) as system:
        hal = system.hal
        hal.park_timeout = 3600.0              # parked for good: the call finds one to borrow
        hal.wake(2)
        assert wait_until(lambda: len(hal._parked) == 2, 30)
        ch = system.channel("bumpd.req")
        runs = system.direct_runs
        assert system.direct(ch, 5)
        assert system.direct_runs == runs + 1
        (w, p, seen, q), = got
        region = system.arena.worker_bump(w, 2)
        assert seen == b"\x22" * 32 and q == p + 32 and _in_region(region, p, 64)
        assert region.top == 0 and region.frees == 2           # given back: reset
        off = p - system.arena.base
        assert (system.arena.buffer[off:off + 64] == POISON).all()
        assert system.run(timeout=60)
        t = system.stats()["types"]["BD_REQ"]
    assert t["ok"] == 1 and t["fail"] == 0


# ----------------------------------------------------------------------------- the sandbox
def test_the_sandbox_ctx_bump_allocates_and_resets_per_batch():
    m = ggmk.Module("bumps")
    got = []

    @m.handler("BS")
    def bs(ctx):
        p = ctx.bump_alloc(100)
        ctx.arena.view(p, 100)[:] = ctx.task.meta0
        got.append(p)
        return ggmk.OK

    with Sandbox([m]) as sb:
        assert sb.feed("BS", [1, 2, 3]) == [0, 0, 0]      # one batch: three blocks
        assert sb.feed("BS", 4) == 0                        # the next batch: reset first
        b = sb.arena.stats()["bump"]
    assert got[1] == got[0] + 112 and got[2] == got[1] + 112
    assert got[3] == got[0]
    assert b["allocs"] == 4 and b["frees"] == 3 and b["live"] == 1 and b["resets"] == 1
