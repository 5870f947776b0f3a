"""GPU modules: bundles of device handlers registered by type (SPEC §6, §8).

Example::

    import ggmk.device as gd
    from ggmk.device import api as g
    from ggmk import OK

    phys = gd.Module("phys", trace_level="warn")

    @phys.handler(10)                              # scalar: one lane per task (default)
    def step(ctx, task):
        g.emit(ctx, 11, g.meta0(task) + 1, 0)
        return OK

    @phys.handler(11, granularity="warp", shared_bytes=256)
    def reduce(ctx, task, lane, nlanes, smem, phase):
        ...                                        # all 32 lanes of one warp run one task

    @phys.handler(12, granularity="block", shared_bytes=2048, phases=2)
    def solve(ctx, task, lane, nlanes, smem, phase):
        ...                                        # every lane of the block, phase 0 then 1

Warp and block handlers are written barrier-phase style: the runtime calls the handler once per
lane for phase 0, puts a barrier, then calls it for phase 1, and so on; ``smem`` is the shared
memory the handler declared (int64 words; per warp for warp handlers). The return value of lane
0 in the last phase counts. Helper functions a handler calls must be marked ``@gd.func`` so they
are compiled for the target too.
"""
from __future__ import annotations

import dis
import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

from ggmk.errors import BootError
from ggmk.events import Level

GRANULARITIES = ("scalar", "warp", "block")
ARITY = {"scalar": 2, "warp": 6, "block": 6}
SIGNATURES = {"scalar": "(ctx, task)", "warp": "(ctx, task, lane, nlanes, smem, phase)",
              "block": "(ctx, task, lane, nlanes, smem, phase)"}


def func(fn: Callable) -> Callable:
    """Mark a helper that device handlers call; it is compiled for the target with them."""
    fn._ggmk_device_func = True
    return fn


@dataclass
class Handler:
    type: int | str
    fn: Callable
    name: str
    granularity: str = "scalar"
    shared_bytes: int = 0
    phases: int = 1
    deterministic: bool = False
    max_yields: int = 16
    module: "Module | None" = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A digest of everything that changes the compiled handler."""
        h = hashlib.sha256()
        _hash_code(h, self.fn.__code__, set())
        for name in _global_names(self.fn.__code__):
            v = self.fn.__globals__.get(name)
            if getattr(v, "_ggmk_device_func", False):
                _hash_code(h, v.__code__, set())
            elif isinstance(v, (int, float, bool, str)):
                h.update(f"{name}={v!r}".encode())
        for cell in self.fn.__closure__ or ():
            h.update(repr(cell.cell_contents).encode())
        h.update(repr(self.fn.__defaults__).encode())
        h.update(repr((self.granularity, self.shared_bytes, self.phases, self.deterministic,
                       self.max_yields)).encode())
        return h.hexdigest()


def _global_names(code) -> set:
    names = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(ins.argval)
    for c in code.co_consts:
        if inspect.iscode(c):
            names |= _global_names(c)
    return names


def _hash_code(h, code, seen) -> None:
    if id(code) in seen:
        return
    seen.add(id(code))
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if inspect.iscode(c):
            _hash_code(h, c, seen)
        else:
            h.update(repr(c).encode())


class Module:
    """A named set of device handlers. ``trace_level`` filters the module's trace events."""

    def __init__(self, name: str, version: str = "0.1.0", trace_level: str | int = "warn"):
        if not name or not isinstance(name, str):
            raise BootError(f"device module name must be a non-empty string, got {name!r}")
        self.name = name
        self.version = version
        self.trace_level = _level(trace_level, f"module {name!r}")
        self.handlers: list[Handler] = []

    def handler(self, type, granularity: str = "scalar", shared_bytes: int = 0,
                deterministic: bool = False, phases: int = 1, max_yields: int = 16,
                name: str | None = None):
        """Register ``fn`` as the device handler of ``type`` (an id, or a name resolved
        through ``DeviceKernel(types=...)``)."""
        where = f"module {self.name!r}, handler for type {type!r}"
        if granularity not in GRANULARITIES:
            raise BootError(f"{where}: granularity {granularity!r} is not one of {GRANULARITIES}")
        if shared_bytes < 0 or (shared_bytes and granularity == "scalar"):
            raise BootError(f"{where}: shared_bytes is for warp and block handlers only")
        if phases < 1 or (phases > 1 and granularity == "scalar"):
            raise BootError(f"{where}: phases must be >= 1 (and 1 for scalar handlers)")
        if not isinstance(type, (int, str)) or (isinstance(type, int) and not 0 <= type < 2**32):
            raise BootError(f"{where}: type must be a u32 id or a type name")
        if not 0 <= max_yields < 65535:
            raise BootError(f"{where}: max_yields must be in 0..65534")

        def deco(fn):
            if not inspect.isfunction(fn):
                raise BootError(f"{where}: a plain Python function is required")
            nargs = fn.__code__.co_argcount
            if nargs != ARITY[granularity]:
                raise BootError(f"{where}: a {granularity} handler takes "
                                f"{SIGNATURES[granularity]}, {fn.__name__} takes {nargs} "
                                f"arguments")
            for h in self.handlers:
                if h.type == type:
                    raise BootError(f"{where}: already registered ({h.name})")
            self.handlers.append(Handler(type, fn, name or fn.__name__, granularity,
                                         shared_bytes, phases, deterministic, max_yields, self))
            return fn
        return deco


def _level(v, where) -> int:
    if isinstance(v, str):
        try:
            return int(Level[v.upper()])
        except KeyError:
            raise BootError(f"{where}: trace level {v!r} is not one of "
                            f"{[l.name.lower() for l in Level]}") from None
    return int(Level(v))
