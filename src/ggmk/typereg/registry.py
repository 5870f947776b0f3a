"""The type registry: types by name and by id, registering from code, merging, output."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ggmk.errors import TypesError
from ggmk.typereg.schema import (AUTO_ID_FIRST, AUTO_ID_LAST, TYPE_TABLE_DTYPE, TypeInfo,
                                 _build_type, _Problems)


class UnknownTypeError(TypesError, KeyError):
    """A type name or id that the registry does not hold (also a ``KeyError``)."""

    __str__ = Exception.__str__


# --------------------------------------------------------------------------------------------
# the registry


class TypeRegistry:
    """Types by name and by id. Names and ids are unique; TypeInfo objects are immutable.

    >>> reg = TypeRegistry()
    >>> ping = reg.register("PING", payload={"n": "u32"}, max_yields=4)   # auto id 0x8000
    >>> reg.id("PING"), reg.name(ping.id), "PING" in reg
    (32768, 'PING', True)

    ``strict`` (``[registry] strict = true`` in types.toml, ``load_types(..., strict=True)``):
    a boot refuses a module whose handler or channel names a type the registry does not
    define (``validate_declarations``), instead of giving the name an automatic id. Names a
    boot registers itself (``register(name)`` with nothing but the name, or ``TYPE_<id>``) are
    ``auto_registered()``.
    """

    def __init__(self, types: Iterable[TypeInfo] = (), *, strict: bool = False):
        if not isinstance(strict, bool):
            raise TypesError(f"TypeRegistry: strict={strict!r}: allowed True or False")
        self._by_name: dict[str, TypeInfo] = {}
        self._by_id: dict[int, TypeInfo] = {}
        self.sources: list[str] = []
        self.strict = strict
        # names registered with nothing but a name (what a boot does for a name it does not
        # know): a strict registry's boot refuses them, and a misspelt one is told apart
        self._implicit: set[str] = set()
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

    def auto_registered(self) -> list[str]:
        """Names registered with nothing but a name (``register("X")``, ``TYPE_<id>``), as a
        boot registers a name no types.toml or module defines: in id order."""
        return [t.name for t in self if t.name in self._implicit]

    def defined_names(self) -> list[str]:
        """Names with a definition (types.toml, a module's types, ``register`` with an id, a
        payload or a policy): ``names()`` less ``auto_registered()``."""
        return [t.name for t in self if t.name not in self._implicit]

    def ids(self) -> list[int]:
        return sorted(self._by_id)

    def __repr__(self) -> str:
        return f"<TypeRegistry {len(self)} types: {', '.join(self.names()[:8])}" \
               f"{', ...' if len(self) > 8 else ''}{', strict' if self.strict else ''}>"

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
        bare = payload is None and not policies and (id is None or name == f"TYPE_{id}")
        if existing is not None:
            if not bare:
                self._implicit.discard(name)   # defined now, the same as it was
            return existing
        self._add(t)
        if bare:
            self._implicit.add(t.name)
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
                if t.name in other._implicit:
                    self._implicit.add(t.name)
            elif t.name not in other._implicit:
                self._implicit.discard(t.name)    # (defined there: no longer a bare name)
        self.sources.extend(s for s in other.sources if s not in self.sources)
        self.strict = self.strict or other.strict   # a strict file stays strict when merged
        return self

    def copy(self) -> "TypeRegistry":
        r = TypeRegistry(self, strict=self.strict)
        r.sources = list(self.sources)
        r._implicit = set(self._implicit)
        return r

    # -- output --------------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The registry as ``types.toml`` text; ``load_types`` of it gives equal types."""
        out = ["# ggmk type registry (TypeRegistry.to_toml)"]
        if self.strict:
            out += ["", "[registry]", "strict = true"]
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

