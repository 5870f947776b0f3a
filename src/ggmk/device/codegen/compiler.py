"""Compile and cache: the kernel's whole source (the target's primitives, ``kernel_src.py``, the
handler API ``api.py`` and the generated part) written to ``$GGMK_CACHE_DIR`` (default
``~/.cache/ggmk``) under a key that hashes everything that changes the machine code, executed
in a fresh module whose namespace holds the target's primitives and the constants, and each
function compiled for the target; handlers rebound to the compiled API and helpers."""
from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import types as pytypes
from dataclasses import dataclass
from pathlib import Path

import numba

from ggmk.device import api as api_mod
from ggmk.device import layout
from ggmk.device.codegen.resolve import _cell
from ggmk.device.codegen.source import constants, generate
from ggmk.device.module import Chan, ChannelBootError, Handler, _global_names
from ggmk.device.targets import option
from ggmk.errors import BootError
from ggmk.task import CHAN_UNKNOWN

SRC_DIR = Path(__file__).resolve().parent.parent      # ggmk/device: kernel_src.py, api.py


def cache_dir() -> Path:
    d = os.environ.get("GGMK_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "ggmk"


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
    """Generate, write and compile the kernel for ``target`` (a :class:`~ggmk.device.targets.
    Target`); ``chans``: the device channels (``resolve.resolve_channels``)."""
    chans = tuple(chans)
    if len(chans) != plan.nchan or sum(len(c.subs) for c in chans) != plan.nsubs:
        raise BootError(f"codegen.build: the plan was made for {plan.nchan} channel(s) and "
                        f"{plan.nsubs} subscriber(s), got {len(chans)} channel(s)")
    ksrc = (SRC_DIR / "kernel_src.py").read_text()
    asrc = inspect.getsource(api_mod)
    # a target whose device code has exceptions (cpu, sim) turns a handler's into
    # HANDLER_EXCEPTION in the generated dispatch (not a member of the Target contract's
    # required list: absent means no, as on cuda)
    gsrc = generate(handlers, plan, chans,
                    catch=bool(getattr(target, "CATCH_HANDLER_EXCEPTIONS", False)))
    consts = constants(plan, handlers)
    consts.update(option(target, "constants")(plan))
    source = "\n\n".join([target.PRIM_SRC, ksrc, asrc, gsrc])
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(repr(sorted(consts.items())).encode())
    h.update(target.NAME.encode())
    # the target's primitives and compile options (e.g. njit flags) change the machine code
    h.update(inspect.getsource(target).encode())
    h.update(numba.__version__.encode())
    h.update(repr(sorted(noinline)).encode())
    # how handlers are rebound and named (below) changes the machine code too: a kernel
    # cached by an older compiler.py may hold symbol names that collide (see _rebind)
    h.update(inspect.getsource(sys.modules[__name__]).encode())
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
    inline_always = option(target, "INLINE_ALWAYS")
    for name in _defined_functions(source):
        if name != "kernel_body":
            ns[name] = target.device_fn(ns[name], inline=name in inline_always)
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
                     f"module {hd.module.name!r}, handler {hd.name!r}", owner=modname)
        ns[f"h_{i}"] = target.handler_fn(fn, noinline=i in noinline)
    kernel = target.kernel_fn(ns["kernel_body"])
    built = Built(key, path, kernel, ns, handlers, plan, target, source, tuple(noinline),
                  chans)
    mod._ggmk_built = built
    return built


def _rebind(fn, view, target, compiled, chan_ids=None, where=None, owner=None):
    """``fn`` with globals where ggmk.device.api (module or functions) and @func helpers are
    replaced by their compiled versions for ``target``, and channel references by their
    ids.

    Only the global names ``fn``'s code loads (nested code objects included) are looked at: a
    module's globals may hold channel objects of *other* modules defined in the same file
    (which are not part of this kernel and which this handler never touches); rebinding those
    made any two device modules in one file break each other (``KeyError``). A channel the
    code does use but no module of the kernel declares is a build error naming ``where``
    (module and handler) and the channel.

    ``owner``: the kernel's module name (it hashes the whole kernel), given to the copy as its
    ``__module__``. Numba names a compiled function's symbol after its module, qualname and a
    per-process counter, and the JIT resolves a symbol by name across every kernel loaded in
    the process. Kept in the user's module, the same handler (or ``@func`` helper) built into
    two kernels, each compiled (and disk-cached) in its own process, got the *same* symbol in
    both when the counters happened to agree; loaded into one process, the second kernel's
    calls ran the first kernel's copy, compiled against the first kernel's layout constants
    (the second kernel hung). In the kernel's module the symbol is unique to the kernel."""
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
                                                           chan_ids, where, owner))
            g[name] = compiled[id(v)]
    closure = fn.__closure__
    if closure:
        closure = tuple(pytypes.CellType(_chan_id(chan_ids, c.cell_contents, where, fn))
                        if isinstance(_cell(c), Chan) else c for c in closure)
    new = pytypes.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, closure)
    new.__qualname__ = fn.__qualname__
    new.__module__ = owner or fn.__module__
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
