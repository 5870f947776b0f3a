"""The Arena's arguments (sizes, counts, reference counts, lengths) are ints: a bool, a float
or a string is a TypeError naming the argument (True was taken as 1, 1.5 raised an error
naming nothing); and the two reference checks a sender and the kernel's release path use."""
import numpy as np
import pytest

from ggmk.core.alloc import MIN_SIZE, Arena
from ggmk.errors import InvalidPointer


@pytest.fixture
def arena():
    a = Arena(MIN_SIZE)
    yield a
    a.check()


CALLS = [
    ("alloc: nbytes", lambda a, p, b, v: a.alloc(v)),
    ("alloc: refs", lambda a, p, b, v: a.alloc(8, refs=v)),
    ("alloc_many: nbytes", lambda a, p, b, v: a.alloc_many(v, 1)),
    ("alloc_many: count", lambda a, p, b, v: a.alloc_many(48, v)),
    ("alloc_many: refs", lambda a, p, b, v: a.alloc_many(48, 1, v)),
    ("retain: n", lambda a, p, b, v: a.retain(p, v)),
    ("release: n", lambda a, p, b, v: a.release(p, v)),
    ("set_refs: n", lambda a, p, b, v: a.set_refs(p, v)),
    ("bump_alloc: nbytes", lambda a, p, b, v: a.bump_alloc(v)),
    ("view: length", lambda a, p, b, v: a.view(p, v)),
    ("view: length", lambda a, p, b, v: a.view(b, v)),
    ("Arena: size", lambda a, p, b, v: Arena(v)),
]


@pytest.mark.parametrize("bad", [True, np.bool_(False), 1.0, 2.5, "8"])
@pytest.mark.parametrize("what, call", CALLS)
def test_a_non_int_argument_is_a_type_error_naming_it(arena, what, call, bad):
    p, b = arena.alloc(100), arena.bump_alloc(16)
    before = arena.stats()["total"]
    with pytest.raises(TypeError, match=f"{what}={bad!r}: allowed an int"):
        call(arena, p, b, bad)
    after = arena.stats()["total"]
    assert (after["allocs"], after["frees"], after["live"]) == \
        (before["allocs"], before["frees"], before["live"]) and arena.refcount(p) == 1


def test_numpy_ints_are_still_ints(arena):
    p = arena.alloc(np.int64(100), refs=np.uint32(2))
    assert arena.refcount(p) == 2 and arena.size_of(p) == 100
    assert arena.retain(p, np.int32(1)) == 3
    assert arena.release(p, np.int64(3)) is True
    assert arena.view(arena.alloc(8), np.int64(8)).size == 8


def test_debug_is_a_flag():
    with pytest.raises(ValueError, match="Arena: debug='no': allowed True or False"):
        Arena(MIN_SIZE, debug="no")                  # ("no" turned the canary on)


def test_check_refs_wants_a_live_reference_per_record(arena):
    p = arena.alloc(8)
    arena.check_refs(np.array([p, 0, 0], np.uint64), "x")        # one record: fine
    with pytest.raises(ValueError, match=r"x: 0x[0-9a-f]+ is named by 2 records but holds 1"):
        arena.check_refs(np.array([p, p], np.uint64), "x")
    arena.retain(p)
    arena.check_refs(np.array([p, p], np.uint64), "x")
    q = arena.alloc(8)
    arena.release(q)
    for bad, says in ((q, "not a live allocation"), (0xDEAD0, "not an address in this arena"),
                      (p + 16, "not the start of an allocation")):
        with pytest.raises(ValueError, match=says):
            arena.check_refs([bad], "x")
    assert arena.refcount(p) == 2                     # nothing changed
    arena.release(p, 2)


def test_release_valid_releases_what_is_held_and_reports_the_rest(arena):
    p, q = arena.alloc(8), arena.alloc(100, refs=2)
    gone = arena.alloc(8)
    arena.release(gone)
    ptrs = np.array([p, p, p, q, 0, gone, 0xDEAD0], np.uint64)
    with pytest.raises(InvalidPointer):
        arena.release_many(ptrs)                      # (all or nothing: nothing released)
    assert arena.refcount(p) == 1 and arena.refcount(q) == 2
    released, skipped, first = arena.release_valid(ptrs)
    assert (released, skipped) == (2, 4) and isinstance(first, InvalidPointer)
    assert arena.live_count() == 1 and arena.refcount(q) == 1
    arena.release(q)
