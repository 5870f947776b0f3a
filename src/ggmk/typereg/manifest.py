"""Module manifests (``module.toml``): a module's identity, channel and handler declarations
and the types it brings. See ``ggmk.typereg`` for the file's shape."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field

from ggmk.typereg.decls import (MODULE_NAME_RE, ChannelDecl, HandlerDecl, _channel_problems,
                                _handler_problems)
from ggmk.typereg.registry import TypeRegistry
from ggmk.typereg.schema import _Problems
from ggmk.typereg.toml import (_line_of, _maybe_path, _parse_toml, _read_source,
                               _types_from_table)


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


def _entries(data, text, src, mname, table, keys, required, probs):
    """Each entry of the array of tables ``[[table]]`` that is a table: yields (entry, its
    problems with unknown or missing keys, a function that files problems under the entry's
    file:line and name). The one preamble of [[channel]] and [[handler]]."""
    raw = data.get(table, [])
    if not isinstance(raw, list):
        probs.add(f"'{table}' must be an array of tables: write [[{table}]]")
        return
    for i, e in enumerate(raw):
        line = _nth_header_line(text, table, i)
        ename = e.get("name", f"#{i + 1}") if isinstance(e, Mapping) else f"#{i + 1}"
        prefix = f"{src}:{line}" if line else src
        prefix += f": module {mname}, {table} {ename!r}: "
        if not isinstance(e, Mapping):
            probs.items.append(prefix + "must be a table")
            continue
        bad = [f"unknown key {k!r}; allowed: {', '.join(keys)}" for k in e if k not in keys]
        bad += [f"missing {k!r}" for k in required if k not in e]
        yield e, bad, (lambda b, _p=prefix: probs.items.extend(_p + x for x in b))


def load_module_manifest(path_or_text: str | os.PathLike | bytes, *,
                         source: str | None = None) -> ModuleManifest:
    """Load a ``module.toml`` (see the module docstring for its shape). Every problem is
    listed in one TypesError naming the file, line, module, and channel/handler.

    ``path_or_text`` is read as in :func:`load_types`: a str with a newline is TOML text, a
    one-line str naming an existing file is a path (``"/tmp/x=1.toml"`` too), else TOML text
    if it contains '=' or '[', else a path; ``os.PathLike`` is a path, bytes are text.

    >>> man = load_module_manifest("module.toml"); [c.name for c in man.channels]
    """
    text, src, path = _read_source(path_or_text, source)
    data = _parse_toml(text, src, maybe_path=_maybe_path(path_or_text, path))
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
    for c, bad, report in _entries(data, text, src, mname, "channel",
                                   ("name", "direction", "type", "mode", "guarantee"),
                                   ("name", "direction", "type"), probs):
        if not bad:
            args = dict(name=c["name"], direction=c["direction"], type=c["type"],
                        mode=c.get("mode", "p2p"), guarantee=c.get("guarantee", "lossless"),
                        module=mname)
            bad = _channel_problems(**args)
            if not bad:
                channels.append(ChannelDecl(**args))
        report(bad)

    handlers: list[HandlerDecl] = []
    seen: set[str] = set()
    for h, bad, report in _entries(data, text, src, mname, "handler",
                                   ("type", "name", "deterministic", "batch", "granularity",
                                    "shared_mem"), ("type", "name"), probs):
        if not bad:
            args = dict(type=h["type"], name=h["name"], module=mname,
                        deterministic=h.get("deterministic", False),
                        batch=h.get("batch", False), granularity=h.get("granularity", "task"),
                        shared_mem=h.get("shared_mem", 0))
            bad = _handler_problems(**args)
            if not bad and h["name"] in seen:
                bad = ["duplicate handler name in this module"]
            if not bad:
                handlers.append(HandlerDecl(**args))
        if isinstance(h.get("name"), str):
            seen.add(h["name"])
        report(bad)

    types = _types_from_table(data.get("types", {}), text, src, probs)
    probs.raise_if_any()
    reg = TypeRegistry()
    for t in types:
        reg._add(t)
    if types:
        reg.sources.append(src)
    return ModuleManifest(name=mname, version=version, channels=channels, handlers=handlers,
                          path=path or src, types=reg, description=desc)
