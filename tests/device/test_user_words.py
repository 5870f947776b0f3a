"""Device modules claim the user words they keep state in (``Module.user_words``); a kernel
whose modules claim the same words does not build. Checked before anything compiles."""
import pytest

import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device import layout
from ggmk.device.codegen import resolve_handlers
from ggmk.errors import BootError


def _mod(name, tid, words):
    m = gd.Module(name)

    @m.handler(tid)
    def h(ctx, task):
        g.user_set(ctx, 0, 1)
        return 0
    m.user_words = words
    return m


def test_overlapping_claims_fail_naming_both_modules_and_ranges():
    a = _mod("counters", 101, (100, 200, "a table"))
    b = _mod("flags", 102, (150, 160, "flags"))
    with pytest.raises(BootError) as e:
        resolve_handlers([a, b])
    msg = str(e.value)
    assert "'counters'" in msg and "'flags'" in msg
    assert "100..199 (a table)" in msg and "150..159 (flags)" in msg


def test_adjacent_and_unclaimed_modules_build():
    mods = [_mod("a", 101, (0, 100, "a")), _mod("b", 102, [(100, 101, "b"), (300, 400)]),
            _mod("c", 103, None)]
    assert len(resolve_handlers(mods)) == 3


@pytest.mark.parametrize("words", [(5, 5, "empty"), (-1, 3), (0, layout.USER_WORDS + 1),
                                   (True, 3), ("0", 3), [(0, 1), "x"]])
def test_a_bad_claim_is_refused_naming_the_module(words):
    with pytest.raises(BootError, match="module 'bad': user_words="):
        resolve_handlers([_mod("bad", 101, words)])


def test_a_module_overlapping_the_bridge_credit_words_is_refused():
    from ggmk.bridge.device_side import build_module
    bridge = build_module([], [(0, "gpu.back", True, 64), (1, "gpu.more", True, 64)])
    assert bridge.user_words[:2] == (layout.USER_WORDS - 4, layout.USER_WORDS)
    bad = _mod("high", 101, (layout.USER_WORDS - 10, layout.USER_WORDS - 3, "a table"))
    with pytest.raises(BootError, match="'bridge'"):
        resolve_handlers([bad, bridge])
