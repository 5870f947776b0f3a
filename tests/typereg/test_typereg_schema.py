"""ggmk.typereg.schema: the packed layout, payload codecs (binary, JSON) and 0-copy views."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from ggmk.errors import PayloadError
from ggmk.typereg import TypeRegistry

from typereg_helpers import GOOD_STEP, SCALAR_KINDS, _values, schema_and_values


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
