"""``ggmk typegen``: typed payload accessors generated from ``types.toml``.

For every type with a payload, a plain Python class (``__slots__``, one attribute per field,
``encode() -> bytes`` and ``decode(data)``) whose byte layout is the registry's
(``TypeInfo.encode``/``decode``: packed little-endian, fixed fields in schema order, then a
u32 length and the bytes of a variable ``bytes`` field), plus ``TYPE_IDS``. The generated module
imports only ``struct`` and ``sys``: handlers and tools can use it without the registry, and a
typo in a field name is an ``AttributeError`` at once instead of a wrong dict key at run time.
``encode()`` refuses what ``TypeInfo.encode`` refuses, with its messages (TypeError for a value
of the wrong type, ValueError for one out of range or of the wrong length), where ``struct``
alone would cut or pad a ``bytes[N]`` value, take an int for a bool and fail with a message
naming no field; ``decode()`` takes what ``TypeInfo.decode`` takes.

Names: the class of POINT_STEP is PointStep (``class_names``: where two types would get the same
class, A_1_B is A_1B beside A1_B's A1B; TRUE is True_); a field's attribute is its name, or
``name_`` where the name is a Python keyword, ``self`` or one the class defines (``attr_names``:
``class`` is ``class_``, ``FIELDS`` is ``FIELDS_``). ``FIELDS`` holds the schema's names (the
keys of ``to_dict()``, what ``TypeInfo.encode`` takes), ``ATTRS`` the attributes.

Example::

    from ggmk.control.typegen import generate
    from ggmk.typereg import load_types
    src = generate(load_types("types.toml"), source="types.toml")
    ns = {}; exec(src, ns)
    p = ns["Point"](x=1.5, n=3, tag=b"\\xca\\xfe\\x00\\x01")
    assert ns["Point"].decode(p.encode()) == p
"""
from __future__ import annotations

import keyword
from collections import Counter

from ggmk.typereg.schema import _SCALARS

_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h", "i32": "i",
          "i64": "q", "f32": "f", "f64": "d", "bool": "?"}
_PYTYPE = {"int": "int", "float": "float", "bool": "bool", "bytes": "bytes"}
# names a generated class defines itself (``self``: ``__init__``'s first parameter): a field
# of that name (or a Python keyword) is the attribute ``name_`` instead
_CLASS_NAMES = frozenset({"self", "TYPE_NAME", "TYPE_ID", "FIELDS", "ATTRS", "_S", "_CHECKS",
                          "FIXED_SIZE", "encode", "decode", "to_dict"})

# The generated module's field checks: schema.py's _fast_check/_coerce (same order, same
# messages) without importing ggmk or NumPy. A NumPy value can only exist where NumPy is
# loaded, so sys.modules tells. The aliases: a type TYPE_ERROR makes a class TypeError here.
_HELPERS = """\
_ValueError, _TypeError, _OverflowError = ValueError, TypeError, OverflowError
_F32 = struct.Struct('<f')


def _np(v, name):
    np = sys.modules.get('numpy')
    return np is not None and isinstance(v, getattr(np, name))


def _short(v):
    r = repr(v)
    return type(v).__name__ + ' ' + (r if len(r) <= 40 else r[:37] + '...')


def _check(tname, name, kind, lo=None, hi=None, size=0):
    \"\"\"The check of one field, as TypeInfo.encode checks it: returns what struct packs.\"\"\"
    where = f'{tname}: field {name!r} ({kind})'
    if lo is not None:
        def check(v):
            if type(v) is int and lo <= v <= hi:
                return v
            if isinstance(v, bool) or _np(v, 'bool_') or not (isinstance(v, int)
                                                               or _np(v, 'integer')):
                raise _TypeError(f'{where}: expected an integer, got {_short(v)}')
            v = int(v)
            if not lo <= v <= hi:
                raise _ValueError(f'{where}: {v} is out of range {lo}..{hi}')
            return v
    elif kind in ('f32', 'f64'):
        def check(v):
            if kind == 'f64' and type(v) is float:
                return v
            if isinstance(v, bool) or _np(v, 'bool_') or not (
                    isinstance(v, (int, float)) or _np(v, 'integer') or _np(v, 'floating')):
                raise _TypeError(f'{where}: expected a number, got {_short(v)}')
            try:
                v = float(v)
                if kind == 'f32':
                    _F32.pack(v)
            except _OverflowError:
                raise _ValueError(f'{where}: {v!r} is out of range for {kind}') from None
            return v
    elif kind == 'bool':
        def check(v):
            if isinstance(v, bool) or _np(v, 'bool_'):
                return bool(v)
            raise _TypeError(f'{where}: expected true or false, got {_short(v)}')
    else:  # bytes[size], or bytes (size 0)
        def check(v):
            if type(v) is bytes and len(v) == size:
                return v
            if _np(v, 'ndarray'):
                if v.dtype != 'uint8' or v.ndim != 1:
                    raise _TypeError(f'{where}: expected bytes or a 1-D uint8 array, got array'
                                     f' of {v.dtype} with shape {v.shape}')
                v = v.tobytes()
            elif isinstance(v, (bytes, bytearray, memoryview)):
                v = bytes(v)
            else:
                raise _TypeError(f'{where}: expected bytes, got {_short(v)}')
            if not size:
                if len(v) > 0xFFFF_FFFF:
                    raise _ValueError(f'{where}: {len(v)} bytes is more than a u32 length'
                                      ' allows')
            elif len(v) != size:
                raise _ValueError(f'{where}: expected exactly {size} bytes, got {len(v)}')
            return v
    return check


def _data(tname, data):
    \"\"\"decode()'s argument as bytes, as TypeInfo.decode takes it (bytes(5) would be five
    zero bytes).\"\"\"
    if _np(data, 'ndarray'):
        if data.dtype != 'uint8' or data.ndim != 1:
            raise _TypeError(f'{tname}: payload buffer must be a 1-D uint8 array, got'
                             f' {data.dtype} with shape {data.shape}')
        if not data.flags.c_contiguous:
            raise _TypeError(f'{tname}: payload buffer must be contiguous')
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise _TypeError(f'{tname}: decode needs bytes, got {type(data).__name__}')
    return bytes(data)
"""


