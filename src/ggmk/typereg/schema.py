"""Message types: payload schemas, the packed layout and the payload codecs (binary, JSON,
0-copy views), and building a type from its ``types.toml`` table (or ``register``'s arguments).

See ``ggmk.typereg`` for the file format and the payload layout.
"""
from __future__ import annotations

import difflib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field
from typing import Any

import numpy as np

from ggmk.errors import PayloadError, TypesError

AUTO_ID_FIRST = 0x8000
AUTO_ID_LAST = 0xFFFF
MAX_TYPE_ID = 0xFFFF                # ids index the kernels' per-type tables (1 << 16 entries)
DEFAULT_MAX_YIELDS = 16
MAX_YIELDS_LIMIT = 0xFFFF          # yield_count is a u16 in the task record
_MAX_PAYLOAD = 0xFFFF_FFFF         # payload_len is a u32
MAX_FIXED_SIZE = 2**31 - 1         # the fixed part is a NumPy record: its itemsize is a C int
# PayloadView's own attributes: a field of one of these names would not read as ``v.name``
RESERVED_FIELD_NAMES = ("type", "record", "var", "keys", "to_dict")

TYPE_NAME_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
            obj = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                             parse_float=_json_float)
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
            elif isinstance(v, _JsonOverflow):
                raise PayloadError(f"{self.name}: field {k!r} ({f.kind}): {v!r} is out of"
                                   f" range for {f.kind} (write Infinity for an infinity)")
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
        if name.startswith("__") or name in PayloadView.__slots__:
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


class _JsonOverflow(float):
    """A JSON number too large for a float (``1e400``): json made it infinity without a word,
    where f32's 1e39 was refused; kept as its text for the message."""

    def __new__(cls, text: str):
        self = super().__new__(cls, text)
        self.text = text
        return self

    def __repr__(self) -> str:
        return self.text


def _json_float(text: str) -> float:
    v = float(text)
    return _JsonOverflow(text) if v in (float("inf"), float("-inf")) else v


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def _short(v: Any) -> str:
    r = repr(v)
    kind = "float" if isinstance(v, _JsonOverflow) else type(v).__name__
    return f"{kind} {r if len(r) <= 40 else r[:37] + '...'}"


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
        if fname in RESERVED_FIELD_NAMES or fname.startswith("__"):
            probs.add(f"field name {fname!r} is reserved: a payload view has its own "
                      f"{', '.join(RESERVED_FIELD_NAMES)} (and '__' names), so v.{fname} would "
                      f"not read the field; rename it", line=line, tname=tname, what=what)
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
        if size > MAX_FIXED_SIZE:
            probs.add(f"{kind}: N = {size} is too large: a fixed bytes field holds at most "
                      f"{MAX_FIXED_SIZE} (2**31-1) bytes (use a variable 'bytes' field)",
                      line=line, tname=tname, what=what)
            continue
        if offset + size > MAX_FIXED_SIZE:
            probs.add(f"fixed part reaches {offset + size} bytes with this field: at most "
                      f"{MAX_FIXED_SIZE} (2**31-1) bytes are allowed (the NumPy record size is"
                      f" a C int); use a variable 'bytes' field", line=line, tname=tname,
                      what=what)
            break
        if var_name is not None:
            probs.add(f"variable-length field {var_name!r} (bytes) must be the last field, and"
                      " there can be only one", line=line, tname=tname,
                      what=f"field {var_name!r}")
            var_name = None  # report once
        if kind == "bytes":
            var_name = fname
        fields.append(Field(fname, kind, offset, size))
        offset += size
    # (MAX_FIXED_SIZE also keeps min_size = fixed part + 4 within the u32 payload_len)
    # the variable field's offset is where its length prefix starts
    return tuple(Field(f.name, f.kind, offset, 0) if f.is_var else f for f in fields)

