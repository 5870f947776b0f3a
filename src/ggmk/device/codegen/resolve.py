"""Resolution and validation: the handlers and device channels of a kernel's modules with their
type ids, channel ids and subscribers resolved; every declaration error is raised here, before
anything is generated or compiled."""
from __future__ import annotations

from dataclasses import dataclass

from ggmk.core.channel_spec import max_subscribers
from ggmk.device import layout
from ggmk.device.module import (MAX_FANOUT, Chan, ChannelBootError, Handler, Module,
                                _global_names)
from ggmk.errors import BootError
from ggmk.task import CHAN_ALREADY_BOUND, CHAN_TYPE_MISMATCH, CHAN_UNKNOWN
from ggmk.typereg import DEFAULT_MAX_YIELDS, TypeRegistry, validate_declarations


def resolve_handlers(modules, types_map=None) -> list[Handler]:
    """All handlers of ``modules`` with their type resolved to an id; duplicates are errors.
    ``max_yields``: the handler's own, else (``types_map`` a TypeRegistry that has the type)
    the type's types.toml policy, else DEFAULT_MAX_YIELDS, as on the CPU kernel."""
    out: list[Handler] = []
    seen: dict[int, Handler] = {}
    for m in modules:
        if not isinstance(m, Module):
            raise BootError(f"DeviceKernel: {m!r} is not a ggmk.device.Module")
        for h in m.handlers:
            tid = h.type
            if isinstance(tid, str):
                tid = _lookup_type(types_map, tid, f"module {m.name!r} handler {h.name!r}")
            if tid in seen:
                o = seen[tid]
                raise BootError(f"type {tid}: handled by both {o.module.name}.{o.name} and "
                                f"{m.name}.{h.name}")
            my = h.max_yields
            if my is None:
                my = types_map.info(tid).max_yields if _registered(types_map, tid) \
                    else DEFAULT_MAX_YIELDS
            h2 = Handler(tid, h.fn, h.name, h.granularity, h.shared_bytes, h.phases,
                         h.deterministic, my, m, h.consumes, h.message, h.waits_together)
            seen[tid] = h2
            out.append(h2)
    if not out:
        raise BootError("DeviceKernel: no device handlers registered")
    place_user_words(modules)
    check_user_words(modules)
    return out


def _registered(types_map, t) -> bool:
    return isinstance(types_map, TypeRegistry) and t in types_map


def check_type_policies(modules, handlers: list[Handler], types_map) -> None:
    """The declarations whose types ``types_map`` (a TypeRegistry; anything else has no
    policies) registers, checked as the CPU kernel checks its modules'
    (``typereg.validate_declarations``): a lossless type on a lossy channel, a deterministic
    type on a handler not declared deterministic... one BootError listing every problem.
    Types it does not register are left alone (a device kernel may use plain ids)."""
    if not isinstance(types_map, TypeRegistry):
        return
    validate_declarations(types_map,
                          [d for m in modules for d in m.channels if d.type in types_map],
                          [h for h in handlers if h.type in types_map],
                          source="DeviceKernel(types=...)")


def _gaps(taken) -> list[tuple[int, int]]:
    """The free user words between the ``(lo, hi)`` regions ``taken``, as ``(lo, hi)``."""
    out, at = [], 0
    for lo, hi in sorted(taken):
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < layout.USER_WORDS:
        out.append((at, layout.USER_WORDS))
    return out


def _first_fit(taken, items) -> dict | None:
    """``{id(module): lo}`` for ``items`` ``(module, words)``, largest first, each at the
    lowest free words that hold it; None when one does not fit."""
    taken, out = list(taken), {}
    for m, words in sorted(items, key=lambda x: -x[1]):
        lo = next((a for a, b in _gaps(taken) if b - a >= words), None)
        if lo is None:
            return None
        taken.append((lo, lo + words))
        out[id(m)] = lo
    return out


