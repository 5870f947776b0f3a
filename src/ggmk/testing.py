"""``ggmk.testing``: a sandbox that runs a module's handlers without kernel threads.

:class:`Sandbox` takes one or more ``ggmk.Module`` objects and gives their handlers a context
with the kernel's API (``ctx.task``, ``ctx.batch``, ``ctx.emit``, ``ctx.emitter``,
``ctx.emit_batch``, ``ctx.yield_``, ``ctx.wait_``, ``ctx.retain``, ``ctx.bump_alloc`` (reset
before each batch, as a worker resets it at each step), ``ctx.payload``,
``ctx.reason``, ``ctx.flush``, ``ctx.system.submit(..., due=)``, ``ctx.system.channel(name)``,
``ctx.system.dead_letter``, the arena). Everything runs on the calling thread, in a fixed
order, so a test is deterministic:

* ``sb.feed(type, meta0, meta1, payload=...)`` runs the handler of ``type`` on that task and
  returns its code(s); ``sb.publish(channel, ...)`` delivers a message as the channel would
  (retyped to the consuming handler, with a channel sequence number).
* Tasks fed together run in the batches a worker would run them in: at most ``max_batch``
  (256, as boot's option of that name) per handler call, cut further to the handler's own
  ``max_batch=``, in order; each batch's codes are handled before the next batch runs.
  (Queued work - emits, yields, waits, retries - runs one task per call.)
* What handlers emit is captured: ``sb.emitted`` (all, in order), ``sb.take(target)`` (and
  forget) - :class:`Emitted` records with ``target``, ``type``, ``meta0``, ``meta1``,
  ``payload`` (bytes or None). Emits to a type or channel that a sandboxed module handles are
  also queued for it: ``sb.run()`` runs them (and yields, waits, retries) until nothing is
  left; ``sb.advance(ticks)`` moves the clock, running deferred tasks as they fall due.
* Who listens: the test subscribes to every channel (what ``sb.take(channel)`` reads), the
  sandboxed modules to the channels they consume. ``Sandbox(..., listen=False)`` (or a list
  of the channel names the test does subscribe to) leaves the rest as a deployment without
  that subscriber would: a message on a channel that then has no subscriber at all is
  dropped as the kernel drops it, on ``sb.dropped`` with ``CHAN_NO_SUBSCRIBER`` (the emit
  still answers OK; a module's ``ch.subs`` sees nobody).
* An emit (or ``system.submit``) to a type that no sandboxed module handles fails that task
  with ``UNKNOWN_TYPE`` on ``sb.errors``, as in the kernel (the emit is captured all the
  same). A test that stands in for the module handling it names the type in ``outside=``
  (or ``outside=True``: every type): its tasks are then only captured, for ``sb.take``.
* ``sb.capacity(channel, n)`` makes the test's subscription to a channel hold at most ``n``
  messages not taken yet: past it, a lossless channel refuses the emit with ``CHAN_FULL``
  (test your backpressure path); a lossy one accepts it (OK) and drops the test's copy, on
  ``sb.dropped`` with ``CHAN_FULL``, as the kernel drops a full subscriber's copy.
* ``sb.trace`` lists ``(event, type name, meta0, code)`` per handler call; ``sb.errors`` the
  (type, meta0, meta1, code) of failed tasks (``sb.dropped``: of dropped messages);
  ``sb.allocations()`` the arena's live count and totals (a payload your handler leaked
  shows up there).
* What a handler returns is judged as the kernel judges it (``ggmk.core.worker``): a value
  that is not a code (``5``, ``True``, ``"x"``, a list from a batch handler of one task) fails
  the task with ``BAD_RETURN`` (the ``BadReturn`` is in ``sb.exceptions``); ``RETRY`` backs off
  (1, 2, 4, ... 64 ticks) and fails with ``RETRY_EXHAUSTED`` after ``max_retries`` (8, as
  boot's); yields past the type's ``max_yields`` (16 unless its types.toml says) fail with
  ``MAX_YIELDS``. ``ctx.emit`` refuses what the kernel refuses (an unknown type name:
  KeyError; a bad priority, tenant or flags: EmitError).
* A handler that raises propagates the exception (``raise_exceptions=False`` records it as
  ``HANDLER_EXCEPTION`` instead; ``ALLOC_FAIL`` for an ``AllocError``, as the kernel's
  worker does). ``init`` runs on enter; on exit (``with Sandbox(...)``),
  as a halting kernel does, tasks still queued go to ``sb.errors`` with ``HALTED`` (not run)
  and every ``fini`` runs in reverse order (what a module still holds lands on ``sb.dropped`` /
  ``sb.errors`` through ``system.dead_letter``).

Example (usable from pytest as is)::

    import ggmk
    from ggmk.testing import Sandbox

    m = ggmk.Module("double")
    out = m.produces("double.out", "DOUBLED")

    @m.handler("DOUBLE")
    def double(ctx):
        if ctx.emit(out, ctx.task.meta0 * 2):
            return ctx.wait_()
        return ggmk.OK

    with Sandbox(m) as sb:
        assert sb.feed("DOUBLE", 21) == ggmk.OK
        assert [e.meta0 for e in sb.take("double.out")] == [42]
        sb.capacity("double.out", 1)
        sb.feed("DOUBLE", meta0=[1, 2])              # the second finds the channel full
        assert sb.pending() == 1 and sb.allocations()["live"] == 0
    print("ok")
"""
from __future__ import annotations

