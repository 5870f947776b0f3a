"""Modules: a name, a version, handlers, channel declarations and optional init/fini.

Example::

    counter = ggmk.Module("counter", version="0.1.0")

    @counter.handler("COUNTER_INC")              # per-task handler: ctx.task is the record
    def inc(ctx):
        ctx.emit("COUNTER_DONE", meta0=ctx.task.meta0 + 1)
        return ggmk.OK

    @counter.handler("SQUARE", batch=True)       # batch handler: columns are NumPy views
    def square(ctx, batch):
        ctx.emit_batch("COUNTER_DONE", meta0=batch.meta0 * batch.meta0)

    @counter.handler("COUNTER_DONE")             # every type emitted has a handler
    def done(ctx):
        return ggmk.OK

Types are named by string (resolved through the type registry at boot) or by integer id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ggmk.core.det import check_flag
from ggmk.errors import BootError
from ggmk.events import Level
from ggmk.typereg.decls import ChannelDecl, HandlerDecl


@dataclass
class Handler(HandlerDecl):
    """A CPU handler: its declaration (a ``HandlerDecl``: type, name, owning module,
    deterministic, batch) plus the function and what the kernel resolves at boot."""
    type: str | int
    fn: Callable
    name: str
    module: "Module"
    batch: bool = False
    deterministic: bool = False
    consumes: str | None = None
    max_batch: int | None = None
    type_id: int = -1              # resolved at boot

    shared_mem = 0                 # (declaration field) CPU handlers have no shared memory

    @property
    def granularity(self) -> str:
        """``"batch"`` for a batch handler, else ``"task"``."""
        return "batch" if self.batch else "task"


# A module's channel declarations are ggmk.typereg.ChannelDecl (one class for manifests, CPU and
# device modules): ``module`` is the Module, ``handle`` the Channel after boot, ``options`` what
# ``produces``/``consumes`` got beyond mode and guarantee. Checked at boot, not when declared.


class Module:
    def __init__(self, name: str, version: str = "0.0.0", *, trace_level: str | Level | None = None):
        if not name or not isinstance(name, str):
            raise BootError(f"module name must be a non-empty string, got {name!r}")
        self.name = name
        self.version = version
        self.trace_level = trace_level
        self.handlers: list[Handler] = []
        self.channels: list[ChannelDecl] = []
        self._init: Callable | None = None
        self._fini: Callable | None = None
        self.manifest = None               # the ModuleManifest it was loaded from, if any

    def handler(self, type: str | int, *, batch: bool = False, deterministic: bool = False,
                consumes: str | None = None, message: str | int | None = None,
                name: str | None = None, max_batch: int | None = None):
        """Register ``fn`` as the handler of ``type``. ``batch=True``: ``fn(ctx, batch)``.

        ``consumes="chan.name"`` subscribes it to a channel; ``message`` names the channel's
        type when it differs from ``type`` (fan-out: each subscriber has its own handler type,
        and messages are delivered retyped to it)."""
        if not isinstance(type, (str, int)) or isinstance(type, bool):
            raise BootError(f"module {self.name!r}: handler type must be a type name or id, got {type!r}")

        if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool)
                                      or max_batch < 1):
            raise BootError(f"module {self.name!r}: handler {type!r}: max_batch must be a "
                            f"positive int, got {max_batch!r}")
        # (batch="no" was taken as true: the per-task function was called as a batch handler)
        batch = check_flag(f"module {self.name!r}: handler {type!r}: batch", batch, BootError)
        deterministic = check_flag(f"module {self.name!r}: handler {type!r}: deterministic",
                                   deterministic, BootError)

        def deco(fn):
            if not callable(fn):
                raise BootError(f"module {self.name!r}: handler for {type!r} is not callable")
            h = Handler(type=type, fn=fn, name=name or fn.__name__, module=self, batch=batch,
                        deterministic=deterministic, consumes=consumes, max_batch=max_batch)
            self.handlers.append(h)
            if consumes is not None:
                self.consumes(consumes, message if message is not None else type, handler=type)
            return fn
        return deco

    def produces(self, channel: str, type: str | int, *, mode: str = "p2p",
                 guarantee: str = "lossless", **options) -> ChannelDecl:
        """Declare that this module emits ``type`` on ``channel``; pass the result to ``ctx.emit``."""
        d = ChannelDecl(channel, "produce", type, mode, guarantee, self, options, check=False)
        self.channels.append(d)
        return d

    def consumes(self, channel: str, type: str | int, *, mode: str | None = None,
                 guarantee: str | None = None, handler: str | int | None = None,
                 **options) -> ChannelDecl:
        """Declare that this module consumes ``type`` from ``channel``; its messages are
        delivered to the handler of ``handler`` (default: of ``type``). ``options``: the
        subscription's ``window`` and ``ordered`` (see ``Channel.subscribe``); any other is a
        boot error naming it. Declaring the same subscription again returns the first
        declaration; again with another type or option is a BootError naming both."""
        if handler is not None:
            options["handler"] = handler
        for d in self.channels:
            if (d.name == channel and d.direction == "consume"
                    and d.options.get("handler") == options.get("handler")):
                # (the second declaration's type and options were dropped without a word)
                for what, old, new in (("type", d.type, type), ("mode", d.mode, mode),
                                       ("guarantee", d.guarantee, guarantee),
                                       *((k, d.options.get(k), options.get(k))
                                         for k in {**d.options, **options})):
                    if old != new:
                        raise BootError(f"module {self.name!r} already consumes channel "
                                        f"{channel!r} with {what} {old!r}, cannot consume it "
                                        f"again with {what} {new!r}")
                return d
        d = ChannelDecl(channel, "consume", type, mode, guarantee, self, options, check=False)
        self.channels.append(d)
        return d

    @classmethod
    def from_manifest(cls, path_or_text, functions, *, source: str | None = None) -> "Module":
        """Build a module from a ``module.toml`` (see ggmk.typereg): its channel and handler
        declarations, with handler functions looked up by name in ``functions`` (a dict or an
        object such as a Python module). Types the manifest brings join the registry at boot.

        Example::

            counter = Module.from_manifest("modules/counter/module.toml", counter_impl)
        """
        from ggmk.typereg import load_module_manifest
        man = load_module_manifest(path_or_text, source=source)
        m = cls(man.name, man.version)
        m.manifest = man
        where = man.path or "module.toml"
        for h in man.handlers:
            fn = (functions.get(h.name) if isinstance(functions, dict)
                  else getattr(functions, h.name, None))
            if fn is None:
                raise BootError(f"{where}: module {man.name!r}: handler {h.name!r} (type "
                                f"{h.type!r}) has no function named {h.name!r}")
            m.handler(h.type, batch=h.batch, deterministic=h.deterministic, name=h.name)(fn)
        for c in man.channels:
            if c.direction == "produce":
                m.produces(c.name, c.type, mode=c.mode, guarantee=c.guarantee)
            else:
                m.consumes(c.name, c.type, mode=c.mode, guarantee=c.guarantee)
        return m

    def init(self, fn):
        """``fn(system)`` runs at boot, in module order."""
        self._init = fn
        return fn

    def fini(self, fn):
        """``fn(system)`` runs at halt, in reverse module order."""
        self._fini = fn
        return fn

    def __repr__(self) -> str:
        return f"Module({self.name!r}, version={self.version!r}, handlers={len(self.handlers)})"
