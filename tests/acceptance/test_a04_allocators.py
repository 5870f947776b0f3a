"""SPEC §14 item 4: allocators survive contention; no leaks in long runs; stats match observed
allocations.

Real OS threads hammer one arena with random alloc / alloc_many / retain / hand-off / fan-out /
release / release_many / bump operations. Every payload is stamped with a token unique to its
allocation over its whole requested length and verified before every release, so two live
allocations that overlapped (or a slot freed while still referenced) would show up as a bad stamp.
Afterwards nothing may be live, free bytes must be back to their start values, and every counter
in ``stats()`` must equal what the threads observed.

CI form: a few seconds. Long form (``GGMK_LONG=1``): many rounds of many more operations.
"""
import os
import queue
import random
import sys
import threading

import numpy as np
import pytest

from ggmk.core.alloc import MIN_SIZE, Arena, size_class

LONG = os.environ.get("GGMK_LONG") == "1"
THREADS = 4
TIMEOUT = 120.0


@pytest.fixture
def fine_switching():
    # switch threads far more often than the default 5 ms, so operations really interleave
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def stamp(arena, ptr, n, token):
    v = arena.view(ptr, n)
    w = n // 8 * 8
    v[:w].view(np.uint64)[:] = token        # payloads are 16-byte aligned: the u64 view is exact
    v[w:] = token & 0xFF


def intact(arena, ptr, n, token):
    v = arena.view(ptr, n)
    w = n // 8 * 8
    return bool((v[:w].view(np.uint64) == token).all() and (v[w:] == (token & 0xFF)).all())


def random_size(rng):
    r = rng.random()
    if r < 0.50:
        return rng.randint(0, 48)            # slab
    if r < 0.85:
        return rng.randint(49, 2048)
    if r < 0.96:
        return rng.randint(2049, 16384)
    return rng.randint(16385, 131072)        # the few largest slots: fails and spills happen


