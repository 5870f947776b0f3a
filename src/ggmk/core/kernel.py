"""The CPU kernel: boot, the running system, halt.

Boot order: arena -> type registry -> scheduler -> tracing/metrics -> modules (validated,
dispatch table built) -> channels -> module init (in order) -> workers. ``halt`` stops the
workers, joins every thread, then runs module fini in reverse order.

Example::

    with ggmk.boot([counter], workers=2) as system:
        system.submit("COUNTER_INC", meta0=41)
        system.run(until_idle=True, timeout=5)
        print(system.stats()["types"]["COUNTER_INC"])
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from fractions import Fraction

import numpy as np

from ggmk import task as T
from ggmk.core.alloc import Arena
from ggmk.core.chan import Channels
from ggmk.core.channel_spec import MAX_CAPACITY
from ggmk.core.det import MAX_DUE, DetStage, check_flag, check_int, check_seconds
from ggmk.core.faults import PoisonDetector
from ggmk.core.halt import _UNHALTED, Halting
from ggmk.core.metrics import Metrics, TypeCounter
from ggmk.core.module import Module
from ggmk.core.ring import CodeRing
from ggmk.core.sched import MAX_TYPES, Route, Scheduler
from ggmk.core.tenants import (TenantError, check_tenant_id, make_policy, tenant_spec,
                               tenant_weight)
from ggmk.core.trace import TraceHasher, check_sample_rate, make_tracer, parse_level
from ggmk.core.worker import Worker
from ggmk.errors import (AllocError, BootError, ChannelError, InvalidPointer, KernelStopped,
                         PayloadError, UseAfterFree)
from ggmk.events import EventType
from ggmk.hal import make_hal
from ggmk.typereg import TypeRegistry, raise_boot_problems, validate_declarations

# what Module.consumes(..., **options) may say about its subscription (Channel.subscribe's)
CONSUME_OPTIONS = ("handler", "window", "ordered")

log = logging.getLogger("ggmk")

_ENQ = int(TypeCounter.ENQUEUED)
_DEQ = int(TypeCounter.DEQUEUED)
_REC = T.RECORD_STRUCT
_M32 = 0xFFFF_FFFF
_R_CHANNEL = int(Route.CHANNEL)     # (route_counts is a list: an int index, no enum look-up)

DEFAULT_MAX_YIELDS = 16
#: the most ``max_retries`` can be: a task's retry counter (``_pad``) is a u16
MAX_RETRIES_LIMIT = 0xFFFF
#: the fastest tick: the tick is counted on the HAL's nanosecond clock
MAX_TICK_HZ = 10**9


_POLICY_METHODS = ("add_tenant", "set_weight", "wake", "sleep", "pick", "account",
                   "observe_latency", "stats", "__contains__")


def _check_policy(policy) -> None:
    """A tenant policy object must have what the scheduler calls (``TenantPolicy``): one
    without (``policy=5``) booted, then crashed every worker at its first pick. So did a policy
    class (its methods are there, unbound: ``pick(now)`` lacks its ``self``)."""
    if isinstance(policy, type):
        raise TenantError(f"boot: policy={policy!r}: a class, not a policy object: pass an "
                          f"instance ({policy.__name__}()) or a policy name ('eevdf', "
                          f"'eevdf-gentle', 'rr', 'wrr')")
    missing = [m for m in _POLICY_METHODS if not callable(getattr(policy, m, None))]
    if missing:
        raise TenantError(f"boot: policy={policy!r}: allowed a policy name ('eevdf', "
                          f"'eevdf-gentle', 'rr', 'wrr') or a TenantPolicy object (it lacks "
                          f"{', '.join(missing)})")


def _check_trace_level(name: str, value, more: str = ""):
    """A boot option's trace level (a ``Level``, 0..4 or a name), else BootError naming it."""
    try:
        return parse_level(value, name)
    except ValueError:
        raise BootError(f"{name}={value!r}: allowed off, error, warn, info, all (or 0..4, a "
                        f"ggmk.events.Level){more}") from None


def check_raw_payload(info, buf) -> None:
    """A raw payload (bytes, an array: ``buf`` as uint8) of a type with a schema (``info``)
    must match it: checked at the sender, or the consumer's ``ctx.payload`` failed (blamed on
    the consumer, counted toward its poison). PayloadError naming the type and both sizes."""
    if info.fields:
        try:
            info._check_len(buf, len(buf))
        except PayloadError as e:
            raise PayloadError(f"{e}: a raw payload must match the type's schema (a dict "
                               f"payload is encoded to it)") from None


def _check_records(what: str, recs) -> None:
    """Task records: a 1-d NumPy array of ``TASK_DTYPE`` (``ggmk.task.make``); else TypeError
    naming ``what`` and the value (a list was a raw AttributeError, a float array an
    IndexError)."""
    if isinstance(recs, np.ndarray) and recs.dtype == T.TASK_DTYPE and recs.ndim == 1:
        return
    got = (f"an array of dtype {recs.dtype} and shape {recs.shape}"
           if isinstance(recs, np.ndarray) else f"{type(recs).__name__} {recs!r:.80}")
    raise TypeError(f"{what}: recs must be task records (a 1-d NumPy array of "
                    f"ggmk.task.TASK_DTYPE, made by ggmk.task.make), got {got}")


