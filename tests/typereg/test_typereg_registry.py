"""ggmk.typereg.registry: lookups, register, merge, to_toml and the policy table."""
from __future__ import annotations

import pytest

from ggmk.errors import TypesError
from ggmk.typereg import AUTO_ID_FIRST, TYPE_TABLE_DTYPE, UnknownTypeError, load_types

from typereg_helpers import GOOD


def test_unknown_lookups_raise_keyerror_like_types_error(reg):
    with pytest.raises(UnknownTypeError, match="unknown type 'PHYS_STEPP'.*PHYS_STEP"):
        reg.id("PHYS_STEPP")
    with pytest.raises(KeyError):
        reg.name(999)
    with pytest.raises(TypesError, match="999"):
        reg.info(999)
    assert reg.get("NOPE") is None and reg.get(10).name == "PHYS_STEP"


# ---------------------------------------------------------------------------------------------
# registry operations


def test_register_auto_ids_idempotence_and_conflicts(reg):
    r = reg.copy()
    a = r.register("AUTO_A", payload={"n": "u16"}, max_yields=2)
    b = r.register("AUTO_B", payload=[("k", "u8"), ("v", "bytes")], deterministic=True)
    assert (a.id, b.id) == (AUTO_ID_FIRST, AUTO_ID_FIRST + 1)
    assert r.register("AUTO_A", payload={"n": "u16"}, max_yields=2) is a
    assert [f.name for f in b.fields] == ["k", "v"] and b.deterministic
    c = r.register("EXPLICIT", id=500)
    assert r.name(500) == "EXPLICIT" and c.fixed_size == 0
    with pytest.raises(TypesError, match="AUTO_A.*defined twice differently"):
        r.register("AUTO_A", payload={"n": "u32"})
    with pytest.raises(TypesError, match="duplicate id 10: type PHYS_STEP.*type OTHER"):
        r.register("OTHER", id=10)
    with pytest.raises(TypesError, match=r"register\(\): type bad_name.*UPPER_SNAKE"):
        r.register("bad_name")
    with pytest.raises(TypesError, match=r"type X.*policy 'lossy'"):
        r.register("X", lossy="no")
    with pytest.raises(TypesError, match=r"type X.*unknown key 'speed'"):
        r.register("X", speed=3)
    assert "AUTO_A" not in reg  # copy is independent


def test_merge(reg, tmp_path):
    extra = load_types("[types.EXTRA]\nid = 100\n[types.PHYS_STEP]\nid = 10\ndeterministic = true\n"
                       "max_yields = 8\npayload = { x = \"f64\", y = \"f64\", n = \"u32\","
                       " tag = \"bytes[8]\", blob = \"bytes\" }\n", source="extra.toml")
    r = reg.copy()
    assert r.merge(extra) is r
    assert r.id("EXTRA") == 100 and len(r) == 5 and "extra.toml" in r.sources
    clash = load_types("[types.NEW_ONE]\nid = 200\n[types.PHYS_STEP]\nid = 10\n",
                       source="clash.toml")
    with pytest.raises(TypesError) as ei:
        r.merge(clash)
    msg = str(ei.value)
    assert "PHYS_STEP" in msg and "clash.toml" in msg and str(GOOD) in msg
    assert "NEW_ONE" not in r  # all or nothing
    same_id = load_types("[types.INTRUDER]\nid = 11\n", source="intruder.toml")
    with pytest.raises(TypesError, match="duplicate id 11: type COUNTER_INC.*INTRUDER"
                                         ".*intruder.toml"):
        r.merge(same_id)


def test_to_toml_round_trip(reg, tmp_path):
    r = reg.copy()
    r.register("WITH_DOC", payload={"a": "bytes[2]"}, doc='quote " back\\slash\nnew\tline\x7f')
    p = tmp_path / "out.toml"
    p.write_text(r.to_toml())
    back = load_types(p)
    assert list(back) == list(r)
    assert back.info("WITH_DOC").doc == r.info("WITH_DOC").doc


def test_policy_table(reg):
    t = reg.table()
    assert t.dtype == TYPE_TABLE_DTYPE
    assert list(t["id"]) == [10, 11, 12, 13]
    assert list(t["max_yields"]) == [8, 16, 16, 16]
    assert list(t["deterministic"]) == [True, False, False, False]
    assert list(t["lossy"]) == [True, False, True, True]
    assert list(t["has_var"]) == [True, False, False, False]
    assert t["fixed_size"][0] == 28
