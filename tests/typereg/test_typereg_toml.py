"""ggmk.typereg.toml: loading types.toml; every bad file's message names file, type and
field/policy (and line)."""
from __future__ import annotations

import numpy as np
import pytest

from ggmk.errors import BootError, TypesError
from ggmk.typereg import HandlerDecl, TypeRegistry, load_module_manifest, load_types

from typereg_helpers import FIX, GOOD, SCALAR_KINDS, _load_err


# ---------------------------------------------------------------------------------------------
# loading a good file


def test_good_file_ids_names_policies_and_field_order(reg):
    assert len(reg) == 4
    assert reg.id("PHYS_STEP") == 10 and reg.name(11) == "COUNTER_INC"
    assert "COUNTER_INC_RESP" in reg and 12 in reg and np.uint32(13) in reg
    assert "NOPE" not in reg and 99 not in reg
    assert [t.name for t in reg] == ["PHYS_STEP", "COUNTER_INC", "COUNTER_INC_RESP",
                                     "ALL_SCALARS"]
    step = reg.info("PHYS_STEP")
    assert reg.info(10) is step
    assert step.policies == {"deterministic": True, "lossy": True, "max_yields": 8}
    assert step.doc == "one physics step" and step.source == str(GOOD)
    assert [f.name for f in step.fields] == ["x", "y", "n", "tag", "blob"]
    assert reg.info("COUNTER_INC").policies == {"deterministic": False, "lossy": False,
                                                "max_yields": 16}
    assert reg.info("COUNTER_INC").fields == () and reg.info("COUNTER_INC").fixed_size == 0
    # sub-table spelling keeps TOML order too
    assert [f.kind for f in reg.info("ALL_SCALARS").fields] == SCALAR_KINDS + ["bytes[3]"]


def test_load_from_text_and_bytes_and_missing_file(tmp_path):
    r = load_types('[types.PING]\nid = 5\n', source="inline.toml")
    assert r.id("PING") == 5 and r.info("PING").source == "inline.toml"
    assert load_types(b"[types.PONG]\nid = 6\n").name(6) == "PONG"
    assert len(load_types("")) == 0
    with pytest.raises(TypesError, match=r"nothere\.toml: cannot read"):
        load_types(tmp_path / "nothere.toml")
    with pytest.raises(TypesError, match=r"nothere\.toml: cannot read"):
        load_types(str(tmp_path / "nothere.toml"))


# ---------------------------------------------------------------------------------------------
# bad files: every message names file, type and field/policy (and line)


def test_bad_toml_syntax_names_file_and_line():
    msg = _load_err("bad_syntax.toml")
    assert "invalid TOML" in msg and "line 3" in msg


def test_missing_id():
    msg = _load_err("bad_missing_id.toml")
    assert "bad_missing_id.toml:4" in msg and "NO_ID" in msg and "missing 'id'" in msg
    assert "GOOD" not in msg


def test_duplicate_id_names_both_types():
    msg = _load_err("bad_duplicate_id.toml")
    assert "duplicate id 7" in msg and "SECOND" in msg and "FIRST" in msg
    assert "bad_duplicate_id.toml:4" in msg


def test_duplicate_name_names_type_and_both_lines():
    msg = _load_err("bad_duplicate_name.toml")
    assert "duplicate type name" in msg and "TWICE" in msg
    assert "bad_duplicate_name.toml:7" in msg and "line 1" in msg


def test_unknown_field_type_names_type_and_field():
    msg = _load_err("bad_field_type.toml")
    assert "SENSOR_READ" in msg and "'level'" in msg and "float32" in msg
    assert "'when'" not in msg


def test_invalid_policies_all_reported():
    with pytest.raises(TypesError) as ei:
        load_types(FIX / "bad_policy.toml")
    msg = str(ei.value)
    assert "WORK_ITEM" in msg and "'deterministic'" in msg and "'max_yields'" in msg
    assert "-1" in msg and "'yes'" in msg
    assert len(ei.value.problems) == 2
    assert all("bad_policy.toml:1" in p for p in ei.value.problems)


def test_variable_bytes_not_last():
    msg = _load_err("bad_var_not_last.toml")
    assert "LOG_LINE" in msg and "'text'" in msg and "last" in msg


def test_invalid_type_name():
    msg = _load_err("bad_name.toml")
    assert "physStep" in msg and "UPPER_SNAKE" in msg


def test_unknown_key_suggests_policy():
    msg = _load_err("bad_unknown_key.toml")
    assert "TIMER_FIRE" in msg and "'determinstic'" in msg and "did you mean 'deterministic'" in msg


@pytest.mark.parametrize("text, expect", [
    ('[types.A]\nid = 0\n', ["type A", "'id'", "0"]),
    ('[types.A]\nid = 4294967296\n', ["type A", "'id'"]),
    ('[types.A]\nid = "7"\n', ["type A", "'id'", "'7'"]),
    ('[types.A]\nid = 1\nlossy = 1\n', ["type A", "'lossy'"]),
    ('[types.A]\nid = 1\nmax_yields = 70000\n', ["type A", "'max_yields'"]),
    ('[types.A]\nid = 1\npayload = { x = "bytes[0]" }\n', ["type A", "'x'", "N >= 1"]),
    ('[types.A]\nid = 1\npayload = { x = "bytes", y = "bytes" }\n', ["type A", "'x'", "last"]),
    ('[types.A]\nid = 1\npayload = { x = 3 }\n', ["type A", "'x'", "unknown field type"]),
    ('[types.A]\nid = 1\npayload = "u8"\n', ["type A", "'payload'"]),
    ('[types.A]\nid = 1\npayload = { "1x" = "u8" }\n', ["type A", "'1x'", "field name"]),
    ('[types.A_]\nid = 1\n', ["A_", "UPPER_SNAKE"]),
    ('[types]\nA = 3\n', ["type A", "must be a table"]),
    ('types = 3\n', ["'types' must be a table"]),
    ('[typez.A]\nid = 1\n', ["unknown top-level key 'typez'"]),
])
def test_more_validation_errors(text, expect):
    with pytest.raises(TypesError) as ei:
        load_types(text, source="t.toml")
    msg = str(ei.value)
    assert msg.startswith("t.toml")
    for e in expect:
        assert e in msg, (e, msg)