class System(Halting):
    """A booted CPU kernel. Create it with :func:`boot`."""

    ROUTE_EMIT = Route.EMIT
    #: ``halt`` waits this long for the workers to leave their handlers, then goes on without
    #: the ones still inside one (a handler that never returns would hold halt for good)
    STUCK_AFTER_S = 5.0

    def __init__(self, modules, *, types: TypeRegistry | None = None, workers: int = 2,
                 hal: str = "threads", seed: int = 0, deterministic: bool = False,
                 tick_hz: int = 1000, arena_size: int = 64 << 20, debug: bool = False,
                 trace: bool | None = None, trace_level="warn", sample_rate: int = 1,
                 max_retries: int = 8, poison_threshold: int = 32, poison_window: int = 1000,
                 poison_fraction: float = 0.5,
                 max_batch: int = 256, policy=None, tenants: dict | None = None,
                 dead_letter_capacity: int = 1 << 16, host_helps: bool = True):
        workers = check_int("workers", workers, 1, err=BootError)
        deterministic = check_flag("deterministic", deterministic, BootError)
        debug = check_flag("debug", debug, BootError)     # ("no" turned the canary on)
        seed = check_int("seed", seed, 0, err=BootError)
        # (0 ran nothing, run() never returned; 2.5 crashed a worker thread)
        max_batch = check_int("max_batch", max_batch, 1, MAX_CAPACITY, err=BootError,
                              what=" (the most tasks one handler call gets)")
        if not (isinstance(tick_hz, (int, float, np.integer, np.floating))
                and not isinstance(tick_hz, (bool, np.bool_)) and 0 < tick_hz <= MAX_TICK_HZ):
            # (above 1 GHz the tick was silently clamped to 1 ns)
            raise BootError(f"tick_hz={tick_hz!r}: allowed a number > 0 and <= 1e9 (ticks per "
                            f"second: a tick lasts at least the clock's 1 ns)")
        # (2.5 or None booted, then the first RETRY crashed the worker and lost the task; at
        # 65535 and up the retry counter wrapped before it ever passed the limit)
        max_retries = check_int("max_retries", max_retries, 0, MAX_RETRIES_LIMIT, err=BootError,
                                what=" (retries of a task before it fails with "
                                     "RETRY_EXHAUSTED; its retry counter is a u16)")
        try:    # (checked by name: "0.5" was a raw TypeError, True taken for 1)
            poison = PoisonDetector(poison_threshold, poison_window, fraction=poison_fraction)
        except ValueError as e:
            raise BootError(str(e)) from None
        # the trace options are checked whether or not tracing is on (trace=False used to
        # accept any level and rate; "yes" turned it on)
        if trace is not None and not isinstance(trace, (bool, np.bool_)):
            raise BootError(f"trace={trace!r}: allowed True, False or None (GGMK_TRACE decides)")
        trace_level = _check_trace_level("trace_level", trace_level)
        try:
            sample_rate = check_sample_rate(sample_rate)
        except ValueError as e:
            raise BootError(str(e)) from None
        self.modules: list[Module] = list(modules)
        self.nworkers = workers
        self.deterministic = deterministic
        self.seed = seed
        if hal not in ("threads", "sim"):    # (a str check: hal=["sim"] raised TypeError)
            raise BootError(f"hal={hal!r}: allowed 'threads' or 'sim'")
        self.hal = make_hal(hal, seed=seed)
        # caller runs (host_helps, on by default): a host thread that waits on the system
        # (run(), submit_and_run, an sdk reply) first runs an idle worker's steps itself
        # (ggmk.hal.threads): no wake-ups on a round trip, as a fork-join pool's join helps.
        # The price, why it can be turned off: a handler the host runs delays the host's
        # timeout by as long as it runs, and one that blocks until that very host thread acts
        # never returns. Off in determinism mode: which thread runs a step must not depend on
        # when the host happens to wait.
        self.hal.helping = bool(host_helps) and not deterministic
        self.direct_runs = 0              # requests run by System.direct (the caller's thread)
        self._lend = getattr(self.hal, "lend", None)   # (threads only: borrows a parked worker)
        self.clock = self.hal.clock_ns
        # what a handler's CPU time is measured with (tenant billing, System.account)
        self.cpu_clock = self.hal.cpu_clock_ns
        # the tick runs at exactly tick_hz: a tick lasts _tick_num / _tick_den ns, counted in
        # integers (1e9 // tick_hz whole ns made 3e8 Hz 333 MHz, and 60 Hz a little fast); a
        # float rate is taken as the decimal it prints as (60.0, 0.3, 3e8)
        hz = Fraction(int(tick_hz)) if isinstance(tick_hz, (int, np.integer)) \
            else Fraction(repr(float(tick_hz)))
        period = Fraction(10**9) / hz
        self._tick_num, self._tick_den = period.numerator, period.denominator
        self.tick_ns = max(1, round(period))   # (nominal: the exact length rounded to a ns)
        self.tick = 0
        # tick durations (SPEC §7), determinism mode: a tick of the tick stage lasts from the
        # boundary that opened it to the one that closes it (``_det_boundary``); without
        # determinism a tick is tick_ns of the wall clock by definition
        self._tick_seen = 0               # the tick the last boundary closed
        self._tick_mark = 0               # ... and when (HAL clock)
        self.ticks_timed = 0
        self.tick_last_ns = self.tick_max_ns = self.tick_sum_ns = 0
        self.max_retries = max_retries
        self.max_batch = max_batch
        self.halted = False
        self.halt_report = None
        self._halt_lock = threading.RLock()     # (a handler or fini may call halt itself)
        self.running = False
        # arena (its size checked by name: a bad one was "Arena: size", and workers it cannot
        # give a bump region each failed only in worker 0's context, after everything else)
        arena_size = check_int("arena_size", arena_size, 1, err=BootError, what=" (bytes)")
        self.arena = Arena(arena_size, debug=debug)
        self.arena.worker_bump(0, workers)          # (splits the bump area: ArenaTooSmall)
        # types
        if types is not None and not isinstance(types, TypeRegistry):
            raise BootError(f"types={types!r:.80}: allowed a TypeRegistry (ggmk.load_types) "
                            f"or None")
        # a copy: the boot registers names (the modules', the system channels'), and the
        # caller's registry, booted again, clashed with them (an auto id taken twice)
        self.types = types.copy() if types is not None else TypeRegistry()
        self.max_yields = np.full(MAX_TYPES, DEFAULT_MAX_YIELDS, dtype=np.int64)
        # observability
        self.metrics = Metrics(workers + 1, max_types=MAX_TYPES)
        self.metrics_shard = [self.metrics.shard(w) for w in range(workers + 1)]
        self.host_shard = self.metrics_shard[workers]
        self.h_batch_ns = self.metrics.histogram("handler_batch_ns")
        # ring `workers` is the host's: every thread that is not a worker writes it (its lock)
        # (timestamps from the HAL's clock: virtual on sim, so a seed's trace is its own)
        self.tracer = make_tracer(trace, nworkers=workers + 1, default_level=trace_level,
                                  sample_rate=sample_rate, seed=seed, shared=(workers,),
                                  clock=self.clock)
        self.hasher = TraceHasher()
        # dead letters (sys.error / sys.dropped until channels take them over)
        self.sys_error = CodeRing(dead_letter_capacity, name="sys.error")
        self.sys_dropped = CodeRing(dead_letter_capacity, name="sys.dropped")
        self.exceptions: deque = deque(maxlen=64)
        # every exception reported (the deque keeps the newest 64): stats()["exceptions"]
        self.exceptions_total = 0
        self._exc_lock = threading.Lock()
        self.poison = poison
        self._host_lock = threading.Lock()
        # scheduler
        self.sched = Scheduler(workers, dead=self._dead, wake=self.hal.wake,
                               clock=self.clock)
        self.sched.poisoned = self.poison.poisoned
        self.sched.on_enqueued = self._count_enqueued
        self.sched.on_idle = self.hal.notify_host
        self.det = DetStage(self.hasher, self._det_boundary) if deterministic else None
        if self.det is not None:
            self.det.from_host = lambda: not self.hal.stepping()
        self.sched.det = self.det
        if isinstance(policy, str):
            policy = make_policy(policy)
        elif policy is None and tenants:
            policy = make_policy("eevdf")
        elif policy is not None:
            _check_policy(policy)
        self.sched.policy = policy
        if tenants is not None and not isinstance(tenants, dict):
            raise TenantError(f"boot: tenants={tenants!r}: allowed a dict {{tenant id: nice, "
                              f"or {{'nice': n}} / {{'weight': w}}}}")
        # every entry checked here, naming it, before the policy sees it: a misspelt key was a
        # raw TypeError from add_tenant, {'nice': 0, 'weight': 512} became weight 512, None nice 0
        for tid, spec in (tenants or {}).items():
            tid = check_tenant_id(tid, "boot", "tenants key ")
            policy.add_tenant(tid, **tenant_spec(f"boot: tenants[{tid}]", spec))
        # modules
        self.handler_of: list = [None] * MAX_TYPES
        self._type_cache: dict = {}
        self._chan_cache: dict = {}
        self.channels = None
        for m in self.modules:
            if getattr(m, "manifest", None) is not None and len(m.manifest.types):
                self.types.merge(m.manifest.types)
        self._register_modules()
        self.channels = Channels(self)
        self._bind_channels()
        self.workers = [Worker(self, w, max_batch) for w in range(workers)]
        self.hal.next_event = self._next_event_ns
        self.t0 = self.clock()
        self._init_modules()
        self.hal.start(self.workers)
        self.running = True
        self._boot_pid = os.getpid()          # (a forked child's exit says nothing of it)
        _UNHALTED.add(self)

    # -- boot helpers ---------------------------------------------------------------------------
    def _init_modules(self) -> None:
        """Each module's init, in order. When one raises, the fini of those already
        initialised runs (reverse order) before the error goes on: they may hold sockets,
        threads or files, and a boot that failed must leave nothing behind (a UDP module's
        socket and receiver thread outlived a later module's failed init)."""
        done = []
        try:
            for m in self.modules:
                if m._init:
                    m._init(self)
                done.append(m)
        except BaseException as e:
            for m in reversed(done):
                if m._fini:
                    try:
                        m._fini(self)
                    except Exception as fe:  # noqa: BLE001 - the boot error is the news
                        log.error("ggmk: module %r fini after a failed boot (%s): %r",
                                  m.name, e, fe)
            raise

    def _register_modules(self) -> None:
        names = set()
        for m in self.modules:
            if not isinstance(m, Module):
                raise BootError(f"boot: expected ggmk.Module instances, got {m!r}")
            if m.name in names:
                raise BootError(f"boot: two modules are named {m.name!r}")
            names.add(m.name)
            if m.trace_level is not None:
                self.tracer.set_level(m.name, _check_trace_level(
                    f"boot: module {m.name!r} trace_level", m.trace_level,
                    " or None (the boot's trace_level)"))
            for h in m.handlers:
                tid = self.type_id(h.type, register=True, where=f"module {m.name!r} handler {h.name!r}")
                prev = self.handler_of[tid]
                if prev is not None:
                    raise BootError(
                        f"boot: type {self.type_name(tid)!r} (id {tid}) has two handlers: "
                        f"{prev.module.name}.{prev.name} and {m.name}.{h.name}")
                info = self.types.info(tid)
                if info.deterministic and not h.deterministic:
                    raise BootError(
                        f"boot: type {info.name!r} is deterministic (types.toml) but handler "
                        f"{m.name}.{h.name} is not declared deterministic=True")
                h.type_id = tid
                self.handler_of[tid] = h
                self.sched.known[tid] = True
                self.max_yields[tid] = info.max_yields
                self.tracer.register_type(tid, m.name)

    def type_id(self, t, *, register: bool = False, where: str = "") -> int:
        """Resolve a type name or id. Unknown names are registered when ``register`` is set."""
        try:
            hit = self._type_cache.get(t)
        except TypeError:                 # unhashable (an array, a list): named below
            hit = None
        if hit is not None:
            return hit
        if isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)):
            tid = int(t)
            if not 0 < tid < MAX_TYPES:
                raise (BootError if register else ValueError)(
                    f"{where or 'type'}: type id {tid} is out of range: allowed 1..{MAX_TYPES - 1}")
            if tid not in self.types:
                self.types.register(f"TYPE_{tid}", id=tid)
        elif isinstance(t, str):
            if t not in self.types:
                if not register:
                    raise KeyError(f"unknown type {t!r}{' in ' + where if where else ''}; "
                                   f"known: {sorted(i.name for i in self.types)[:20]}")
                self.types.register(t)
            tid = self.types.id(t)
        else:
            hint = (" (records go to submit_batch)" if isinstance(t, np.ndarray)
                    and t.dtype == T.TASK_DTYPE else "")
            raise (BootError if register else TypeError)(
                f"{where or 'type'}: a type is a name (str) or an id (int 1..{MAX_TYPES - 1}), "
                f"got {type(t).__name__} {t!r:.80}{hint}")
        self._type_cache[t] = tid
        return tid

    def type_name(self, tid: int) -> str:
        try:
            return self.types.name(int(tid))
        except Exception:   # noqa: BLE001 - names are for display only
            return f"TYPE_{tid}"

    def resolve_target(self, target):
        """(kind, type id, channel or None) for an emit target."""
        hit = self._type_cache.get(target)
        if hit is not None:
            return "type", hit, None
        ch = self._chan_cache.get(target)
        if ch is not None and not ch.closed:
            return "chan", ch.type_id, ch
        ch = self._resolve_channel(target)
        if ch is not None:
            return "chan", ch.type_id, ch
        return "type", self.type_id(target), None

    def _resolve_channel(self, target):
        """The Channel a target names (a declaration, a Channel, or a "dotted.name"), or None."""
        if hasattr(target, "emit_one"):
            ch = target
        elif hasattr(target, "direction") and hasattr(target, "handle"):
            # a declaration names a channel of *this* system: one Module object may be booted
            # in several live systems, and each emits into its own channel (``handle`` is only
            # the most recent boot's)
            # (a channel closed with system.close() is still this system's: emitting to it
            # answers CHAN_CLOSED, as the docs say, instead of "not bound"; once halt closed
            # it, an emit is refused as below, but while halt drains, a handler's first emit
            # to a declaration is accepted work)
            ch = None if target.module not in self.modules or self.channels is None \
                else self.channels.find(target.name)
            if self.halted and target.module in self.modules and (ch is None or ch.closed):
                raise ChannelError(f"channel {target.name!r}: closed, the system has halted "
                                   "(nothing was emitted)", T.CHAN_CLOSED)
            if ch is None:
                raise ChannelError(f"channel {target.name!r} (declared by module "
                                   f"{target.module.name!r}) is not bound in this system: boot "
                                   "it with that module", T.CHAN_UNKNOWN)
        elif isinstance(target, str) and "." in target and self.channels is not None:
            ch = self.channels.find(target)
            if ch is None:
                ch = self.channels.get(target)          # (raises, naming the unknown name)
        else:
            return None
        self._chan_cache[target] = ch
        return ch

    # -- channels -------------------------------------------------------------------------------
    def _bind_channels(self) -> None:
        """Validate every module's handler and channel declarations (also when no module
        declares a channel), open the channels, subscribe consumers."""
        decls = [d for m in self.modules for d in m.channels]
        spec: dict[str, dict] = {}
        given: dict[tuple, list] = {}          # (channel, option) -> [(module, value)]
        for d in decls:
            if d.direction == "produce":
                sp = spec.setdefault(d.name, {})
                sp.setdefault("mode", d.mode)
                sp.setdefault("guarantee", d.guarantee)
                for k, v in d.options.items():
                    if v is not None:             # (None: the default, as for open)
                        sp.setdefault(k, v)
                        given.setdefault((d.name, k), []).append((d.module_name, v))
        for d in decls:
            sp = spec.setdefault(d.name, {})
            sp.setdefault("mode", d.mode or "p2p")
            sp.setdefault("guarantee", d.guarantee or "lossless")
        tchans, thandlers, problems, sources = [], [], [], {}
        # producers must agree on each option they give (the first one's won without a word);
        # one a producer leaves out is the others' (mode and guarantee: validate_declarations)
        for (name, k), vals in given.items():
            if any(v != vals[0][1] for _, v in vals[1:]):
                who = ", ".join(f"module {mn!r} declares {k}={v!r}" for mn, v in vals)
                problems.append(f"channel {name!r}: conflicting {k}: {who}")
        p2p_subs: dict[str, list] = {}         # p2p channel -> [(module, its handler, named)]
        for m in self.modules:
            if m.manifest is not None and m.manifest.path:
                sources[m.name] = str(m.manifest.path)
            for d in m.channels:
                where = f"module {m.name!r} channel {d.name!r}"
                tid = self.type_id(d.type, register=True, where=where)
                tchans.append(d.resolved(type=tid, mode=d.mode or spec[d.name]["mode"],
                                         guarantee=d.guarantee or spec[d.name]["guarantee"]))
                if d.direction == "produce" and "handler" in d.options:
                    # (the other consumer options reach the channel's own check; this one
                    # was taken off before it and ignored)
                    problems.append(
                        f"module {m.name!r} produces channel {d.name!r} with "
                        f"handler={d.options['handler']!r}; handler belongs to consumes "
                        f"(the subscriber's handler type)")
                if d.direction == "consume":
                    bad = sorted(set(d.options) - set(CONSUME_OPTIONS))
                    if bad:     # (a typo such as capcity=3 was ignored without a word)
                        problems.append(
                            f"module {m.name!r} consumes channel {d.name!r} with unknown "
                            f"option(s) {', '.join(f'{k}={d.options[k]!r}' for k in bad)}; a "
                            f"consumer takes {', '.join(CONSUME_OPTIONS)} (channel options "
                            f"such as capacity belong to produces)")
                    ht = d.options.get("handler", d.type)
                    htid = self.type_id(ht, register=True, where=where)
                    h = self.handler_of[htid]
                    if h is None or h.module is not m:
                        problems.append(f"module {m.name!r} consumes channel {d.name!r} but has "
                                        f"no handler for type {self.type_name(htid)!r}")
                    elif (self.types.info(tid).deterministic and not h.deterministic):
                        problems.append(f"module {m.name!r}: handler {h.name!r} consumes "
                                        f"deterministic type {self.type_name(tid)} on channel "
                                        f"{d.name!r} but is not declared deterministic")
                    if h is not None and h.module is m and spec[d.name]["mode"] == "p2p":
                        p2p_subs.setdefault(d.name, []).append(
                            (m.name, f"'{m.name}.{h.name}' ({self.type_name(htid)})"))
            names: set = set()
            for h in m.handlers:
                hname = "".join(c if c.isalnum() or c == "_" else "_" for c in h.name) or "h"
                if hname[0].isdigit():
                    hname = "_" + hname
                if hname in names and h.name == getattr(h.fn, "__name__", None):
                    # handlers made in a loop share their function's name (no name= given):
                    # told apart by type; only names a user gave must differ
                    hname = f"{hname}_{h.type_id}"
                names.add(hname)
                thandlers.append(h.declaration(type=h.type_id, name=hname))
        # validate_declarations counts the modules consuming a p2p channel; one module's second
        # handler on it was a raw ChannelError from subscribe, naming neither it nor its type
        for name, subs in p2p_subs.items():
            if len(subs) > 1 and len({mn for mn, _ in subs}) == 1:
                problems.append(f"channel {name!r} is p2p but module {subs[0][0]!r} consumes it "
                                f"{len(subs)} times, with handlers "
                                f"{', '.join(w for _, w in subs)} (p2p allows one subscriber; "
                                f"declare mode = \"fanout\")")
        try:
            validate_declarations(self.types, tchans, thandlers)
        except BootError as e:
            problems = list(getattr(e, "problems", [str(e)])) + problems
        # the manifests of the modules the problems name (a user module's duplicate handler
        # name was reported "in" every std module's .toml)
        src = ", ".join(path for name, path in sources.items()
                        if any(f"module {name!r}" in p for p in problems)) or None
        raise_boot_problems("module declarations", problems, src)
        for d in decls:
            sp = spec[d.name]
            opts = {k: v for k, v in sp.items() if k not in ("mode", "guarantee", "handler")}
            d.handle = self.channels.open(d.name, d.type, mode=sp["mode"],
                                          guarantee=sp["guarantee"], **opts)
        for d in decls:
            if d.direction == "consume":
                ht = d.options.get("handler", d.type)
                h = self.handler_of[self.type_id(ht)]
                d.handle.subscribe(ht, name=f"{d.module.name}.{h.name}",
                                   window=d.options.get("window"),
                                   ordered=d.options.get("ordered"))

    def channel(self, name):
        """The open channel ``name`` (ChannelError naming it when unknown).

        Example::

            ch = system.channel("metrics.out"); ch.publish(meta0=1); print(ch.stats())
        """
        return self.channels.get(name)

    def open(self, name: str, type, *, mode: str = "p2p", guarantee: str = "lossless",
             capacity: int | None = None, replay: int | None = None, error_handler=None,
             window=None, ordered: bool | None = None, **unknown):
        """Open a channel at run time (or return the open one of that name and type: an option
        given that differs from the open channel's is a ChannelError, see ``Channels.open``;
        ``capacity`` defaults to 4096, ``replay`` to 0).
        ``ordered`` (default: yes) delivers each subscriber's messages one batch at a time, in
        channel order; ``False`` trades that for parallel batches. Any other keyword is the
        channel registry's ChannelError naming it (with its close match), as in ``produces``."""
        self._check_running()
        return self.channels.open(name, type, mode=mode, guarantee=guarantee, capacity=capacity,
                                  replay=replay, error_handler=error_handler, window=window,
                                  ordered=ordered, **unknown)

    def close(self, name) -> int:
        """Close a channel; what it still holds goes to sys.dropped (CHAN_CLOSED)."""
        return self.channels.close(name)

    # -- time -----------------------------------------------------------------------------------
    def update_tick(self) -> int:
        """The tick handlers see: the tick stage's in determinism mode, else the wall tick."""
        if self.det is not None:
            self.tick = self.det.tick
        else:
            self.tick = (self.clock() - self.t0) * self._tick_den // self._tick_num
        return self.tick

    def wall_tick(self) -> int:
        """Ticks of the HAL clock since boot. The event queue (retries and deferred tasks that
        are not deterministic) runs on it in every mode: in determinism mode the tick stage's
        counter only moves with deterministic work, so a backoff measured in it could wait
        forever."""
        return (self.clock() - self.t0) * self._tick_den // self._tick_num

    def _next_event_ns(self):
        due = self.sched.events.next_due()
        if due is None:
            return None
        return self.t0 - (-due * self._tick_num // self._tick_den)   # (its first ns)

    def poll_idle(self, worker: int) -> None:
        """Called by an idle worker: give channels a chance to drain."""
        if self.channels is not None:
            self.channels.drain_some(worker)

    def _det_boundary(self, tick: int) -> None:
        """The tick stage closes ``tick`` (under its lock): time it, drain the deterministic
        channels. A boundary that opens nothing is followed by one closing the same tick
        again; a new number means the previous boundary opened it."""
        now = self.clock()
        if tick != self._tick_seen:
            d = now - self._tick_mark
            self.ticks_timed += 1
            self.tick_last_ns = d
            self.tick_sum_ns += d
            if d > self.tick_max_ns:
                self.tick_max_ns = d
            self._tick_seen = tick
        self._tick_mark = now
        if self.channels is not None:
            self.channels.tick_boundary(tick)

    # -- results --------------------------------------------------------------------------------
    def calling_worker(self) -> int:
        """The id of the worker whose own thread calls this, else -1 (a host thread; also one
        running a borrowed worker's steps). What a caller that is not told which worker it runs
        on (a channel's drop, the scheduler's dead letters) uses to pick a trace ring: the
        worker's own (its thread is its only writer) or the shared host ring."""
        me = threading.current_thread()
        for w, th in enumerate(getattr(self.hal, "threads", ())):
            if th is me:
                return w
        return -1

    def _dead(self, recs, code, worker: int | None = None, failed: bool = False) -> None:
        """Route records to sys.error with a reason (unknown/poisoned types, overflow, failures).

        ``worker``: the worker calling (its trace ring and metrics shard), -1 for a host
        thread, None: look it up (``calling_worker``). ``failed``: a handler failed them and
        ``fail`` counted them (``fail``); otherwise they count as ``dropped``."""
        if len(recs) == 0:
            return
        ptrs = recs["payload_ptr"]
        if ptrs.any():   # the dead copy does not keep the payload alive
            # (failed: one batch of one type, whose handler a bad pointer is reported against)
            self.release_payloads(ptrs, self.handler_of[int(recs["type"][0])] if failed
                                  else None)
            recs = T.copy(recs)
            recs["payload_ptr"] = 0
        if worker is None:
            worker = self.calling_worker()
        if not failed:                  # (a failure's count and TASK_FAIL came from `fail`)
            if worker >= 0:
                self.metrics_shard[worker].add_types(TypeCounter.DROPPED, recs["type"])
            else:
                with self._host_lock:
                    self.host_shard.add_types(TypeCounter.DROPPED, recs["type"])
            self._trace_fail(worker, recs, code)
        if self.channels is not None:
            self.channels.to_sys_error(recs, code)
        else:
            self.sys_error.push_coded(recs, code)

    def release_payloads(self, ptrs, handler=None) -> None:
        """Release the payload reference of each finished or dead-lettered task (``ptrs``, 0
        for none). A pointer its sender did not own (freed, foreign, shared by more records
        than it has references; senders are checked, but a handler may release its task's
        payload itself) must not kill the worker or leave its batch unaccounted: the
        references held are released, the error is reported against ``handler`` (else the
        kernel) in ``exceptions``."""
        try:
            self.arena.release_many(ptrs)
        except (InvalidPointer, UseAfterFree):       # (DoubleFree is a UseAfterFree)
            _, skipped, e = self.arena.release_valid(ptrs)
            if e is None:                # (made good meanwhile by another thread)
                return
            msg = f"{skipped} payload reference(s) not released: {e}"
            if handler is not None:
                self.report_exception(handler, e, msg)
            else:
                self.note_exception(("kernel", "payload release", repr(e), msg))

    def withdraw_deferred(self, type, wanted: dict) -> int:
        """Take back deferred tasks (``submit(..., due=tick)``) not yet due: those of
        ``type`` whose (meta0, meta1) is in ``wanted[due]`` ({due tick: {(meta0, meta1)}}).
        They are finished as no-ops (counted dequeued and OK), so nothing waits for them: a
        deferred task cannot be unsubmitted otherwise, and one left there keeps the system
        from idling until it falls due and lands on sys.error (HALTED) at halt. Returns how
        many were taken back (one already popped runs as usual). What a timer's cancel does.
        Each task's payload reference is released, as a finished task's is."""
        t = self.type_id(type)
        taken: list = []
        n = self.sched.events.withdraw(t, wanted, taken)
        if n:
            for recs in taken:      # (they leaked: the arena kept them live for good)
                ptrs = recs["payload_ptr"]
                if ptrs.any():
                    self.arena.release_many(ptrs)
            with self._host_lock:
                self.host_shard.add_type(TypeCounter.DEQUEUED, t, n)
                self.host_shard.add_type(TypeCounter.OK, t, n)
            self.sched.done(n)            # outstanding; wakes a host waiting for idle
        return n

    def dead_letter(self, recs, code, *, which: str = "sys.error", count_on=None) -> int:
        """Records that leave the system unfinished (a module's queue at halt, a refused
        datagram, a bridge transfer that failed) go to ``which`` (``sys.error`` or
        ``sys.dropped``) with the reason ``code``; their payload references are released (the
        dead copy keeps none). ``count_on``: a channel whose drop counters count them too.
        Returns how many."""
        if which not in ("sys.error", "sys.dropped"):
            raise ValueError(f"dead_letter: which={which!r}: allowed 'sys.error', 'sys.dropped'")
        if which == "sys.error":
            self._dead(recs, code)
            return len(recs)
        ptrs = recs["payload_ptr"]
        if ptrs.any():
            self.arena.release_many(ptrs)
            recs = T.copy(recs)
            recs["payload_ptr"] = 0
        if self.channels is not None:
            self.channels.to_sys_dropped(recs, code, count_on=count_on)
        else:
            self.sys_dropped.push_coded(recs, code)
        return len(recs)

    def _count_enqueued(self, types, worker: int) -> None:
        """Per-type enqueue counters; ``types`` is a column, or one type id (an int: the
        enqueue core's one-record path, a scalar add)."""
        if types.__class__ is int:
            if worker >= 0:
                self.metrics_shard[worker].tv[_ENQ, types] += 1
            else:
                with self._host_lock:
                    self.host_shard.tv[_ENQ, types] += 1
            return
        if worker >= 0:
            self.metrics_shard[worker].add_types(TypeCounter.ENQUEUED, types)
        else:
            with self._host_lock:
                self.host_shard.add_types(TypeCounter.ENQUEUED, types)

    def _trace_fail(self, worker: int, recs, code) -> None:
        """TASK_FAIL per record (arg0 = seq, arg1 = its code) on ``worker``'s ring (-1: the
        host's)."""
        self.tracer.emit_batch(worker if worker >= 0 else self.nworkers, EventType.TASK_FAIL,
                               recs, arg0=recs["seq"],
                               arg1=np.full(len(recs), int(code) & 0xFFFFFFFF) if np.isscalar(code)
                               else np.asarray(code).astype(np.int64) & 0xFFFFFFFF)

    def fail(self, recs, codes, t: int, worker: int) -> None:
        """A handler failed these tasks of type ``t`` for good (a failure code, exhausted
        retries, too many yields), on ``worker`` (its metrics shard and trace ring): count them
        in ``fail`` (once: not in ``dropped`` too) and toward poison, then the channel's error
        handler (channel messages on a channel that has one), else sys.error. ``worker`` may be
        ``nworkers``: the host's shard and trace slot (a call lane's request)."""
        if worker == self.nworkers:
            with self._host_lock:
                self.host_shard.add_type(TypeCounter.FAIL, t, len(recs))
        else:
            self.metrics_shard[worker].add_type(TypeCounter.FAIL, t, len(recs))
        # TASK_FAIL here, for those a channel's error handler takes too: each closes its
        # TASK_START on this worker's track
        self._trace_fail(worker, recs, codes)
        tick, wall = self.poison_tick(recs)
        if self.poison.record(t, len(recs), tick, wall):
            self.tracer.emit(worker, EventType.POISON, 0, t, self.poison.rate(t, tick, wall), 0,
                             force=True)
        if self.channels is not None and (recs["flags"] & T.FLAG_CHANNEL_MSG).any():
            recs, codes = self.channels.route_failures(recs, codes)
            if not len(recs):
                return
        self._dead(recs, codes, worker, failed=True)

    def poison_tick(self, recs) -> tuple[int, bool]:
        """(tick, wall) that poison counts the failures and attempts of ``recs`` (one batch, of
        one type) at: the kernel's tick; in determinism mode, for tasks that are not
        deterministic, the wall tick (``wall``: their own window, PoisonDetector). The tick
        stage's tick only moves with deterministic work: counted in it, every failure of such
        a type fell into one bucket and it was never poisoned. (A batch is all deterministic
        or none: the enqueue core hands every deterministic record to the tick stage.)"""
        if self.det is None or recs["flags"][0] & T.FLAG_DETERMINISTIC:
            return self.tick, False
        return self.wall_tick(), True

    def report_exception(self, handler, exc, tb: str) -> None:
        self.note_exception((handler.module.name, handler.name, repr(exc), tb))

    def note_exception(self, entry: tuple | None, n: int = 1) -> None:
        """Count ``n`` exceptions (any thread) and keep ``entry`` (module, handler, repr,
        traceback) among the newest 64 in ``exceptions``; ``entry=None`` only counts (a batch's
        older failures the deque would not keep are not formatted at all)."""
        with self._exc_lock:
            self.exceptions_total += n
        if entry is not None:
            self.exceptions.append(entry)

    def account(self, worker: int, recs, elapsed_ns: int, cpu_ns: int | None = None) -> None:
        """After a batch ran on ``worker``: record its wall time (``elapsed_ns``, the handler
        histogram) and bill its tenants ``cpu_ns`` of handler CPU time (default: the wall
        time). A batch that mixes tenants is split by task count."""
        self.metrics_shard[worker].observe(self.h_batch_ns, elapsed_ns)
        pol = self.sched.policy
        if pol is not None:
            bill = elapsed_ns if cpu_ns is None else max(int(cpu_ns), 0)
            tenants = recs["tenant"]
            n = len(tenants)
            now = self.clock()
            with self.sched.lock:
                if n == 1 or (tenants == tenants[0]).all():
                    pol.account(int(tenants[0]), bill, n, now)
                else:   # a det-stage or local-queue batch can mix tenants: split by task count
                    ids, counts = np.unique(tenants, return_counts=True)
                    for t, c in zip(ids.tolist(), counts.tolist()):
                        pol.account(t, bill * c // n, c, now)

    def set_tenant(self, tenant: int, *, nice: int | None = None, weight: int | None = None) -> None:
        """Change a tenant's weight at run time (exactly one of nice -20..19 or a raw weight
        1..2**24; nice 0 = 1024); a tenant the policy does not know yet is added. ``tenant``
        is an int 0..65535. Bad input raises TenantError naming ``set_tenant``."""
        if self.sched.policy is None:
            raise TenantError("set_tenant: this system has no tenant policy: boot it with "
                              "policy='eevdf' (or 'rr') or tenants={...}")
        # checked before branching on whether the tenant is known, so a known and an unknown
        # tenant get the same answer (True or 1.0 would find tenant 1 by its hash)
        tenant = check_tenant_id(tenant, "set_tenant")
        tenant_weight(f"set_tenant({tenant})", nice=nice, weight=weight)
        kw = {"nice": nice} if weight is None else {"weight": weight}
        pol = self.sched.policy
        with self.sched.lock:
            if tenant not in pol:
                pol.add_tenant(tenant, **kw)
            else:
                pol.set_weight(tenant, **kw)

    def clear_poison(self, t) -> None:
        """Let a poisoned type run again (after fixing what made it fail)."""
        self.poison.clear(self.type_id(t))

    def reset_module(self, name: str) -> dict:
        """Bring module ``name`` back after fixing what made it fail (``ggmk mod reset``):
        clear the poison of its handlers' types and run its init again. Returns
        ``{"module", "cleared": [poisoned type names], "init": ran an init}``."""
        m = next((m for m in self.modules if m.name == name), None)
        if m is None:
            raise KeyError(f"reset_module: no module {name!r}; known: "
                           f"{[m.name for m in self.modules]}")
        tids = [self.type_id(h.type) for h in m.handlers]
        cleared = [self.type_name(t) for t in tids if self.poison.poisoned[t]]
        for t in tids:
            self.poison.clear(t)
        if m._init:
            m._init(self)
        return {"module": name, "cleared": cleared, "init": m._init is not None}

    # -- payloads -------------------------------------------------------------------------------
    def store_payload(self, tid: int, payload) -> tuple[int, int]:
        """Copy ``payload`` (bytes, NumPy array, or dict for typed payloads) into the arena;
        raw bytes of a type with a schema must fit it (``check_raw_payload``)."""
        if isinstance(payload, dict):
            data = self.types.info(tid).encode(payload)
            buf = np.frombuffer(data, dtype=np.uint8)
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            buf = np.frombuffer(payload, dtype=np.uint8)
        elif isinstance(payload, np.ndarray):
            buf = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        else:
            raise PayloadError(f"payload for {self.type_name(tid)!r} must be bytes, a NumPy array "
                               f"or a dict, got {type(payload).__name__}")
        n = len(buf)
        if not isinstance(payload, dict):
            check_raw_payload(self.types.info(tid), buf)
        try:
            ptr = self.arena.alloc_or_raise(max(n, 1))
        except AllocError:
            self.trace_alloc_fail(-1, tid, max(n, 1))
            raise
        self.arena.view(ptr, n)[:] = buf
        return ptr, n

    def trace_alloc_fail(self, worker: int, task_type: int, nbytes: int) -> None:
        """An allocation failed: ALLOC_FAIL (level error) on ``worker``'s ring (-1: the
        calling thread's, its worker's or else the host's), for ``task_type``, arg0 = the
        bytes asked for (at most 2**32 - 1)."""
        tr = self.tracer
        if not tr.enabled:
            return
        if worker < 0:
            worker = self.calling_worker()
        tr.emit(worker if worker >= 0 else self.nworkers, EventType.ALLOC_FAIL, 0,
                int(task_type), min(max(int(nbytes), 0), 0xFFFFFFFF), 0)

    def payload_view(self, task):
        """``ctx.payload``: a typed view when the type has a schema, else the arena bytes;
        read-only for a message from a fan-out channel. None without a payload."""
        ptr, n = task.payload_ptr, task.payload_len
        if not ptr:
            return None
        raw = self.arena.view(ptr, n)
        info = self.types.info(task.type)
        cid = task.channel
        if cid and self.channels is not None:
            ch = self.channels.by_id.get(cid)
            if ch is not None:
                if ch.mode == "fanout":
                    # SPEC §5: a fan-out payload is shared read-only (one subscriber's write
                    # was every other's copy); a p2p or direct task's is its handler's own
                    raw = raw.view()
                    raw.flags.writeable = False
                if ch.type_id and not info.fields:         # delivered retyped: use the
                    info = self.types.info(ch.type_id)     # channel's message schema
        if info.fields:
            return info.view(raw, n)
        return raw

    # -- the host API ---------------------------------------------------------------------------
    def submit(self, type, meta0: int = 0, meta1: int = 0, *, payload=None, priority: int = 0,
               tenant: int = 0, deterministic: bool = False, trace: bool = False, due: int | None = None,
               count: int | None = None) -> int:
        """Submit tasks of ``type`` (a name or id). Keywords take scalars or columns; returns
        how many were accepted (the rest, if any, are on sys.error with a reason)."""
        self._check_running()
        tid = self.type_id(type, where="submit")
        if deterministic.__class__ is not bool:
            deterministic = check_flag("deterministic", deterministic)
        if trace.__class__ is not bool:       # ("yes" flagged every task for tracing)
            trace = check_flag("trace", trace)
        flags = (T.FLAG_DETERMINISTIC if deterministic else 0) | (T.FLAG_EMIT_TRACE if trace else 0)
        if count is None and payload is None and due is None and meta0.__class__ is int \
                and meta1.__class__ is int and priority.__class__ is int \
                and tenant.__class__ is int and 0 <= meta0 < 1 << 64 and 0 <= meta1 < 1 << 64 \
                and 0 <= priority <= T.PRIO_MASK and 0 <= tenant <= 0xFFFF:
            # one task of plain ints (a round trip's submit): packed, not built column-wise
            rec = np.frombuffer(bytearray(T.RECORD_STRUCT.pack(
                tid, flags | priority, tenant, 0, 0, 0, 0, 0, 0, meta0, meta1)), T.TASK_DTYPE)
            return self.sched.enqueue(rec, Route.SUBMIT)
        n = T.check_count(count, meta0, meta1)
        if due is not None and (due.__class__ is not int or not 0 <= due <= MAX_DUE):
            due = check_int("due", due, 0, MAX_DUE, what=" (a tick number)")   # (before storing)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self.store_payload(tid, payload)
            # one copy shared by the n tasks: a reference each (every finished task releases
            # one; with one reference for all, the second release was a DoubleFree)
            if n != 1:
                if n > 1:
                    self.arena.retain(ptr, n - 1)
                else:
                    self.arena.release(ptr)
                    ptr = plen = 0
        try:
            recs = T.make(n, type=tid, flags=flags, priority=priority, tenant=tenant,
                          payload_ptr=ptr, payload_len=plen, meta0=meta0, meta1=meta1)
        except BaseException:                   # (a bad column: nothing was submitted)
            if ptr:
                self.arena.release_many(np.full(n, ptr, dtype=np.uint64))
            raise
        return self.submit_batch(recs, due=due)

    def submit_batch(self, recs: np.ndarray, *, due: int | None = None) -> int:
        """Submit prepared records (``ggmk.task.make``); the hot path for feeding the kernel."""
        self._check_running()
        if recs.__class__ is not np.ndarray or recs.dtype is not T.TASK_DTYPE or recs.ndim != 1:
            _check_records("submit_batch", recs)
        ptrs = recs["payload_ptr"]
        if ptrs[0] if len(ptrs) == 1 else np.count_nonzero(ptrs):
            # each record hands its consumer a reference: a pointer not owned that often
            # killed the worker that released it
            self.arena.check_refs(ptrs, "submit_batch: payload_ptr")
        if due is not None:
            if due.__class__ is not int or not 0 <= due <= MAX_DUE:
                due = check_int("due", due, 0, MAX_DUE, what=" (a tick number)")
            return self.sched.enqueue(recs, Route.DEFER, due=due)
        return self.sched.enqueue(recs, Route.SUBMIT)

    def _check_running(self) -> None:
        if self.halted:
            raise KernelStopped("the system is halted; boot a new one")

    def idle(self) -> bool:
        return self.sched.idle() and (self.channels is None or self.channels.idle())

    def run(self, seconds: float | None = None, *, until_idle: bool = True,
            timeout: float | None = 60.0) -> bool:
        """Let the system work. With ``until_idle`` (default) return True once every accepted task
        has finished, or False after ``timeout`` seconds. With ``seconds`` and ``until_idle=False``,
        run for that long. On the sim HAL this is where the workers are stepped."""
        if not (seconds is None and until_idle is True and (
                timeout is None or timeout.__class__ is float and timeout >= 0)):
            # (the usual call passes the test above: a round trip's run() pays no more)
            check_seconds("run", "seconds", seconds)
            check_seconds("run", "timeout", timeout)
            until_idle = check_flag("until_idle", until_idle)
        if self.det is not None:
            self.det.release_input()
            self.hal.wake(self.nworkers)
        if seconds is not None and not until_idle:
            self.hal.sleep(seconds)
            return self.idle()
        return self.hal.wait(self.idle, timeout if seconds is None else seconds)

    wait_idle = run

    def submit_and_run(self, type, meta0: int = 0, meta1: int = 0, *,
                       timeout: float | None = 60.0, **submit_kw) -> bool:
        """``submit(type, meta0, meta1, **submit_kw)`` then ``run(timeout=timeout)``. With caller
        runs (boot's ``host_helps``, on by default), the calling thread runs the work itself
        while a worker is idle, and no worker is woken for it: a one-task round trip with no
        thread wake-up.

        >>> import ggmk
        >>> m = ggmk.Module("sq")
        >>> out = []
        >>> @m.handler("SQ")
        ... def sq(ctx):
        ...     out.append(ctx.task.meta0 ** 2)
        >>> with ggmk.boot([m]) as system:
        ...     system.submit_and_run("SQ", 7)
        True
        >>> out
        [49]
        """
        deadline = None if check_seconds("submit_and_run", "timeout", timeout) is None \
            else time.monotonic() + timeout
        self.hal.help(self.idle, deadline,
                      before=lambda: self.submit(type, meta0, meta1, **submit_kw))
        return self.run(timeout=None if deadline is None
                        else max(0.0, deadline - time.monotonic()))

    def direct(self, ch, meta0: int, meta1: int = 0, payload=None) -> bool:
        """The direct request path: run one message of channel ``ch`` (a Channel of this
        system; ``meta0``/``meta1`` plain ints) on the calling thread, as a task, when that
        can be done without changing what anyone observes; True once it ran (the task's
        outcome is whatever its handler made of it: done, failed onto sys.error, yielded or
        retried onto the normal path), False when it could not (nothing was done: publish it
        the normal way). What ``sdk.Client.call`` tries first.

        It runs when the channel has exactly one subscriber and that is a handler; caller
        runs is on (boot's ``host_helps``, the default; the threads HAL, not determinism mode) and a
        worker is parked (``hal.lend`` borrows it: the task runs in that worker's context,
        counted in its metrics shard, traced in its slot); no tenant policy; the channel is
        open, not deterministic, without a replay log; nothing of the subscriber is waiting
        (its ring empty, no batch of an ordered subscriber in flight, no emit credit out)
        and no task of its handler type is queued or running anywhere (so the direct task
        overtakes none and, like an ordered delivery, never runs beside another of its
        subscriber's batches). The message is then accepted exactly as a delivery: channel
        seq, emitted / delivered counts, the per-type enqueue count, and run as the worker
        runs a one-record batch (``Worker._dispatch_group``: trace events, metrics,
        exceptions, codes, yields and retries, sys.error, the ordered subscriber's next batch).

        Why not a step of the borrowed worker (``help``)? A round trip through the rings, the
        ready queue and a gather costs ~3x the handler itself; and why a borrowed worker
        rather than a context of its own: the worker's shard and trace slot are written by
        one thread at a time, as they must be.

        Example (what ``sdk.Client.call`` does: direct, else the normal way):

        >>> import ggmk
        >>> from ggmk.modules import kv
        >>> with ggmk.boot([kv.module()], workers=2) as system:
        ...     put = system.channel("kv.put")
        ...     if not system.direct(put, 7, 700):
        ...         _ = put.publish(meta0=7, meta1=700)
        ...     system.run()
        ...     system.stats()["types"]["KV_PUT"]["ok"]
        True
        1
        """
        if getattr(ch, "kernel", None) is not self:
            if ch.__class__ is str:
                ch = self.channel(ch)
            else:
                raise ValueError(f"direct: ch={ch!r} is not a channel of this system (a "
                                 f"Channel from system.channel(name), or its name)")
        if meta0.__class__ is not int or meta0 >> 64 or meta0 < 0:
            meta0 = T.word("meta0", meta0)
        if meta1.__class__ is not int or meta1 >> 64 or meta1 < 0:
            meta1 = T.word("meta1", meta1)
        subs = ch.subs
        lend = self._lend
        if lend is None or len(subs) != 1 or not subs[0].type_id or ch.log is not None \
                or ch.det or ch.closed or self.halted or self.sched.policy is not None:
            return False
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self.store_payload(ch.type_id, payload)
        if lend(self._direct_run, ch, subs[0], meta0, meta1, ptr, plen):
            return True
        if ptr:
            self.arena.release(ptr)
        return False

    def _pending_of_type(self, t: int) -> int:
        """Tasks of type ``t`` enqueued and not finished (queued anywhere, or running): the
        per-type enqueue count less the dequeue count (counted at a batch's end), over every
        shard."""
        n = 0
        for m in self.metrics_shard:
            tv = m.tv
            n += int(tv[_ENQ, t]) - int(tv[_DEQ, t])
        return n

    def _direct_run(self, worker, ch, sub, meta0, meta1, ptr, plen) -> bool:
        """``direct``'s part on the borrowed ``worker`` (see there)."""
        t = sub.type_id
        s = self.sched
        if s.poisoned[t] or self.halted or (s.outstanding and self._pending_of_type(t)):
            return False
        ring = sub.ring
        with ch.lock:
            if ch.closed or ch.granted or ch.held_n or len(ch.subs) != 1 or ch.subs[0] is not sub \
                    or sub.behind or ring.tail != ring.head:
                return False
            cseq = ch.seq + 1                # the channel's own (unbounded) sequence
            seq = cseq & _M32                # the record's column
            if sub.ordered:
                if not sub.drain_lock.acquire(False):
                    return False
                try:
                    if sub.busy:
                        return False
                    # the subscriber's one batch in flight, as _deliver_one marks it: the
                    # channel delivers nothing else to it until this one is finished
                    sub.b_lo = sub.b_hi = cseq
                    sub.busy = 1
                finally:
                    sub.drain_lock.release()
            ch.seq += 1
            ch.emitted += 1
            ch.committed = cseq
            sub.next = cseq + 1
            sub.delivered += 1
            sub.acked = cseq
        # accepted: a channel delivery into the enqueue core, counted as one
        s.route_counts[_R_CHANNEL] += 1
        with s.count_lock:
            s.outstanding += 1
            self.direct_runs += 1
        oe = s.on_enqueued
        if oe is not None:
            oe(t, worker.id)
        # the record, and its fields as the worker would read them back (one struct call
        # saved: _dispatch_group's ``one``)
        one = (t, T.FLAG_CHANNEL_MSG, 0, ch.id, seq, ptr, plen, 0, 0, meta0, meta1)
        rec = np.frombuffer(bytearray(_REC.pack(*one)), T.TASK_DTYPE)
        self.update_tick()
        worker.in_hand = 1                   # (the step it runs: see Worker.in_hand)
        try:
            worker._dispatch_group(rec, one=one)
        except BaseException:
            # a runtime error around the handler (the handler's own are caught and fail the
            # task): an ordered subscriber must not stay marked busy with this batch
            if sub.ordered and sub.busy and sub.b_lo == cseq == sub.b_hi:
                with sub.busy_lock:
                    sub.busy = 0
                ch._drain_ordered(sub)
            raise
        finally:
            s.done(1)
        return True

    def dead_letters(self, which: str = "sys.error") -> tuple[np.ndarray, np.ndarray]:
        """Take (records, reason codes) from ``sys.error`` or ``sys.dropped``."""
        if self.channels is not None:
            return self.channels.take_dead(which)
        ring = self.sys_error if which == "sys.error" else self.sys_dropped
        return ring.pop_coded(ring.capacity)

    def trace_hash(self) -> str:
        """The run's identity in determinism mode (ts = tick); see ggmk.core.det."""
        det = self.det
        if det is None:
            return self.hasher.hexdigest()
        # under the tick stage's lock: the workers fold finished ticks into the hasher under
        # it, and a read racing a fold lost or double-hashed a tick (a wrong digest)
        with det.lock:
            det.flush()
            return self.hasher.hexdigest()

    def stats(self) -> dict:
        snap = self.metrics.snapshot()
        per_type = {}
        tc = {c.name.lower(): self.metrics.type_counts(c) for c in TypeCounter}
        for tid in np.flatnonzero(tc["enqueued"] + tc["dequeued"] + tc["dropped"]):
            per_type[self.type_name(int(tid))] = {k: int(v[tid]) for k, v in tc.items()}
        return {
            "tick": self.tick,
            "workers": [{"id": w.id, "tasks": w.tasks, "batches": w.batches, "parks": w.parks}
                        for w in self.workers],
            "types": per_type,
            "sched": self.sched.stats(),
            "arena": self.arena.stats(),
            "trace": self.tracer.stats(),
            "poisoned": [self.type_name(t) for t in np.flatnonzero(self.poison.poisoned)],
            "sys_error": self.sys_error.stats(),
            "sys_dropped": self.sys_dropped.stats(),
            "channels": None if self.channels is None else self.channels.stats(),
            "exceptions": self.exceptions_total,
            "tick_duration": {"nominal_ns": self.tick_ns, "ticks": self.ticks_timed,
                              "last_ns": self.tick_last_ns, "max_ns": self.tick_max_ns,
                              "mean_ns": self.tick_sum_ns // max(1, self.ticks_timed)},
            "histograms": snap.get("histograms", {}),
            "tenants": None if self.sched.policy is None else self.sched.policy.stats(),
            "det": None if self.det is None else {"tick": self.det.tick, "tasks": self.det.tasks_run},
            "direct_runs": self.direct_runs,
        }

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        # leaving on an exception: don't wait for work to drain (it is dead-lettered instead)
        self.halt(timeout=0 if exc_type is not None else 5.0)


def boot(modules, *, device: str | None = None, **kw):
    """Boot ``modules``. ``device=None`` (default): the CPU kernel alone, a :class:`System`
    (see it for the options). ``device="auto"|"cpu"|"sim"|"cuda"``: both kernels, with CPU
    (``ggmk.Module``) and GPU (``ggmk.device.Module``) modules in one list, joined by bridge
    channels (:func:`ggmk.dual.boot`)."""
    modules = list(modules)
    if device is not None or any(not isinstance(m, Module) for m in modules):
        from ggmk.dual import boot as dual_boot      # names GPU modules given without a device
        return dual_boot(modules, device=device, **kw)
    return System(modules, **kw)