class Worker(threading.Thread):
    """One thread of random arena traffic; records everything it observed."""

    def __init__(self, tid, arena, inboxes, ops, seed, barrier, max_live=64):
        super().__init__(name=f"alloc-worker-{tid}", daemon=True)
        self.tid, self.arena, self.inboxes, self.ops = tid, arena, inboxes, ops
        self.rng = random.Random(seed)
        self.barrier, self.max_live = barrier, max_live
        self.seq = 0
        self.allocs = {}                     # capacity class -> successful allocations
        self.spills = {}                     # asked-for class -> allocations served larger
        self.fails = {}                      # asked-for class (13 = too large) -> failures
        self.freed = 0                       # releases that reported the payload freed
        self.bump_allocs = self.bump_fails = 0
        self.bumps = []                      # (ptr, n, token)
        self.error = None

    def token(self):
        self.seq += 1
        return (self.tid + 1) << 48 | self.seq

    def _new(self, ptr, n, refs=1):
        c = size_class(n)
        if not ptr:
            self.fails[c] = self.fails.get(c, 0) + 1
            return None
        k = size_class(self.arena.capacity(ptr))
        self.allocs[k] = self.allocs.get(k, 0) + 1
        if k != c:
            self.spills[c] = self.spills.get(c, 0) + 1
        t = self.token()
        stamp(self.arena, ptr, n, t)
        return (ptr, n, t)

    def _check(self, rec, who):
        ptr, n, t = rec
        if not intact(self.arena, ptr, n, t):
            raise AssertionError(f"{who}: payload 0x{ptr:x} ({n} bytes) overwritten while live")

    def _drain(self):
        while True:
            try:
                rec = self.inboxes[self.tid].get_nowait()
            except queue.Empty:
                return
            self._check(rec, f"thread {self.tid} (received)")
            self.freed += self.arena.release(rec[0])

    def run(self):
        try:
            self._run()
        except BaseException as e:           # reported by the test, never swallowed
            self.error = e
            self.barrier.abort()

    def _run(self):
        a, rng = self.arena, self.rng
        own = []                             # records this thread holds one reference to
        others = [i for i in range(THREADS) if i != self.tid]
        for _ in range(self.ops):
            self._drain()
            r = rng.random()
            if r < 0.35 and len(own) < self.max_live:
                n = random_size(rng)
                rec = self._new(a.alloc(n), n)
                if rec:
                    own.append(rec)
            elif r < 0.42 and len(own) < self.max_live:
                n, count = random_size(rng) % 4096, rng.randint(1, 16)
                for p in a.alloc_many(n, count).tolist():
                    rec = self._new(p, n)
                    if rec:
                        own.append(rec)
            elif r < 0.50 and own:           # hand a reference to another thread
                rec = own[rng.randrange(len(own))]
                a.retain(rec[0])
                self.inboxes[rng.choice(others)].put(rec)
            elif r < 0.55:                   # fan-out: one payload, one reference per receiver
                n = random_size(rng) % 8192
                rec = self._new(a.alloc(n), n)
                if rec:
                    assert a.set_refs(rec[0], len(others)) is False
                    for i in others:
                        self.inboxes[i].put(rec)
            elif r < 0.62 and own:           # batch release of a random subset
                rng.shuffle(own)
                k = rng.randint(1, min(len(own), 16))
                batch, own = own[:k], own[k:]
                for rec in batch:
                    self._check(rec, f"thread {self.tid}")
                self.freed += a.release_many(np.array([p for p, _, _ in batch], dtype=np.uint64))
            elif r < 0.65:                   # bump: transient, never reset during the round
                n = rng.randint(0, 256)
                p = a.bump_alloc(n)
                if p:
                    t = self.token()
                    a.view(p, n)[:] = t & 0xFF
                    self.bumps.append((p, n, t))
                    self.bump_allocs += 1
                else:
                    self.bump_fails += 1
            elif own:
                i = rng.randrange(len(own))
                own[i], own[-1] = own[-1], own[i]
                rec = own.pop()
                self._check(rec, f"thread {self.tid}")
                self.freed += a.release(rec[0])
        for rec in own:
            self._check(rec, f"thread {self.tid}")
            self.freed += a.release(rec[0])
        for p, n, t in self.bumps:
            if not (a.view(p, n) == (t & 0xFF)).all():
                raise AssertionError(f"thread {self.tid}: bump 0x{p:x} overwritten")
        self.barrier.wait(TIMEOUT)           # after this no thread sends any more
        self._drain()


def run_round(arena, ops, seed):
    inboxes = [queue.SimpleQueue() for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    workers = [Worker(t, arena, inboxes, ops, seed * 1000 + t, barrier) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT)
        assert not w.is_alive(), f"{w.name} did not finish within {TIMEOUT}s"
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]
    return workers


def merged(workers, field):
    out = {}
    for w in workers:
        for k, v in getattr(w, field).items():
            out[k] = out.get(k, 0) + v
    return out


def assert_stats_match(arena, start, workers, totals):
    """Cumulative observations in ``totals`` (updated here) must equal ``arena.stats()``."""
    for field in ("allocs", "spills", "fails"):
        for k, v in merged(workers, field).items():
            totals[field][k] = totals[field].get(k, 0) + v
    totals["freed"] += sum(w.freed for w in workers)
    totals["bump_allocs"] += sum(w.bump_allocs for w in workers)
    totals["bump_fails"] += sum(w.bump_fails for w in workers)
    s = arena.stats()
    allocs, spills, fails = totals["allocs"], totals["spills"], totals["fails"]
    per_class = [s["slab"]] + s["block"]["bins"]
    for k, d in enumerate(per_class):
        assert d["allocs"] == allocs.get(k, 0), f"class {k}: allocs"
        assert d["frees"] == allocs.get(k, 0), f"class {k}: frees (leak?)"
        assert d["spills"] == spills.get(k, 0), f"class {k}: spills"
        assert d["fails"] == fails.get(k, 0), f"class {k}: fails"
        assert d["high_watermark"] <= d["total_bytes"]
    assert s["block"]["oversize"] == fails.get(13, 0)
    n_allocs = sum(allocs.values())
    assert s["slab"]["allocs"] + s["block"]["allocs"] == n_allocs > 0
    assert s["total"]["frees"] - s["bump"]["frees"] == totals["freed"] == n_allocs
    assert s["bump"]["allocs"] == totals["bump_allocs"] > 0
    assert s["bump"]["fails"] == totals["bump_fails"]
    assert s["bump"]["live"] == sum(len(w.bumps) for w in workers)
    assert s["bump"]["used_bytes"] == sum((max(n, 1) + 15) // 16 * 16
                                          for w in workers for _, n, _ in w.bumps)
    # no leaks: nothing live, every byte free again
    assert arena.live_count() == 0
    assert arena.bump_reset() == s["bump"]["live"]
    s = arena.stats()
    for part in ("slab", "block", "bump", "total"):
        assert s[part]["used_bytes"] == 0
        assert s[part]["free_bytes"] == start[part]["free_bytes"] == start[part]["total_bytes"]
    assert 0 < s["total"]["high_watermark"] <= s["total"]["total_bytes"]
    assert s["total"]["fails"] == sum(fails.values()) + totals["bump_fails"]
    arena.check()                            # headers, free lists and (debug) poison consistent


