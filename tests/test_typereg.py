"""ggmk.typereg: types.toml, payload codecs and views, module.toml, boot-time validation."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ggmk.errors import BootError, PayloadError, TypesError
from ggmk.typereg import (
    AUTO_ID_FIRST, TYPE_TABLE_DTYPE, ChannelDecl, HandlerDecl, ModuleManifest, TypeRegistry,
    UnknownTypeError, load_module_manifest, load_types, validate_declarations,
    validate_manifests,
)

FIX = Path(__file__).parent / "fixtures" / "types"
GOOD = FIX / "good.toml"

SCALAR_KINDS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bool"]
INT_RANGES = {"u8": (0, 255), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1),
              "u64": (0, 2**64 - 1), "i8": (-128, 127), "i16": (-2**15, 2**15 - 1),
              "i32": (-2**31, 2**31 - 1), "i64": (-2**63, 2**63 - 1)}


@pytest.fixture(scope="module")
def reg() -> TypeRegistry:
    return load_types(GOOD)


def _values(kind: str) -> st.SearchStrategy:
    if kind in INT_RANGES:
        return st.integers(*INT_RANGES[kind])
    if kind == "f32":
        return st.floats(width=32, allow_nan=False)
    if kind == "f64":
        return st.floats(allow_nan=False)
    if kind == "bool":
        return st.booleans()
    if kind == "bytes":
        return st.binary(max_size=40)
    n = int(kind[6:-1])
    return st.binary(min_size=n, max_size=n)


FIXED_KINDS = st.sampled_from(SCALAR_KINDS + ["bytes[1]", "bytes[3]", "bytes[16]"])


@st.composite
def schema_and_values(draw):
    kinds = draw(st.lists(FIXED_KINDS, max_size=8))
    if draw(st.booleans()):
        kinds.append("bytes")
    payload = {f"f{i}": k for i, k in enumerate(kinds)}
    values = {name: draw(_values(k)) for name, k in payload.items()}
    return payload, values


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


def test_dtype_is_packed_little_endian_fixed_part(reg):
    step = reg.info("PHYS_STEP")
    assert step.fixed_size == 8 + 8 + 4 + 8 == step.dtype.itemsize
    assert step.dtype.names == ("x", "y", "n", "tag")            # no length prefix
    assert step.dtype.fields["n"][1] == 16 and step.dtype.fields["tag"][1] == 20
    assert step.dtype["n"] == np.dtype("<u4") and step.dtype["x"] == np.dtype("<f8")
    assert step.has_var and step.var_field.name == "blob" and step.min_size == 32
    assert step.encoded_size(5) == 37
    scal = reg.info("ALL_SCALARS")
    assert scal.fixed_size == 1 + 2 + 4 + 8 + 1 + 2 + 4 + 8 + 4 + 8 + 1 + 3
    assert not scal.has_var


def test_load_from_text_and_bytes_and_missing_file(tmp_path):
    r = load_types('[types.PING]\nid = 5\n', source="inline.toml")
    assert r.id("PING") == 5 and r.info("PING").source == "inline.toml"
    assert load_types(b"[types.PONG]\nid = 6\n").name(6) == "PONG"
    assert len(load_types("")) == 0
    with pytest.raises(TypesError, match=r"nothere\.toml: cannot read"):
        load_types(tmp_path / "nothere.toml")
    with pytest.raises(TypesError, match=r"nothere\.toml: cannot read"):
        load_types(str(tmp_path / "nothere.toml"))


def test_unknown_lookups_raise_keyerror_like_types_error(reg):
    with pytest.raises(UnknownTypeError, match="unknown type 'PHYS_STEPP'.*PHYS_STEP"):
        reg.id("PHYS_STEPP")
    with pytest.raises(KeyError):
        reg.name(999)
    with pytest.raises(TypesError, match="999"):
        reg.info(999)
    assert reg.get("NOPE") is None and reg.get(10).name == "PHYS_STEP"


# ---------------------------------------------------------------------------------------------
# bad files: every message names file, type and field/policy (and line)


def _load_err(name: str) -> str:
    with pytest.raises(TypesError) as ei:
        load_types(FIX / name)
    msg = str(ei.value)
    assert name in msg
    return msg


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
# codec round trips


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_and_values())
def test_round_trip_random_schemas(sv):
    payload, values = sv
    r = TypeRegistry()
    t = r.register("RANDOM_T", payload=payload)
    raw = t.encode(values)
    var_len = len(values[t.var_field.name]) if t.has_var else 0
    assert len(raw) == t.encoded_size(var_len)
    assert t.decode(raw) == values
    # 0-copy view of encoded bytes equals the dict, field by field
    buf = np.frombuffer(raw, np.uint8)
    v = t.view(buf, len(raw))
    assert v.to_dict() == values
    for name, val in values.items():
        got = v[name]
        if isinstance(val, bytes):
            assert bytes(got) == val
        else:
            assert got == val
    # JSON round trip, and encode_into an arena-like buffer gives the same bytes
    assert t.encode_json(t.decode_json(raw)) == raw
    arena = np.zeros(len(raw) + 8, np.uint8)
    assert t.encode_into(arena[3:], values) == len(raw)
    assert arena[3:3 + len(raw)].tobytes() == raw


@pytest.mark.parametrize("kind", SCALAR_KINDS + ["bytes[5]", "bytes"])
def test_round_trip_every_field_type(kind):
    t = TypeRegistry().register("ONE_FIELD", payload={"v": kind})

    @settings(max_examples=40, deadline=None)
    @given(_values(kind))
    def check(val):
        raw = t.encode({"v": val})
        assert t.decode(raw) == {"v": val}
        assert t.view(raw, len(raw)).to_dict() == {"v": val}
        assert json.loads(t.decode_json(raw))["v"] == (val.hex() if isinstance(val, bytes)
                                                        else val)
        assert t.encode_json(t.decode_json(raw)) == raw

    check()


def test_extreme_ints_and_special_floats(reg):
    t = reg.info("ALL_SCALARS")
    d = {"a_u8": 255, "a_u16": 65535, "a_u32": 2**32 - 1, "a_u64": 2**64 - 1, "a_i8": -128,
         "a_i16": -2**15, "a_i32": -2**31, "a_i64": -2**63, "a_f32": float("inf"),
         "a_f64": float("nan"), "a_bool": True, "a_fixed": b"\x00\xff\x00"}
    raw = t.encode(d)
    out = t.decode(raw)
    assert math.isnan(out.pop("a_f64"))
    assert out == {k: v for k, v in d.items() if k != "a_f64"}
    # NaN travels through JSON as Python's json writes it
    assert math.isnan(json.loads(t.decode_json(raw))["a_f64"])
    assert t.encode_json(t.decode_json(raw)) == raw


def test_layout_is_documented_layout(reg):
    step = reg.info("PHYS_STEP")
    raw = step.encode({"x": 1.5, "y": -2.0, "n": 7, "tag": b"ABCDEFGH", "blob": b"xyz"})
    assert raw == struct.pack("<ddI8sI", 1.5, -2.0, 7, b"ABCDEFGH", 3) + b"xyz"
    empty = step.encode({"x": 0.0, "y": 0.0, "n": 0, "tag": bytes(8), "blob": b""})
    assert len(empty) == 32
    assert reg.info("COUNTER_INC").encode({}) == b""
    assert reg.info("COUNTER_INC").decode(b"") == {}


def test_view_is_zero_copy_and_writes_through(reg):
    step = reg.info("PHYS_STEP")
    raw = step.encode({"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b"hello"})
    arena = np.zeros(128, np.uint8)
    arena[16:16 + len(raw)] = np.frombuffer(raw, np.uint8)
    v = step.view(arena[16:64], len(raw))          # buffer longer than the payload is fine
    assert np.shares_memory(v.var, arena) and np.shares_memory(v["tag"], arena)
    assert v.n == 3 and v.x == 1.0 and v.blob.tobytes() == b"hello"
    v["n"] = 99
    v["tag"] = b"ZZZZZZZZ"
    v.blob[0] = ord("J")
    assert step.decode(arena[16:16 + len(raw)])["n"] == 99
    assert step.decode(arena[16:16 + len(raw)])["tag"] == b"ZZZZZZZZ"
    assert step.decode(arena[16:16 + len(raw)])["blob"] == b"Jello"
    with pytest.raises(PayloadError, match="PHYS_STEP.*'n'.*out of range"):
        v["n"] = -1
    with pytest.raises(PayloadError, match="cannot resize"):
        v["blob"] = b"longer than five"
    with pytest.raises(AttributeError):
        v.nope
    assert "PayloadView PHYS_STEP" in repr(v)


def test_view_of_empty_payload_type(reg):
    v = reg.info("COUNTER_INC").view(np.zeros(0, np.uint8), 0)
    assert v.record is None and v.to_dict() == {}


@pytest.mark.parametrize("plen, buflen, expect", [
    (27, 64, ["PHYS_STEP", "27 bytes", "at least 32", "'blob'"]),
    (40, 64, ["PHYS_STEP", "40 bytes", "'blob'", "5 bytes follow", "37"]),
    (37, 30, ["PHYS_STEP", "37", "buffer holds only 30"]),
])
def test_view_size_checks(reg, plen, buflen, expect):
    step = reg.info("PHYS_STEP")
    raw = step.encode({"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b"hello"})
    buf = np.zeros(max(buflen, len(raw)), np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    with pytest.raises(PayloadError) as ei:
        step.view(buf[:buflen], plen)
    for e in expect:
        assert e in str(ei.value), (e, str(ei.value))


def test_fixed_type_size_check_and_bad_buffers(reg):
    t = reg.info("COUNTER_INC_RESP")
    with pytest.raises(PayloadError, match="COUNTER_INC_RESP: payload is 4 bytes, expected 8"):
        t.view(np.zeros(8, np.uint8), 4)
    with pytest.raises(PayloadError, match="COUNTER_INC_RESP: payload is 9 bytes, expected 8"):
        t.decode(bytes(9))
    with pytest.raises(PayloadError, match="1-D uint8"):
        t.view(np.zeros(2, np.uint32), 8)
    with pytest.raises(PayloadError, match="read-only"):
        t.encode_into(np.frombuffer(bytes(8), np.uint8), {"value": 1})
    with pytest.raises(PayloadError, match="needs 8 bytes, buffer holds 4"):
        t.encode_into(np.zeros(4, np.uint8), {"value": 1})


# ---------------------------------------------------------------------------------------------
# payload errors name type and field


GOOD_STEP = {"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b""}


@pytest.mark.parametrize("change, expect", [
    ({"n": -1}, ["'n'", "u32", "out of range"]),
    ({"n": 2**32}, ["'n'", "out of range"]),
    ({"n": 1.5}, ["'n'", "expected an integer"]),
    ({"n": True}, ["'n'", "expected an integer"]),
    ({"n": "3"}, ["'n'", "expected an integer"]),
    ({"x": "1.0"}, ["'x'", "expected a number"]),
    ({"x": 10**400}, ["'x'", "out of range"]),
    ({"tag": b"short"}, ["'tag'", "exactly 8 bytes, got 5"]),
    ({"tag": "abcdefgh"}, ["'tag'", "expected bytes"]),
    ({"blob": [1, 2]}, ["'blob'", "expected bytes"]),
    ({"zzz": 1}, ["unknown field 'zzz'", "x, y, n, tag, blob"]),
])
def test_encode_errors(reg, change, expect):
    d = {**GOOD_STEP, **change}
    with pytest.raises(PayloadError) as ei:
        reg.info("PHYS_STEP").encode(d)
    msg = str(ei.value)
    assert msg.startswith("PHYS_STEP")
    for e in expect:
        assert e in msg, (e, msg)


def test_encode_missing_field_and_f32_overflow_and_bool(reg):
    with pytest.raises(PayloadError, match="PHYS_STEP: missing field 'tag'"):
        reg.info("PHYS_STEP").encode({"x": 1.0, "y": 2.0, "n": 3, "blob": b""})
    with pytest.raises(PayloadError, match="PHYS_STEP: unknown field 'blobb'"):  # typo, not missing
        reg.info("PHYS_STEP").encode({"x": 1.0, "y": 2.0, "n": 3, "tag": bytes(8), "blobb": b""})
    t = reg.info("ALL_SCALARS")
    base = t.decode(bytes(t.fixed_size))
    with pytest.raises(PayloadError, match="ALL_SCALARS: field 'a_f32' .*out of range"):
        t.encode({**base, "a_f32": 1e39})
    with pytest.raises(PayloadError, match="ALL_SCALARS: field 'a_bool' .*true or false"):
        t.encode({**base, "a_bool": 1})
    with pytest.raises(PayloadError, match="mapping"):
        t.encode([1, 2])
    # numpy scalars and arrays are accepted (e.g. values read from a view)
    np_vals = {**base, "a_u64": np.uint64(2**64 - 1), "a_f32": np.float32(0.5),
               "a_bool": np.bool_(True), "a_fixed": np.array([1, 2, 3], np.uint8)}
    assert t.decode(t.encode(np_vals))["a_fixed"] == b"\x01\x02\x03"


@pytest.mark.parametrize("text, expect", [
    ('{"x": 1.0, ', ["not valid JSON"]),
    ('[1, 2]', ["must be an object", "list"]),
    ('{"x": 1, "y": 2, "n": 3, "tag": "0001020304050607"}', ["missing field 'blob'"]),
    ('{"x": 1, "y": 2, "n": 3, "tag": "0001020304050607", "blob": "", "q": 1}',
     ["unknown field 'q'"]),
    ('{"x": 1, "y": 2, "n": 3.5, "tag": "0001020304050607", "blob": ""}',
     ["'n'", "expected an integer"]),
    ('{"x": 1, "y": 2, "n": -3, "tag": "0001020304050607", "blob": ""}',
     ["'n'", "out of range"]),
    ('{"x": 1, "y": 2, "n": 3, "tag": "zz", "blob": ""}', ["'tag'", "not a hex string"]),
    ('{"x": 1, "y": 2, "n": 3, "tag": "0001", "blob": ""}', ["'tag'", "exactly 8 bytes"]),
    ('{"x": 1, "y": 2, "n": 3, "tag": [0], "blob": ""}', ["'tag'", "hex string"]),
    ('{"x": true, "y": 2, "n": 3, "tag": "0001020304050607", "blob": ""}',
     ["'x'", "expected a number"]),
    ('{"x": 1, "x": 2}', ["'x'", "twice"]),
])
def test_encode_json_errors(reg, text, expect):
    with pytest.raises(PayloadError) as ei:
        reg.info("PHYS_STEP").encode_json(text)
    msg = str(ei.value)
    assert msg.startswith("PHYS_STEP")
    for e in expect:
        assert e in msg, (e, msg)


def test_json_codec_hex_and_order(reg):
    step = reg.info("PHYS_STEP")
    raw = step.encode_json(b'{"blob": "CAFE", "tag": "00 01 02 03 04 05 06 07", "n": 3,'
                           b' "y": 2, "x": 1}')
    assert step.decode(raw) == {"x": 1.0, "y": 2.0, "n": 3,
                                "tag": bytes(range(8)), "blob": b"\xca\xfe"}
    assert step.decode_json(raw) == ('{"x": 1.0, "y": 2.0, "n": 3, "tag": "0001020304050607",'
                                     ' "blob": "cafe"}')
    assert reg.info("COUNTER_INC").encode_json("{}") == b""


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


def test_decl_constructors_validate():
    with pytest.raises(BootError, match="module 'm': channel 'a.b'.*'sideways'"):
        ChannelDecl("a.b", "sideways", "A", module="m")
    with pytest.raises(BootError, match="handler 'h'.*'huge'"):
        HandlerDecl("A", "h", "m", granularity="huge")
    assert HandlerDecl("A", "h", "m", granularity="batch").batch is True


# ---------------------------------------------------------------------------------------------
# boot-time validation


def test_valid_manifests_pass(reg):
    ms = [load_module_manifest(FIX / "module_counter.toml"),
          load_module_manifest(FIX / "module_printer.toml")]
    validate_manifests(reg, ms)  # no error


def _boot_err(reg, chans, handlers) -> BootError:
    with pytest.raises(BootError) as ei:
        validate_declarations(reg, chans, handlers, source="boot")
    return ei.value


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


# ---------------------------------------------------------------------------------------------
# bad input: type ids the kernels cannot index, and the any-type system channels


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
