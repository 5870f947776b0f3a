"""Declarations: what a module says it produces, consumes and handles.

One ``ChannelDecl`` and one ``HandlerDecl`` serve every front end:

* ``module.toml`` manifests (``load_module_manifest``) and ``validate_declarations``;
* the CPU kernel's modules (``ggmk.Module.produces`` / ``consumes`` / ``handler(consumes=)``),
  whose declarations are checked when the system boots (``System._bind_channels`` hands
  ``validate_declarations`` resolved copies, ``ChannelDecl.resolved``);
* the device kernel's modules (``ggmk.device.Module.channel``): a device channel is a
  ``ChannelDecl`` with ``direction = "produce"`` (the declaring module owns it) and its
  ``capacity`` in ``options``; being a :class:`Chan`, handler code can use it as a constant
  that the build replaces by the channel's id.

A declaration's ``module`` is the owning module: its name (manifests) or the module object
(``.name`` is the name); ``module_name`` is the name either way. Constructed directly, a
declaration is checked at once (BootError naming the module and channel or handler); the
``Module`` front ends construct them with ``check=False`` and the kernels check at boot, as
they always did.

The CPU and device modules' handler records (``ggmk.core.module.Handler``,
``ggmk.device.module.Handler``) are ``HandlerDecl`` subclasses that add the function and what
their kernel needs to run it; ``HandlerDecl.declaration`` is the plain declaration of one.
"""
from __future__ import annotations

import re
from typing import Any

from ggmk.errors import BootError
from ggmk.typereg.schema import MAX_TYPE_ID, TYPE_NAME_RE, _is_int

__all__ = [
    "DIRECTIONS", "MODES", "GUARANTEES", "GRANULARITIES", "CPU_GRANULARITIES",
    "GPU_GRANULARITIES", "CHANNEL_NAME_RE", "MODULE_NAME_RE", "HANDLER_NAME_RE",
    "Chan", "ChannelDecl", "HandlerDecl",
]

CHANNEL_NAME_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
MODULE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")
HANDLER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DIRECTIONS = ("produce", "consume")
MODES = ("p2p", "fanout")
GUARANTEES = ("lossy", "lossless")
GRANULARITIES = ("task", "batch", "scalar", "warp", "block")
CPU_GRANULARITIES = ("task", "batch")
GPU_GRANULARITIES = ("scalar", "warp", "block")


def _one_of(what: str, v: Any, allowed: tuple[str, ...]) -> list[str]:
    if v in allowed:
        return []
    return [f"invalid {what} {v!r} (expected {' or '.join(repr(a) for a in allowed)})"]