import heapq
import itertools
import subprocess
from dataclasses import dataclass

import numpy as np

from ggmk import task as T
from ggmk.core.alloc import Arena
from ggmk.core.context import (Context, _check_payloads, check_priority, inherit_columns,
                               retain_payload)
from ggmk.core.det import check_int
from ggmk.core.faults import backoff_ticks
from ggmk.core.kernel import MAX_RETRIES_LIMIT, System, check_raw_payload
from ggmk.core.worker import _batch_codes, _exc_code, _task_code
from ggmk.errors import EmitError
from ggmk.task import (CHAN_FULL, CHAN_NO_SUBSCRIBER, FLAG_CHANNEL_MSG, FLAG_DETERMINISTIC,
                       HALTED, MAX_YIELDS, OK, PRIO_MASK, RETRY,
                       RETRY_EXHAUSTED, UNKNOWN_TYPE, WAIT, YIELD, Task, TaskBatch)
from ggmk.typereg import TypeRegistry

__all__ = ["Sandbox", "Emitted", "SandboxContext", "run_module_tests"]


@dataclass
class Emitted:
    target: str          # the channel name, or the type name for a direct emit
    type: str
    meta0: int
    meta1: int
    payload: bytes | None
    seq: int = 0


class _Chan:
    """A sandbox channel: what was emitted on it and not taken yet, and a capacity."""

    def __init__(self, sb, name, type_id):
        self.sb, self.name, self.type_id = sb, name, type_id
        self.capacity = None
        self.held = 0
        self.seq = 0
        self.closed = False
        self.lossy = False
        self.fanout = False
        self.listened = True                  # the test subscribes (Sandbox's ``listen``)
        self.consumers: list[int] = []        # handler type ids of sandboxed consumers

    @property
    def subs(self):
        return self.consumers + [None] if self.listened else self.consumers

    def room(self) -> int:
        """What the test's subscription can still hold (``capacity`` bounds only it)."""
        if self.capacity is None or not self.listened:
            return 1 << 30
        return max(0, self.capacity - self.held)

    def emit(self, recs, *, built: bool = False, prio: int | None = None) -> int:
        """Channel.emit's signature (``built`` / ``prio`` only spare the kernel checks)."""
        k = len(recs) if self.lossy else min(len(recs), self.room())
        for r in recs[:k]:
            self.sb._emit_record(self, int(r["type"]) or self.type_id, int(r["meta0"]),
                                 int(r["meta1"]), int(r["payload_ptr"]), int(r["payload_len"]),
                                 flags=int(r["flags"]) & ~FLAG_CHANNEL_MSG,
                                 tenant=int(r["tenant"]))
        return k

    def publish(self, meta0=0, meta1=0, *, payload=None, count=None, type=None, **_):
        return self.sb.publish(self.name, meta0, meta1, payload=payload)

    def stats(self):
        return {"name": self.name, "held": self.held, "capacity": self.capacity,
                "emitted": self.seq}


class _Chans:
    def __init__(self, sb):
        self.sb = sb
        self._hot = False

    def to_sys_dropped(self, recs, code, count_on=None):
        self.sb.dropped.extend(self._rows(recs, code))

    def to_sys_error(self, recs, code):
        self.sb.errors.extend(self._rows(recs, code))

    def _rows(self, recs, code):
        """(type name, meta0, meta1, code) per record; ``code``: one for all or one each."""
        codes = np.broadcast_to(np.asarray(code, dtype=np.int64), (len(recs),)).tolist()
        return [(self.sb.type_name(int(r["type"])), int(r["meta0"]), int(r["meta1"]), c)
                for r, c in zip(recs, codes)]

    def drain_some(self, worker=-1):
        return 0


