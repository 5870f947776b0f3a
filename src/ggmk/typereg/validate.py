"""Boot-time validation of every module's declarations against the registry and each other."""
from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from typing import Any

from ggmk.errors import BootError
from ggmk.typereg.decls import ChannelDecl, HandlerDecl
from ggmk.typereg.manifest import ModuleManifest
from ggmk.typereg.registry import TypeRegistry

log = logging.getLogger("ggmk")

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
    head = (f"module {d.module_name!r}: channel {d.name!r} ({_verb(d.direction)} {tname}): "
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

    unknown type names (in a strict registry also the names a boot registered itself,
    ``reg.auto_registered()``: see ``_undefined_problems``); modules disagreeing on a
    channel's type, mode or guarantee; a lossless type (``lossy = false``) on a lossy channel;
    a deterministic type handled by a handler not declared deterministic; a p2p channel
    consumed by two modules; a handler name used twice in one module; a declaration of ``sys.error`` / ``sys.dropped`` (system channels carrying every
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
        for d in _dedupe(sys_decls, lambda d: (d.module_name, d.name, d.direction, key(d.type))):
            problems.append(_any_type_channel_problem(d, tname(d.type)))
        chans = [d for d in chans if d.name not in ANY_TYPE_CHANNELS]
    for d in chans:
        if d.type not in reg:
            problems.append(f"module {d.module_name!r}: channel {d.name!r} ({d.direction}):"
                            f" {unknown(d.type)}")
    for h in handlers:
        if h.type not in reg:
            problems.append(f"module {h.module_name!r}: handler {h.name!r}: {unknown(h.type)}")
    problems += _undefined_problems(reg, chans, handlers)

    by_chan: dict[str, list[ChannelDecl]] = {}
    for d in chans:
        by_chan.setdefault(d.name, []).append(d)
    for name, decls in by_chan.items():
        if len({key(d.type) for d in decls}) > 1:
            who = ", ".join(f"module {d.module_name!r} {_verb(d.direction)} {tname(d.type)}"
                            for d in _dedupe(decls, lambda d: (d.module_name, d.direction,
                                                               key(d.type))))
            problems.append(f"channel {name!r}: type mismatch: {who}")
        for attr in ("mode", "guarantee"):
            if len({getattr(d, attr) for d in decls}) > 1:
                who = ", ".join(f"module {d.module_name!r} declares {getattr(d, attr)}"
                                for d in _dedupe(decls, lambda d: (d.module_name,
                                                                   getattr(d, attr))))
                problems.append(f"channel {name!r}: conflicting {attr}: {who}")
        for d in _dedupe(decls, lambda d: (d.module_name, key(d.type), d.guarantee)):
            if d.guarantee == "lossy" and d.type in reg and not reg.info(d.type).lossy:
                problems.append(f"channel {name!r} is lossy (declared by module"
                                f" {d.module_name!r}) but type {tname(d.type)} needs lossless"
                                " delivery (lossy = false)")
        if {d.mode for d in decls} == {"p2p"}:
            consumers = list(dict.fromkeys(d.module_name for d in decls
                                           if d.direction == "consume"))
            if len(consumers) > 1:
                problems.append(f"channel {name!r} is p2p but {len(consumers)} modules consume"
                                f" it: {', '.join(repr(m) for m in consumers)} (p2p allows one"
                                " subscriber; declare mode = \"fanout\")")

    seen: set[tuple[str, str]] = set()
    for h in handlers:
        if (h.module_name, h.name) in seen:
            problems.append(f"module {h.module_name!r}: handler name {h.name!r} declared twice")
        seen.add((h.module_name, h.name))
        if h.type in reg and reg.info(h.type).deterministic and not h.deterministic:
            problems.append(f"module {h.module_name!r}: handler {h.name!r} handles deterministic"
                            f" type {tname(h.type)} but is not declared deterministic")

    raise_boot_problems("declarations", problems, source)


def _undefined_problems(reg: TypeRegistry, chans: list[ChannelDecl],
                        handlers: list[HandlerDecl]) -> list[str]:
    """The declarations naming a type the registry holds only because a boot registered the
    bare name (``reg.auto_registered()``): problems in a strict registry; else a warning on
    the ``ggmk`` log for each that looks like a misspelt defined name (a registry read from a
    file), since its handler would never see the defined type's tasks.

    A module instance's own type, ``<TYPE>_<MODULE>`` after a defined TYPE (as the standard
    modules name a second instance's handler types: ``kv.module(name="cache")`` handles
    ``KV_GET_CACHE``), is allowed."""
    auto = set(reg.auto_registered())
    if not auto:
        return []
    defined = reg.defined_names()
    out: list[str] = []
    seen: set = set()
    for d in [*handlers, *chans]:
        if d.type not in reg:
            continue                                  # (unknown: reported already)
        name = reg.name(d.type) if not isinstance(d.type, str) else d.type
        if name not in auto:
            continue
        suffix = "_" + d.module_name.upper()
        if name.endswith(suffix) and name[:-len(suffix)] in defined:
            continue
        what = (f"handler {d.name!r}" if isinstance(d, HandlerDecl)
                else f"channel {d.name!r} ({d.direction})")
        if (d.module_name, what, name) in seen:
            continue
        seen.add((d.module_name, what, name))
        tid = reg.id(name)
        said = (f"type id {tid} is not in the registry" if name == f"TYPE_{tid}" else
                f"type {name!r} is not in the registry")
        close = difflib.get_close_matches(name, defined, n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        files = ", ".join(reg.sources) or "the registry"
        if reg.strict:
            out.append(f"module {d.module_name!r}: {what}: {said}{hint}; the registry is "
                       f"strict ({files}): define it there (or register it with "
                       f"reg.register(name, id=...) before the boot)")
        elif close and reg.sources:
            log.warning("ggmk: module %r: %s: %s (did you mean %s?): it was given the "
                        "automatic id %d and sees no task of a type in %s ([registry] strict "
                        "= true in types.toml makes this a boot error)", d.module_name, what,
                        said, " or ".join(close), tid, files)
    return out


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
