"""ggmk.typereg.manifest: loading module.toml."""
from __future__ import annotations

import pytest

from ggmk.errors import TypesError
from ggmk.typereg import ChannelDecl, HandlerDecl, ModuleManifest, load_module_manifest

from typereg_helpers import FIX


# ---------------------------------------------------------------------------------------------
# module manifests


def test_load_module_manifest():
    m = load_module_manifest(FIX / "module_counter.toml")
    assert isinstance(m, ModuleManifest)
    assert (m.name, m.version, m.description) == ("counter", "0.1.0", "counts")
    assert m.path == str(FIX / "module_counter.toml")
    assert m.channels == [
        ChannelDecl("counter.in", "consume", "COUNTER_INC", "p2p", "lossless", "counter"),
        ChannelDecl("counter.out", "produce", "COUNTER_INC_RESP", "fanout", "lossy", "counter"),
    ]
    inc, step = m.handlers
    assert inc == HandlerDecl("COUNTER_INC", "inc", "counter")
    assert (inc.granularity, inc.batch, inc.target) == ("task", False, "cpu")
    assert (step.granularity, step.shared_mem, step.deterministic, step.target) == \
        ("block", 4096, True, "gpu")
    assert m.types.id("COUNTER_RESET") == 14
    p = load_module_manifest(FIX / "module_printer.toml")
    assert p.handlers[0].batch and p.handlers[0].granularity == "batch"
    assert len(p.types) == 0


def test_bad_module_manifest_lists_every_problem():
    with pytest.raises(TypesError) as ei:
        load_module_manifest(FIX / "module_bad.toml")
    probs = ei.value.problems
    assert len(probs) == 4
    assert all("module_bad.toml" in p and "broken" in p for p in probs)
    assert "module_bad.toml:5" in probs[0] and "'Counter_In'" in probs[0]
    assert "namespace.verb" in probs[0]
    assert "module_bad.toml:10" in probs[1] and "'send'" in probs[1]
    assert "'broadcast'" in probs[2]
    assert "module_bad.toml:16" in probs[3] and "handler 'inc'" in probs[3]
    assert "'thread'" in probs[3]


@pytest.mark.parametrize("text, expect", [
    ('[[channel]]\nname = "a.b"\ndirection = "produce"\ntype = "A"\n', ["missing [module]"]),
    ('[module]\nversion = "1"\n', ["missing 'name'"]),
    ('[module]\nname = "Bad Name"\nversion = "1"\n', ["'Bad Name'"]),
    ('[module]\nname = "m"\n', ["module m", "'version'"]),
    ('[module]\nname = "m"\nversion = "1"\nauthor = "x"\n', ["unknown key 'author'"]),
    ('[module]\nname = "m"\nversion = "1"\n[[channels]]\nname = "a.b"\n',
     ["'channels'", "did you mean [[channel]]"]),
    ('[module]\nname = "m"\nversion = "1"\n[[channel]]\nname = "a.b"\ndirection = "produce"\n',
     ["channel 'a.b'", "missing 'type'"]),
    ('[module]\nname = "m"\nversion = "1"\n[[channel]]\nname = "ab"\ndirection = "produce"\n'
     'type = "A"\n', ["channel 'ab'", "namespace.verb"]),
    ('[module]\nname = "m"\nversion = "1"\n[[channel]]\nname = "a.b"\ndirection = "produce"\n'
     'type = "A"\nguarantee = "maybe"\n', ["channel 'a.b'", "'maybe'"]),
    ('[module]\nname = "m"\nversion = "1"\n[[channel]]\nname = "a.b"\ndirection = "produce"\n'
     'type = "a"\n', ["channel 'a.b'", "invalid type 'a'", "UPPER_SNAKE"]),
    ('[module]\nname = "m"\nversion = "1"\n[[handler]]\ntype = "A"\nname = "h"\nbatch = 1\n',
     ["handler 'h'", "batch"]),
    ('[module]\nname = "m"\nversion = "1"\n[[handler]]\ntype = "A"\nname = "h"\n'
     'shared_mem = 64\n', ["handler 'h'", "shared_mem needs granularity 'block'"]),
    ('[module]\nname = "m"\nversion = "1"\n[[handler]]\ntype = "A"\nname = "h"\nbatch = true\n'
     'granularity = "warp"\n', ["handler 'h'", "conflicts"]),
    ('[module]\nname = "m"\nversion = "1"\n[[handler]]\ntype = "A"\nname = "h"\n'
     '[[handler]]\ntype = "B"\nname = "h"\n', ["m.toml:7", "handler 'h'", "duplicate"]),
    ('[module]\nname = "m"\nversion = "1"\n[types.X]\n', ["type X", "missing 'id'"]),
])
def test_module_manifest_errors(text, expect):
    with pytest.raises(TypesError) as ei:
        load_module_manifest(text, source="m.toml")
    msg = str(ei.value)
    assert msg.startswith("m.toml")
    for e in expect:
        assert e in msg, (e, msg)