def test_line_numbers_point_at_the_type(tmp_path):
    p = tmp_path / "types.toml"
    p.write_text("# header\n\n[types.OK]\nid = 1\n\n[types.BAD]\nid = 2\n"
                 "payload = { a = \"u9\" }\n")
    with pytest.raises(TypesError, match=r"types\.toml:6: type BAD, field 'a': unknown field"):
        load_types(p)


# ---------------------------------------------------------------------------------------------
# bad input: type ids the kernels cannot index


def test_type_id_beyond_the_kernel_tables_is_refused_at_load(tmp_path):
    f = tmp_path / "types.toml"
    f.write_text('[types.OK_ONE]\nid = 65535\n\n[types.BIG]\nid = 70000\n')
    with pytest.raises(TypesError) as ei:
        load_types(f)
    msg = str(ei.value)
    assert str(f) in msg and "type BIG" in msg and "70000" in msg and "1..65535" in msg
    assert f"{f}:4" in msg                                    # the line of [types.BIG]
    assert len(ei.value.problems) == 1                        # 65535 itself is fine
    assert load_types('[types.TOP]\nid = 65535\n').id("TOP") == 65535
    with pytest.raises(TypesError, match=r"type BIG: 'id' 65536 is out of range 1\.\.65535"):
        TypeRegistry().register("BIG", id=65536)
    with pytest.raises(TypesError, match=r"m\.toml:4: type BIG: 'id' 70000 .*1\.\.65535"):
        load_module_manifest('[module]\nname = "m"\nversion = "1"\n[types.BIG]\nid = 70000\n',
                             source="m.toml")
    with pytest.raises(BootError, match=r"invalid type 70000.*1\.\.65535"):
        HandlerDecl(70000, "h", "m")


# ---------------------------------------------------------------------------------------------
# limits and reserved names, path vs. text


@pytest.mark.parametrize("payload, field, expect", [
    ('{ b = "bytes[2000000000]", c = "bytes[2000000000]" }', "c", "fixed part"),
    ('{ b = "bytes[2147483647]", n = "u8" }', "n", "fixed part"),
    ('{ b = "bytes[3000000000]" }', "b", "bytes[3000000000]"),
    ('{ b = "bytes[4294967295]" }', "b", "bytes[4294967295]"),
])
def test_fixed_part_over_2_31_is_refused_at_load(tmp_path, payload, field, expect):
    p = tmp_path / "big.toml"
    p.write_text(f"# big\n[types.BIG]\nid = 1\npayload = {payload}\n")
    with pytest.raises(TypesError) as ei:
        load_types(p)
    msg = str(ei.value)
    assert f"{p}:2: type BIG, field '{field}': " in msg and expect in msg, msg
    assert "2147483647" in msg, msg                          # says what is allowed


def test_fixed_part_at_2_31_minus_1_loads():
    t = load_types('[types.BIG]\nid = 1\npayload = { b = "bytes[2147483646]", n = "u8" }\n'
                   ).info("BIG")
    assert t.fixed_size == 2**31 - 1 == t.dtype.itemsize and t.min_size == 2**31 - 1


def test_register_refuses_a_fixed_part_over_2_31():
    with pytest.raises(TypesError, match=r"register\(\): type BIG2, field 'b': .*fixed part"):
        TypeRegistry().register("BIG2", payload={"a": "bytes[1500000000]",
                                                 "b": "bytes[1500000000]"})


@pytest.mark.parametrize("name", ["type", "record", "var", "keys", "to_dict", "__x"])
def test_field_names_a_payload_view_shadows_are_refused(name):
    with pytest.raises(TypesError) as ei:
        load_types(f'[types.A]\nid = 1\npayload = {{ ok = "u8", {name} = "u8" }}\n')
    msg = str(ei.value)
    assert f"<string>:1: type A, field '{name}': " in msg and "reserved" in msg, msg
    for word in ("type", "record", "var", "keys", "to_dict"):
        assert word in msg
    with pytest.raises(TypesError, match="reserved"):
        TypeRegistry().register("B", payload={name: "u8"})


def test_single_underscore_field_reads_as_attribute():
    t = load_types('[types.A]\nid = 1\npayload = { _x = "u16" }\n').info("A")
    assert t.view(t.encode({"_x": 7}))._x == 7


def test_a_path_with_equals_or_bracket_is_a_path(tmp_path):
    for name in ("x=1.toml", "a[1].toml"):
        p = tmp_path / name
        p.write_text("[types.A]\nid = 1\n")
        reg = load_types(str(p))
        assert reg.names() == ["A"] and reg.info("A").source == str(p)
        man = tmp_path / ("m" + name)
        man.write_text('[module]\nname = "m"\nversion = "1"\n')
        assert load_module_manifest(str(man)).name == "m"
    # one-line TOML text is still text; a missing plain path still says it cannot be read
    assert load_types("types.PING.id = 5").id("PING") == 5
    with pytest.raises(TypesError, match=r"nothere\.toml: cannot read"):
        load_types(str(tmp_path / "nothere.toml"))
    with pytest.raises(TypesError, match=r"invalid TOML.*no file of that name"):
        load_types(str(tmp_path / "gone=1.toml"))
