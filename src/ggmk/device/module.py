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

Device channels (SPEC §5, local to the GPU kernel): a module declares a channel with
:meth:`Module.channel` and a handler subscribes with ``consumes=``; a handler emits with
``g.emit_chan(ctx, CHANNEL, m0, m1)`` where ``CHANNEL`` is the declaration object (or
``gd.chan("name")``), replaced by the channel's id when the kernel is built::

    src = gd.Module("src")
    OUT = src.channel("phys.out", message=30, mode="fanout", guarantee="lossless",
                      capacity=256)

    @src.handler(20)
    def produce(ctx, task):
        i = g.meta0(task)
        while i < g.meta1(task):
            if g.emit_chan(ctx, OUT, i, 0) == CHAN_FULL:
                return g.wait_at(task, i)            # lossless: resume at i later
            i += 1
        return OK

    @src.handler(31, consumes="phys.out")             # a subscriber: runs every message
    def log_it(ctx, task):
        g.emit_host(ctx, 99, g.seq(task), g.meta0(task))   # seq: the channel sequence
        return OK

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

from ggmk.core.channel_spec import GUARANTEES as CHAN_GUARANTEES, MAX_FANOUT, MIN_CAPACITY
from ggmk.core.channel_spec import MODES as CHAN_MODES
from ggmk.device.layout import USER_WORDS
from ggmk.errors import BootError, ChannelError
from ggmk.events import Level
from ggmk.task import CHAN_TYPE_MISMATCH, CHAN_UNKNOWN
from ggmk.typereg.decls import Chan, ChannelDecl, HandlerDecl

GRANULARITIES = ("scalar", "warp", "block")
MIN_CHAN_CAPACITY = MIN_CAPACITY     # the CPU kernel's minimum; here smaller is refused


class ChannelBootError(ChannelError, BootError):
    """A device channel declaration is invalid (raised when the kernel is built/constructed);
    ``code`` is the CHAN_* code (CHAN_ALREADY_BOUND, CHAN_TYPE_MISMATCH, CHAN_UNKNOWN)."""


def chan(name: str) -> Chan:
    """A by-name reference to a device channel declared by any module of the kernel."""
    return Chan(name)


# ``Chan`` (a by-name reference, replaced by the channel's id when the kernel is built) and
# ``ChannelDecl`` (a channel a module declares with :meth:`Module.channel`: a ``Chan`` too) are
# ggmk.typereg's, the one declaration type of manifests, CPU and device modules. A device
# channel's declaration has direction "produce" (the declaring module owns it), ``message`` is
# its type, ``capacity`` (in ``options``) and ``reserve`` its credits.

ARITY = {"scalar": 2, "warp": 6, "block": 6}
SIGNATURES = {"scalar": "(ctx, task)", "warp": "(ctx, task, lane, nlanes, smem, phase)",
              "block": "(ctx, task, lane, nlanes, smem, phase)"}


def func(fn: Callable) -> Callable:
    """Mark a helper that device handlers call; it is compiled for the target with them."""
    fn._ggmk_device_func = True
    return fn


@dataclass
class Handler(HandlerDecl):
    """A device handler: its declaration (a ``HandlerDecl``: type, name, owning module,
    granularity, deterministic, shared memory) plus the function and how it runs."""
    type: int | str
    fn: Callable
    name: str
    granularity: str = "scalar"
    shared_bytes: int = 0
    phases: int = 1
    deterministic: bool = False
    max_yields: int | None = None     # None: the type's types.toml policy (else 16)
    module: "Module | None" = field(default=None, repr=False)
    consumes: tuple = ()              # channel names this handler type subscribes to
    message: "int | str | None" = None   # the message type it expects on them (checked)
    waits_together: bool = False      # one WAIT means the others of a batch would wait too

    batch = False                     # (declaration field) device handlers are not batch ones

    @property
    def shared_mem(self) -> int:
        """The declaration's name for ``shared_bytes``."""
        return self.shared_bytes

    def fingerprint(self) -> str:
        """A digest of everything that changes the compiled handler."""
        h = hashlib.sha256()
        # where the function lives too: the compiled kernel refers to it by module, so a cache
        # entry made before a module was moved or renamed must not be loaded after
        h.update(f"{self.fn.__module__}.{self.fn.__qualname__}".encode())
        _hash_code(h, self.fn.__code__, set())
        _hash_globals(h, self.fn, set())
        for cell in self.fn.__closure__ or ():
            h.update(repr(cell.cell_contents).encode())
        h.update(repr(self.fn.__defaults__).encode())
        h.update(repr((self.granularity, self.shared_bytes, self.phases, self.deterministic,
                       self.max_yields)).encode())
        return h.hexdigest()