class _System:
    """What ``ctx.system`` offers inside the sandbox (a subset of ggmk.System)."""

    def __init__(self, sb):
        self._sb = sb
        self.arena = sb.arena
        self.types = sb.types
        self.channels = _Chans(sb)
        self.halted = False
        self.deterministic = False

    def channel(self, name):
        return self._sb._chan(name)

    def submit(self, type, meta0=0, meta1=0, *, payload=None, due=None, count=None, **_):
        return self._sb._submit(type, meta0, meta1, payload=payload, due=due)

    def wall_tick(self) -> int:
        return self._sb.tick

    def clock(self) -> int:
        return self._sb.tick * 1_000_000

    def type_id(self, t, *, register: bool = False, where: str = ""):
        return self._sb.type_id(t, register=register, where=where)

    def type_name(self, tid):
        return self._sb.type_name(tid)

    def store_payload(self, tid, payload):
        return self._sb._store(tid, payload)

    def payload_view(self, task):
        return self._sb._view(task)

    def withdraw_deferred(self, type, wanted: dict) -> int:
        """``System.withdraw_deferred``: take back the queued tasks of ``type`` whose (meta0,
        meta1) is in ``wanted[due]`` (a timer's cancel: its tick is left neither to run nor to
        land on ``sb.errors`` at exit); their payloads are released. Returns how many."""
        t = self.type_id(type)
        q = self._sb._queue
        keep, gone = [], []
        for e in q:                                 # (due, n, one record)
            r = e[2][0]
            hit = int(r["type"]) == t and (int(r["meta0"]), int(r["meta1"])) in \
                wanted.get(e[0], ())
            (gone if hit else keep).append(e)
        if gone:
            q[:] = keep
            heapq.heapify(q)
            ptrs = np.array([int(e[2]["payload_ptr"][0]) for e in gone], np.uint64)
            if ptrs.any():
                self.arena.release_many(ptrs[ptrs != 0])
        return len(gone)

    def dead_letter(self, recs, code, *, which: str = "sys.error", count_on=None) -> int:
        """``System.dead_letter``: records that leave unfinished (what a module holds at
        halt, say) go to ``which`` with the reason ``code`` - here ``sb.errors`` (sys.error)
        or ``sb.dropped`` (sys.dropped); their payload references are released. Returns how
        many."""
        if which not in ("sys.error", "sys.dropped"):
            raise ValueError(f"dead_letter: which={which!r}: allowed 'sys.error', 'sys.dropped'")
        ptrs = recs["payload_ptr"]
        if ptrs.any():
            self.arena.release_many(ptrs)
        if which == "sys.error":
            self.channels.to_sys_error(recs, code)
        else:
            self.channels.to_sys_dropped(recs, code, count_on=count_on)
        return len(recs)

    @property
    def tick(self):
        return self._sb.tick


class SandboxContext:
    """The handler context inside a :class:`Sandbox` (the kernel Context's API)."""

    def __init__(self, sb):
        self._sb = sb
        self.system = sb.system
        self.kernel = sb.system
        self.task = Task()
        self.batch = None
        self.module = None
        self.worker = 0
        self._bump = sb.arena.worker_bump(0, 1)     # the one worker's bump region

    tick = property(lambda s: s._sb.tick)
    arena = property(lambda s: s._sb.arena)

    @property
    def chan_seq(self) -> int:
        r = self.task._r
        return int(r["seq"]) if r is not None and int(r["channel"]) else 0

    @property
    def channel(self):
        r = self.task._r
        if r is None or not int(r["channel"]):
            return None
        return self._sb._chan_by_id.get(int(r["channel"]))

    @property
    def payload(self):
        return self._sb._view(self.task)

    reason = Context.reason               # (the kernel's: read from ctx.task.retries)

    def flush(self) -> None:
        """The kernel Context's ``flush``: nothing to do here (emits are delivered as made)."""

    def _inherit(self, priority, tenant, flags: int) -> tuple:
        """A child's (priority, tenant, flags): what is not given comes from the current task
        (its priority and tenant; its deterministic flag always), as ``Context.emit`` does;
        nothing is inherited in a batch handler."""
        r = self.task._r
        pflags, ptenant = (0, 0) if r is None else (int(r["flags"]), int(r["tenant"]))
        if priority is None:
            priority = pflags & PRIO_MASK
        if tenant is None:
            tenant = ptenant
        return priority, tenant, flags | (pflags & FLAG_DETERMINISTIC)

    def emit(self, target, meta0: int = 0, meta1: int = 0, *, payload=None, priority=None,
             tenant=None, flags: int = 0) -> int:
        """``Context.emit``: the same checks (words, target, priority, tenant, flags), the
        same header (the parent's priority and tenant unless given, its deterministic flag)."""
        meta0, meta1 = T.word("meta0", meta0), T.word("meta1", meta1)
        t = self._sb._target(target)        # an unknown type name: KeyError, as the kernel's
        if priority is not None:
            priority = check_priority(priority)
        if tenant is not None and (tenant.__class__ is not int or not 0 <= tenant <= 0xFFFF):
            raise EmitError(f"tenant={tenant!r}: allowed an integer in 0..65535")
        if flags.__class__ is not int or not 0 <= flags <= 0xFFFF:
            raise EmitError(f"flags={flags!r}: allowed an integer in 0..65535")
        priority, tenant, flags = self._inherit(priority, tenant, flags)
        fl = (flags & ~PRIO_MASK) | (priority & PRIO_MASK)
        return self._sb._emit(t, meta0, meta1, payload, flags=fl, tenant=tenant)

    def emitter(self, target):
        """``Context.emitter``: a per-message sender for a channel (TypeError for a type)."""
        if not isinstance(self._sb._target(target), _Chan):
            raise TypeError(f"emitter: {target!r} is not a channel")
        return lambda meta0, meta1=0: self.emit(target, meta0, meta1)

    def emit_batch(self, target, meta0=0, meta1=0, *, count=None, priority=None, tenant=None,
                   flags: int = 0, payload_ptr=0, payload_len=0) -> int:
        """``Context.emit_batch``: records built (and checked) as the kernel builds them;
        returns how many were accepted (a channel's capacity may refuse the rest)."""
        sb = self._sb
        t = sb._target(target)
        n = T.check_count(count, meta0, meta1, payload_ptr)
        b = self.batch
        parent = b.records if b is not None else None
        if parent is not None and len(parent) == n:
            priority, tenant, flags = inherit_columns(parent, priority, tenant, flags)
        elif self.task._r is not None:
            priority, tenant, flags = self._inherit(priority, tenant, flags)
        recs = T.make(n, type=t.type_id if isinstance(t, _Chan) else t, flags=flags,
                      priority=0 if priority is None else priority,
                      tenant=0 if tenant is None else tenant, payload_ptr=payload_ptr,
                      payload_len=payload_len, meta0=meta0, meta1=meta1)
        _check_payloads(sb.system, recs)
        if isinstance(t, _Chan):
            return t.emit(recs)
        for r in recs:
            sb._emit(t, int(r["meta0"]), int(r["meta1"]), None, ptr=int(r["payload_ptr"]),
                     plen=int(r["payload_len"]), flags=int(r["flags"]), tenant=int(r["tenant"]))
        return n

    def yield_(self, phase=None) -> int:
        if phase is not None:
            self.task.meta0 = phase
        return YIELD

    def wait_(self, phase=None, *, meta1=None) -> int:
        if phase is not None:
            self.task.meta0 = phase
        if meta1 is not None:
            self.task.meta1 = meta1
        return WAIT

    def retain(self, i: int | None = None) -> int:
        """``Context.retain``: one more reference to the payload, yours to release."""
        return retain_payload(self._sb.arena, self.batch, self.task, i)

    def alloc(self, nbytes: int) -> int:
        return self._sb.arena.alloc_or_raise(nbytes)

    bump_alloc = Context.bump_alloc       # (reset before each batch, as a worker's step)