def place_user_words(modules) -> None:
    """Place the regions of the movable modules (``Module.movable``: a standard
    ``device_module()`` not given ``base=``) where they overlap nothing: each where it asked
    to be when that is free, the others at the lowest free words, largest first; failing
    that, all of them packed afresh. The claims of the other modules (an explicit
    ``base=``, a user's module, the bridge's words) never move. Decided from the asked-for
    regions alone, so the same modules in the same order are placed alike in every build (a
    device process's child and its parent's view agree). A BootError naming every module
    and size when they do not fit the user words together."""
    movable = [m for m in modules if getattr(m, "_place", None)]
    if not movable:
        return
    fixed = [(lo, hi) for m in modules if not getattr(m, "_place", None)
             for lo, hi, _ in m.claims()]
    taken, where, rest = list(fixed), {}, []
    for m in movable:
        lo, hi, _ = m._place[1]
        if all(hi <= a or b <= lo for a, b in taken):
            taken.append((lo, hi))
            where[id(m)] = lo
        else:
            rest.append((m, hi - lo))
    more = _first_fit(taken, rest)
    if more is None:
        more, where = _first_fit(fixed, [(m, m._place[1][1] - m._place[1][0])
                                         for m in movable]), {}
    if more is None:
        need = ", ".join(f"{m.name!r} {hi - lo} words ({what})"
                         for m in movable for lo, hi, what in [m._place[1]])
        others = ", ".join(f"{m.name!r} {lo}..{hi - 1}" for m in modules
                           if not getattr(m, "_place", None) for lo, hi, _ in m.claims())
        free = ", ".join(f"{a}..{b - 1} ({b - a} words)" for a, b in _gaps(fixed))
        raise BootError(
            f"device modules do not fit the {layout.USER_WORDS} user words together: {need}; "
            + (f"fixed: {others}; " if others else "")
            + f"free: {free or 'none'}: give them smaller sizes")
    where.update(more)
    for m in movable:
        place, (lo, hi, what) = m._place
        at = where[id(m)]
        if m.claims()[0][0] != at:
            place(at)
            m.user_words = (at, at + hi - lo, what)


def check_user_words(modules) -> None:
    """The user words the modules claim (``Module.user_words``) do not overlap: two modules
    writing the same words corrupt each other with no error anywhere (the default stats and
    log device modules once did). BootError naming both modules, their ranges and what each
    keeps there."""
    claims = sorted((lo, hi, what, m.name) for m in modules for lo, hi, what in m.claims())
    for a, b in zip(claims, claims[1:]):
        if b[0] < a[1]:
            raise BootError(
                f"device modules {a[3]!r} and {b[3]!r} claim the same user words: "
                f"{a[3]!r} {a[0]}..{a[1] - 1} ({a[2] or 'its state'}), {b[3]!r} "
                f"{b[0]}..{b[1] - 1} ({b[2] or 'its state'}); give one of them another base "
                f"(user words 0..{layout.USER_WORDS - 1})")


@dataclass
class ChanSpec:
    """A device channel as built: ``id`` (1-based, a constant of the generated code),
    ``message`` (type id), ``subs`` (handler indices, in subscription order) and ``slot0``
    (its first subscriber slot; slots are global, in channel order)."""
    id: int
    name: str
    message: int
    mode: str
    guarantee: str
    capacity: int
    reserve: int
    module: str
    subs: list
    slot0: int = 0


