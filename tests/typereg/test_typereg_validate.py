"""ggmk.typereg.validate: boot-time validation of declarations."""
from __future__ import annotations

import pytest

from ggmk.errors import BootError
from ggmk.typereg import (
    ChannelDecl, HandlerDecl, load_module_manifest, validate_declarations, validate_manifests,
)

from typereg_helpers import FIX, _boot_err


# ---------------------------------------------------------------------------------------------
# boot-time validation


def test_valid_manifests_pass(reg):
    ms = [load_module_manifest(FIX / "module_counter.toml"),
          load_module_manifest(FIX / "module_printer.toml")]
    validate_manifests(reg, ms)  # no error


def test_unknown_types(reg):
    e = _boot_err(reg, [ChannelDecl("a.b", "produce", "COUNTER_INK", module="m1")],
                  [HandlerDecl("PHYS_STEPS", "h", "m2", deterministic=True)])
    assert len(e.problems) == 2
    assert "module 'm1'" in e.problems[0] and "'a.b'" in e.problems[0]
    assert "unknown type 'COUNTER_INK'" in e.problems[0] and "COUNTER_INC" in e.problems[0]
    assert "module 'm2'" in e.problems[1] and "handler 'h'" in e.problems[1]
    assert "'PHYS_STEPS'" in e.problems[1]
    assert str(e).startswith("invalid declarations (boot): 2 problems")


def test_type_mismatch_names_both_modules_and_types(reg):
    e = _boot_err(reg, [ChannelDecl("counter.out", "produce", "COUNTER_INC_RESP", module="counter"),
                        ChannelDecl("counter.out", "consume", "COUNTER_INC", module="printer")], [])
    (p,) = e.problems
    assert "channel 'counter.out': type mismatch" in p
    assert "module 'counter' produces COUNTER_INC_RESP" in p
    assert "module 'printer' consumes COUNTER_INC" in p


def test_lossless_type_on_lossy_channel(reg):
    e = _boot_err(reg, [ChannelDecl("counter.in", "produce", "COUNTER_INC", guarantee="lossy",
                                    module="src")], [])
    (p,) = e.problems
    assert "'counter.in' is lossy" in p and "'src'" in p and "COUNTER_INC" in p
    assert "lossless" in p


def test_deterministic_type_needs_deterministic_handler(reg):
    e = _boot_err(reg, [], [HandlerDecl("PHYS_STEP", "step", "phys", granularity="scalar")])
    (p,) = e.problems
    assert "module 'phys'" in p and "handler 'step'" in p and "deterministic type PHYS_STEP" in p
    validate_declarations(reg, [], [HandlerDecl("PHYS_STEP", "step", "phys", deterministic=True)])


def test_conflicting_mode_and_guarantee(reg):
    e = _boot_err(reg, [
        ChannelDecl("x.out", "produce", "COUNTER_INC_RESP", "fanout", "lossy", "a"),
        ChannelDecl("x.out", "consume", "COUNTER_INC_RESP", "p2p", "lossless", "b"),
    ], [])
    assert len(e.problems) == 2
    mode, guar = e.problems
    assert "'x.out': conflicting mode" in mode
    assert "module 'a' declares fanout" in mode and "module 'b' declares p2p" in mode
    assert "conflicting guarantee" in guar and "'a' declares lossy" in guar
    assert "'b' declares lossless" in guar


def test_p2p_with_two_consumers(reg):
    decls = [ChannelDecl("w.in", "produce", "COUNTER_INC", module="src"),
             ChannelDecl("w.in", "consume", "COUNTER_INC", module="one"),
             ChannelDecl("w.in", "consume", "COUNTER_INC", module="two")]
    e = _boot_err(reg, decls, [])
    (p,) = e.problems
    assert "'w.in' is p2p" in p and "'one'" in p and "'two'" in p and "fanout" in p
    fan = [ChannelDecl(d.name, d.direction, d.type, "fanout", d.guarantee, d.module)
           for d in decls]
    validate_declarations(reg, fan, [])


def test_all_problems_in_one_error(reg):
    e = _boot_err(reg, [
        ChannelDecl("a.x", "produce", "NOPE", module="m"),
        ChannelDecl("b.x", "produce", "COUNTER_INC", guarantee="lossy", module="m"),
        ChannelDecl("c.x", "consume", "COUNTER_INC", module="p"),
        ChannelDecl("c.x", "consume", "COUNTER_INC", module="q"),
    ], [HandlerDecl("PHYS_STEP", "s", "m"), HandlerDecl("COUNTER_INC", "s", "m")])
    assert len(e.problems) == 5
    text = str(e)
    for frag in ("NOPE", "'b.x' is lossy", "'c.x' is p2p", "deterministic type PHYS_STEP",
                 "declared twice"):
        assert frag in text


def test_types_by_id_in_declarations(reg):
    # a name and the id of the same type agree; an id of another type is a mismatch
    validate_declarations(reg, [ChannelDecl("r.out", "produce", "COUNTER_INC_RESP", module="a"),
                                ChannelDecl("r.out", "consume", 12, module="b")],
                          [HandlerDecl(12, "h", "b")])
    e = _boot_err(reg, [ChannelDecl("r.out", "produce", "COUNTER_INC_RESP", module="a"),
                        ChannelDecl("r.out", "consume", 11, module="b")],
                  [HandlerDecl(10, "h", "b"), HandlerDecl(4242, "g", "b")])
    text = str(e)
    assert len(e.problems) == 3
    assert "'b' consumes COUNTER_INC" in text and "'a' produces COUNTER_INC_RESP" in text
    assert "deterministic type PHYS_STEP" in text and "unknown type 4242" in text
    with pytest.raises(BootError, match="invalid type 0"):
        HandlerDecl(0, "h", "b")


@pytest.mark.parametrize("chan", ["sys.error", "sys.dropped"])
def test_declaring_an_any_type_system_channel_says_what_it_carries(reg, chan):
    e = _boot_err(reg, [ChannelDecl(chan, "consume", "COUNTER_INC", module="watch"),
                        ChannelDecl(chan, "consume", "COUNTER_INC_RESP", module="other"),
                        ChannelDecl(chan, "produce", "COUNTER_INC", module="src")], [])
    assert len(e.problems) == 3                   # one each; no p2p / type-mismatch noise
    watch, other, src = e.problems
    assert f"module 'watch': channel '{chan}' (consumes COUNTER_INC)" in watch
    assert "system channel" in watch and "any type" in watch and "reason code" in watch
    assert f"system.channel('{chan}').subscribe('COUNTER_INC')" in watch and "ctx.reason" in watch
    assert "TYPE_0" not in str(e)
    assert "'other'" in other and "COUNTER_INC_RESP" in other
    assert "module 'src'" in src and "only the kernel" in src
    # by id too
    e = _boot_err(reg, [ChannelDecl(chan, "consume", 11, module="watch")], [])
    assert "(consumes COUNTER_INC)" in e.problems[0]
