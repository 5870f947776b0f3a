"""Unit tests of ggmk.core.alloc: layout, placement, stats, refcounts, batch paths, bump, canary."""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from ggmk.core import alloc as A
from ggmk.core.alloc import Arena
from ggmk.errors import AllocError, DoubleFree, InvalidPointer, UseAfterFree

MiB = 1 << 20


def stride(nbytes):
    """Slot bytes (header included) a request of nbytes uses when it is not spilled."""
    return A.SLAB_SLOT if nbytes <= 48 else max(64, 1 << (nbytes - 1).bit_length()) + 16


@pytest.fixture(scope="module")
def big():
    return Arena()  # default 64 MiB, shared by read-mostly tests


# ----------------------------------------------------------------------------- layout
def test_default_layout_follows_the_seed_split(big):
    s = big.stats()
    assert big.size == 64 * MiB == A.DEFAULT_SIZE
    assert A.BIN_SIZES == tuple(64 << i for i in range(12)) and A.MAX_ALLOC == 128 * 1024
    assert 0.099 * big.size < s["slab"]["total_bytes"] <= 0.10 * big.size
    assert 0.66 * big.size < s["block"]["total_bytes"] <= 0.68 * big.size
    assert 0.1999 * big.size < s["bump"]["total_bytes"] <= 0.20 * big.size
    assert s["total"]["total_bytes"] + s["total"]["reserved_bytes"] <= big.size
    assert s["slab"]["object_size"] == 48 and s["slab"]["slot_bytes"] == 64
    assert [b["size"] for b in s["block"]["bins"]] == list(A.BIN_SIZES)
    share = int(big.size * 0.68) // 12  # every bin gets the same share of the block region
    for b in s["block"]["bins"]:
        assert b["slots"] == share // (b["size"] + 16) and b["free_slots"] == b["slots"]
    assert s["total"]["used_bytes"] == 0 and s["total"]["free_bytes"] == s["total"]["total_bytes"]
    assert big.base % 64 == 0 and big.base == big.buffer.ctypes.data


@pytest.mark.parametrize("n", [0, 1, 16, 48, 49, 64, 65, 1000, 4096, 4097, 65536, 131072])
def test_payloads_are_16_byte_aligned_inside_the_buffer_in_the_right_class(big, n):
    p = big.alloc(n)
    try:
        assert p and p % 16 == 0 and big.owns(p)
        assert big.capacity(p) == (48 if n <= 48 else max(64, 1 << (n - 1).bit_length()))
        assert big.size_of(p) == n and big.view(p).size == n
        assert big.offset(p) == p - big.base
    finally:
        big.release(p)


def test_caller_buffer_is_used_in_place_even_when_misaligned():
    raw = np.zeros(5 * MiB + 3, dtype=np.uint8)
    buf = raw[3:]                                     # deliberately not 16-byte aligned
    arena = Arena(buffer=buf)
    p = arena.alloc(100)
    assert p % 16 == 0 and buf.ctypes.data <= p < buf.ctypes.data + buf.size
    arena.view(p)[:] = 0xAB
    start = p - buf.ctypes.data
    assert (buf[start:start + 100] == 0xAB).all()     # same memory, not a copy
    assert arena.size <= buf.size and arena.size % 64 == 0


def test_fresh_arena_is_not_touched_at_boot_and_never_allocated_slots_are_free():
    # our own zeroed buffer: headers stay zero (no page faulted in) until a slot is used
    arena = Arena(5 * MiB)
    assert not arena.buffer.any()
    arena.check()
    p = arena.alloc(100)
    arena.release(p)
    arena.check()
    with pytest.raises(InvalidPointer, match="free slot"):
        arena.release(p + A.HEADER_SIZE + 128)          # the next, never-allocated slot


def test_caller_buffer_with_garbage_is_initialised():
    buf = np.full(5 * MiB, 0xAB, dtype=np.uint8)       # not zero: every header must be written
    arena = Arena(buffer=buf)
    arena.check()
    ptrs = [arena.alloc(n) for n in (10, 100, 1000, 10000)]
    assert all(ptrs)
    arena.release_many(np.array(ptrs, dtype=np.uint64))
    arena.check()