def _channel_problems(name: Any, direction: Any, type: Any, mode: Any, guarantee: Any,
                      module: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(name, str) or not CHANNEL_NAME_RE.fullmatch(name):
        p.append(f"invalid channel name {name!r}: channel names are namespace.verb, lowercase"
                 " dotted (e.g. counter.in)")
    p += _type_ref_problems(type)
    p += _one_of("direction", direction, DIRECTIONS)
    p += _one_of("mode", mode, MODES)
    p += _one_of("guarantee", guarantee, GUARANTEES)
    p += _module_name_problems(module)
    return p


def _type_ref_problems(t: Any) -> list[str]:
    """A declaration names its type by UPPER_SNAKE name or by id."""
    if isinstance(t, str) and TYPE_NAME_RE.fullmatch(t):
        return []
    if _is_int(t) and 1 <= t <= MAX_TYPE_ID:
        return []
    return [f"invalid type {t!r}: a type is an UPPER_SNAKE name (e.g. PHYS_STEP) or an id"
            f" 1..{MAX_TYPE_ID}"]


def _module_name_problems(module: Any) -> list[str]:
    if isinstance(module, str) and (module == "" or MODULE_NAME_RE.fullmatch(module)):
        return []
    return [f"invalid module name {module!r}: use lowercase letters, digits, '_' and '-'"]


def _handler_problems(type: Any, name: Any, module: Any, deterministic: Any, batch: Any,
                      granularity: Any, shared_mem: Any) -> list[str]:
    p: list[str] = []
    p += _type_ref_problems(type)
    if not isinstance(name, str) or not HANDLER_NAME_RE.fullmatch(name):
        p.append(f"invalid handler name {name!r}: use an identifier")
    p += _module_name_problems(module)
    for what, v in (("deterministic", deterministic), ("batch", batch)):
        if not isinstance(v, bool):
            p.append(f"{what} must be true or false, got {v!r}")
    p += _one_of("granularity", granularity, GRANULARITIES)
    if batch is True and granularity in GPU_GRANULARITIES:
        p.append(f"batch = true conflicts with GPU granularity {granularity!r}")
    if not _is_int(shared_mem) or shared_mem < 0:
        p.append(f"shared_mem must be a non-negative integer, got {shared_mem!r}")
    elif shared_mem and granularity != "block":
        p.append(f"shared_mem needs granularity 'block', not {granularity!r}")
    return p


def _module_name(module: Any) -> Any:
    """The owning module's name: ``module`` itself when it is a name, else ``module.name``."""
    if module is None or isinstance(module, str):
        return module
    return getattr(module, "name", module)


def _hash(key: tuple) -> int:
    try:
        return hash(key)
    except TypeError:           # an unchecked declaration holding something unhashable
        return 0


class Chan:
    """A reference to a device channel by name, usable as a constant inside device handlers
    (``g.emit_chan(ctx, gd.chan("phys.out"), ...)``): the build replaces it by the channel's
    id. Unknown names are reported when the kernel is constructed. Every ``ChannelDecl`` is
    one too."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise BootError(f"device channel name must be a non-empty string, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"gd.chan({self.name!r})"


class ChannelDecl(Chan):
    """One end of a channel as a module declares it.

    ``type`` is the message type (a name or an id; ``message`` is the same value);
    ``mode`` ``"p2p"`` | ``"fanout"`` and ``guarantee`` ``"lossless"`` | ``"lossy"`` (``None``
    on a CPU consumer: as the producer says); ``module`` the owning module (a name or the
    module object). ``options``: on the CPU kernel's produce side ``capacity`` (ring slots per
    subscriber, default 4096), ``replay`` (replay log size, lossless only), ``error_handler``
    (``fn(records, codes)`` for failed deliveries on this channel), ``window`` (max messages a
    subscriber has waiting in the ready queue), ``ordered``; on its consume side ``handler``
    (the handler type messages are delivered as); on a device channel ``capacity`` (messages in
    flight per subscriber). ``handle`` is the CPU kernel's Channel after boot.

    Two declarations are equal when every field is (the module compared as given: by name or
    by identity); a declaration is hashable, so it can be an emit target.

    >>> ChannelDecl("counter.out", "produce", "COUNTER_INC_RESP", "fanout", "lossy", "counter")
    """

    def __init__(self, name: str, direction: str, type: str | int, mode: str | None = "p2p",
                 guarantee: str | None = "lossless", module: Any = "",
                 options: dict | None = None, *, check: bool = True):
        self.name = name
        self.direction = direction          # "produce" | "consume"
        self.type = type                    # type name (or id)
        self.mode = mode                    # "p2p" | "fanout"
        self.guarantee = guarantee          # "lossy" | "lossless"
        self.module = module
        self.options: dict = dict(options) if options else {}
        self.handle: Any = None             # the CPU kernel's Channel, bound at boot
        if check:
            self.check()

    # -- checks -----------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What is wrong with this declaration on its own (empty if nothing)."""
        return _channel_problems(self.name, self.direction, self.type, self.mode,
                                 self.guarantee, self.module_name)

    def check(self) -> "ChannelDecl":
        """BootError naming the module and channel unless ``problems()`` is empty."""
        p = self.problems()
        if p:
            raise BootError(f"module {self.module_name!r}: channel {self.name!r}: "
                            + "; ".join(p))
        return self

    def resolved(self, **changes: Any) -> "ChannelDecl":
        """A checked copy with some fields changed (e.g. the type resolved to its id, the
        mode and guarantee the producer gave)."""
        kw = dict(name=self.name, direction=self.direction, type=self.type, mode=self.mode,
                  guarantee=self.guarantee, module=self.module, options=self.options)
        kw.update(changes)
        return ChannelDecl(**kw)

    # -- views ------------------------------------------------------------------------------
    @property
    def module_name(self) -> Any:
        return _module_name(self.module)

    @property
    def message(self) -> str | int:
        """The message type (``type``), as device channels call it."""
        return self.type

    @property
    def capacity(self) -> int | None:
        return self.options.get("capacity")

    @property
    def reserve(self) -> int:
        """Credits a device channel keeps for priority-0 messages: the last 10% of the
        capacity (at least 1), as on the CPU kernel."""
        from ggmk.core.channel_spec import priority_reserve   # typereg loads before core
        return priority_reserve(self.capacity or 0)

    # -- identity ---------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (self.name, self.direction, self.type, self.mode, self.guarantee, self.module)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelDecl):
            return NotImplemented
        return self._key() == other._key() and self.options == other.options

    def __hash__(self) -> int:
        return _hash((self.name, self.direction, self.module))

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"ChannelDecl({self.name!r}, {self.direction!r}, {self.type!r}, {self.mode!r}, "
                f"{self.guarantee!r}, module={self.module_name!r}{opts})")