def _hash_globals(h, fn, seen: set) -> None:
    """Hash what ``fn``'s code reads from its globals: the device functions it calls (their
    code, and in turn what *they* read: a helper two calls down changed its kernel too,
    yet only direct callees were hashed, so an edited inner helper loaded a stale cached
    kernel) and the constants and channels it uses."""
    for name in sorted(_global_names(fn.__code__)):   # stable across processes
        v = fn.__globals__.get(name)
        if getattr(v, "_ggmk_device_func", False):
            h.update(f"{name}->{v.__module__}.{v.__qualname__}".encode())
            if id(v) not in seen:
                seen.add(id(v))
                _hash_code(h, v.__code__, set())
                _hash_globals(h, v, seen)
        elif isinstance(v, (int, float, bool, str)):
            h.update(f"{name}={v!r}".encode())
        elif isinstance(v, Chan):
            h.update(f"{name}=chan:{v.name}".encode())   # its id is in the generated code


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
    """A named set of device handlers. ``trace_level`` filters the module's trace events.

    ``user_words``: the user words (``g.user_get`` / ``g.user_set``: 65536 int64 words the
    whole kernel shares) this module keeps its state in, as ``(lo, hi, what)`` (``hi``
    exclusive) or a list of them; None says nothing. A kernel whose modules claim
    overlapping words does not build (a BootError names both): two modules writing the same
    words corrupt each other silently (the default stats and log device modules did).
    A region the build may move instead is marked with :meth:`movable`."""

    def __init__(self, name: str, version: str = "0.1.0", trace_level: str | int = "warn"):
        if not name or not isinstance(name, str):
            raise BootError(f"device module name must be a non-empty string, got {name!r}")
        self.name = name
        self.version = version
        self.trace_level = _level(trace_level, f"module {name!r}")
        self.handlers: list[Handler] = []
        self.channels: list[ChannelDecl] = []
        self.user_words = None
        self._place = None            # movable(): (place, the region asked for)

    def movable(self, place: Callable[[int], None]) -> None:
        """Let the build place this module's one region (``user_words``, as ``(lo, hi,
        what)``: where it would like to be): it stays there when that overlaps no other
        claim, else it moves to free words (``codegen.resolve_handlers``), and
        ``user_words`` then says where. ``place(lo)`` moves it: it rebinds the words the
        handlers use (closure variables, frozen when the kernel compiles). A standard
        ``device_module()`` not given ``base=`` is movable: two of them, or one sized
        past its neighbour's default words, still boot together."""
        if not callable(place):
            raise BootError(f"module {self.name!r}: movable(place={place!r}): allowed a "
                            f"function place(lo) that moves the region to word lo")
        c = self.claims()
        if len(c) != 1:
            raise BootError(f"module {self.name!r}: movable() needs one user_words region "
                            f"(lo, hi, what), got {self.user_words!r}")
        self._place = (place, c[0])

    def claims(self) -> list[tuple[int, int, str]]:
        """``user_words`` as a list of ``(lo, hi, what)``, each checked: ints with
        0 <= lo < hi <= USER_WORDS (BootError naming the module otherwise)."""
        uw = self.user_words
        if uw is None:
            return []
        items = [uw] if isinstance(uw, tuple) and uw and not isinstance(uw[0], tuple) \
            else list(uw)
        out = []
        for c in items:
            ok = isinstance(c, tuple) and len(c) in (2, 3) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in c[:2])
            if not ok or not 0 <= c[0] < c[1] <= USER_WORDS:
                raise BootError(f"module {self.name!r}: user_words={uw!r}: allowed (lo, hi, "
                                f"what) or a list of them, ints 0 <= lo < hi <= {USER_WORDS}")
            out.append((c[0], c[1], str(c[2]) if len(c) == 3 else ""))
        return out

    def channel(self, name: str, message, mode: str = "p2p", guarantee: str = "lossless",
                capacity: int = 256) -> ChannelDecl:
        """Declare a device channel carrying messages of type ``message`` (an id or a type
        name). ``mode``: "p2p" (one subscriber) or "fanout" (up to 32); ``guarantee``:
        "lossless" (a full emit returns CHAN_FULL, nothing accepted is lost) or "lossy" (the
        copy for a full subscriber goes to sys.dropped with CHAN_FULL). ``capacity``: messages
        in flight per subscriber (waiting or running), the last 10% for priority 0.
        Returns the declaration, which handlers pass to ``g.emit_chan``."""
        where = f"module {self.name!r}, channel {name!r}"
        if not isinstance(name, str) or not name:
            raise BootError(f"module {self.name!r}: channel name must be a non-empty string, "
                            f"got {name!r}")
        if mode not in CHAN_MODES:
            raise ChannelBootError(f"{where}: mode {mode!r} is not one of {CHAN_MODES}",
                                   CHAN_UNKNOWN)
        if guarantee not in CHAN_GUARANTEES:
            raise ChannelBootError(f"{where}: guarantee {guarantee!r} is not one of "
                                   f"{CHAN_GUARANTEES}", CHAN_UNKNOWN)
        if isinstance(capacity, bool) or not isinstance(capacity, int) \
                or not MIN_CHAN_CAPACITY <= capacity < 2**31:
            raise BootError(f"{where}: capacity must be an int in {MIN_CHAN_CAPACITY}..2**31-1, "
                            f"got {capacity!r}")
        if isinstance(message, bool) or not isinstance(message, (int, str)) or (
                isinstance(message, int) and not 0 < message < 2**32):
            raise ChannelBootError(f"{where}: message must be a u32 type id (> 0) or a type "
                                   f"name, got {message!r}", CHAN_TYPE_MISMATCH)
        if any(c.name == name for c in self.channels):
            raise BootError(f"{where}: declared twice")
        decl = ChannelDecl(name, "produce", message, mode, guarantee, self,
                           {"capacity": capacity}, check=False)
        self.channels.append(decl)
        return decl

    def handler(self, type, granularity: str = "scalar", shared_bytes: int = 0,
                deterministic: bool = False, phases: int = 1, max_yields: int | None = None,
                name: str | None = None, consumes=None, message=None,
                waits_together: bool = False):
        """Register ``fn`` as the device handler of ``type`` (an id, or a name resolved
        through ``DeviceKernel(types=...)``; 0 is never a type). ``max_yields``: yields
        before the task fails with MAX_YIELDS; None: its type's types.toml policy when
        ``DeviceKernel(types=...)`` registers it, else 16. ``consumes``: a channel (name or
        declaration, or a tuple of them) this handler type subscribes to; its messages run as
        tasks of ``type`` with ``g.channel(task)`` = the channel id and ``g.seq(task)`` = the
        channel sequence number. ``message``: the message type the handler expects on them (a
        mismatch with the channel's type is an error at build time). ``waits_together``
        (scalar handlers): every task of this type waits for the same thing (a shared credit,
        one resource), so once one returns WAIT the rest of its batch goes back on a wait
        queue unrun until the next wake-up (a handler that refers to one lossless channel
        gets this for that channel without asking, checked task by task)."""
        where = f"module {self.name!r}, handler for type {type!r}"
        if consumes is None:
            consumes = ()
        elif isinstance(consumes, (str, Chan)):
            consumes = (consumes,)
        try:
            consumes = tuple(c.name if isinstance(c, Chan) else c for c in consumes)
        except TypeError:
            raise BootError(f"{where}: consumes must be a channel name or a tuple of them, "
                            f"got {consumes!r}") from None
        for c in consumes:
            if not isinstance(c, str) or not c:
                raise BootError(f"{where}: consumes holds {c!r}, not a channel name")
        if len(set(consumes)) != len(consumes):
            raise BootError(f"{where}: consumes names a channel twice: {consumes}")
        if granularity not in GRANULARITIES:
            raise BootError(f"{where}: granularity {granularity!r} is not one of {GRANULARITIES}")
        if shared_bytes < 0 or (shared_bytes and granularity == "scalar"):
            raise BootError(f"{where}: shared_bytes is for warp and block handlers only")
        if waits_together and granularity != "scalar":
            raise BootError(f"{where}: waits_together is for scalar handlers only")
        if phases < 1 or (phases > 1 and granularity == "scalar"):
            raise BootError(f"{where}: phases must be >= 1 (and 1 for scalar handlers)")
        if isinstance(type, bool) or not isinstance(type, (int, str)) or (
                isinstance(type, int) and not 0 < type < 2**32):
            raise BootError(f"{where}: type must be a u32 id 1..2**32-1 (0 is never a type: a "
                            f"zeroed record has type 0) or a type name")
        if max_yields is not None and (isinstance(max_yields, bool)
                                       or not isinstance(max_yields, int)
                                       or not 0 <= max_yields <= 65535):
            raise BootError(f"{where}: max_yields={max_yields!r}: allowed None or an int "
                            f"0..65535 (as types.toml)")

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
                                         shared_bytes, phases, deterministic, max_yields, self,
                                         consumes, message, bool(waits_together)))
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