def new_totals():
    return {"allocs": {}, "spills": {}, "fails": {}, "freed": 0, "bump_allocs": 0,
            "bump_fails": 0}


def contention(debug, rounds, ops):
    arena = Arena(size=MIN_SIZE, debug=debug)   # small on purpose: fails and spills happen
    start = arena.stats()
    totals = new_totals()
    for r in range(rounds):
        workers = run_round(arena, ops, seed=r + (100 if debug else 0))
        assert_stats_match(arena, start, workers, totals)
    s = arena.stats()
    assert s["total"]["poison_faults"] == 0
    return s


def test_allocators_survive_contention_and_stats_match(fine_switching):
    contention(debug=False, rounds=2, ops=6000)


def test_debug_canary_has_no_false_positives_under_contention(fine_switching):
    s = contention(debug=True, rounds=2, ops=4000)
    assert s["total"]["debug"] is True


def test_exhaustion_under_contention_is_counted_exactly(fine_switching):
    """Each cycle, 4 threads ask for 2 slots of the 64 KiB bin (3 slots, plus 1 of 128 KiB to
    spill into): whatever the interleaving, exactly 4 succeed (one of them spilled) and 4 fail."""
    arena = Arena(size=MIN_SIZE)
    bins = arena.stats()["block"]["bins"]
    assert (bins[10]["slots"], bins[11]["slots"]) == (3, 1)
    cycles = 400 if LONG else 60
    barrier = threading.Barrier(THREADS)
    got = [[] for _ in range(THREADS)]
    errors = []

    def worker(tid):
        rng = random.Random(tid)
        try:
            for _ in range(cycles):
                if rng.random() < 0.5:
                    mine = [arena.alloc(40_000), arena.alloc(40_000)]
                else:
                    mine = arena.alloc_many(40_000, 2).tolist()
                mine = [p for p in mine if p]
                for p in mine:
                    stamp(arena, p, 40_000, tid + 1)
                got[tid].append(len(mine))
                barrier.wait(TIMEOUT)            # everyone has asked before anyone releases
                for p in mine:
                    assert intact(arena, p, 40_000, tid + 1), f"0x{p:x} shared by two threads"
                    assert arena.release(p)
                barrier.wait(TIMEOUT)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    if errors:
        raise errors[0]
    assert all(sum(g[i] for g in got) == 4 for i in range(cycles))
    s = arena.stats()
    b64, b128 = s["block"]["bins"][10], s["block"]["bins"][11]
    assert (b64["allocs"], b64["spills"], b64["fails"]) == (3 * cycles, cycles, 4 * cycles)
    assert (b128["allocs"], b128["fails"]) == (cycles, 0)
    assert b64["high_watermark"] == 3 * 65552 and b128["high_watermark"] == 131088
    assert s["block"]["high_watermark"] == 3 * 65552 + 131088
    assert s["total"]["frees"] == 4 * cycles and arena.live_count() == 0
    arena.check()


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long form: set GGMK_LONG=1")
@pytest.mark.parametrize("debug", [False, True])
def test_long_run_no_leaks(fine_switching, debug):
    contention(debug=debug, rounds=20, ops=50_000)
