"""The type registry (``types.toml``), module manifests (``module.toml``) and boot-time checks.

Every message type has an id (the task record's ``type`` field, u32), an UPPER_SNAKE name, a
payload schema and policies. From the schema come a packed NumPy dtype, 0-copy typed views of
payloads in arena memory, a binary codec and the JSON codec ``ggmk emit TYPE --payload JSON``
uses (SPEC §6, §11).

``types.toml``
--------------
One table per type under ``[types]``; the only top-level key is ``types``::

    [types.PHYS_STEP]
    id = 10                   # required: 1 .. 65535 (0xFFFF), unique
    deterministic = true      # policy, default false: handlers of it must be deterministic
    lossy = false             # policy, default true; false = needs lossless delivery
    max_yields = 8            # policy, default 16 (0 .. 65535): the yield circuit breaker
    doc = "one physics step"  # optional free text
    payload = { x = "f64", y = "f64", n = "u32", tag = "bytes[8]", blob = "bytes" }

``payload`` may also be written as a sub-table (``[types.PHYS_STEP.payload]``); field order is the
TOML order either way. A type without ``payload`` has an empty payload (inline-only tasks).

Field types: ``u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool`` (bool is one byte, 0 or 1),
``bytes[N]`` (exactly N bytes, N >= 1) and ``bytes`` (variable length; at most one, and last).

Payload layout (the same bytes on CPU and GPU)::

    [fixed part: the fields in order, packed, little-endian, no padding]   ``TypeInfo.dtype``
    [u32 little-endian length L][L bytes]       only when the type has a ``bytes`` field

so ``payload_len == fixed_size`` without a variable field and ``fixed_size + 4 + L`` with one.
The length prefix is not part of ``dtype``.

JSON codec: a JSON object with exactly the type's fields; integers are JSON integers (a float is
refused for an integer field), floats accept any JSON number (NaN/Infinity as Python's ``json``
writes them), bools are ``true``/``false``, and both kinds of bytes field are lowercase hex
strings (``"00ff10"``; uppercase and spaces between bytes are accepted on input).

Type ids: 0 is never a type (a zeroed task record has type 0). Ids in types.toml may be anything in
1 .. 0xFFFF (``MAX_TYPE_ID``: the record's ``type`` field is a u32, but the CPU kernel's per-type
tables have ``1 << 16`` entries, so a larger id is refused when the file is loaded rather than
failing the boot); keep hand-assigned ids below ``AUTO_ID_FIRST`` (0x8000), because
``TypeRegistry.register`` without an id takes the lowest free id in 0x8000 .. 0xFFFF.

``module.toml``
---------------
::

    [module]
    name = "counter"            # lowercase: [a-z][a-z0-9_-]*
    version = "0.1.0"
    description = "optional"

    [[channel]]                 # one per channel end this module declares
    name = "counter.in"         # namespace.verb, lowercase dotted
    direction = "consume"       # produce | consume
    type = "COUNTER_INC"
    mode = "p2p"                # p2p (default) | fanout
    guarantee = "lossless"      # lossless (default) | lossy

    [[handler]]
    type = "COUNTER_INC"
    name = "inc"                # the function name in the module
    deterministic = false       # default false
    batch = false               # default false; true means granularity "batch"
    granularity = "task"        # CPU: task | batch; GPU: scalar | warp | block
    shared_mem = 0              # bytes of shared memory (block granularity only)

    [types.COUNTER_INC]         # optional: types the module brings, as in types.toml
    id = 100

Example::

    reg = load_types("types.toml")
    step = reg.info("PHYS_STEP")
    raw = step.encode({"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b"hi"})
    v = step.view(np.frombuffer(raw, np.uint8), len(raw))   # v["n"] == 3, v.blob -> uint8 view
    step.decode_json(step.encode_json('{"x": 1, "y": 2, "n": 3, "tag": "0001020304050607",'
                                      ' "blob": ""}'))
    man = load_module_manifest("modules/counter/module.toml")
    validate_declarations(reg, man.channels, man.handlers, source=man.path)   # or BootError
"""
from __future__ import annotations

import difflib
import json
import os
import re
import struct
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

import numpy as np

from ggmk.errors import BootError, PayloadError, TypesError

__all__ = [
    "AUTO_ID_FIRST", "AUTO_ID_LAST", "MAX_TYPE_ID", "DEFAULT_MAX_YIELDS", "FIELD_TYPES",
    "TYPE_TABLE_DTYPE", "Field", "TypeInfo", "PayloadView", "TypeRegistry", "UnknownTypeError",
    "load_types", "ChannelDecl", "HandlerDecl", "ModuleManifest", "load_module_manifest",
    "validate_declarations", "validate_manifests",
]

AUTO_ID_FIRST = 0x8000
AUTO_ID_LAST = 0xFFFF
MAX_TYPE_ID = 0xFFFF                # ids index the kernels' per-type tables (1 << 16 entries)
DEFAULT_MAX_YIELDS = 16
MAX_YIELDS_LIMIT = 0xFFFF          # yield_count is a u16 in the task record
_MAX_PAYLOAD = 0xFFFF_FFFF         # payload_len is a u32

TYPE_NAME_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
CHANNEL_NAME_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODULE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")
HANDLER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BYTES_N_RE = re.compile(r"bytes\[(\d+)\]")

# kind -> (struct code, numpy type, size, category, min, max)
_SCALARS: dict[str, tuple[str, str, int, str, Any, Any]] = {
    "u8": ("B", "<u1", 1, "int", 0, 2**8 - 1),
    "u16": ("H", "<u2", 2, "int", 0, 2**16 - 1),
    "u32": ("I", "<u4", 4, "int", 0, 2**32 - 1),
    "u64": ("Q", "<u8", 8, "int", 0, 2**64 - 1),
    "i8": ("b", "<i1", 1, "int", -2**7, 2**7 - 1),
    "i16": ("h", "<i2", 2, "int", -2**15, 2**15 - 1),
    "i32": ("i", "<i4", 4, "int", -2**31, 2**31 - 1),
    "i64": ("q", "<i8", 8, "int", -2**63, 2**63 - 1),
    "f32": ("f", "<f4", 4, "float", None, None),
    "f64": ("d", "<f8", 8, "float", None, None),
    "bool": ("?", "?", 1, "bool", None, None),
}
FIELD_TYPES = tuple(_SCALARS) + ("bytes[N]", "bytes")
_POLICIES = ("deterministic", "lossy", "max_yields")
_TYPE_KEYS = ("id", "payload", "doc") + _POLICIES

# Per-type policies as records, for kernels that must not touch Python objects per task.
TYPE_TABLE_DTYPE = np.dtype([
    ("id", "<u4"), ("max_yields", "<u2"), ("deterministic", "?"), ("lossy", "?"),
    ("fixed_size", "<u4"), ("has_var", "?"),
])

_LEN = struct.Struct("<I")


class UnknownTypeError(TypesError, KeyError):
    """A type name or id that the registry does not hold (also a ``KeyError``)."""

    __str__ = Exception.__str__


# --------------------------------------------------------------------------------------------
# fields and types