def class_name(type_name: str) -> str:
    """POINT_STEP -> PointStep."""
    return "".join(p.capitalize() for p in type_name.split("_"))


def _distinct_class_name(type_name: str) -> str:
    """A_1_B -> A_1B: a part starting with a digit keeps its '_' (``class_name`` gives A1B for
    both A1_B and A_1_B); distinct for distinct type names."""
    return "".join(("_" if p[:1].isdigit() else "") + p.capitalize()
                   for p in type_name.split("_"))


def class_names(infos) -> dict:
    """Type id -> the class name of each of ``infos``: ``class_name``, except where two types
    would get the same one (then those with a part starting with a digit get
    ``_distinct_class_name``) or a keyword (TRUE -> True_)."""
    infos = list(infos)
    plain = Counter(class_name(i.name) for i in infos)
    names = {}
    for i in infos:
        cn = class_name(i.name)
        if plain[cn] > 1 and any(p[:1].isdigit() for p in i.name.split("_")):
            cn = _distinct_class_name(i.name)
        if keyword.iskeyword(cn):
            cn += "_"
        names[i.id] = cn
    seen: dict = {}
    for i in infos:
        other = seen.setdefault(names[i.id], i.name)
        if other != i.name:
            raise ValueError(f"types {other} and {i.name} would both be the class "
                             f"{names[i.id]}; rename one of them")
    return names


def attr_names(info) -> list:
    """The attribute (and ``__init__`` keyword) name of each field of ``info``: the field's
    name, or ``name_`` (``name__``, ...) for a keyword, ``self`` or a name the class defines.
    A name starting with '__' (which Python mangles inside a class) is a ValueError."""
    taken = {f.name for f in info.fields}
    out = []
    for f in info.fields:
        if f.name.startswith("__"):
            raise ValueError(f"type {info.name}, field {f.name!r}: a name starting with '__' "
                             "cannot be an attribute of the generated class (Python mangles "
                             "it); rename the field")
        a = f.name
        if keyword.iskeyword(a) or a in _CLASS_NAMES:
            a += "_"
            while a in taken or a in _CLASS_NAMES:
                a += "_"
            taken.add(a)
        out.append(a)
    return out


def _fmt(info) -> str:
    fmt = "<"
    for f in info.fields:
        if f.is_var:
            continue
        fmt += _CODES[f.kind] if f.kind in _CODES else f"{f.size}s"
    return fmt


def _check_call(tname: str, f) -> str:
    """The generated ``_check(...)`` of field ``f``."""
    args = f"{tname!r}, {f.name!r}, {f.kind!r}"
    if f.category == "int":
        return f"_check({args}, {_SCALARS[f.kind][4]}, {_SCALARS[f.kind][5]})"
    if f.is_bytes and not f.is_var:
        return f"_check({args}, size={f.size})"
    return f"_check({args})"


