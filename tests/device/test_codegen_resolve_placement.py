"""``codegen.resolve.place_user_words``: the user-word regions of movable modules
(``gd.Module.movable``: a standard ``device_module()`` made without ``base=``) are placed by
the build where they overlap nothing; every other claim stays put. Nothing compiles here."""
import pytest

import ggmk.device as gd
from ggmk.device import layout
from ggmk.device.codegen import resolve_handlers
from ggmk.errors import BootError

TOP = layout.USER_WORDS


def _h(ctx, task):
    return 0


def _mod(name, tid, lo, hi, movable=True):
    """A module claiming lo..hi-1; movable: ``m.moves`` records each ``place`` call."""
    m = gd.Module(name)
    m.handler(tid)(_h)
    m.user_words = (lo, hi, f"{name}'s table")
    m.moves = []
    if movable:
        m.movable(m.moves.append)
    return m


def _at(*mods):
    return [m.user_words[:2] for m in mods]


def test_a_movable_region_stays_where_it_asked_when_that_is_free():
    a, b = _mod("a", 1, 100, 200), _mod("b", 2, 300, 400, movable=False)
    resolve_handlers([a, b])
    assert _at(a, b) == [(100, 200), (300, 400)] and a.moves == []


def test_overlapping_movables_move_to_the_lowest_free_words_largest_first():
    fixed = _mod("fixed", 1, 0, 50, movable=False)
    first = _mod("first", 2, 100, 300)
    small = _mod("small", 3, 150, 160)         # asks for words `first` keeps
    large = _mod("large", 4, 250, 1250)        # too
    resolve_handlers([fixed, first, small, large])
    assert _at(fixed, first, small, large) == [(0, 50), (100, 300), (50, 60), (300, 1300)]
    assert (first.moves, small.moves, large.moves) == ([], [50], [300])
    assert "small's table" in small.user_words


def test_a_fixed_claim_never_moves_and_the_movable_goes_around_it():
    fixed = _mod("fixed", 1, 100, 200, movable=False)
    m = _mod("m", 2, 150, 250)
    resolve_handlers([m, fixed])               # (order: fixed claims are placed first)
    assert _at(fixed, m) == [(100, 200), (0, 100)] and m.moves == [0]


def test_placement_depends_on_the_asked_regions_only():
    """Placed again in another kernel, a module goes where that kernel's modules leave room,
    back to its asked words when they are free; two builds of the same modules in the same
    order (a device process's parent view and its child) place them alike."""
    a, b = _mod("a", 1, 100, 200), _mod("b", 2, 150, 250)
    resolve_handlers([a, b])
    assert _at(a, b) == [(100, 200), (0, 100)]
    resolve_handlers([b])
    assert _at(b) == [(150, 250)] and b.moves == [0, 150]
    a2, b2 = _mod("a", 1, 100, 200), _mod("b", 2, 150, 250)
    resolve_handlers([a2, b2])
    assert _at(a2, b2) == [(100, 200), (0, 100)]


def test_when_kept_defaults_leave_no_gap_big_enough_all_are_packed_afresh():
    """Regions kept at their asked words can split the free words so that the others do not
    fit; all movables are then packed from the lowest words, largest first."""
    keep = _mod("keep", 1, TOP // 2 - 10, TOP // 2 + 10)       # splits the words in two
    big = _mod("big", 2, 0, TOP // 2 + 100)                     # overlaps keep
    resolve_handlers([keep, big])
    assert _at(big, keep) == [(0, TOP // 2 + 100), (TOP // 2 + 100, TOP // 2 + 120)]


def test_regions_that_do_not_fit_together_are_a_boot_error_naming_each():
    fixed = _mod("fixed", 1, TOP - 2048, TOP, movable=False)
    a = _mod("a", 2, 0, 40000)
    b = _mod("b", 3, 100, 30000)
    with pytest.raises(BootError) as e:
        resolve_handlers([a, b, fixed])
    msg = str(e.value)
    for w in (f"do not fit the {TOP} user words together", "'a' 40000 words (a's table)",
              "'b' 29900 words (b's table)", f"fixed: 'fixed' {TOP - 2048}..{TOP - 1}",
              f"free: 0..{TOP - 2049} ({TOP - 2048} words)", "smaller sizes"):
        assert w in msg, (w, msg)


def test_overlapping_fixed_claims_are_still_refused():
    a, b = _mod("a", 1, 0, 10, movable=False), _mod("b", 2, 5, 20, movable=False)
    with pytest.raises(BootError, match="'a' and 'b' claim the same user words"):
        resolve_handlers([a, b, _mod("c", 3, 0, 10)])


@pytest.mark.parametrize("words", [None, [(0, 1), (5, 6)], (3, 2, "bad")])
def test_movable_needs_one_region(words):
    m = gd.Module("m")
    m.user_words = words
    with pytest.raises(BootError, match="module 'm'"):
        m.movable(lambda lo: None)


def test_movable_needs_a_function_to_move_the_region():
    m = gd.Module("x")
    m.user_words = (0, 4, "x: its state")
    with pytest.raises(BootError, match=r"movable\(place=42\): allowed a function place\(lo\)"):
        m.movable(42)
