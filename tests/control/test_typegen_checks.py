"""The classes ``ggmk typegen`` generates refuse in ``encode()`` exactly what the registry's codec
(``TypeInfo.encode``) refuses, with its message (TypeError for the wrong type, ValueError out of
range or of the wrong length), where ``struct`` alone cut or padded a ``bytes[N]`` value, took
an int for a bool and failed with no field named; valid values encode to the registry's bytes
and decode back. ``decode()`` refuses what is no bytes (``bytes(1)`` was a zero byte). The
generated module stays standalone: it loads neither ggmk nor NumPy. Checked on the real
``ggmk typegen`` output, every field kind."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ggmk.errors import PayloadError
from ggmk.typereg import load_types

GGMK = str(Path(sys.executable).parent / "ggmk")

# every field kind; `class` is the attribute class_; TYPE_ERROR, OVERFLOW_ERROR and
# VALUE_ERROR make classes named like the exceptions the checks raise and catch
TYPES = """
[types.ALL]
id = 10
[types.ALL.payload]
a = "u8"
b = "u16"
c = "u32"
d = "u64"
e = "i8"
f = "i16"
g = "i32"
h = "i64"
x = "f32"
y = "f64"
class = "bool"
tag = "bytes[2]"
blob = "bytes"
[types.ONE]
id = 11
payload = { n = "u8" }
[types.TYPE_ERROR]
id = 12
payload = { n = "u8" }
[types.OVERFLOW_ERROR]
id = 13
payload = { n = "u8" }
[types.VALUE_ERROR]
id = 14
payload = { n = "u8" }
"""
VALID = {"a": 1, "b": 2, "c": 3, "d": 4, "e": -5, "f": -6, "g": -7, "h": -8, "x": 1.5,
         "y": 2.25, "class_": True, "tag": b"ab", "blob": b"xyz"}
KINDS = {"a": "u8", "b": "u16", "c": "u32", "d": "u64", "e": "i8", "f": "i16", "g": "i32",
         "h": "i64", "x": "f32", "y": "f64", "class_": "bool", "tag": "bytes[2]",
         "blob": "bytes"}


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("typegen")
    (d / "types.toml").write_text(TYPES)
    out = d / "payloads.py"
    r = subprocess.run([GGMK, "typegen", str(d / "types.toml"), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    spec = importlib.util.spec_from_file_location("gen_typegen_checks", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, load_types(str(d / "types.toml")), out


def _both(gen, attr, value):
    """The generated class's and the registry's outcome for ALL with ``attr`` = ``value``: the
    payload bytes, or the exception."""
    mod, reg, _ = gen
    obj = mod.All(**{**VALID, attr: value})
    out = []
    for encode in (obj.encode, lambda: reg.info("ALL").encode(obj.to_dict())):
        try:
            out.append(encode())
        except Exception as e:  # noqa: BLE001 - compared below
            out.append(e)
    return out


BAD = [  # (attribute, value, exception of the generated class)
    ("a", 256, ValueError), ("a", -1, ValueError), ("a", True, TypeError),
    ("a", 1.0, TypeError), ("a", "1", TypeError), ("a", None, TypeError),
    ("a", np.True_, TypeError), ("a", np.float64(1.0), TypeError),
    ("a", np.int16(300), ValueError),
    ("b", 2**16, ValueError), ("c", 2**32, ValueError), ("c", -1, ValueError),
    ("d", 2**64, ValueError), ("d", -1, ValueError), ("e", 128, ValueError),
    ("e", -129, ValueError), ("f", 2**15, ValueError), ("g", -2**31 - 1, ValueError),
    ("h", 2**63, ValueError), ("h", -2**63 - 1, ValueError), ("h", False, TypeError),
    ("x", 1e39, ValueError), ("x", -1e39, ValueError), ("x", 2**1024, ValueError),
    ("x", True, TypeError), ("x", "1.5", TypeError), ("x", None, TypeError),
    ("x", np.False_, TypeError), ("y", 2**1024, ValueError), ("y", True, TypeError),
    ("y", b"1", TypeError), ("class_", 1, TypeError), ("class_", 0, TypeError),
    ("class_", "true", TypeError), ("class_", None, TypeError), ("class_", np.int8(1), TypeError),
    ("tag", b"abc", ValueError), ("tag", b"a", ValueError), ("tag", b"", ValueError),
    ("tag", bytearray(b"abc"), ValueError), ("tag", np.zeros(3, np.uint8), ValueError),
    ("tag", "ab", TypeError), ("tag", 2, TypeError), ("tag", [1, 2], TypeError),
    ("tag", np.zeros(2, np.int8), TypeError), ("tag", np.zeros((1, 2), np.uint8), TypeError),
    ("blob", "xyz", TypeError), ("blob", 5, TypeError), ("blob", [1, 2], TypeError),
    ("blob", None, TypeError), ("blob", np.zeros(2, np.float32), TypeError),
]


@pytest.mark.parametrize("attr, value, exc", BAD, ids=[f"{a}={v!r}"[:32] for a, v, _ in BAD])
def test_a_value_the_registry_refuses_is_refused_with_its_message(gen, attr, value, exc):
    mine, registry = _both(gen, attr, value)
    assert isinstance(registry, PayloadError), registry
    assert type(mine) is exc, mine             # the builtin, not the class TypeError/ValueError
    assert str(mine) == str(registry)
    field = "class" if attr == "class_" else attr
    assert str(mine).startswith(f"ALL: field {field!r} ({KINDS[attr]}): ")
    assert "expected" in str(mine) or "out of range" in str(mine)   # what is allowed


def test_messages_name_the_value_and_what_is_allowed(gen):
    mine = {a: str(_both(gen, a, v)[0]) for a, v in [("a", 300), ("x", 1e39),
                                                        ("class_", 1), ("tag", b"abc")]}
    assert mine == {"a": "ALL: field 'a' (u8): 300 is out of range 0..255",
                    "x": "ALL: field 'x' (f32): 1e+39 is out of range for f32",
                    "class_": "ALL: field 'class' (bool): expected true or false, got int 1",
                    "tag": "ALL: field 'tag' (bytes[2]): expected exactly 2 bytes, got 3"}


def test_the_first_bad_field_in_schema_order_is_reported_as_the_registry_does(gen):
    mod, reg, _ = gen
    obj = mod.All(**{**VALID, "c": -1, "tag": b"a", "blob": 7})
    with pytest.raises(ValueError) as e:
        obj.encode()
    with pytest.raises(PayloadError) as r:
        reg.info("ALL").encode(obj.to_dict())
    assert str(e.value) == str(r.value) == "ALL: field 'c' (u32): -1 is out of range 0..4294967295"


@pytest.mark.parametrize("attr, value", [
    ("a", np.uint8(255)), ("d", np.uint64(2**64 - 1)), ("h", np.int64(-2**63)), ("x", 3),
    ("x", np.float32(0.1)), ("x", np.int32(7)), ("y", np.float64(1e300)), ("y", 2**53),
    ("x", float("inf")), ("class_", np.True_), ("class_", False), ("tag", bytearray(b"\0\1")),
    ("tag", memoryview(b"zz")), ("tag", np.array([1, 2], np.uint8)), ("blob", b""),
    ("blob", memoryview(b"abc")), ("blob", np.arange(5, dtype=np.uint8)),
])
def test_values_the_registry_takes_encode_to_its_bytes(gen, attr, value):
    mine, registry = _both(gen, attr, value)
    assert isinstance(registry, bytes) and mine == registry


def test_decode_refuses_what_is_no_payload(gen):
    mod, reg, _ = gen
    for cls, info, data, msg in [
            (mod.One, reg.info("ONE"), 1, "ONE: decode needs bytes, got int"),
            (mod.All, reg.info("ALL"), [0] * 50, "ALL: decode needs bytes, got list"),
            (mod.One, reg.info("ONE"), np.zeros(1, np.int8), "ONE: payload buffer must be a "
             "1-D uint8 array, got int8 with shape (1,)"),
            (mod.One, reg.info("ONE"), np.zeros(4, np.uint8)[::2],
             "ONE: payload buffer must be contiguous")]:
        with pytest.raises(TypeError) as e:
            cls.decode(data)
        with pytest.raises(PayloadError) as r:
            info.decode(data)
        assert str(e.value) == str(r.value) == msg
    assert mod.One.decode(np.array([7], np.uint8)) == mod.One(n=7)
    assert mod.One.decode(bytearray(b"\x07")) == mod.One(n=7)


def test_classes_named_like_the_exceptions_do_not_break_the_checks(gen):
    mod = gen[0]
    assert {mod.TypeError.TYPE_ID, mod.OverflowError.TYPE_ID, mod.ValueError.TYPE_ID} == \
        {12, 13, 14}
    for cls in (mod.TypeError, mod.OverflowError, mod.ValueError, mod.One):
        with pytest.raises(TypeError, match=r"field 'n' \(u8\): expected an integer"):
            cls(n="1").encode()
        with pytest.raises(ValueError, match=r"field 'n' \(u8\): 256 is out of range"):
            cls(n=256).encode()
    with pytest.raises(ValueError, match="out of range for f32"):   # caught OverflowError
        mod.All(**{**VALID, "x": 1e39}).encode()


def test_generated_module_is_standalone(gen):
    # a fresh interpreter: the module loads neither ggmk nor NumPy, and checks without them
    code = ("import sys; ns = {}; exec(open(sys.argv[1]).read(), ns)\n"
            "assert not any(m.split('.')[0] in ('ggmk', 'numpy') for m in sys.modules), "
            "sorted(sys.modules)\n"
            "p = ns['One'](n=300)\n"
            "try: p.encode()\n"
            "except ValueError as e: print(e)\n"
            "print(ns['One'](n=3).encode().hex(), ns['One'].decode(b'\\x09').n)\n")
    r = subprocess.run([sys.executable, "-c", code, str(gen[2])], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ONE: field 'n' (u8): 300 is out of range 0..255", "03 9"]


def _int_range(kind):
    bits = int(kind[1:])
    return (0, 2**bits - 1) if kind[0] == "u" else (-2**(bits - 1), 2**(bits - 1) - 1)


ATTRS = list(VALID)
_VALUES = {a: (st.integers(*_int_range(k)) if k[0] in "ui" else
               st.floats(width=32, allow_nan=False) if k == "f32" else
               st.floats(allow_nan=False) if k == "f64" else
               st.booleans() if k == "bool" else
               st.binary(min_size=2, max_size=2) if k == "bytes[2]" else st.binary())
           for a, k in KINDS.items()}


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(_VALUES))
def test_valid_values_encode_as_the_registry_and_decode_back(gen, values):
    mod, reg, _ = gen
    info = reg.info("ALL")
    obj = mod.All(**values)
    raw = obj.encode()
    assert raw == info.encode(obj.to_dict())
    assert mod.All.decode(raw) == obj and info.decode(raw) == obj.to_dict()


# any value of a field's broad kind: in range or not, the generated class and the registry agree
_ANY = st.one_of(
    *(st.tuples(st.just(a), st.integers(-2**70, 2**70)) for a, k in KINDS.items()
      if k[0] in "ui"),
    st.tuples(st.just("x"), st.floats(allow_nan=False)),
    st.tuples(st.just("x"), st.integers(-2**1030, 2**1030)),
    st.tuples(st.just("tag"), st.binary(max_size=4)),
    st.tuples(st.sampled_from(ATTRS), st.one_of(st.booleans(), st.none(), st.text(max_size=3),
                                                st.integers(0, 1))),
)


@settings(max_examples=500, deadline=None)
@given(_ANY)
def test_any_value_has_the_registrys_outcome(gen, attr_value):
    mine, registry = _both(gen, *attr_value)
    if isinstance(registry, bytes):
        assert mine == registry
    else:
        assert isinstance(registry, PayloadError) and type(mine) in (TypeError, ValueError)
        assert str(mine) == str(registry)