class Sandbox:
    """Run ``modules``' handlers on this thread; see the module docstring."""

    def __init__(self, modules, *, types: TypeRegistry | None = None, arena_size: int = 8 << 20,
                 raise_exceptions: bool = True, max_steps: int = 100_000, max_retries: int = 8,
                 max_batch: int = 256, listen=True, outside=()):
        # as boot's: an int 0..65535 (the retry counter is a u16: past it the limit never came)
        max_retries = check_int("sandbox: max_retries", max_retries, 0, MAX_RETRIES_LIMIT,
                                what=" (as boot's: RETRY_EXHAUSTED after that many retries; "
                                     "the retry counter is a u16)")
        # (boot takes any value here: 0 runs nothing, 2.5 crashes a worker; refused up front)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"sandbox: max_batch={max_batch!r}: allowed an int >= 1 (as "
                             f"boot's: the most tasks one handler call gets)")
        if not isinstance(modules, (list, tuple)):
            modules = [modules]
        self.modules = list(modules)
        self.types = types.copy() if types is not None else TypeRegistry()
        for m in self.modules:
            man = getattr(m, "manifest", None)
            if man is not None and len(man.types):
                self.types.merge(man.types)
        self.arena = Arena(arena_size)
        self.raise_exceptions = raise_exceptions
        self.max_steps = max_steps
        self.max_retries = max_retries
        self.max_batch = max_batch
        self._type_cache: dict = {}         # (System.type_id's cache: that method is reused)
        self._max_yields: dict[int, int] = {}   # handler type id -> its type's max_yields
        self.tick = 0
        self.emitted: list[Emitted] = []
        self._taken: dict[str, int] = {}     # type name -> len(emitted) at its last take
        self.trace: list[tuple] = []
        self.errors: list[tuple] = []
        self.dropped: list[tuple] = []
        self.exceptions: list[BaseException] = []
        self._queue: list = []            # (due, n, record)
        self._n = itertools.count()
        self._chans: dict[str, _Chan] = {}
        self._chan_by_id: dict[int, _Chan] = {}
        self._held: dict[str, list] = {}
        self._seq = 0                       # the enqueue core's seq (submit and emit routes)
        self.handlers: dict[int, object] = {}
        self.system = _System(self)
        for m in self.modules:
            for h in m.handlers:
                tid = self.type_id(h.type, register=True)
                if tid in self.handlers:
                    raise ValueError(f"sandbox: type {self.type_name(tid)!r} has two handlers")
                self.handlers[tid] = h
                self._max_yields[tid] = self.types.info(tid).max_yields
        for m in self.modules:
            for d in m.channels:
                ch = self._chan(d.name, d.type)
                ch.lossy = ch.lossy or d.guarantee == "lossy"
                ch.fanout = ch.fanout or d.mode == "fanout"
                if d.direction == "consume":
                    ch.consumers.append(self.type_id(d.options.get("handler", d.type),
                                                     register=True))
        if not isinstance(listen, bool):
            if isinstance(listen, str) or not isinstance(listen, (list, tuple, set, frozenset)) \
                    or not set(listen) <= set(self._chans):
                raise ValueError(f"sandbox: listen={listen!r}: allowed True (every channel), "
                                 f"False (none) or a list of channel names from "
                                 f"{sorted(self._chans)}")
            for ch in self._chans.values():
                ch.listened = ch.name in listen
        elif not listen:
            for ch in self._chans.values():
                ch.listened = False
        if outside is not True:
            if isinstance(outside, (str, bool)) or not isinstance(outside,
                                                                   (list, tuple, set, frozenset)):
                raise ValueError(f"sandbox: outside={outside!r}: allowed True (every type) or "
                                 f"a list of type names or ids")
            outside = {self.type_id(t, register=True, where="sandbox: outside") for t in outside}
        self.outside = outside
        self.ctx = SandboxContext(self)
        self._entered = False

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self):
        for m in self.modules:
            if m._init:
                m._init(self.system)
        self._entered = True
        return self

    def __exit__(self, *exc):
        """As ``System.halt`` ends: what is still queued (not run: the test moves the clock)
        goes to ``errors`` with HALTED, its payloads released; then every module's fini, in
        reverse order (what a module still holds lands on ``dropped`` / ``errors`` through
        ``system.dead_letter``)."""
        self.system.halted = True
        while self._queue:
            _, _, rec = heapq.heappop(self._queue)
            self.system.dead_letter(rec, HALTED)
        for m in reversed(self.modules):
            if m._fini:
                m._fini(self.system)
        return False

    # -- types and channels ---------------------------------------------------------------------
    def type_id(self, t, *, register: bool = False, where: str = "") -> int:
        """``System.type_id`` (that very method): a type name or id; an unknown name is a
        KeyError unless ``register`` (what boot does for handler and channel types)."""
        return System.type_id(self, t, register=register, where=where)

    def type_name(self, tid: int) -> str:
        try:
            return self.types.name(int(tid))
        except Exception:   # noqa: BLE001
            return f"TYPE_{tid}"

    def _chan(self, name, type=None) -> _Chan:
        ch = self._chans.get(name)
        if ch is None:
            if type is None:
                raise KeyError(f"sandbox: unknown channel {name!r}; declared: "
                               f"{sorted(self._chans)}")
            ch = self._chans[name] = _Chan(self, name, self.type_id(type, register=True))
            self._chan_by_id[len(self._chan_by_id) + 1] = ch
            ch.id = len(self._chan_by_id)
        return ch

    def capacity(self, channel: str, n: int | None) -> None:
        """At most ``n`` untaken messages on ``channel`` (None: unbounded)."""
        self._chan(channel).capacity = n

    # -- payloads -------------------------------------------------------------------------------
    def _store(self, tid, payload, sender: bool = True):
        """``System.store_payload``: a sender's raw bytes are checked against the type's
        schema; what ``feed`` hands a handler (an arrival: a device's, say) is not."""
        if isinstance(payload, dict):
            data = self.types.info(tid).encode(payload)
        elif isinstance(payload, np.ndarray):
            data = np.ascontiguousarray(payload).tobytes()
        else:
            data = bytes(payload)
        if sender and not isinstance(payload, dict):
            check_raw_payload(self.types.info(tid), np.frombuffer(data, np.uint8))
        ptr = self.arena.alloc_or_raise(max(len(data), 1))
        self.arena.view(ptr, len(data))[:] = np.frombuffer(data, np.uint8)
        return ptr, len(data)

    def _view(self, task):
        ptr, n = task.payload_ptr, task.payload_len
        if not ptr:
            return None
        raw = self.arena.view(ptr, n)
        info = self.types.info(task.type)
        ch = self._chan_by_id.get(task.channel) if task.channel else None
        if ch is not None:
            if ch.fanout:                     # shared read-only, as System.payload_view's
                raw = raw.view()
                raw.flags.writeable = False
            if not info.fields:
                info = self.types.info(ch.type_id)
        return info.view(raw, n) if info.fields else raw

    # -- emitting -------------------------------------------------------------------------------
    def _target(self, target):
        name = getattr(target, "name", None)
        if name is not None and hasattr(target, "direction"):
            return self._chan(name, target.type)
        if isinstance(target, str) and "." in target:
            return self._chan(target)
        return self.type_id(target)

    def _emit(self, t, meta0, meta1, payload, ptr=0, plen=0, *, flags=0, tenant=0) -> int:
        """Emit one message to ``t`` (a resolved target: a _Chan or a type id)."""
        if isinstance(t, _Chan):
            if t.room() <= 0 and not t.lossy:
                return CHAN_FULL
            if payload is not None:
                ptr, plen = self._store(t.type_id, payload)
            self._emit_record(t, t.type_id, meta0, meta1, ptr, plen, flags=flags, tenant=tenant)
            return OK
        if payload is not None:
            ptr, plen = self._store(t, payload)
        data = bytes(self.arena.view(ptr, plen)) if ptr else None
        self.emitted.append(Emitted(self.type_name(t), self.type_name(t), meta0, meta1, data))
        self.trace.append(("emit", self.type_name(t), meta0, 0))
        self._to_type(T.make(1, type=t, flags=flags, tenant=tenant, meta0=meta0, meta1=meta1,
                             payload_ptr=ptr, payload_len=plen), self.tick, captured=True)
        return OK

    def _to_type(self, recs, due, *, captured: bool = False) -> int:
        """Queue tasks of one type with fresh seqs, or, with no handler here, fail them with
        UNKNOWN_TYPE as the kernel's enqueue core does (a type ``outside`` the sandbox: the
        test stands in for its handler and reads them from ``emitted``). Returns how many
        were accepted."""
        t = int(recs["type"][0])
        if t not in self.handlers:
            name = self.type_name(t)
            n = len(recs)
            if not (self.outside is True or t in self.outside):
                self.errors.extend((name, int(r["meta0"]), int(r["meta1"]), UNKNOWN_TYPE)
                                   for r in recs)
                n = 0
            elif not captured:                 # a submit: read like an emit
                self.emitted.extend(
                    Emitted(name, name, int(r["meta0"]), int(r["meta1"]),
                            bytes(self.arena.view(int(r["payload_ptr"]), int(r["payload_len"])))
                            if r["payload_ptr"] else None) for r in recs)
            if recs["payload_ptr"].any():
                self.arena.release_many(recs["payload_ptr"])
            return n
        recs["seq"] = self._seqs(len(recs))
        self._push(recs, due)
        return len(recs)

    def _seqs(self, n: int) -> np.ndarray:
        """``n`` fresh seqs (u4: they wrap like the kernel's), as the kernel's submit and
        emit routes give: what a task keeps while it waits, yields or retries."""
        s = self._seq
        self._seq += n
        return np.arange(s + 1, s + 1 + n, dtype=np.uint64) & 0xFFFF_FFFF

    def _emit_record(self, ch, tid, meta0, meta1, ptr, plen, *, flags=0, tenant=0):
        """One message accepted on ``ch`` (a lossless one had room): captured, then held for
        the test when it listens (its copy dropped with CHAN_FULL when a lossy channel is
        full) and queued for the sandboxed consumers; with no subscriber at all, dropped
        with CHAN_NO_SUBSCRIBER, as the kernel does."""
        ch.seq += 1
        data = bytes(self.arena.view(ptr, plen)) if ptr else None
        e = Emitted(ch.name, self.type_name(tid), meta0, meta1, data, ch.seq)
        self.emitted.append(e)
        self.trace.append(("emit", ch.name, meta0, 0))
        if not ch.subs:
            self.dropped.append((self.type_name(tid), meta0, meta1, CHAN_NO_SUBSCRIBER))
        if ch.listened:
            if ch.room() <= 0:
                self.dropped.append((self.type_name(tid), meta0, meta1, CHAN_FULL))
            else:
                ch.held += 1
                self._held.setdefault(ch.name, []).append(e)
        for h in ch.consumers:
            if ptr:
                self.arena.retain(ptr)
            self._push(T.make(1, type=h, meta0=meta0, meta1=meta1, payload_ptr=ptr,
                              payload_len=plen, channel=ch.id, seq=ch.seq, tenant=tenant,
                              flags=flags | FLAG_CHANNEL_MSG), self.tick)
        if ptr:
            self.arena.release(ptr)            # the captured copy is bytes

    def take(self, target) -> list[Emitted]:
        """What was emitted to ``target`` (a channel name/declaration or a type) since the
        last ``take`` of it; frees that room on a channel with a capacity."""
        if isinstance(target, str) and "." not in target and target not in self.types:
            return []                         # a type nothing could emit (unknown)
        t = self._target(target)
        if isinstance(t, _Chan):
            out = self._held.pop(t.name, [])
            t.held = 0
            return out
        name = self.type_name(t)
        # (the type's records were handed back every time: "since the last take" held only
        # for channels)
        out = [e for e in self.emitted[self._taken.get(name, 0):] if e.target == name]
        self._taken[name] = len(self.emitted)
        return out

    # -- feeding --------------------------------------------------------------------------------
    def _submit(self, type, meta0=0, meta1=0, *, payload=None, due=None) -> int:
        tid = self.type_id(type, where="submit")
        n = T.check_count(None, meta0, meta1)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self._store(tid, payload)
            if n > 1:
                self.arena.retain(ptr, n - 1)
        recs = T.make(n, type=tid, meta0=meta0, meta1=meta1, payload_ptr=ptr, payload_len=plen)
        return self._to_type(recs, self.tick if due is None else int(due))

    def _push(self, recs, due):
        for r in recs:
            heapq.heappush(self._queue, (due, next(self._n), np.array([r])))

    def feed(self, type, meta0=0, meta1=0, *, payload=None):
        """Run the handler of ``type`` on these task(s) now; returns the code (a list for
        several). Follow-on work (emits to sandboxed handlers, yields, waits) is queued:
        ``run()``. The payload arrives as given: raw bytes that do not fit the type's schema
        (what a sender is refused, but a device may bring) test the handler's own check."""
        try:
            tid = self.type_id(type)
        except KeyError:
            tid = None
        if tid not in self.handlers:
            shown = type if tid is None else self.type_name(tid)
            raise KeyError(f"sandbox: no handler for type {shown!r}; handled: "
                           f"{sorted(self.type_name(t) for t in self.handlers)}")
        n = T.check_count(None, meta0, meta1)
        ptr = plen = 0
        if payload is not None:
            ptr, plen = self._store(tid, payload, sender=False)
            if n > 1:
                self.arena.retain(ptr, n - 1)
        recs = T.make(n, type=tid, meta0=meta0, meta1=meta1, payload_ptr=ptr, payload_len=plen,
                      seq=self._seqs(n))
        codes = self._dispatch(recs)
        return codes[0] if n == 1 else codes

    def publish(self, channel: str, meta0=0, meta1=0, *, payload=None):
        """Emit on ``channel`` as the host would (consumers get it on ``run()``)."""
        ch = self._chan(channel)
        ptr = plen = 0
        if ch.room() <= 0 and not ch.lossy:
            return CHAN_FULL
        if payload is not None:
            ptr, plen = self._store(ch.type_id, payload)
        self._emit_record(ch, ch.type_id, T.word("meta0", meta0), T.word("meta1", meta1),
                          ptr, plen)
        return OK

    def _dispatch(self, recs) -> list[int]:
        """Run ``recs`` (tasks of one type) in the batches a worker would: ``max_batch`` at a
        time (Worker.step's pop), each cut to the handler's own ``max_batch``
        (Worker._dispatch_group); every batch's codes are handled before the next runs.
        Returns the codes, in order."""
        n, B = len(recs), self.max_batch
        cap = self.handlers[int(recs["type"][0])].max_batch
        if n <= B and (not cap or n <= cap):
            return self._dispatch_batch(recs)
        codes: list[int] = []
        for i in range(0, n, B):
            part = recs[i:i + B]
            step = cap or len(part)
            for j in range(0, len(part), step):
                codes += self._dispatch_batch(part[j:j + step])
        return codes

    def _dispatch_batch(self, recs) -> list[int]:
        """One handler call on ``recs`` (a batch handler) or one per task, then each task's
        outcome (release, yield, wait, retry, failure) as Worker._finish handles it."""
        tid = int(recs["type"][0])
        h = self.handlers[tid]
        ctx = self.ctx
        if ctx._bump.top:                     # a worker's step start (ctx.bump_alloc)
            ctx._bump.reset()
        ctx.module = h.module
        name = self.type_name(tid)
        codes = []
        if h.batch:
            ctx.batch = TaskBatch(recs)
            ctx.task._r = None
            self.trace.append(("start", name, int(recs["meta0"][0]), len(recs)))
            r = self._call(h.fn, ctx, ctx.batch)
            ctx.batch = None
            if r is None or (r.__class__ is int and r == OK):
                codes = [OK] * len(recs)
            else:                             # the kernel's check (Worker._dispatch_group)
                arr, err = _batch_codes(r, len(recs))
                codes = arr.tolist()
                if err is not None:
                    self.exceptions.append(err)
        if not h.batch:
            for i in range(len(recs)):
                ctx.task._r = recs[i]
                self.trace.append(("start", name, int(recs["meta0"][i]), 1))
                r = self._call(h.fn, ctx)
                if r is None:
                    c = OK
                else:                         # the kernel's check: a code, else BAD_RETURN
                    c, err = _task_code(r)
                    if err is not None:
                        self.exceptions.append(err)
                codes.append(c)
        ctx.task._r = None
        for i, c in enumerate(codes):
            r = recs[i:i + 1]
            self.trace.append(("end", name, int(r["meta0"][0]), c))
            ptr = int(r["payload_ptr"][0])
            if c == OK:
                if ptr:                       # (ctx.retain() took a reference of its own)
                    self.arena.release(ptr)
            elif c == YIELD:                  # as Worker._yield: at most max_yields
                yc = int(r["yield_count"][0])   # a u16: compared before the bump, which
                if yc != 0xFFFF:                # saturates (bumped first, 65535 wrapped to 0
                    r["yield_count"] = yc + 1   # and never passed a max_yields of 65535)
                if yc >= self._max_yields[tid]:
                    self._fail(name, r, MAX_YIELDS)
                else:
                    self._push(r, self.tick)
            elif c == WAIT:
                self._push(r, self.tick + 1)
            elif c == RETRY:                  # as Worker._retry: backoff, at most max_retries
                pad = int(r["_pad"][0])         # the retry counter (a u16): as yield_count
                if pad != 0xFFFF:
                    r["_pad"] = pad + 1
                if pad >= self.max_retries:
                    self._fail(name, r, RETRY_EXHAUSTED)
                else:
                    self._push(r, self.tick + backoff_ticks(pad + 1))
            else:
                self._fail(name, r, c)
        return codes

    def _fail(self, name, r, code) -> None:
        self.errors.append((name, int(r["meta0"][0]), int(r["meta1"][0]), int(code)))
        ptr = int(r["payload_ptr"][0])
        if ptr:
            self.arena.release(ptr)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:   # noqa: BLE001
            if self.raise_exceptions:
                raise
            self.exceptions.append(e)
            return _exc_code(e)               # (ALLOC_FAIL when the arena ran out)

    # -- running --------------------------------------------------------------------------------
    def pending(self) -> int:
        """Tasks queued (due now or later)."""
        return len(self._queue)

    def run(self) -> int:
        """Run every task due now (and what they queue for now) until none is left; returns
        how many handler calls ran. Later ones wait for ``advance``."""
        steps = 0
        while self._queue and self._queue[0][0] <= self.tick:
            _, _, rec = heapq.heappop(self._queue)
            self._dispatch(rec)
            steps += 1
            if steps > self.max_steps:
                raise RuntimeError(f"sandbox: more than {self.max_steps} handler calls at tick "
                                   f"{self.tick} (a task that never finishes?)")
        return steps

    def advance(self, ticks: int = 1) -> int:
        """Move the clock ``ticks`` ticks, running what falls due at each; returns the calls."""
        steps = self.run()
        for _ in range(ticks):
            self.tick += 1
            steps += self.run()
        return steps

    def allocations(self) -> dict:
        t = self.arena.stats()["total"]
        return {"live": t["live"], "allocs": t["allocs"], "frees": t["frees"]}