@pytest.mark.parametrize("bad, exc", [
    (np.zeros(8 * MiB, dtype=np.int32), ValueError),
    (np.zeros((2, 4 * MiB), dtype=np.uint8), ValueError),
    (np.zeros(8 * MiB, dtype=np.uint8)[::2], ValueError),
    (np.zeros(1 * MiB, dtype=np.uint8), ValueError),
    (bytearray(8 * MiB), TypeError),
])
def test_bad_buffers_are_refused(bad, exc):
    with pytest.raises(exc):
        Arena(buffer=bad)


def test_too_small_arena_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match=str(A.MIN_SIZE)):
        Arena(size=1 * MiB)


def test_every_bin_has_a_slot_at_minimum_size():
    s = Arena(size=A.MIN_SIZE).stats()
    assert all(b["slots"] >= 1 for b in s["block"]["bins"])


# ----------------------------------------------------------------------------- placement, stats
def test_size_class_boundaries():
    assert [A.size_class(n) for n in (0, 48, 49, 64, 65, 128, 129, 131072, 131073)] == \
        [0, 0, 1, 1, 2, 2, 3, 12, 13]


def test_stats_match_hand_computation():
    arena = Arena(size=8 * MiB)
    sizes = [10, 10, 48, 100, 128, 5000]
    ptrs = [arena.alloc(n) for n in sizes]
    assert all(ptrs)
    assert arena.alloc(200_000) == 0                  # too large: a counted fail
    assert arena.alloc(-0) != 0                       # 0 bytes is a valid (slab) allocation
    s = arena.stats()
    slab_used = 4 * 64                                # 10, 10, 48, 0
    block_used = 144 + 144 + 8208                     # 100 -> 128 bin, 128 -> 128, 5000 -> 8192
    assert s["slab"]["used_bytes"] == s["slab"]["high_watermark"] == slab_used
    assert s["slab"]["allocs"] == 4 and s["slab"]["fails"] == 0 and s["slab"]["live"] == 4
    assert s["slab"]["free_bytes"] == s["slab"]["total_bytes"] - slab_used
    assert s["block"]["used_bytes"] == s["block"]["high_watermark"] == block_used
    assert s["block"]["allocs"] == 3 and s["block"]["fails"] == 1 and s["block"]["oversize"] == 1
    bins = {b["size"]: b for b in s["block"]["bins"]}
    assert bins[128]["live"] == 2 and bins[128]["used_bytes"] == 288
    assert bins[8192]["allocs"] == 1 and bins[8192]["high_watermark"] == 8208
    assert s["total"]["used_bytes"] == slab_used + block_used
    assert s["total"]["allocs"] == 7 and s["total"]["fails"] == 1 and s["total"]["frees"] == 0
    # free the 5000-byte one and a slab one: used drops, high watermarks stay
    arena.release(ptrs[5])
    arena.release(ptrs[0])
    s = arena.stats()
    assert s["block"]["used_bytes"] == 288 and s["block"]["high_watermark"] == block_used
    assert s["slab"]["used_bytes"] == 3 * 64 and s["slab"]["high_watermark"] == slab_used
    assert s["total"]["high_watermark"] == slab_used + block_used
    assert s["total"]["frees"] == 2 and arena.live_count() == 5
    arena.check()


def test_exhausted_class_spills_upward_then_fails():
    arena = Arena(size=A.MIN_SIZE)
    s0 = arena.stats()
    nslab = s0["slab"]["slots"]
    bins = s0["block"]["bins"]
    slab = arena.alloc_many(48, nslab)
    assert (slab != 0).all() and arena.stats()["slab"]["free_bytes"] == 0
    p = arena.alloc(1)                                 # slab full -> 64-byte bin
    assert arena.capacity(p) == 64
    assert arena.stats()["slab"]["spills"] == 1 and arena.stats()["slab"]["fails"] == 0
    arena.release(p)
    # fill the two largest bins; then a 64 KiB request has nowhere to go
    big = [arena.alloc(128 * 1024) for _ in range(bins[11]["slots"])]
    mid = [arena.alloc(64 * 1024) for _ in range(bins[10]["slots"])]
    assert all(big) and all(mid)
    assert arena.alloc(64 * 1024) == 0 and arena.alloc(128 * 1024) == 0
    s = arena.stats()
    assert s["block"]["bins"][10]["fails"] == 1 and s["block"]["bins"][11]["fails"] == 1
    with pytest.raises(AllocError, match=r"65536 bytes"):
        arena.alloc_or_raise(65536)
    with pytest.raises(AllocError, match=r"200000 bytes.*131072"):
        arena.alloc_or_raise(200_000)
    assert arena.stats()["block"]["fails"] == 4


