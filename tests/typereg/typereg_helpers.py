"""Helpers shared by the ggmk.typereg tests (tests/typereg/test_typereg_*.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import strategies as st

from ggmk.errors import BootError, TypesError
from ggmk.typereg import load_types, validate_declarations


FIX = Path(__file__).parent.parent / "fixtures" / "types"
GOOD = FIX / "good.toml"

SCALAR_KINDS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bool"]
INT_RANGES = {"u8": (0, 255), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1),
              "u64": (0, 2**64 - 1), "i8": (-128, 127), "i16": (-2**15, 2**15 - 1),
              "i32": (-2**31, 2**31 - 1), "i64": (-2**63, 2**63 - 1)}


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


def _load_err(name: str) -> str:
    with pytest.raises(TypesError) as ei:
        load_types(FIX / name)
    msg = str(ei.value)
    assert name in msg
    return msg


GOOD_STEP = {"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b""}


def _boot_err(reg, chans, handlers) -> BootError:
    with pytest.raises(BootError) as ei:
        validate_declarations(reg, chans, handlers, source="boot")
    return ei.value