class TestsTimedOut(subprocess.TimeoutExpired):
    """``run_module_tests``' pytest run did not finish within ``timeout`` seconds (it was
    stopped); ``output`` is what it printed (a ``subprocess.TimeoutExpired``)."""

    def __str__(self) -> str:
        return (f"the tests did not finish within {self.timeout:g} s (their pytest run and "
                "what it started were stopped)")


def run_module_tests(path, *args: str, timeout: float | None = 600) -> tuple[int, str]:
    """Run pytest on ``path`` (a generated module's directory or a test file) in a fresh
    interpreter; returns (exit code, output). What ``ggmk new`` users run to check a module.

    The run is a process group of its own: when ``timeout`` seconds pass (None: no limit) it
    is stopped whole (SIGINT, so pytest prints where it was, then SIGKILL to what is left) and
    ``TestsTimedOut`` (a ``subprocess.TimeoutExpired``) raised; so is it when the wait is cut
    short by an exception (Ctrl-C's KeyboardInterrupt, one raised by a signal handler), which
    is then re-raised. Nothing it started outlives the call that way, even an exception that
    cuts the start itself short (after the fork, before ``Popen`` returned): the child waits
    at a gate until this call holds it, and otherwise leaves without starting pytest.

    Example::

        rc, out = run_module_tests("modules/greeter")
        assert rc == 0, out
    """
    import os
    import socket
    import sys
    import tempfile
    # absolute: run in a module's own directory, a relative path would be looked up from
    # there ("widget/widget": what `ggmk new widget` told the user to run failed)
    path = os.path.abspath(str(path))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, *args]
    # its output goes to files, not pipes: a process the tests leave behind (holding a pipe)
    # cannot keep this call waiting
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        gate, child_end = socket.socketpair()
        proc = None
        try:
            with child_end:
                fd = child_end.fileno()
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GATE, str(fd), *cmd],
                                        stdout=out, stderr=err, process_group=0, pass_fds=(fd,),
                                        cwd=path if os.path.isdir(path) else None)
            try:
                gate.sendall(b"1")           # held: the child becomes the pytest run
            except OSError:
                pass                         # it is gone already: its exit code says why
            rc = proc.wait(timeout=timeout)
        except BaseException as e:
            if proc is None:
                _reap_unstarted(gate)
            else:
                _stop_group(proc)
            if isinstance(e, subprocess.TimeoutExpired):
                raise TestsTimedOut(cmd, timeout, _read_both(out, err)) from None
            raise
        finally:
            gate.close()
        return rc, _read_both(out, err)