def test_spill_order_and_counts_in_a_small_chain():
    arena = Arena(size=A.MIN_SIZE)
    bins = arena.stats()["block"]["bins"]
    n64k, n128k = bins[10]["slots"], bins[11]["slots"]
    ps = [arena.alloc(40_000) for _ in range(n64k + n128k)]   # 64K bin first, then spill
    caps = [arena.capacity(p) for p in ps]
    assert caps == [65536] * n64k + [131072] * n128k
    assert arena.stats()["block"]["bins"][10]["spills"] == n128k
    assert arena.alloc(40_000) == 0
    arena.release_many(np.array(ps, dtype=np.uint64))
    assert arena.live_count() == 0
    arena.check()



def test_the_reserve_is_out_of_reach_of_plain_allocations_and_spills():
    """set_reserve keeps a share of every class for alloc(reserve=True): plain alloc and
    alloc_many stop (and spill, then fail) at it; reserved allocations take it, then fail."""
    arena = Arena(size=A.MIN_SIZE)
    arena.set_reserve(0.25)
    bins = arena.stats()["block"]["bins"]
    n64k, n128k = bins[10]["slots"], bins[11]["slots"]
    assert (n64k, n128k) == (3, 1)                     # (the smallest arena's two largest)
    r64k, r128k = 1, 0                                 # at least one; never the only slot
    assert (bins[10]["reserve_slots"], bins[11]["reserve_slots"]) == (r64k, r128k)
    assert (bins[6]["size"], bins[6]["slots"], bins[6]["reserve_slots"]) == (4096, 57, 14)
    plain = [arena.alloc(40_000) for _ in range(n64k + n128k)]
    got = [p for p in plain if p]
    assert len(got) == (n64k - r64k) + (n128k - r128k)     # the 64K bin, then the spill
    many = arena.alloc_many(100_000, 4)
    assert not many.any()                                  # (the 128K bin is down to its reserve)
    res = [arena.alloc(40_000, reserve=True) for _ in range(r64k + r128k + 1)]
    assert all(res[:-1]) and res[-1] == 0
    st = arena.stats()["block"]["bins"]
    assert st[10]["free_slots"] == 0 and st[11]["free_slots"] == 0
    arena.release_many(np.array(got + res[:-1], dtype=np.uint64))
    arena.set_reserve(0)                                   # gone: everything is plain again
    assert not any(b["reserve_slots"] for b in arena.stats()["block"]["bins"])
    ps = arena.alloc_many(100_000, n128k)
    assert ps.all()
    arena.release_many(ps)
    assert arena.live_count() == 0
    arena.check()


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, "0.1", None, True])
def test_a_bad_reserve_is_named(bad):
    with pytest.raises(ValueError, match=r"set_reserve: fraction must be a number in \[0, 1\)"):
        Arena(size=A.MIN_SIZE).set_reserve(bad)


def test_the_reserve_example_runs():
    import doctest
    runner = doctest.DocTestRunner()
    for t in doctest.DocTestFinder().find(Arena.set_reserve, "set_reserve",
                                          globs=vars(A).copy()):
        runner.run(t)
    s = runner.summarize(verbose=False)
    assert s.attempted >= 4 and s.failed == 0


# ----------------------------------------------------------------------------- view
def test_view_is_the_payload_memory(big):
    p = big.alloc(100)
    try:
        v = big.view(p)
        assert v.dtype == np.uint8 and v.size == 100
        v[:] = np.arange(100)
        off = p - big.base
        assert (big.buffer[off:off + 100] == np.arange(100)).all()
        assert big.view(p, 128).size == 128 and big.view(p, 0).size == 0
        with pytest.raises(ValueError, match="outside 0..128"):
            big.view(p, 129)
        # header lives right before the payload: LIVE magic, refcount 1, size 100, class 2
        hdr = big.buffer[off - 16:off].view(np.uint32)
        assert list(hdr) == [A.MAGIC_LIVE, 1, 100, 2]
    finally:
        big.release(p)