def _class(info, cn: str) -> str:
    attrs = attr_names(info)
    names = [f.name for f in info.fields]
    fixed = [a for f, a in zip(info.fields, attrs) if not f.is_var]
    var = next((a for f, a in zip(info.fields, attrs) if f.is_var), None)
    ann = ", ".join(f"{a}: {_PYTYPE[f.category]}" for f, a in zip(info.fields, attrs))
    fields = ", ".join(f"{f.name} {f.kind}" + (f" (attribute {a})" if a != f.name else "")
                       for f, a in zip(info.fields, attrs))
    doc = f"{info.doc or f'Payload of {info.name}'} (type {info.name}, id {info.id}; " \
          f"fields: {fields})."
    L = [f"class {cn}:",
         f"    {doc!r}",                     # a literal whatever the doc holds
         f"    TYPE_NAME = {info.name!r}",
         f"    TYPE_ID = {info.id}",
         f"    FIELDS = {tuple(names)!r}",    # the schema's names: to_dict()'s keys
         f"    ATTRS = {tuple(attrs)!r}",     # the attributes (and __init__'s keywords)
         f"    _S = struct.Struct({_fmt(info)!r})",
         "    _CHECKS = (      # encode()'s checks, in schema order: what TypeInfo.encode takes",
         *(f"        {_check_call(info.name, f)}," for f in info.fields),
         "    )",
         f"    FIXED_SIZE = {info.fixed_size}",
         f"    __slots__ = {tuple(attrs)!r}",
         "",
         f"    def __init__(self, {ann}):"]
    for a in attrs:
        L.append(f"        self.{a} = {a}")
    L += ["",
          "    def encode(self) -> bytes:",
          "        c = self._CHECKS",
          "        fixed = self._S.pack("
          f"{', '.join(f'c[{i}](self.{a})' for i, a in enumerate(fixed))})"]
    if var is None:
        L.append("        return fixed")
    else:
        L.append(f"        v = c[{len(fixed)}](self.{var})")
        L.append("        return fixed + _LEN.pack(len(v)) + v")
    L += ["",
          "    @classmethod",
          f'    def decode(cls, data) -> "{cn}":',
          f"        data = _data({info.name!r}, data)"]
    # _ValueError: a type VALUE_ERROR makes a class ValueError in this module
    if var is None:
        L += ["        if len(data) != cls.FIXED_SIZE:",
              f"            raise _ValueError(f\"{info.name}: payload of {{len(data)}} bytes; "
              f"the schema has {info.fixed_size}\")",
              "        vals = cls._S.unpack(data)"]
    else:
        L += ["        if len(data) < cls.FIXED_SIZE + 4:",
              f"            raise _ValueError(f\"{info.name}: payload of {{len(data)}} bytes; "
              f"the schema needs at least {info.fixed_size + 4}\")",
              "        vals = cls._S.unpack_from(data, 0)",
              "        (n,) = _LEN.unpack_from(data, cls.FIXED_SIZE)",
              "        if len(data) != cls.FIXED_SIZE + 4 + n:",
              f"            raise _ValueError(f\"{info.name}: payload of {{len(data)}} bytes; "
              f"its length prefix says {{cls.FIXED_SIZE + 4 + n}}\")",
              "        var = data[cls.FIXED_SIZE + 4:]"]
    args = []
    i = 0
    for f in info.fields:
        if f.is_var:
            args.append("var")
        else:
            args.append(f"vals[{i}]")
            i += 1
    L += [f"        return cls({', '.join(args)})",
          "",
          "    def to_dict(self) -> dict:",
          "        return {k: getattr(self, a) for k, a in zip(self.FIELDS, self.ATTRS)}",
          "",
          "    def __eq__(self, other):",
          "        return type(other) is type(self) and self.to_dict() == other.to_dict()",
          "",
          "    def __repr__(self):",
          f"        return f\"{cn}({{', '.join(f'{{a}}={{getattr(self, a)!r}}' for a in "
          "self.ATTRS)})\"",
          ""]
    return "\n".join(L)


def generate(reg, *, source: str = "types.toml") -> str:
    """The Python source of the accessors for every type of ``reg`` (a TypeRegistry, or
    TypeInfos). A registry no module can be generated for (see ``class_names`` and
    ``attr_names``) is a ValueError naming the type and the field."""
    infos = sorted(reg, key=lambda i: i.id)
    doc = (f"Typed payload accessors generated by `ggmk typegen` from {source}. Do not edit: "
           "regenerate.")
    out = [repr(doc),
           "import struct", "import sys", "", "_LEN = struct.Struct('<I')", _HELPERS, "",
           "TYPE_IDS = {" + ", ".join(f"{i.name!r}: {i.id}" for i in infos) + "}", "", ""]
    classes = [i for i in infos if i.fields]
    names = class_names(classes)
    for info in classes:
        out.append(_class(info, names[info.id]))
        out.append("")
    out.append("PAYLOADS = {" + ", ".join(f"{i.id}: {names[i.id]}" for i in classes) + "}")
    return "\n".join(out) + "\n"