class HandlerDecl:
    """A handler as a module declares it. ``batch=True`` and ``granularity="batch"`` mean the
    same (each implies the other); ``scalar``/``warp``/``block`` are GPU granularities.

    >>> HandlerDecl("SQUARE", "square", "counter", batch=True).granularity
    'batch'
    """

    def __init__(self, type: str | int, name: str, module: Any = "",
                 deterministic: bool = False, batch: bool = False, granularity: str = "task",
                 shared_mem: int = 0, *, check: bool = True):
        self.type = type                    # type name (or id)
        self.name = name
        self.module = module
        self.deterministic = deterministic
        self.batch = batch
        self.granularity = granularity
        self.shared_mem = shared_mem        # bytes of shared memory, block granularity only
        if check:
            self.check()
        if self.batch is True and self.granularity == "task":
            self.granularity = "batch"
        elif self.granularity == "batch":
            self.batch = True

    def problems(self) -> list[str]:
        """What is wrong with this declaration on its own (empty if nothing)."""
        return _handler_problems(self.type, self.name, self.module_name, self.deterministic,
                                 self.batch, self.granularity, self.shared_mem)

    def check(self) -> "HandlerDecl":
        """BootError naming the module and handler unless ``problems()`` is empty."""
        p = self.problems()
        if p:
            raise BootError(f"module {self.module_name!r}: handler {self.name!r}: "
                            + "; ".join(p))
        return self

    def declaration(self, **changes: Any) -> "HandlerDecl":
        """The plain, checked ``HandlerDecl`` of this handler, with some fields changed (the
        CPU kernel passes the type id and a name it has made an identifier)."""
        kw = dict(type=self.type, name=self.name, module=self.module,
                  deterministic=self.deterministic, batch=self.batch,
                  granularity=self.granularity, shared_mem=self.shared_mem)
        kw.update(changes)
        return HandlerDecl(**kw)

    @property
    def module_name(self) -> Any:
        return _module_name(self.module)

    @property
    def target(self) -> str:
        """``"cpu"`` for task/batch handlers, ``"gpu"`` for scalar/warp/block."""
        return "cpu" if self.granularity in CPU_GRANULARITIES else "gpu"

    def _key(self) -> tuple:
        return (self.type, self.name, self.module, self.deterministic, self.batch,
                self.granularity, self.shared_mem)

    def __eq__(self, other: object) -> bool:
        if type(self) is not HandlerDecl or type(other) is not HandlerDecl:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return _hash(self._key())

    def __repr__(self) -> str:
        return (f"HandlerDecl(type={self.type!r}, name={self.name!r}, "
                f"module={self.module_name!r}, deterministic={self.deterministic!r}, "
                f"batch={self.batch!r}, granularity={self.granularity!r}, "
                f"shared_mem={self.shared_mem!r})")