def test_numpy_integer_addresses_are_accepted(big):
    ptrs = big.alloc_many(200, 3)
    assert big.view(ptrs[0]).size == 200 and big.refcount(ptrs[1]) == 1
    assert big.retain(ptrs[2]) == 2
    assert big.release(ptrs[2], np.int64(2)) is True
    assert big.release(ptrs[0]) and big.release(ptrs[1])


# ----------------------------------------------------------------------------- refcounts
def test_refcount_lifecycle():
    arena = Arena(size=A.MIN_SIZE)
    p = arena.alloc(300, refs=3)
    assert arena.refcount(p) == 3
    assert arena.retain(p) == 4 and arena.retain(p, 2) == 6
    assert arena.release(p) is False and arena.refcount(p) == 5
    assert arena.release(p, 4) is False and arena.refcount(p) == 1
    assert arena.live_count() == 1
    assert arena.release(p) is True and arena.live_count() == 0
    q = arena.alloc(10)
    assert arena.set_refs(q, 3) is False and arena.refcount(q) == 3      # fan-out to 3
    assert [arena.release(q) for _ in range(3)] == [False, False, True]
    r = arena.alloc(10)
    assert arena.set_refs(r, 0) is True and arena.live_count() == 0       # no receivers
    assert arena.stats()["total"]["frees"] == 3


def test_over_release_raises_double_free_and_changes_nothing():
    arena = Arena(size=A.MIN_SIZE)
    p = arena.alloc(64, refs=2)
    with pytest.raises(DoubleFree, match=f"0x{p:x}"):
        arena.release(p, 3)
    assert arena.refcount(p) == 2 and arena.live_count() == 1


@pytest.mark.parametrize("args", [(-1,), (10, 0), (10, -2)])
def test_bad_alloc_arguments(args):
    with pytest.raises(ValueError):
        Arena(size=A.MIN_SIZE).alloc(*args)


def test_bad_refcount_arguments():
    arena = Arena(size=A.MIN_SIZE)
    p = arena.alloc(8)
    for call in (lambda: arena.retain(p, 0), lambda: arena.release(p, 0),
                 lambda: arena.set_refs(p, -1)):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        arena.alloc(1.5)


# ----------------------------------------------------------------------------- invalid pointers
def test_invalid_pointers_are_named():
    arena = Arena(size=A.MIN_SIZE)
    other = Arena(size=A.MIN_SIZE)
    p = arena.alloc(100)
    foreign = other.alloc(100)
    bump = arena.bump_alloc(32)
    cases = {
        0: "not an address in this arena",
        foreign: "not an address in this arena",
        p + 16: "not the start of an allocation",
        p + 3: "not the start",
        bump: "bump allocation",
        arena.base + arena.size - 16: "not the start",
    }
    for addr, msg in cases.items():
        calls = (arena.view, arena.retain, arena.release, arena.refcount, arena.capacity)
        for call in calls[1:] if addr == bump else calls:   # view(bump, length) is valid
            with pytest.raises(InvalidPointer, match=msg) as e:
                call(addr)
            assert f"0x{addr:x}" in str(e.value)
    # never allocated, and freed (without debug): not live
    free_slot = p + 144                                # next slot of the 128-byte bin
    with pytest.raises(InvalidPointer, match="not a live allocation"):
        arena.view(free_slot)
    arena.release(p)
    with pytest.raises(InvalidPointer, match=f"0x{p:x} is not a live"):
        arena.release(p)
    assert arena.live_count() == 0
    arena.check()


def test_overrunning_write_is_reported_as_a_corrupt_header():
    arena = Arena(size=A.MIN_SIZE)
    a, b = arena.alloc(64), arena.alloc(64)
    assert b == a + 80                                 # adjacent slots of the 64-byte bin
    arena.view(a, 64)[:] = 1
    arena.buffer[a - arena.base + 64:a - arena.base + 72] = 0xFF   # past a's end: b's header
    with pytest.raises(InvalidPointer, match="corrupt"):
        arena.release(b)


