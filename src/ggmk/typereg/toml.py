"""Reading ``types.toml``: the file (or text), the TOML, the line a type is defined on, and
``load_types`` (every problem of a file in one TypesError)."""
from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ggmk.errors import TypesError
from ggmk.typereg.registry import TypeRegistry
from ggmk.typereg.schema import TypeInfo, _build_type, _Problems


# --------------------------------------------------------------------------------------------
# reading files


def _read_source(path_or_text: Any, source: str | None) -> tuple[str, str, str | None]:
    """(text, source name for messages, path or None). ``os.PathLike`` is always a path and
    bytes are always text. A str is TOML text when it contains a newline or is empty; else it
    is a path when a file of that name exists (so ``/tmp/x=1.toml`` is a path); else TOML text
    when it contains '=' or '[' (a one-line ``types.A.id = 1``), and a path (that cannot be
    read) otherwise."""
    if isinstance(path_or_text, (bytes, bytearray)):
        try:
            return bytes(path_or_text).decode("utf-8"), source or "<string>", None
        except UnicodeDecodeError as e:
            raise TypesError(f"{source or '<string>'}: not UTF-8: {e}") from None
    if isinstance(path_or_text, str) and (
            not path_or_text.strip() or "\n" in path_or_text
            or (any(c in path_or_text for c in "=[") and not os.path.exists(path_or_text))):
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


def _maybe_path(path_or_text: Any, path: str | None) -> bool:
    return isinstance(path_or_text, str) and path is None and "\n" not in path_or_text


_TYPE_HEADER_RE = re.compile(
    r"""^[ \t]*\[[ \t]*types[ \t]*\.[ \t]*["']?([^\]."'\s]+)["']?[ \t]*\]""", re.M)


def _parse_toml(text: str, src: str, *, maybe_path: bool = False) -> dict:
    """``maybe_path``: the text was a one-line str argument, which may have been meant as a
    path; an invalid-TOML message then says no file of that name exists."""
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
        hint = (f" (read as TOML text: no file of that name exists: {text!r})"
                if maybe_path else "")
        raise TypesError(f"{src}: invalid TOML: {e}{hint}") from None


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


def _registry_table(table: Any, text: str, probs: _Problems) -> bool:
    """The ``[registry]`` table's ``strict`` (default false); problems name its line."""
    m = re.search(r"^[ \t]*(?:\[[ \t]*registry[ \t]*\]|registry[ \t]*\.)", text, re.M)
    line = _line_of(text, m.start()) if m else None
    if not isinstance(table, Mapping):
        probs.add(f"'registry' must be a table ([registry] strict = true), got {table!r}",
                  line=line)
        return False
    for k in table:
        if k != "strict":
            probs.add(f"[registry]: unknown key {k!r}; allowed: strict", line=line)
    strict = table.get("strict", False)
    if not isinstance(strict, bool):
        probs.add(f"[registry]: 'strict' must be true or false, got {strict!r}", line=line)
        return False
    return strict


def load_types(path_or_text: str | os.PathLike | bytes, *, source: str | None = None,
               strict: bool | None = None) -> TypeRegistry:
    """Load a ``types.toml`` (a path, or the TOML text itself) into a TypeRegistry.

    ``os.PathLike`` is a path and bytes are TOML text. A str is TOML text when it contains a
    newline; a one-line str is a path when that file exists (``"/tmp/x=1.toml"`` too), else
    TOML text if it contains '=' or '[' (``"types.PING.id = 5"``), else a path.

    Every problem in the file is reported in one TypesError naming the file, the line where it
    can be found, the type and the field or policy.

    ``strict`` (default: the file's ``[registry] strict``, else false): a boot with this
    registry refuses a module whose handler or channel names a type the registry does not
    define (a BootError naming the module, the handler or channel, the name and the closest
    defined names) instead of registering the name at an automatic id. ``True``/``False``
    overrides the file.

    >>> reg = load_types("types.toml"); reg.id("PHYS_STEP")
    10
    """
    if strict is not None and not isinstance(strict, bool):
        raise TypesError(f"load_types: strict={strict!r}: allowed True, False or None (the "
                         "file's [registry] strict)")
    text, src, path = _read_source(path_or_text, source)
    data = _parse_toml(text, src, maybe_path=_maybe_path(path_or_text, path))
    probs = _Problems(src)
    for k in data:
        if k not in ("types", "registry"):
            probs.add(f"unknown top-level key {k!r}: types go under [types.NAME] (and the "
                      "registry's options under [registry])")
    file_strict = _registry_table(data.get("registry", {}), text, probs)
    types = _types_from_table(data.get("types", {}), text, src, probs)
    probs.raise_if_any()
    reg = TypeRegistry(strict=file_strict if strict is None else strict)
    for t in types:
        reg._add(t)
    reg.sources.append(src)
    return reg