# What ``run_module_tests`` starts: it waits for the parent's b"1" on the socket ``argv[1]``,
# then becomes the pytest run (``exec``: the same process, its group's leader). A gate closed
# without it (``Popen`` cut short: its pid lost to the parent) makes it say its pid, to be
# reaped, and exit, pytest never started.
_GATE = ("import os, sys\n"
         "fd = int(sys.argv[1])\n"
         "if os.read(fd, 1) == b'1':\n"
         "    os.close(fd)\n"
         "    os.execv(sys.argv[2], sys.argv[2:])\n"
         "os.write(fd, str(os.getpid()).encode())\n")


def _reap_unstarted(gate, grace: float = 5.0) -> None:
    """``Popen`` did not return: close the gate (a child that forked leaves, pytest not
    started) and reap the child by the pid it sends back (none: it never ran, or Popen
    reaped it)."""
    import os
    import socket
    gate.shutdown(socket.SHUT_WR)
    gate.settimeout(grace)
    said = b""
    try:
        while part := gate.recv(32):
            said += part
    except OSError:                          # (a timeout: it did not answer; it exits anyway)
        pass
    if said.isdigit():
        try:
            os.waitpid(int(said), 0)
        except ChildProcessError:
            pass


def _stop_group(proc, grace: float = 5.0) -> None:
    """Stop ``proc``'s process group (``proc`` leads it): SIGINT, then SIGKILL to what is left
    of it after ``grace`` seconds (or at once, when ``proc`` is gone sooner)."""
    import os
    import signal
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_both(out, err) -> str:
    text = []
    for f in (out, err):
        f.seek(0)
        text.append(f.read().decode(errors="replace"))
    return "".join(text)