# ----------------------------------------------------------------------------- batch paths
def test_alloc_many_matches_scalar_allocation():
    one, many = Arena(size=8 * MiB), Arena(size=8 * MiB)
    scalar = [one.alloc(700) for _ in range(50)]
    batch = many.alloc_many(700, 50)
    assert batch.dtype == np.uint64 and batch.shape == (50,)
    assert [p - one.base for p in scalar] == [int(p) - many.base for p in batch]
    s1, s2 = one.stats(), many.stats()
    assert s1 == s2
    assert many.refcount(batch[0]) == 1 and many.size_of(batch[7]) == 700
    assert len(set(batch.tolist())) == 50


def test_alloc_many_partial_failure_and_refs():
    arena = Arena(size=A.MIN_SIZE)
    n = arena.stats()["block"]["bins"][11]["slots"]
    got = arena.alloc_many(100_000, n + 5, refs=2)
    assert (got[:n] != 0).all() and (got[n:] == 0).all()
    assert arena.stats()["block"]["bins"][11]["fails"] == 5
    assert arena.refcount(got[0]) == 2
    assert (arena.alloc_many(200_000, 4) == 0).all()
    assert arena.stats()["block"]["oversize"] == 4
    assert arena.alloc_many(10, 0).size == 0


def test_release_many_with_zeros_and_repeats():
    arena = Arena(size=A.MIN_SIZE)
    ptrs = arena.alloc_many(32, 10)
    arena.retain(ptrs[0])
    arena.retain(ptrs[1], 2)
    batch = np.concatenate([ptrs, [0, 0], ptrs[:2], [ptrs[1]]]).astype(np.uint64)
    assert arena.release_many(batch) == 10
    assert arena.live_count() == 0
    assert arena.release_many(np.zeros(3, dtype=np.uint64)) == 0
    assert arena.release_many([]) == 0
    arena.check()


def test_release_many_is_all_or_nothing():
    arena = Arena(size=A.MIN_SIZE)
    ptrs = arena.alloc_many(32, 4)
    before = arena.stats()
    bad = np.array([ptrs[0], ptrs[1] + 16, ptrs[2]], dtype=np.uint64)
    with pytest.raises(InvalidPointer, match=f"0x{int(ptrs[1]) + 16:x}"):
        arena.release_many(bad)
    with pytest.raises(DoubleFree, match=f"0x{int(ptrs[3]):x}"):
        arena.release_many(np.array([ptrs[3], ptrs[0], ptrs[3]], dtype=np.uint64))
    with pytest.raises(TypeError):
        arena.release_many(np.array([1.0]))
    assert arena.stats() == before and all(arena.refcount(p) == 1 for p in ptrs)
    arena.release(ptrs[2])
    with pytest.raises(InvalidPointer, match=f"0x{int(ptrs[2]):x}"):
        arena.release_many(ptrs)
    assert arena.live_count() == 3


# ----------------------------------------------------------------------------- bump
def test_bump_alloc_reset_and_stats():
    arena = Arena(size=A.MIN_SIZE)
    a, b, c = arena.bump_alloc(1), arena.bump_alloc(17), arena.bump_alloc(0)
    assert a % 16 == 0 and b == a + 16 and c == b + 32
    s = arena.stats()["bump"]
    assert s["used_bytes"] == 64 and s["allocs"] == 3 and s["live"] == 3
    arena.view(b, 32)[:] = 5
    with pytest.raises(ValueError, match="pass length"):
        arena.view(b)
    with pytest.raises(ValueError, match="past the bump"):
        arena.view(c, 32)
    assert arena.bump_reset() == 3
    s = arena.stats()["bump"]
    assert s["used_bytes"] == 0 and s["high_watermark"] == 64 and s["frees"] == 3
    assert s["resets"] == 1
    assert arena.bump_alloc(8) == a                     # reuses the region after reset
    size = arena.bump_size
    assert arena.bump_alloc(size) == 0 and arena.stats()["bump"]["fails"] == 1
    assert arena.stats()["total"]["used_bytes"] == 16 and arena.live_count() == 0


