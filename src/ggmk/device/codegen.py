"""Build the persistent kernel for a target from the registered handlers.

1. Handlers get dense indices 0..N-1 in registration order; their type ids become compile-time
   constants of a generated ``type_index`` (an ``if``/``elif`` chain: no tables, no indirect
   calls) and of the dispatch switch ``dispatch_segment`` which calls each handler by name.
2. The generated text is appended to the kernel source (``kernel_src.py``) and the handler API
   (``api.py``), written to ``$GGMK_CACHE_DIR`` (default ``~/.cache/ggmk``) under a key that
   hashes the handler set (bytecode, constants, granularity, ...), the sources, the
   configuration and the target, and executed in a fresh module whose namespace holds the
   target's primitives. Because the file is real and its name carries the key, the target's
   compiler cache (Numba's on ``cpu`` and ``cuda``) is keyed by the handler set: a second boot
   with the same handlers loads the compiled kernel from disk.
3. Each handler is rebuilt with its references to ``ggmk.device.api`` (the module or its
   functions) and to ``@func`` helpers rebound to the target-compiled versions.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import sys
import types as pytypes
from dataclasses import dataclass
from pathlib import Path

import numba

from ggmk import events, task
from ggmk.device import api as api_mod
from ggmk.device import layout
from ggmk.device.module import (MAX_FANOUT, Chan, ChannelBootError, ChannelDecl, Handler,
                                Module, _global_names)
from ggmk.core.chan import CHAN_NO_SUBSCRIBER     # the CPU kernel's code, shared
from ggmk.errors import BootError
from ggmk.task import CHAN_ALREADY_BOUND, CHAN_TYPE_MISMATCH, CHAN_UNKNOWN

SRC_DIR = Path(__file__).parent
ENQ_NORMAL, ENQ_SHARED, ENQ_YIELD, ENQ_CHANNEL = 0, 1, 2, 3


def cache_dir() -> Path:
    d = os.environ.get("GGMK_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "ggmk"


def target_module(name: str):
    if name not in ("cpu", "sim", "cuda"):
        raise BootError(f"device target {name!r} is not one of 'auto', 'cpu', 'sim', 'cuda'")
    return importlib.import_module(f"ggmk.device.targets.{name}")


def resolve_handlers(modules, types_map=None) -> list[Handler]:
    """All handlers of ``modules`` with their type resolved to an id; duplicates are errors."""
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
            h2 = Handler(tid, h.fn, h.name, h.granularity, h.shared_bytes, h.phases,
                         h.deterministic, h.max_yields, m, h.consumes, h.message)
            seen[tid] = h2
            out.append(h2)
    if not out:
        raise BootError("DeviceKernel: no device handlers registered")
    return out


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
            limit = 1 if sp.mode == "p2p" else MAX_FANOUT
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


def _chain(L, name, args, cases, default):
    """``def name(args)`` as an if/elif chain over (condition, value) pairs."""
    L.append(f"def {name}({args}):")
    for k, (cond, val) in enumerate(cases):
        L.append(f"    {'if' if k == 0 else 'elif'} {cond}:")
        L.append(f"        return {val}")
    L.append(f"    return {default}\n\n")


def generate_channels(chans: list[ChanSpec], handlers: list[Handler]) -> list[str]:
    """Channel tables: ids, modes, capacities and subscribers are literals of the generated
    code (so they are part of the compile cache key)."""
    L = ["# device channels: " + (", ".join(f"{c.id}={c.name!r}" for c in chans) or "none")]
    _chain(L, "chan_lossless", "c", [(f"c == {c.id}", int(c.guarantee == "lossless"))
                                     for c in chans], 0)
    _chain(L, "chan_nsubs", "c", [(f"c == {c.id}", len(c.subs)) for c in chans], 0)
    _chain(L, "chan_slot0", "c", [(f"c == {c.id}", c.slot0) for c in chans], 0)
    _chain(L, "chan_cap", "c", [(f"c == {c.id}", c.capacity) for c in chans], 0)
    _chain(L, "chan_reserve", "c", [(f"c == {c.id}", c.reserve) for c in chans], 0)
    _chain(L, "chan_msg_type", "c", [(f"c == {c.id}", c.message) for c in chans], 0)
    subs = [(c, k, i) for c in chans for k, i in enumerate(c.subs)]
    _chain(L, "sub_type", "slot", [(f"slot == {c.slot0 + k}", handlers[i].type)
                                   for c, k, i in subs], 0)
    _chain(L, "sub_slot", "c, ti", [(f"c == {c.id} and ti == {i}", c.slot0 + k)
                                    for c, k, i in subs], -1)
    return L


def generate(handlers: list[Handler], plan: layout.Plan, chans=()) -> str:
    """The generated source: type tables as if/elif chains and the dispatch switch."""
    L = ["# ---- generated by ggmk.device.codegen: do not edit", ""]
    L += generate_channels(list(chans), handlers)
    L.append("def type_index(t):")
    for i, h in enumerate(handlers):
        L.append(f"    {'if' if i == 0 else 'elif'} t == {h.type}:")
        L.append(f"        return {i}")
    L.append("    return -1\n\n")
    for name, attr in (("type_max_yields", "max_yields"),):
        L.append(f"def {name}(ti):")
        for i, h in enumerate(handlers):
            L.append(f"    {'if' if i == 0 else 'elif'} ti == {i}:")
            L.append(f"        return {getattr(h, attr)}")
        L.append("    return 0\n\n")
    L.append("def type_level(ti):")
    for i, h in enumerate(handlers):
        L.append(f"    {'if' if i == 0 else 'elif'} ti == {i}:")
        L.append(f"        return {h.module.trace_level}")
    L.append("    return 0\n\n")
    L.append("def type_of_index(ti):")
    for i, h in enumerate(handlers):
        L.append(f"    {'if' if i == 0 else 'elif'} ti == {i}:")
        L.append(f"        return {h.type}")
    L.append("    return -1\n\n")
    nwarps = plan.cfg.threads // layout.WARP
    for i, h in enumerate(handlers):
        L.append(f"def seg_{i}(S, blk, tick, base, cnt, smem):")
        L.append(f"    # {h.module.name}.{h.name}: type {h.type}, {h.granularity}")
        L.append("    D = S[0]")
        if h.granularity == "scalar":
            L += [
                "    nok = 0",
                "    for k in range(lane_id(), cnt, lane_step()):",
                "        o = base + k * W",
                "        ctx = (S, blk, tick, D[o], D[o + 1])",
                f"        r = h_{i}(ctx, D[o:o + W])",
                "        if r == OK:",
                "            nok += 1",
                "            finish_ok(S, blk, o)",
                "        else:",
                f"            finish(S, blk, {i}, tick, o, r)",
                "    if nok > 0:",
                f"        met_type(D, blk, {i}, PT_OK, nok)",
            ]
        elif h.granularity == "warp":
            per = max((h.shared_bytes + 7) // 8, 1)
            L += [
                f"    rounds = (cnt + {nwarps - 1}) // {nwarps}",
                "    for rnd in range(rounds):",
                f"        for ph in range({h.phases}):",
                "            for lane in range(lane_id(), NT, lane_step()):",
                "                w = lane // WARP",
                f"                k = rnd * {nwarps} + w",
                "                if k < cnt:",
                "                    o = base + k * W",
                "                    ctx = (S, blk, tick, D[o], D[o + 1])",
                f"                    sm = smem[w * {per}:(w + 1) * {per}]",
                f"                    r = h_{i}(ctx, D[o:o + W], lane % WARP, WARP, sm, ph)",
                f"                    if lane % WARP == 0 and ph == {h.phases - 1}:",
                f"                        finish(S, blk, {i}, tick, o, r)",
                "            syncthreads()",
            ]
        else:
            L += [
                "    for k in range(cnt):",
                "        o = base + k * W",
                "        ctx = (S, blk, tick, D[o], D[o + 1])",
                f"        for ph in range({h.phases}):",
                "            for lane in range(lane_id(), NT, lane_step()):",
                f"                r = h_{i}(ctx, D[o:o + W], lane, NT, smem, ph)",
                f"                if lane == 0 and ph == {h.phases - 1}:",
                f"                    finish(S, blk, {i}, tick, o, r)",
                "            syncthreads()",
            ]
        L.append("\n")
    L.append("def dispatch_segment(S, blk, tick, ti, base, cnt, smem):")
    for i, h in enumerate(handlers):
        L.append(f"    {'if' if i == 0 else 'elif'} ti == {i}:")
        L.append(f"        seg_{i}(S, blk, tick, base, cnt, smem)")
    L.append("")
    return "\n".join(L)


def constants(plan: layout.Plan, handlers) -> dict:
    c = {k: v for k, v in vars(layout).items() if k.isupper() and isinstance(v, int)}
    c.update(plan.constants())
    for k in ("OK", "RETRY", "YIELD", "FAIL", "CHAN_FULL", "CHAN_CLOSED", "ALLOC_FAIL",
              "CHAN_UNKNOWN", "FLAG_CHANNEL_MSG",
              "YIELD_OVERFLOW", "MAX_YIELDS", "UNKNOWN_TYPE", "RETRY_EXHAUSTED",
              "FLAG_EMIT_TRACE", "FLAG_DETERMINISTIC", "PRIO_MASK"):
        c[k] = getattr(task, k)
    for e in events.EventType:
        c["EV_" + e.name] = int(e)
    for lv in events.Level:
        c["LV_" + lv.name] = int(lv)
    c.update(ENQ_NORMAL=ENQ_NORMAL, ENQ_SHARED=ENQ_SHARED, ENQ_YIELD=ENQ_YIELD,
             ENQ_CHANNEL=ENQ_CHANNEL, CHAN_NO_SUBSCRIBER=CHAN_NO_SUBSCRIBER)
    c["TRACE_WORKER"] = any(h.module.trace_level >= events.Level.ALL for h in handlers)
    c["TRACE_TASKS"] = c["TRACE_WORKER"]
    return c


def _defined_functions(text: str) -> list[str]:
    return [n.name for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]


@dataclass
class Built:
    """A compiled kernel: ``kernel`` (the target's launchable), ``ns`` (its namespace)."""
    key: str
    path: Path
    kernel: object
    ns: dict
    handlers: list
    plan: layout.Plan
    target: object
    source: str
    noinline: tuple = ()
    chans: tuple = ()


def build(handlers: list[Handler], plan: layout.Plan, target, *, noinline=(),
          chans=()) -> Built:
    """Generate, write and compile the kernel for ``target`` (a targets.* module);
    ``chans``: the device channels (:func:`resolve_channels`)."""
    chans = tuple(chans)
    if len(chans) != plan.nchan or sum(len(c.subs) for c in chans) != plan.nsubs:
        raise BootError(f"codegen.build: the plan was made for {plan.nchan} channel(s) and "
                        f"{plan.nsubs} subscriber(s), got {len(chans)} channel(s)")
    ksrc = (SRC_DIR / "kernel_src.py").read_text()
    asrc = inspect.getsource(api_mod)
    gsrc = generate(handlers, plan, chans)
    consts = constants(plan, handlers)
    source = "\n\n".join([target.PRIM_SRC, ksrc, asrc, gsrc])
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(repr(sorted(consts.items())).encode())
    h.update(target.NAME.encode())
    # the target's primitives and compile options (e.g. njit flags) change the machine code
    h.update(inspect.getsource(target).encode())
    h.update(numba.__version__.encode())
    h.update(repr(sorted(noinline)).encode())
    for hd in handlers:
        h.update(hd.fingerprint().encode())
    key = h.hexdigest()[:24]
    d = cache_dir() / "kernels" / target.NAME / key
    d.mkdir(parents=True, exist_ok=True)
    modname = f"ggmk_kernel_{target.NAME}_{key}"
    path = d / f"{modname}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(source)
        os.replace(tmp, path)

    mod = sys.modules.get(modname)
    if mod is not None and getattr(mod, "_ggmk_built", None) is not None:
        return mod._ggmk_built
    mod = pytypes.ModuleType(modname)
    mod.__file__ = str(path)
    ns = mod.__dict__
    ns.update(consts)
    ns.update(target.namespace())
    sys.modules[modname] = mod
    exec(compile(source, str(path), "exec"), ns)
    for name in _defined_functions(source):
        if name != "kernel_body":
            ns[name] = target.device_fn(ns[name],
                                        inline=name in getattr(target, "INLINE_ALWAYS", ()))
    # the API view handlers see: compiled api functions + the atomic primitives
    view = pytypes.ModuleType("ggmk.device.api[" + target.NAME + "]")
    for name in _defined_functions(asrc):
        setattr(view, name, ns[name])
    for name in ("atomic_add", "atomic_cas", "atomic_max"):
        setattr(view, name, ns[name])
    compiled_helpers: dict = {}
    ids = {c.name: c.id for c in chans}
    for i, hd in enumerate(handlers):
        fn = _rebind(hd.fn, view, target, compiled_helpers, ids,
                     f"module {hd.module.name!r}, handler {hd.name!r}")
        ns[f"h_{i}"] = target.handler_fn(fn, noinline=i in noinline)
    kernel = target.kernel_fn(ns["kernel_body"])
    built = Built(key, path, kernel, ns, handlers, plan, target, source, tuple(noinline),
                  chans)
    mod._ggmk_built = built
    return built


def _rebind(fn, view, target, compiled, chan_ids=None, where=None):
    """``fn`` with globals where ggmk.device.api (module or functions) and @func helpers are
    replaced by their compiled versions for ``target``, and channel references by their
    ids.

    Only the global names ``fn``'s code loads (nested code objects included) are looked at: a
    module's globals may hold channel objects of *other* modules defined in the same file
    (which are not part of this kernel and which this handler never touches); rebinding those
    made any two device modules in one file break each other (``KeyError``). A channel the
    code does use but no module of the kernel declares is a build error naming ``where``
    (module and handler) and the channel."""
    chan_ids = chan_ids or {}
    where = where or f"handler {fn.__qualname__!r}"
    g = dict(fn.__globals__)
    for name in sorted(_global_names(fn.__code__)):
        if name not in fn.__globals__:
            continue                            # a builtin (range, min, ...)
        v = fn.__globals__[name]
        if isinstance(v, Chan):
            g[name] = _chan_id(chan_ids, v, where, fn)
        elif v is api_mod:
            g[name] = view
        elif inspect.isfunction(v) and getattr(v, "__module__", None) == api_mod.__name__ \
                and hasattr(view, v.__name__):
            g[name] = getattr(view, v.__name__)
        elif getattr(v, "_ggmk_device_func", False):
            if id(v) not in compiled:
                compiled[id(v)] = None  # recursion guard
                compiled[id(v)] = target.device_fn(_rebind(v, view, target, compiled,
                                                           chan_ids, where))
            g[name] = compiled[id(v)]
    closure = fn.__closure__
    if closure:
        closure = tuple(pytypes.CellType(_chan_id(chan_ids, c.cell_contents, where, fn))
                        if isinstance(_cell(c), Chan) else c for c in closure)
    new = pytypes.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, closure)
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    return new


def _chan_id(chan_ids, ch, where, fn) -> int:
    """The id of channel ``ch`` that ``fn`` (part of ``where``) uses; a clear error if the
    kernel being built declares no such channel (``resolve_channels`` normally says so
    first)."""
    try:
        return chan_ids[ch.name]
    except KeyError:
        known = ", ".join(sorted(chan_ids)) or "no device channel is declared"
        raise ChannelBootError(f"{where}: {fn.__name__!r} emits on unknown device channel "
                               f"{ch.name!r} (declared: {known})", CHAN_UNKNOWN) from None