@dataclass(frozen=True)
class Field:
    """One payload field. ``offset``/``size`` locate it in the fixed part; a variable ``bytes``
    field has ``size == 0`` and ``offset == fixed_size`` (where its length prefix starts)."""

    name: str
    kind: str
    offset: int
    size: int

    @property
    def is_var(self) -> bool:
        return self.kind == "bytes"

    @property
    def is_bytes(self) -> bool:
        return self.kind.startswith("bytes")

    @property
    def category(self) -> str:
        """``int``, ``float``, ``bool`` or ``bytes``."""
        return "bytes" if self.is_bytes else _SCALARS[self.kind][3]


def _kind_size(kind: Any) -> int:
    """Bytes the kind takes in the fixed part (0 for ``bytes``); ValueError if unknown."""
    if isinstance(kind, str):
        if kind in _SCALARS:
            return _SCALARS[kind][2]
        if kind == "bytes":
            return 0
        m = _BYTES_N_RE.fullmatch(kind)
        if m:
            n = int(m.group(1))
            if n < 1:
                raise ValueError(f"bytes[{n}]: a fixed bytes field needs N >= 1")
            return n
    raise ValueError(f"unknown field type {kind!r} (expected one of {', '.join(FIELD_TYPES)})")


@dataclass(frozen=True, eq=False)
class TypeInfo:
    """A message type: id, name, payload schema, policies, and its payload codecs.

    Build these through ``load_types`` or ``TypeRegistry.register``. ``dtype`` is the packed
    little-endian NumPy dtype of the fixed part; ``fixed_size`` its size in bytes.
    """

    id: int
    name: str
    fields: tuple[Field, ...]
    deterministic: bool = False
    lossy: bool = True
    max_yields: int = DEFAULT_MAX_YIELDS
    doc: str = ""
    source: str = ""
    dtype: np.dtype = dc_field(init=False, repr=False)
    fixed_size: int = dc_field(init=False, repr=False)
    var_field: Field | None = dc_field(init=False, repr=False)
    _struct: struct.Struct = dc_field(init=False, repr=False)
    _by_name: dict = dc_field(init=False, repr=False)
    _fixed_checks: tuple = dc_field(init=False, repr=False)

    def __post_init__(self) -> None:
        fixed = [f for f in self.fields if not f.is_var]
        var = [f for f in self.fields if f.is_var]
        descr, fmt = [], "<"
        for f in fixed:
            if f.kind in _SCALARS:
                code, npt = _SCALARS[f.kind][:2]
                descr.append((f.name, npt))
                fmt += code
            else:
                descr.append((f.name, "u1", (f.size,)))
                fmt += f"{f.size}s"
        dt = np.dtype(descr)  # align=False: packed
        set_ = object.__setattr__
        set_(self, "dtype", dt)
        set_(self, "fixed_size", dt.itemsize)
        set_(self, "var_field", var[0] if var else None)
        set_(self, "_struct", struct.Struct(fmt))
        set_(self, "_by_name", {f.name: f for f in self.fields})
        set_(self, "_fixed_checks", tuple((f.name, _fast_check(self.name, f)) for f in fixed))

    # -- identity ----------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (self.id, self.name, tuple((f.name, f.kind) for f in self.fields),
                self.deterministic, self.lossy, self.max_yields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeInfo) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def policies(self) -> dict[str, Any]:
        """``{"deterministic": bool, "lossy": bool, "max_yields": int}``."""
        return {"deterministic": self.deterministic, "lossy": self.lossy,
                "max_yields": self.max_yields}

    @property
    def has_var(self) -> bool:
        return self.var_field is not None

    @property
    def min_size(self) -> int:
        """Smallest valid payload_len: the fixed part, plus the length prefix if any."""
        return self.fixed_size + (4 if self.has_var else 0)

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise PayloadError(self._unknown_field_msg(name)) from None

    def encoded_size(self, var_len: int = 0) -> int:
        """payload_len of a payload whose variable field holds ``var_len`` bytes."""
        return self.min_size + (var_len if self.has_var else 0)

    # -- size checks -------------------------------------------------------------------------
    def _check_len(self, data: Any, payload_len: int) -> int:
        """Validate ``payload_len`` against the schema (and the bytes in ``data``); returns the
        variable field's length (0 without one)."""
        if not self.has_var:
            if payload_len != self.fixed_size:
                raise PayloadError(
                    f"{self.name}: payload is {payload_len} bytes, expected {self.fixed_size}"
                    f" (fixed part, no variable field)")
            return 0
        vname = self.var_field.name
        if payload_len < self.min_size:
            raise PayloadError(
                f"{self.name}: payload is {payload_len} bytes, expected at least {self.min_size}"
                f" ({self.fixed_size} fixed + 4 length prefix of variable field {vname!r})")
        (n,) = _LEN.unpack_from(data, self.fixed_size)
        if payload_len != self.min_size + n:
            raise PayloadError(
                f"{self.name}: payload is {payload_len} bytes but variable field {vname!r} says"
                f" {n} bytes follow (expected {self.min_size + n} = {self.fixed_size} fixed"
                f" + 4 + {n})")
        return n

    # -- 0-copy view ---------------------------------------------------------------------------
    def view(self, buf: Any, payload_len: int | None = None) -> "PayloadView":
        """A typed view of the payload at the start of ``buf`` (a 1-D uint8 array; bytes-likes are
        wrapped with ``np.frombuffer``, read-only for ``bytes``). No copy: writing a fixed field
        through the view writes ``buf``. ``payload_len`` (default ``len(buf)``) must match the
        schema, else PayloadError naming the type and both sizes.

        >>> v = info.view(arena_slice, task.payload_len); v["n"], v.record, v.blob
        """
        arr = _as_u8(buf, self.name)
        if payload_len is None:
            payload_len = arr.shape[0]
        payload_len = int(payload_len)
        if payload_len > arr.shape[0]:
            raise PayloadError(
                f"{self.name}: payload_len is {payload_len} bytes but the buffer holds only"
                f" {arr.shape[0]}")
        if payload_len < self.min_size:  # before reading a length prefix that is not there
            self._check_len(b"", payload_len)
        n = self._check_len(arr, payload_len)
        fs = self.fixed_size
        rec = arr[:fs].view(self.dtype)[0] if fs else None
        var = arr[fs + 4:fs + 4 + n] if self.has_var else None
        return PayloadView(self, rec, var)

    # -- binary codec --------------------------------------------------------------------------
    def _unknown_field_msg(self, name: str) -> str:
        known = ", ".join(f.name for f in self.fields) or "none: the payload is empty"
        return f"{self.name}: unknown field {name!r} (fields: {known})"

    def _args(self, values: Mapping[str, Any]) -> tuple[list, bytes | None]:
        if not isinstance(values, dict) and not isinstance(values, Mapping):
            raise PayloadError(f"{self.name}: payload must be a mapping of field names to values,"
                               f" got {type(values).__name__}")
        if len(values) != len(self.fields):   # every field is required: extras are unknown
            for k in values:
                if k not in self._by_name:
                    raise PayloadError(self._unknown_field_msg(k))
        args = []
        try:
            for name, check in self._fixed_checks:
                args.append(check(values[name]))
            var = None
            if self.var_field is not None:
                name = self.var_field.name
                var = _coerce(self.name, self.var_field, values[name])
        except KeyError:
            for k in values:  # a misspelt field is reported as unknown, not as missing
                if k not in self._by_name:
                    raise PayloadError(self._unknown_field_msg(k)) from None
            f = self._by_name[name]
            raise PayloadError(f"{self.name}: missing field {f.name!r} ({f.kind})") from None
        return args, var

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """Payload bytes for ``values`` (every field, nothing else). Ints must be in range; bytes
        fields take bytes-likes or uint8 arrays. PayloadError names the type and field."""
        args, var = self._args(values)
        fixed = self._struct.pack(*args)
        if var is None:
            return fixed
        return b"".join((fixed, _LEN.pack(len(var)), var))

    def encode_into(self, buf: Any, values: Mapping[str, Any]) -> int:
        """Write the payload for ``values`` at the start of ``buf`` (writable); returns its
        length. For emitting straight into arena memory."""
        args, var = self._args(values)
        arr = _as_u8(buf, self.name)
        need = self.min_size + (len(var) if var is not None else 0)
        if arr.shape[0] < need:
            raise PayloadError(f"{self.name}: payload needs {need} bytes, buffer holds"
                               f" {arr.shape[0]}")
        if not arr.flags.writeable:
            raise PayloadError(f"{self.name}: buffer is read-only")
        self._struct.pack_into(arr, 0, *args)
        if var is not None:
            _LEN.pack_into(arr, self.fixed_size, len(var))
            arr[self.min_size:need] = np.frombuffer(var, np.uint8)
        return need

    def decode(self, data: Any) -> dict[str, Any]:
        """The payload as ``{field: value}`` (int, float, bool, bytes), in schema order; its
        length must match the schema exactly."""
        if isinstance(data, np.ndarray):
            data = _as_u8(data, self.name)
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise PayloadError(f"{self.name}: decode needs bytes, got {type(data).__name__}")
        size = len(data) if not isinstance(data, np.ndarray) else data.shape[0]
        if size < self.min_size:
            self._check_len(b"", size)
        n = self._check_len(data, size)
        vals = self._struct.unpack_from(data, 0)
        out: dict[str, Any] = {}
        i = 0
        for f in self.fields:
            if f.is_var:
                out[f.name] = bytes(data[self.min_size:self.min_size + n])
            else:
                out[f.name] = vals[i]
                i += 1
        return out

    # -- JSON codec ----------------------------------------------------------------------------
    def encode_json(self, text: str | bytes) -> bytes:
        """Payload bytes from a JSON object (bytes fields as hex strings); what ``ggmk emit TYPE
        --payload JSON`` sends. Bad JSON, unknown or missing fields, wrong types and
        out-of-range integers raise PayloadError naming the type and field."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise PayloadError(f"{self.name}: payload JSON is not UTF-8: {e}") from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as e:
            raise PayloadError(f"{self.name}: field {e.args[0]!r} appears twice in the JSON"
                               " payload") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise PayloadError(f"{self.name}: payload is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise PayloadError(f"{self.name}: payload JSON must be an object"
                               f' ({{"field": value, ...}}), got {type(obj).__name__}')
        values = {}
        for k, v in obj.items():
            f = self._by_name.get(k)
            if f is None:
                raise PayloadError(self._unknown_field_msg(k))
            if f.is_bytes:
                if not isinstance(v, str):
                    raise PayloadError(f"{self.name}: field {k!r} ({f.kind}): expected a hex"
                                       f" string, got {_short(v)}")
                try:
                    v = bytes.fromhex(v)
                except ValueError:
                    raise PayloadError(f"{self.name}: field {k!r} ({f.kind}): not a hex string:"
                                       f" {_short(v)}") from None
            elif f.category == "int" and isinstance(v, float):
                raise PayloadError(f"{self.name}: field {k!r} ({f.kind}): expected an integer,"
                                   f" got {v!r}")
            values[k] = v
        return self.encode(values)

    def decode_json(self, data: Any) -> str:
        """The payload as a JSON object string, fields in schema order, bytes as lowercase hex."""
        d = self.decode(data)
        return json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in d.items()})


class PayloadView:
    """A typed, 0-copy view of one payload: ``v["x"]`` / ``v.x`` read the arena bytes.

    ``record`` is the fixed part as a NumPy structured scalar (``np.void``) that shares memory
    with the buffer (``None`` for an empty fixed part); ``var`` is the variable field's bytes as
    a uint8 array view (``None`` without one). Assigning a fixed field writes the buffer;
    assigning the variable field needs a value of its current length (the length is in the
    prefix). ``to_dict()`` copies into plain Python values, equal to ``TypeInfo.decode``.
    """

    __slots__ = ("type", "record", "var")

    def __init__(self, info: TypeInfo, record: Any, var: np.ndarray | None):
        self.type = info
        self.record = record
        self.var = var

    def __getitem__(self, name: str) -> Any:
        f = self.type.field(name)
        return self.var if f.is_var else self.record[name]

    def __setitem__(self, name: str, value: Any) -> None:
        f = self.type.field(name)
        v = _coerce(self.type.name, f, value)
        if f.is_var:
            if len(v) != self.var.shape[0]:
                raise PayloadError(f"{self.type.name}: field {name!r}: a view cannot resize the"
                                   f" variable field ({self.var.shape[0]} bytes, got {len(v)})")
            self.var[:] = np.frombuffer(v, np.uint8)
        elif f.is_bytes:
            self.record[name][:] = np.frombuffer(v, np.uint8)
        else:
            self.record[name] = v

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in PayloadView.__slots__:
            raise AttributeError(name)
        try:
            return self[name]
        except PayloadError as e:
            raise AttributeError(str(e)) from None

    def keys(self) -> list[str]:
        return [f.name for f in self.type.fields]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.type.fields:
            if f.is_var:
                out[f.name] = self.var.tobytes()
            elif f.is_bytes:
                out[f.name] = self.record[f.name].tobytes()
            else:
                out[f.name] = self.record[f.name].item()
        return out

    def __repr__(self) -> str:
        return f"<PayloadView {self.type.name} {self.to_dict()!r}>"


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _short(v: Any) -> str:
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= 40 else r[:37] + '...'}"


def _as_u8(buf: Any, tname: str) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise PayloadError(f"{tname}: payload buffer must be a 1-D uint8 array, got"
                               f" {buf.dtype} with shape {buf.shape}")
        if not buf.flags.c_contiguous:
            raise PayloadError(f"{tname}: payload buffer must be contiguous")
        return buf
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, np.uint8)
    raise PayloadError(f"{tname}: payload buffer must be a uint8 array or bytes, got"
                       f" {type(buf).__name__}")


def _fast_check(tname: str, f: Field):
    """A per-field checker: exact Python types take a short path; anything else (NumPy
    scalars, errors) goes through ``_coerce``."""
    cat = f.category
    if cat == "int":
        lo, hi = _SCALARS[f.kind][4:6]

        def check(v: Any) -> Any:
            if type(v) is int and lo <= v <= hi:
                return v
            return _coerce(tname, f, v)
    elif cat == "float" and f.kind == "f64":
        def check(v: Any) -> Any:
            return v if type(v) is float else _coerce(tname, f, v)
    elif cat == "bool":
        def check(v: Any) -> Any:
            return v if type(v) is bool else _coerce(tname, f, v)
    elif cat == "bytes":
        size = f.size

        def check(v: Any) -> Any:
            if type(v) is bytes and len(v) == size:
                return v
            return _coerce(tname, f, v)
    else:  # f32: the range check needs a pack
        def check(v: Any) -> Any:
            return _coerce(tname, f, v)
    return check


def _coerce(tname: str, f: Field, v: Any) -> Any:
    """Check one value against its field; returns what struct packs (or the var bytes)."""
    cat = f.category
    where = f"{tname}: field {f.name!r} ({f.kind})"
    if cat == "int":
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise PayloadError(f"{where}: expected an integer, got {_short(v)}")
        v = int(v)
        lo, hi = _SCALARS[f.kind][4:6]
        if not lo <= v <= hi:
            raise PayloadError(f"{where}: {v} is out of range {lo}..{hi}")
        return v
    if cat == "float":
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                  np.floating)):
            raise PayloadError(f"{where}: expected a number, got {_short(v)}")
        try:
            v = float(v)
            if f.kind == "f32":
                struct.pack("<f", v)
        except OverflowError:
            raise PayloadError(f"{where}: {v!r} is out of range for {f.kind}") from None
        return v
    if cat == "bool":
        if not isinstance(v, (bool, np.bool_)):
            raise PayloadError(f"{where}: expected true or false, got {_short(v)}")
        return bool(v)
    # bytes
    if isinstance(v, np.ndarray):
        if v.dtype != np.uint8 or v.ndim != 1:
            raise PayloadError(f"{where}: expected bytes or a 1-D uint8 array, got array of"
                               f" {v.dtype} with shape {v.shape}")
        v = v.tobytes()
    elif isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v)
    else:
        raise PayloadError(f"{where}: expected bytes, got {_short(v)}")
    if f.is_var:
        if len(v) > _MAX_PAYLOAD:
            raise PayloadError(f"{where}: {len(v)} bytes is more than a u32 length allows")
    elif len(v) != f.size:
        raise PayloadError(f"{where}: expected exactly {f.size} bytes, got {len(v)}")
    return v


# --------------------------------------------------------------------------------------------
# building types from TOML or from code


class _Problems:
    """Collects validation problems so one TypesError can list them all."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, msg: str, *, line: int | None = None, tname: str | None = None,
            what: str | None = None) -> None:
        loc = f"{self.source}:{line}" if line else self.source
        parts = [p for p in ((f"type {tname}" if tname else None), what) if p]
        self.items.append(f"{loc}: {', '.join(parts)}: {msg}" if parts else f"{loc}: {msg}")

    def raise_if_any(self, exc: type[Exception] = TypesError) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            err = exc(self.items[0])
        else:
            err = exc(f"{self.source}: {len(self.items)} problems:\n"
                      + "\n".join(f"  {p}" for p in self.items))
        err.problems = list(self.items)
        raise err


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _build_type(name: Any, body: Any, source: str, line: int | None,
                probs: _Problems, *, id_required: bool = True) -> TypeInfo | None:
    """Validate one type's table; on success a TypeInfo (id may be None when not required)."""
    n0 = len(probs.items)
    tname = name if isinstance(name, str) else repr(name)
    if not isinstance(name, str) or not TYPE_NAME_RE.fullmatch(name):
        probs.add(f"invalid type name {name!r}: type names are UPPER_SNAKE (e.g. PHYS_STEP)",
                  line=line, tname=tname)
    if not isinstance(body, Mapping):
        probs.add(f"must be a table, got {type(body).__name__}", line=line, tname=tname)
        return None
    for k in body:
        if k not in _TYPE_KEYS:
            close = difflib.get_close_matches(str(k), _TYPE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            probs.add(f"unknown key {k!r}{hint}; allowed: {', '.join(_TYPE_KEYS)}", line=line,
                      tname=tname)
    tid = body.get("id")
    if tid is None:
        if id_required:
            probs.add(f"missing 'id' (an integer 1..{MAX_TYPE_ID})", line=line, tname=tname)
    elif not _is_int(tid):
        probs.add(f"'id' must be an integer 1..{MAX_TYPE_ID}, got {tid!r}", line=line,
                  tname=tname)
    elif not 1 <= tid <= MAX_TYPE_ID:
        probs.add(f"'id' {tid} is out of range 1..{MAX_TYPE_ID}"
                  + (" (0 is no type: a zeroed task record has type 0)" if tid == 0 else
                     f" (the kernels' per-type tables have {MAX_TYPE_ID + 1} entries)"
                     if tid > MAX_TYPE_ID else ""), line=line, tname=tname)
    pol = {"deterministic": False, "lossy": True, "max_yields": DEFAULT_MAX_YIELDS}
    for k in ("deterministic", "lossy"):
        if k in body:
            if not isinstance(body[k], bool):
                probs.add(f"must be true or false, got {body[k]!r}", line=line, tname=tname,
                          what=f"policy {k!r}")
            else:
                pol[k] = body[k]
    if "max_yields" in body:
        my = body["max_yields"]
        if not _is_int(my) or not 0 <= my <= MAX_YIELDS_LIMIT:
            probs.add(f"must be an integer 0..{MAX_YIELDS_LIMIT}, got {my!r}", line=line,
                      tname=tname, what="policy 'max_yields'")
        else:
            pol["max_yields"] = my
    doc = body.get("doc", "")
    if not isinstance(doc, str):
        probs.add(f"'doc' must be a string, got {doc!r}", line=line, tname=tname)
        doc = ""
    fields = _build_fields(body.get("payload", {}), line, tname, probs)
    if len(probs.items) != n0:
        return None
    return TypeInfo(id=tid, name=name, fields=fields, doc=doc, source=source, **pol)


def _build_fields(payload: Any, line: int | None, tname: str,
                  probs: _Problems) -> tuple[Field, ...]:
    if isinstance(payload, Mapping):
        items = list(payload.items())
    elif isinstance(payload, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in payload):
        items = [tuple(p) for p in payload]
    else:
        probs.add("'payload' must be a table of field = \"type\" (e.g. { x = \"f64\" }), got"
                  f" {payload!r}", line=line, tname=tname)
        return ()
    fields: list[Field] = []
    seen: set[str] = set()
    offset = 0
    var_name = None
    for fname, kind in items:
        what = f"field {fname!r}"
        if not isinstance(fname, str) or not FIELD_NAME_RE.fullmatch(fname):
            probs.add("invalid field name: use letters, digits and '_' (not first a digit)",
                      line=line, tname=tname, what=what)
            continue
        if fname in seen:
            probs.add("duplicate field name", line=line, tname=tname, what=what)
            continue
        seen.add(fname)
        try:
            size = _kind_size(kind)
        except ValueError as e:
            probs.add(str(e), line=line, tname=tname, what=what)
            continue
        if var_name is not None:
            probs.add(f"variable-length field {var_name!r} (bytes) must be the last field, and"
                      " there can be only one", line=line, tname=tname,
                      what=f"field {var_name!r}")
            var_name = None  # report once
        if kind == "bytes":
            var_name = fname
        fields.append(Field(fname, kind, offset, size))
        offset += size
    if offset > _MAX_PAYLOAD - 4:
        probs.add(f"fixed part is {offset} bytes, more than a u32 payload_len allows",
                  line=line, tname=tname)
    # the variable field's offset is where its length prefix starts
    return tuple(Field(f.name, f.kind, offset, 0) if f.is_var else f for f in fields)


# --------------------------------------------------------------------------------------------
# reading files


def _read_source(path_or_text: Any, source: str | None) -> tuple[str, str, str | None]:
    """(text, source name for messages, path or None). A str is TOML text when it contains a
    newline, '=' or '[', else a path; ``os.PathLike`` is always a path; bytes are text."""
    if isinstance(path_or_text, (bytes, bytearray)):
        try:
            return bytes(path_or_text).decode("utf-8"), source or "<string>", None
        except UnicodeDecodeError as e:
            raise TypesError(f"{source or '<string>'}: not UTF-8: {e}") from None
    if isinstance(path_or_text, str) and (
            not path_or_text.strip() or any(c in path_or_text for c in "\n=[")):
        return path_or_text, source or "<string>", None
    if not isinstance(path_or_text, (str, os.PathLike)):
        raise TypesError(f"expected a path or TOML text, got {type(path_or_text).__name__}")
    path = Path(path_or_text)
    src = source or str(path)
    try:
        return path.read_text(encoding="utf-8"), src, str(path)
    except OSError as e:
        raise TypesError(f"{src}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TypesError(f"{src}: not UTF-8: {e}") from None


_TYPE_HEADER_RE = re.compile(
    r"""^[ \t]*\[[ \t]*types[ \t]*\.[ \t]*["']?([^\]."'\s]+)["']?[ \t]*\]""", re.M)


def _parse_toml(text: str, src: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        seen: dict[str, int] = {}
        for m in _TYPE_HEADER_RE.finditer(text):
            ln = _line_of(text, m.start())
            if m.group(1) in seen:
                raise TypesError(f"{src}:{ln}: type {m.group(1)}: duplicate type name (first"
                                 f" defined at line {seen[m.group(1)]})") from None
            seen[m.group(1)] = ln
        raise TypesError(f"{src}: invalid TOML: {e}") from None


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _type_line(text: str, name: str) -> int | None:
    """Best-effort line of a type's definition (tomllib gives no positions for valid TOML)."""
    n = re.escape(name)
    for pat in (rf"""^[ \t]*\[[ \t]*types[ \t]*\.[ \t]*(?:"{n}"|'{n}'|{n})[ \t]*[\].]""",
                rf"""^[ \t]*(?:types[ \t]*\.[ \t]*)?(?:"{n}"|'{n}'|{n})[ \t]*[=.]"""):
        m = re.search(pat, text, re.M)
        if m:
            return _line_of(text, m.start())
    return None


def _types_from_table(table: Any, text: str, src: str, probs: _Problems) -> list[TypeInfo]:
    if not isinstance(table, Mapping):
        probs.add(f"'types' must be a table of types ([types.NAME]), got {table!r}")
        return []
    out: list[TypeInfo] = []
    by_id: dict[int, TypeInfo] = {}
    for name, body in table.items():
        line = _type_line(text, name) if isinstance(name, str) else None
        t = _build_type(name, body, src, line, probs)
        if t is None:
            continue
        if t.id in by_id:
            other = by_id[t.id]
            oline = _type_line(text, other.name)
            probs.add(f"duplicate id {t.id}: already used by type {other.name}"
                      + (f" (line {oline})" if oline else ""), line=line, tname=t.name)
            continue
        by_id[t.id] = t
        out.append(t)
    return out


def load_types(path_or_text: str | os.PathLike | bytes, *, source: str | None = None
               ) -> "TypeRegistry":
    """Load a ``types.toml`` (a path, or the TOML text itself) into a TypeRegistry.

    Every problem in the file is reported in one TypesError naming the file, the line where it
    can be found, the type and the field or policy.

    >>> reg = load_types("types.toml"); reg.id("PHYS_STEP")
    10
    """
    text, src, _ = _read_source(path_or_text, source)
    data = _parse_toml(text, src)
    probs = _Problems(src)
    for k in data:
        if k != "types":
            probs.add(f"unknown top-level key {k!r}: types go under [types.NAME]")
    types = _types_from_table(data.get("types", {}), text, src, probs)
    probs.raise_if_any()
    reg = TypeRegistry()
    for t in types:
        reg._add(t)
    reg.sources.append(src)
    return reg


# --------------------------------------------------------------------------------------------
# the registry


class TypeRegistry:
    """Types by name and by id. Names and ids are unique; TypeInfo objects are immutable.

    >>> reg = TypeRegistry()
    >>> ping = reg.register("PING", payload={"n": "u32"}, max_yields=4)   # auto id 0x8000
    >>> reg.id("PING"), reg.name(ping.id), "PING" in reg
    (32768, 'PING', True)
    """

    def __init__(self, types: Iterable[TypeInfo] = ()):
        self._by_name: dict[str, TypeInfo] = {}
        self._by_id: dict[int, TypeInfo] = {}
        self.sources: list[str] = []
        for t in types:
            self._check_free(t)
            self._add(t)

    def _add(self, t: TypeInfo) -> None:
        self._by_name[t.name] = t
        self._by_id[t.id] = t

    def _check_free(self, t: TypeInfo) -> None:
        old = self._by_name.get(t.name)
        if old is not None and old != t:
            raise TypesError(f"type {t.name}: defined twice differently: {_describe(old)} vs"
                             f" {_describe(t)}")
        old = self._by_id.get(t.id)
        if old is not None and old.name != t.name:
            raise TypesError(f"duplicate id {t.id}: type {old.name}"
                             f"{_from(old)} and type {t.name}{_from(t)}")

    # -- lookups -------------------------------------------------------------------------------
    def info(self, key: str | int) -> TypeInfo:
        """The TypeInfo for a name or an id; UnknownTypeError (a KeyError) if absent."""
        if isinstance(key, str):
            t = self._by_name.get(key)
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            t = self._by_id.get(int(key))
        else:
            raise UnknownTypeError(f"type key must be a name or an id, got {key!r}")
        if t is None:
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, list(self._by_name), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            raise UnknownTypeError(f"unknown type {key!r}{hint}")
        return t

    def id(self, name: str) -> int:
        return self.info(name).id

    def name(self, id: int) -> str:
        return self.info(id).name

    def get(self, key: str | int, default: Any = None) -> TypeInfo | Any:
        try:
            return self.info(key)
        except UnknownTypeError:
            return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._by_name
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return int(key) in self._by_id
        return False

    def __iter__(self) -> Iterator[TypeInfo]:
        """TypeInfo objects in ascending id order."""
        return iter([self._by_id[i] for i in sorted(self._by_id)])

    def __len__(self) -> int:
        return len(self._by_id)

    def names(self) -> list[str]:
        return [t.name for t in self]

    def ids(self) -> list[int]:
        return sorted(self._by_id)

    def __repr__(self) -> str:
        return f"<TypeRegistry {len(self)} types: {', '.join(self.names()[:8])}" \
               f"{', ...' if len(self) > 8 else ''}>"

    # -- changes -------------------------------------------------------------------------------
    def register(self, name: str, id: int | None = None,
                 payload: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                 *, source: str = "register()", **policies: Any) -> TypeInfo:
        """Add a type from code. Without ``id`` it gets the lowest free id in
        AUTO_ID_FIRST..AUTO_ID_LAST. Policies: ``deterministic``, ``lossy``, ``max_yields``,
        ``doc``. Registering an identical definition again returns the existing type.
        """
        existing = self._by_name.get(name) if isinstance(name, str) else None
        body: dict[str, Any] = dict(policies)
        body["payload"] = payload if payload is not None else {}
        if id is not None:
            body["id"] = id
        elif existing is not None:
            body["id"] = existing.id
        probs = _Problems(source)
        t = _build_type(name, body, source, None, probs, id_required=False)
        probs.raise_if_any()
        if t.id is None:
            t = TypeInfo(id=self._free_auto_id(), name=t.name, fields=t.fields,
                         deterministic=t.deterministic, lossy=t.lossy,
                         max_yields=t.max_yields, doc=t.doc, source=source)
        self._check_free(t)
        if existing is not None:
            return existing
        self._add(t)
        return t

    def _free_auto_id(self) -> int:
        for i in range(AUTO_ID_FIRST, AUTO_ID_LAST + 1):
            if i not in self._by_id:
                return i
        raise TypesError(f"no free automatic type id left in {AUTO_ID_FIRST:#x}.."
                         f"{AUTO_ID_LAST:#x}")

    def merge(self, other: "TypeRegistry") -> "TypeRegistry":
        """Add every type of ``other`` to this registry (in place; returns self). Identical
        definitions are shared; a name or id defined differently raises TypesError naming both
        sources, and then nothing is added."""
        probs = _Problems("merge")
        for t in other:
            old = self._by_name.get(t.name)
            if old is not None and old != t:
                probs.add(f"defined differently: {_describe(old)}{_from(old)} vs"
                          f" {_describe(t)}{_from(t)}", tname=t.name)
                continue
            old = self._by_id.get(t.id)
            if old is not None and old.name != t.name:
                probs.add(f"duplicate id {t.id}: type {old.name}{_from(old)} and type"
                          f" {t.name}{_from(t)}", tname=t.name)
        probs.raise_if_any()
        for t in other:
            if t.name not in self._by_name:
                self._add(t)
        self.sources.extend(s for s in other.sources if s not in self.sources)
        return self

    def copy(self) -> "TypeRegistry":
        r = TypeRegistry(self)
        r.sources = list(self.sources)
        return r

    # -- output --------------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The registry as ``types.toml`` text; ``load_types`` of it gives equal types."""
        out = ["# ggmk type registry (TypeRegistry.to_toml)"]
        for t in self:
            out += ["", f"[types.{t.name}]", f"id = {t.id}",
                    f"deterministic = {'true' if t.deterministic else 'false'}",
                    f"lossy = {'true' if t.lossy else 'false'}",
                    f"max_yields = {t.max_yields}"]
            if t.doc:
                out.append(f"doc = {_toml_str(t.doc)}")
            if t.fields:
                out.append("payload = { " + ", ".join(f'{f.name} = "{f.kind}"'
                                                      for f in t.fields) + " }")
        return "\n".join(out) + "\n"

    def table(self) -> np.ndarray:
        """Policies of every type as TYPE_TABLE_DTYPE records, ascending id (for kernels)."""
        ts = list(self)
        a = np.zeros(len(ts), TYPE_TABLE_DTYPE)
        for i, t in enumerate(ts):
            a[i] = (t.id, t.max_yields, t.deterministic, t.lossy, t.fixed_size, t.has_var)
        return a


def _describe(t: TypeInfo) -> str:
    pay = ", ".join(f"{f.name}: {f.kind}" for f in t.fields)
    pol = ", ".join(f"{k}={v}" for k, v in t.policies.items())
    return f"(id {t.id}, payload {{{pay}}}, {pol})"


def _from(t: TypeInfo) -> str:
    return f" from {t.source}" if t.source else ""


def _toml_str(s: str) -> str:
    out = ['"']
    esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b",
           "\f": "\\f"}
    for ch in s:
        if ch in esc:
            out.append(esc[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------------------------
# declarations

DIRECTIONS = ("produce", "consume")
MODES = ("p2p", "fanout")
GUARANTEES = ("lossy", "lossless")
GRANULARITIES = ("task", "batch", "scalar", "warp", "block")
CPU_GRANULARITIES = ("task", "batch")
GPU_GRANULARITIES = ("scalar", "warp", "block")


def _one_of(what: str, v: Any, allowed: tuple[str, ...]) -> list[str]:
    if v in allowed:
        return []
    return [f"invalid {what} {v!r} (expected {' or '.join(repr(a) for a in allowed)})"]


def _channel_problems(name: Any, direction: Any, type: Any, mode: Any, guarantee: Any,
                      module: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(name, str) or not CHANNEL_NAME_RE.fullmatch(name):
        p.append(f"invalid channel name {name!r}: channel names are namespace.verb, lowercase"
                 " dotted (e.g. counter.in)")
    p += _type_ref_problems(type)
    p += _one_of("direction", direction, DIRECTIONS)
    p += _one_of("mode", mode, MODES)
    p += _one_of("guarantee", guarantee, GUARANTEES)
    p += _module_name_problems(module)
    return p


def _type_ref_problems(t: Any) -> list[str]:
    """A declaration names its type by UPPER_SNAKE name or by id."""
    if isinstance(t, str) and TYPE_NAME_RE.fullmatch(t):
        return []
    if _is_int(t) and 1 <= t <= MAX_TYPE_ID:
        return []
    return [f"invalid type {t!r}: a type is an UPPER_SNAKE name (e.g. PHYS_STEP) or an id"
            f" 1..{MAX_TYPE_ID}"]


def _module_name_problems(module: Any) -> list[str]:
    if isinstance(module, str) and (module == "" or MODULE_NAME_RE.fullmatch(module)):
        return []
    return [f"invalid module name {module!r}: use lowercase letters, digits, '_' and '-'"]


@dataclass(frozen=True)
class ChannelDecl:
    """One end of a channel as a module declares it.

    >>> ChannelDecl("counter.out", "produce", "COUNTER_INC_RESP", "fanout", "lossy", "counter")
    """

    name: str
    direction: str                 # "produce" | "consume"
    type: str | int                # type name (or id)
    mode: str = "p2p"              # "p2p" | "fanout"
    guarantee: str = "lossless"    # "lossy" | "lossless"
    module: str = ""

    def __post_init__(self) -> None:
        p = _channel_problems(self.name, self.direction, self.type, self.mode, self.guarantee,
                              self.module)
        if p:
            raise BootError(f"module {self.module!r}: channel {self.name!r}: " + "; ".join(p))


@dataclass(frozen=True)
class HandlerDecl:
    """A handler as a module declares it. ``batch=True`` and ``granularity="batch"`` mean the
    same (each implies the other); ``scalar``/``warp``/``block`` are GPU granularities.

    >>> HandlerDecl("SQUARE", "square", "counter", batch=True).granularity
    'batch'
    """

    type: str | int                # type name (or id)
    name: str
    module: str = ""
    deterministic: bool = False
    batch: bool = False
    granularity: str = "task"
    shared_mem: int = 0            # bytes of shared memory, block granularity only

    def __post_init__(self) -> None:
        p = _handler_problems(self.type, self.name, self.module, self.deterministic,
                              self.batch, self.granularity, self.shared_mem)
        if p:
            raise BootError(f"module {self.module!r}: handler {self.name!r}: " + "; ".join(p))
        if self.batch and self.granularity == "task":
            object.__setattr__(self, "granularity", "batch")
        elif self.granularity == "batch":
            object.__setattr__(self, "batch", True)

    @property
    def target(self) -> str:
        """``"cpu"`` for task/batch handlers, ``"gpu"`` for scalar/warp/block."""
        return "cpu" if self.granularity in CPU_GRANULARITIES else "gpu"


def _handler_problems(type: Any, name: Any, module: Any, deterministic: Any, batch: Any,
                      granularity: Any, shared_mem: Any) -> list[str]:
    p: list[str] = []
    p += _type_ref_problems(type)
    if not isinstance(name, str) or not HANDLER_NAME_RE.fullmatch(name):
        p.append(f"invalid handler name {name!r}: use an identifier")
    p += _module_name_problems(module)
    for what, v in (("deterministic", deterministic), ("batch", batch)):
        if not isinstance(v, bool):
            p.append(f"{what} must be true or false, got {v!r}")
    p += _one_of("granularity", granularity, GRANULARITIES)
    if batch is True and granularity in GPU_GRANULARITIES:
        p.append(f"batch = true conflicts with GPU granularity {granularity!r}")
    if not _is_int(shared_mem) or shared_mem < 0:
        p.append(f"shared_mem must be a non-negative integer, got {shared_mem!r}")
    elif shared_mem and granularity != "block":
        p.append(f"shared_mem needs granularity 'block', not {granularity!r}")
    return p


@dataclass(frozen=True)
class ModuleManifest:
    """A parsed ``module.toml``: the module's identity and declarations (and any types it
    brings, as a TypeRegistry, empty when it brings none)."""

    name: str
    version: str
    channels: list[ChannelDecl]
    handlers: list[HandlerDecl]
    path: str | None = None
    types: TypeRegistry = dc_field(default_factory=TypeRegistry, compare=False)
    description: str = ""


def _nth_header_line(text: str, table: str, n: int) -> int | None:
    ms = list(re.finditer(rf"^[ \t]*\[\[[ \t]*{table}[ \t]*\]\]", text, re.M))
    return _line_of(text, ms[n].start()) if n < len(ms) else None


def load_module_manifest(path_or_text: str | os.PathLike | bytes, *,
                         source: str | None = None) -> ModuleManifest:
    """Load a ``module.toml`` (see the module docstring for its shape). Every problem is
    listed in one TypesError naming the file, line, module, and channel/handler.

    >>> man = load_module_manifest("module.toml"); [c.name for c in man.channels]
    """
    text, src, path = _read_source(path_or_text, source)
    data = _parse_toml(text, src)
    probs = _Problems(src)
    for k in data:
        if k not in ("module", "channel", "handler", "types"):
            hint = {"channels": "channel", "handlers": "handler"}.get(k)
            probs.add(f"unknown top-level key {k!r}"
                      + (f" (did you mean [[{hint}]]?)" if hint else "")
                      + "; allowed: [module], [[channel]], [[handler]], [types.NAME]")
    mod = data.get("module")
    mname, version, desc = "?", "", ""
    if not isinstance(mod, Mapping):
        probs.add("missing [module] table (name, version)")
    else:
        for k in mod:
            if k not in ("name", "version", "description"):
                probs.add(f"[module]: unknown key {k!r}; allowed: name, version, description")
        mname = mod.get("name")
        if mname is None:
            probs.add("[module]: missing 'name'")
            mname = "?"
        elif not isinstance(mname, str) or not MODULE_NAME_RE.fullmatch(mname):
            probs.add(f"[module]: invalid module name {mname!r}: use lowercase letters,"
                      " digits, '_' and '-'")
            mname = str(mname)
        version = mod.get("version")
        if not isinstance(version, str) or not version.strip():
            probs.add(f"module {mname}: 'version' must be a non-empty string, got {version!r}")
            version = ""
        desc = mod.get("description", "")
        if not isinstance(desc, str):
            probs.add(f"module {mname}: 'description' must be a string")
            desc = ""

    channels: list[ChannelDecl] = []
    chan_keys = ("name", "direction", "type", "mode", "guarantee")
    raw = data.get("channel", [])
    if not isinstance(raw, list):
        probs.add("'channel' must be an array of tables: write [[channel]]")
        raw = []
    for i, c in enumerate(raw):
        line = _nth_header_line(text, "channel", i)
        cname = c.get("name", f"#{i + 1}") if isinstance(c, Mapping) else f"#{i + 1}"
        where = f"module {mname}, channel {cname!r}"
        loc = f"{src}:{line}" if line else src
        if not isinstance(c, Mapping):
            probs.items.append(f"{loc}: {where}: must be a table")
            continue
        bad = [f"unknown key {k!r}; allowed: {', '.join(chan_keys)}" for k in c
               if k not in chan_keys]
        bad += [f"missing {k!r}" for k in ("name", "direction", "type") if k not in c]
        if not bad:
            args = dict(name=c["name"], direction=c["direction"], type=c["type"],
                        mode=c.get("mode", "p2p"), guarantee=c.get("guarantee", "lossless"),
                        module=mname)
            bad = _channel_problems(**args)
            if not bad:
                channels.append(ChannelDecl(**args))
        probs.items += [f"{loc}: {where}: {b}" for b in bad]

    handlers: list[HandlerDecl] = []
    h_keys = ("type", "name", "deterministic", "batch", "granularity", "shared_mem")
    raw = data.get("handler", [])
    if not isinstance(raw, list):
        probs.add("'handler' must be an array of tables: write [[handler]]")
        raw = []
    seen: set[str] = set()
    for i, h in enumerate(raw):
        line = _nth_header_line(text, "handler", i)
        hname = h.get("name", f"#{i + 1}") if isinstance(h, Mapping) else f"#{i + 1}"
        where = f"module {mname}, handler {hname!r}"
        loc = f"{src}:{line}" if line else src
        if not isinstance(h, Mapping):
            probs.items.append(f"{loc}: {where}: must be a table")
            continue
        bad = [f"unknown key {k!r}; allowed: {', '.join(h_keys)}" for k in h if k not in h_keys]
        bad += [f"missing {k!r}" for k in ("type", "name") if k not in h]
        if not bad:
            args = dict(type=h["type"], name=h["name"], module=mname,
                        deterministic=h.get("deterministic", False),
                        batch=h.get("batch", False), granularity=h.get("granularity", "task"),
                        shared_mem=h.get("shared_mem", 0))
            bad = _handler_problems(**args)
            if not bad and hname in seen:
                bad = ["duplicate handler name in this module"]
            if not bad:
                handlers.append(HandlerDecl(**args))
        if isinstance(hname, str):
            seen.add(hname)
        probs.items += [f"{loc}: {where}: {b}" for b in bad]

    types = _types_from_table(data.get("types", {}), text, src, probs)
    probs.raise_if_any()
    reg = TypeRegistry()
    for t in types:
        reg._add(t)
    if types:
        reg.sources.append(src)
    return ModuleManifest(name=mname, version=version, channels=channels, handlers=handlers,
                          path=path or src, types=reg, description=desc)


# --------------------------------------------------------------------------------------------
# boot-time validation


def _verb(direction: str) -> str:
    return "produces" if direction == "produce" else "consumes"


# System channels that carry tasks of every type (the kernel opens them with no type, and a
# handler subscribed to one gets each task retyped to its own type, with the reason code in
# ``ctx.reason``): what lands there. A module cannot declare them for one type.
ANY_TYPE_CHANNELS = {
    "sys.error": "tasks that failed (a handler returned FAIL or a negative code, retries ran "
                 "out, an unknown or poisoned type, a full queue, ...)",
    "sys.dropped": "channel messages that could not be delivered (a full or closed channel, "
                   "no subscriber, ...)",
}


def _any_type_channel_problem(d: ChannelDecl, tname: str) -> str:
    what = ANY_TYPE_CHANNELS[d.name]
    head = (f"module {d.module!r}: channel {d.name!r} ({_verb(d.direction)} {tname}): "
            f"{d.name} is a system channel carrying {what}, of any type, each with its reason "
            f"code; ")
    if d.direction == "produce":
        return head + ("only the kernel puts tasks there (a handler sends its own task there "
                       "by returning FAIL or a negative code), so a module cannot declare it as "
                       "produced")
    return head + (f"it cannot be declared for one type. To handle its tasks, subscribe a "
                   f"handler at run time: system.channel({d.name!r}).subscribe({tname!r}) "
                   f"(each task arrives retyped to {tname}, its reason in ctx.reason)")


def validate_declarations(reg: TypeRegistry, channel_decls: Iterable[ChannelDecl],
                          handler_decls: Iterable[HandlerDecl], *,
                          source: str | None = None) -> None:
    """Check every module's declarations against the registry and each other; raise one
    BootError listing every problem (``err.problems`` holds them one per string):

    unknown type names; modules disagreeing on a channel's type, mode or guarantee; a lossless
    type (``lossy = false``) on a lossy channel; a deterministic type handled by a handler not
    declared deterministic; a p2p channel consumed by two modules; a handler name used twice in
    one module; a declaration of ``sys.error`` / ``sys.dropped`` (system channels carrying every
    type, see ``ANY_TYPE_CHANNELS``).

    >>> validate_declarations(reg, counter.channels + printer.channels, counter.handlers)
    """
    chans = list(channel_decls)
    handlers = list(handler_decls)
    problems: list[str] = []

    def unknown(t: str | int) -> str:
        close = difflib.get_close_matches(t, reg.names(), n=1) if isinstance(t, str) else []
        return f"unknown type {t!r}" + (f" (did you mean {close[0]}?)" if close else "")

    def key(t: str | int) -> str | int:      # a name and the id of the same type are equal
        return reg.id(t) if isinstance(t, str) and t in reg else t

    def tname(t: str | int) -> str:
        return reg.name(t) if not isinstance(t, str) and t in reg else str(t)

    # declarations of the any-type system channels: one problem each, left out of the checks
    # below (which would only add type-mismatch and p2p noise about the same mistake)
    sys_decls = [d for d in chans if d.name in ANY_TYPE_CHANNELS]
    if sys_decls:
        for d in _dedupe(sys_decls, lambda d: (d.module, d.name, d.direction, key(d.type))):
            problems.append(_any_type_channel_problem(d, tname(d.type)))
        chans = [d for d in chans if d.name not in ANY_TYPE_CHANNELS]
    for d in chans:
        if d.type not in reg:
            problems.append(f"module {d.module!r}: channel {d.name!r} ({d.direction}):"
                            f" {unknown(d.type)}")
    for h in handlers:
        if h.type not in reg:
            problems.append(f"module {h.module!r}: handler {h.name!r}: {unknown(h.type)}")

    by_chan: dict[str, list[ChannelDecl]] = {}
    for d in chans:
        by_chan.setdefault(d.name, []).append(d)
    for name, decls in by_chan.items():
        if len({key(d.type) for d in decls}) > 1:
            who = ", ".join(f"module {d.module!r} {_verb(d.direction)} {tname(d.type)}"
                            for d in _dedupe(decls, lambda d: (d.module, d.direction,
                                                               key(d.type))))
            problems.append(f"channel {name!r}: type mismatch: {who}")
        for attr in ("mode", "guarantee"):
            if len({getattr(d, attr) for d in decls}) > 1:
                who = ", ".join(f"module {d.module!r} declares {getattr(d, attr)}"
                                for d in _dedupe(decls, lambda d: (d.module, getattr(d, attr))))
                problems.append(f"channel {name!r}: conflicting {attr}: {who}")
        for d in _dedupe(decls, lambda d: (d.module, key(d.type), d.guarantee)):
            if d.guarantee == "lossy" and d.type in reg and not reg.info(d.type).lossy:
                problems.append(f"channel {name!r} is lossy (declared by module {d.module!r}) but"
                                f" type {tname(d.type)} needs lossless delivery (lossy = false)")
        if {d.mode for d in decls} == {"p2p"}:
            consumers = list(dict.fromkeys(d.module for d in decls if d.direction == "consume"))
            if len(consumers) > 1:
                problems.append(f"channel {name!r} is p2p but {len(consumers)} modules consume"
                                f" it: {', '.join(repr(m) for m in consumers)} (p2p allows one"
                                " subscriber; declare mode = \"fanout\")")

    seen: set[tuple[str, str]] = set()
    for h in handlers:
        if (h.module, h.name) in seen:
            problems.append(f"module {h.module!r}: handler name {h.name!r} declared twice")
        seen.add((h.module, h.name))
        if h.type in reg and reg.info(h.type).deterministic and not h.deterministic:
            problems.append(f"module {h.module!r}: handler {h.name!r} handles deterministic type"
                            f" {tname(h.type)} but is not declared deterministic")

    raise_boot_problems("declarations", problems, source)


def raise_boot_problems(what: str, problems: list[str], source: str | None = None) -> None:
    """Raise one BootError listing every problem (``err.problems`` keeps the list); no-op if none."""
    if problems:
        where = f" ({source})" if source else ""
        err = BootError(f"invalid {what}{where}: {len(problems)} problem"
                        f"{'s' if len(problems) > 1 else ''}:\n"
                        + "\n".join(f"  - {p}" for p in problems))
        err.problems = problems
        raise err


def validate_manifests(reg: TypeRegistry, manifests: Iterable[ModuleManifest], *,
                       source: str | None = None) -> None:
    """``validate_declarations`` over all channels and handlers of ``manifests``."""
    ms = list(manifests)
    validate_declarations(reg, [c for m in ms for c in m.channels],
                          [h for m in ms for h in m.handlers], source=source)


def _dedupe(items: list, key: Any) -> list:
    seen, out = set(), []
    for it in items:
        k = key(it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out