# ----------------------------------------------------------------------------- debug canary
def test_debug_poisons_freed_payloads_and_detects_use_after_free():
    arena = Arena(size=A.MIN_SIZE, debug=True)
    p = arena.alloc(100)
    stale = arena.view(p)
    stale[:] = 1
    arena.release(p)
    assert (stale == A.POISON).all()
    assert (arena.buffer[p - arena.base:p - arena.base + 128] == A.POISON).all()
    for call in (arena.view, arena.retain, arena.refcount):
        with pytest.raises(UseAfterFree, match=f"0x{p:x}"):
            call(p)
    with pytest.raises(DoubleFree, match=f"0x{p:x}"):
        arena.release(p)
    with pytest.raises(DoubleFree):
        arena.release_many(np.array([p], dtype=np.uint64))
    with pytest.raises(UseAfterFree):
        arena.set_refs(p, 2)
    arena.check()


def test_debug_detects_write_after_free_on_reuse_and_recovers():
    arena = Arena(size=A.MIN_SIZE, debug=True)
    assert arena.stats()["block"]["bins"][11]["slots"] == 1  # one 128 KiB slot: reuse is certain
    p = arena.alloc(131072)
    stale = arena.view(p)
    arena.release(p)
    stale[5000] = 0                                    # a write through a stale view
    with pytest.raises(UseAfterFree, match=f"0x{p:x}.*written after"):
        arena.alloc(131072)
    assert arena.stats()["total"]["poison_faults"] == 1 and arena.live_count() == 0
    arena.check()                                      # re-poisoned, still on the free list
    q = arena.alloc(131072)
    assert q == p and arena.release(q)


def test_debug_write_after_free_in_alloc_many_hands_nothing_out():
    arena = Arena(size=A.MIN_SIZE, debug=True)
    n64k = arena.stats()["block"]["bins"][10]["slots"]
    ptrs = arena.alloc_many(65536, n64k + 1)           # the last one spills to 128 KiB
    assert (ptrs != 0).all()
    stale = arena.view(ptrs[-1])
    arena.release_many(ptrs)
    stale[0] = 7
    before = arena.stats()
    with pytest.raises(UseAfterFree, match=f"0x{int(ptrs[-1]):x}"):
        arena.alloc_many(65536, n64k + 1)
    after = arena.stats()
    assert after["block"]["allocs"] == before["block"]["allocs"] and arena.live_count() == 0
    arena.check()
    assert (arena.alloc_many(65536, n64k + 1) != 0).all()


def test_debug_reuses_least_recently_freed_first_and_normal_mode_lifo():
    for debug, expect in ((True, "fifo"), (False, "lifo")):
        arena = Arena(size=A.MIN_SIZE, debug=debug)
        n = arena.stats()["block"]["bins"][10]["slots"]
        assert n >= 3
        ps = [arena.alloc(65536) for _ in range(n)]
        arena.release(ps[2])
        arena.release(ps[0])
        got = [arena.alloc(65536), arena.alloc(65536)]
        assert got == ([ps[2], ps[0]] if expect == "fifo" else [ps[0], ps[2]]), debug


def test_debug_bump_reset_poisons():
    arena = Arena(size=A.MIN_SIZE, debug=True)
    b = arena.bump_alloc(40)
    arena.view(b, 48)[:] = 0
    arena.bump_reset()
    assert (arena.buffer[b - arena.base:b - arena.base + 48] == A.POISON).all()


# ----------------------------------------------------------------------------- hypothesis
SIZES = st.one_of(st.integers(0, 48), st.integers(49, 4096), st.integers(4097, 140_000))