def resolve_channels(modules, handlers: list[Handler], types_map=None) -> list[ChanSpec]:
    """The device channels of ``modules`` with ids, message types and subscribers resolved;
    every declaration error is raised here, before anything compiles."""
    specs: dict[str, ChanSpec] = {}
    for m in modules:
        for d in m.channels:
            if d.name in specs:
                raise ChannelBootError(f"device channel {d.name!r} is declared by both module "
                                       f"{specs[d.name].module!r} and module {m.name!r}",
                                       CHAN_ALREADY_BOUND)
            where = f"module {m.name!r}, channel {d.name!r}"
            msg = d.message
            if isinstance(msg, str):
                msg = _lookup_type(types_map, msg, where)
            specs[d.name] = ChanSpec(len(specs) + 1, d.name, int(msg), d.mode, d.guarantee,
                                     d.capacity, d.reserve, m.name, [])
    for i, h in enumerate(handlers):
        where = f"module {h.module.name!r}, handler {h.name!r} (type {h.type})"
        for cname in h.consumes:
            sp = specs.get(cname)
            if sp is None:
                raise ChannelBootError(f"{where}: consumes unknown device channel {cname!r}"
                                       f"{_known(specs)}", CHAN_UNKNOWN)
            if h.message is not None:
                want = h.message
                if isinstance(want, str):
                    want = _lookup_type(types_map, want, where)
                if int(want) != sp.message:
                    raise ChannelBootError(
                        f"{where}: expects message type {h.message!r} on channel {cname!r} "
                        f"(module {sp.module!r}), which carries type {sp.message} "
                        f"(CHAN_TYPE_MISMATCH)", CHAN_TYPE_MISMATCH)
            limit = max_subscribers(sp.mode)
            if len(sp.subs) >= limit:
                bound = ", ".join(f"{handlers[j].module.name}.{handlers[j].name}"
                                  for j in sp.subs)
                raise ChannelBootError(
                    f"{where}: cannot subscribe to {sp.mode} channel {cname!r} (module "
                    f"{sp.module!r}): already bound to {bound} (CHAN_ALREADY_BOUND; "
                    + ("declare mode='fanout' for more subscribers)" if sp.mode == "p2p"
                       else f"fan-out allows at most {MAX_FANOUT})"), CHAN_ALREADY_BOUND)
            sp.subs.append(i)
    out = list(specs.values())
    slot = 0
    for sp in out:
        sp.slot0 = slot
        slot += len(sp.subs)
    # channel references inside handlers (and their @func helpers) must name a channel
    for h in handlers:
        for v in _chan_refs(h.fn, set()):
            if v.name not in specs:
                raise ChannelBootError(f"module {h.module.name!r}, handler {h.name!r}: emits "
                                       f"on unknown device channel {v.name!r}{_known(specs)}",
                                       CHAN_UNKNOWN)
    return out


def _known(specs) -> str:
    if not specs:
        return " (no device channel is declared)"
    return f" (declared: {', '.join(sorted(specs))})"


def _cell(c):
    try:
        return c.cell_contents
    except ValueError:          # an empty cell
        return None


def _chan_refs(fn, seen):
    """Channel references a handler (or its @func helpers) holds as globals or closure
    variables."""
    if id(fn) in seen:
        return
    seen.add(id(fn))
    for c in fn.__closure__ or ():
        if isinstance(_cell(c), Chan):
            yield _cell(c)
    for name in _global_names(fn.__code__):
        v = fn.__globals__.get(name)
        if isinstance(v, Chan):
            yield v
        elif getattr(v, "_ggmk_device_func", False):
            yield from _chan_refs(v, seen)


def _lookup_type(types_map, name, where) -> int:
    if types_map is None:
        raise BootError(f"{where}: type name {name!r} needs DeviceKernel(types=...)")
    try:
        if hasattr(types_map, "id"):
            return int(types_map.id(name))
        return int(types_map[name])
    except (KeyError, LookupError):
        raise BootError(f"{where}: unknown type name {name!r}") from None


def smem_words(handlers, threads: int) -> int:
    """Shared int64 words handlers need per block (warp handlers: per warp x warps)."""
    w = 1
    for h in handlers:
        words = max((h.shared_bytes + 7) // 8, 1)
        if h.granularity == "warp":
            words *= threads // layout.WARP
        w = max(w, words)
    return w