class ArenaMachine(RuleBasedStateMachine):
    """Random alloc/retain/release/batch/bump sequences against a model of the arena."""

    @initialize(debug=st.booleans())
    def setup(self, debug):
        self.arena = Arena(size=A.MIN_SIZE, debug=debug)
        self.start = self.arena.stats()
        self.free = [self.start["slab"]["slots"]] + [b["slots"] for b in self.start["block"]["bins"]]
        self.live = {}                                  # ptr -> [size, class, refs, stamp]
        self.allocs = self.frees = self.fails = 0
        self.bump_live, self.stamp = [], 0

    def _expect_class(self, n):
        c = A.size_class(n)
        for k in range(c, 13):
            if self.free[k]:
                return k
        return None

    def _new(self, ptr, n, refs):
        k = self._expect_class(n)
        if k is None:
            assert ptr == 0
            self.fails += 1
            return
        assert ptr and ptr not in self.live and A.size_class(self.arena.capacity(ptr)) == k
        self.free[k] -= 1
        self.stamp += 1
        self.arena.view(ptr)[:] = self.stamp % 251
        self.live[ptr] = [n, k, refs, self.stamp % 251]
        self.allocs += 1

    def _drop(self, ptr, n):
        rec = self.live[ptr]
        assert (self.arena.view(ptr) == rec[3]).all(), "payload overwritten while live"
        rec[2] -= n
        if rec[2] == 0:
            del self.live[ptr]
            self.free[rec[1]] += 1
            self.frees += 1
            return True
        return False

    @rule(n=SIZES, refs=st.integers(1, 3))
    def alloc(self, n, refs):
        self._new(self.arena.alloc(n, refs), n, refs)

    @rule(n=SIZES, count=st.integers(0, 20))
    def alloc_many(self, n, count):
        for p in self.arena.alloc_many(n, count).tolist():
            self._new(p, n, 1)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), n=st.integers(1, 3))
    def release(self, data, n):
        ptr = data.draw(st.sampled_from(sorted(self.live)))
        n = min(n, self.live[ptr][2])
        expect = self.live[ptr][2] == n
        assert self._drop(ptr, n) == expect
        assert self.arena.release(ptr, n) == expect

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def retain(self, data):
        ptr = data.draw(st.sampled_from(sorted(self.live)))
        self.live[ptr][2] += 1
        assert self.arena.retain(ptr) == self.live[ptr][2]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release_many(self, data):
        pick = data.draw(st.lists(st.sampled_from(sorted(self.live)), max_size=12))
        # only as many repeats as references held
        counts = {}
        batch = []
        for p in pick:
            if counts.get(p, 0) < self.live[p][2]:
                counts[p] = counts.get(p, 0) + 1
                batch.append(p)
        freed = sum(self._drop(p, c) for p, c in counts.items())
        assert self.arena.release_many(np.array(batch + [0], dtype=np.uint64)) == freed

    @rule(n=st.integers(0, 50_000))
    def bump(self, n):
        p = self.arena.bump_alloc(n)
        if p:
            self.bump_live.append(p)

    @rule()
    def bump_reset(self):
        assert self.arena.bump_reset() == len(self.bump_live)
        self.bump_live = []

    @invariant()
    def consistent(self):
        if not hasattr(self, "arena"):
            return
        a = self.arena
        spans = sorted((p - 16, p + A._CAPACITY[k]) for p, (_, k, _, _) in self.live.items())
        assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:])), "live allocations overlap"
        s = a.stats()
        used = sum(A._STRIDE[k] for (_, k, _, _) in self.live.values())
        assert s["slab"]["used_bytes"] + s["block"]["used_bytes"] == used
        assert s["total"]["used_bytes"] == used + s["bump"]["used_bytes"]
        assert s["slab"]["allocs"] + s["block"]["allocs"] == self.allocs
        assert s["slab"]["frees"] + s["block"]["frees"] == self.frees
        assert s["slab"]["fails"] + s["block"]["fails"] == self.fails
        assert a.live_count() == len(self.live)
        for k in range(13):
            free = s["slab"]["free_bytes"] // 64 if k == 0 else s["block"]["bins"][k - 1]["free_slots"]
            assert free == self.free[k]

    def teardown(self):
        if not hasattr(self, "arena"):
            return
        a = self.arena
        a.check()
        for p, rec in list(self.live.items()):
            assert a.release(p, rec[2])
        a.bump_reset()
        s = a.stats()
        assert a.live_count() == 0
        for part in ("slab", "block", "bump", "total"):
            assert s[part]["free_bytes"] == self.start[part]["free_bytes"]
        a.check()


TestArenaMachine = ArenaMachine.TestCase
TestArenaMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
