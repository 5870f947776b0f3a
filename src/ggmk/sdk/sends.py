"""In-handler sends with backpressure (``send``, ``send_all``) and in-kernel request/reply
(``Requests``): the waits they keep per task, bounded by a deadline in ticks."""
from __future__ import annotations

import itertools
import threading

import numpy as np

from ggmk import task as T
from ggmk.task import CHAN_FULL, OK, WAIT

DEFAULT_DEADLINE = 10_000          # ticks a task may wait on one full channel (10 s at 1 kHz)
TIMEOUT = T.SDK_TIMEOUT
_KEEP = 1000                       # ticks (at least) an unrefreshed wait entry is kept
_KEEP_MAX = 1 << 16                # entries a generation holds before an early turn (a bound)
_wlock = threading.Lock()          # (only to attach a system's table once)


class _Waits:
    """The tick of each waiting task's first WAIT, for one system (its ``wall_tick``): keyed by
    the task's type, channel, seq and deterministic flag, which stay with a task that waits,
    yields or retries (only submit, emit and bridge renumber it), so look-alike tasks do not
    share a clock. A task may leave without a word to the sdk (it fails, or is halted): two
    generations, turned every ``keep`` ticks (or at ``_KEEP_MAX`` entries), drop what was not
    refreshed for a whole turn; a waiting task refreshes its entry every time it runs."""

    __slots__ = ("lock", "cur", "old", "since", "keep")

    def __init__(self, now: int):
        self.lock = threading.Lock()
        self.cur: dict = {}
        self.old: dict = {}
        self.since = now
        self.keep = _KEEP

    def waited(self, keys, now: int, deadline: int) -> int:
        """Ticks the longest waiting of ``keys`` has waited (a new one starts now)."""
        with self.lock:
            if deadline > self.keep:
                # (so only a task not run for longer than its deadline can lose its clock)
                self.keep = deadline
            if now - self.since > self.keep or len(self.cur) > _KEEP_MAX:
                self.old, self.cur, self.since = self.cur, {}, now
            cur, old = self.cur, self.old
            first = now
            for k in keys:
                t = cur.get(k)
                if t is None:
                    t = cur[k] = old.pop(k, now)
                if t < first:
                    first = t
        return now - first

    def drop(self, keys) -> None:
        with self.lock:
            for k in keys:
                self.cur.pop(k, None)
                self.old.pop(k, None)


def _waits(system):
    """``system``'s table (per system: each keeps its own ticks, and it goes with the system)."""
    w = getattr(system, "_sdk_waits", None)
    if w is None:
        with _wlock:
            w = getattr(system, "_sdk_waits", None)
            if w is None:
                w = system._sdk_waits = _Waits(system.wall_tick())
    return w


def _keys(ctx) -> list:
    """The wait keys of the current task, or of every record of a batch handler's batch (it
    waits as long as its longest waiting record: records that joined it later do not restart
    the clock)."""
    b = getattr(ctx, "batch", None)
    if b is None:
        t = ctx.task
        det = (t.flags & T.FLAG_DETERMINISTIC) << 62
        return [t.type << 72 | det | t.channel << 32 | t.seq]
    r = b.records
    lo = ((r["channel"].astype(np.uint64) << np.uint64(32)) | r["seq"]).tolist()
    det = (r["flags"] & T.FLAG_DETERMINISTIC).tolist()
    hi = int(r["type"][0]) << 72
    return [hi | d << 62 | x for d, x in zip(det, lo)]


def _backpressure(ctx, deadline):
    """CHAN_FULL seen: WAIT, or CHAN_FULL once the task (a batch: its longest waiting record)
    has waited longer than ``deadline`` ticks since its first WAIT."""
    if deadline is None:
        return WAIT
    w = _waits(ctx.system)
    keys = _keys(ctx)
    if w.waited(keys, ctx.system.wall_tick(), deadline) > deadline:
        w.drop(keys)
        return CHAN_FULL
    return WAIT


def _settled(ctx):
    """An outcome other than WAIT: the task's clock is done. (In a batch handler one send's
    outcome is not the batch's: its records' entries age out instead.)"""
    w = getattr(ctx.system, "_sdk_waits", None)
    if w is not None and (w.cur or w.old) and getattr(ctx, "batch", None) is None:
        w.drop(_keys(ctx))


def _failed(ctx):
    """A send failed (not CHAN_FULL): the handler fails its task, or its batch, with it."""
    w = getattr(ctx.system, "_sdk_waits", None)
    if w is not None and (w.cur or w.old):
        w.drop(_keys(ctx))


def send(ctx, target, meta0: int = 0, meta1: int = 0, *, payload=None,
         deadline: int | None = DEFAULT_DEADLINE) -> int:
    """Emit one message; OK, WAIT (return it) or a negative code. See the module docstring."""
    code = ctx.emit(target, meta0, meta1, payload=payload)
    if code == CHAN_FULL:
        return _backpressure(ctx, deadline)
    if code == OK:
        _settled(ctx)
    else:
        _failed(ctx)
    return code


def send_all(ctx, target, meta0s, meta1s=None, *, deadline: int | None = DEFAULT_DEADLINE) -> int:
    """Emit ``meta0s[i]`` (with ``meta1s[i]``) for i from ``ctx.task.meta1`` on. On a full
    channel the task's meta1 is set to the first one not sent and WAIT comes back: return it,
    and the task resumes there (so the task's own meta1 is the cursor: start it at 0). The
    deadline counts from the last run that sent nothing."""
    start = ctx.task.meta1
    send1 = ctx.emitter(target)
    for i in range(start, len(meta0s)):
        c = send1(int(meta0s[i]), 0 if meta1s is None else int(meta1s[i]))
        if c == CHAN_FULL:
            ctx.task.meta1 = i
            if i > start:
                _settled(ctx)          # it moved on: a new wait
            return _backpressure(ctx, deadline)
        if c:
            _failed(ctx)
            return c
    _settled(ctx)
    return OK


# -------------------------------------------------------------------------- request / reply
_EXPIRED = object()                 # a timed-out tag's outcome, kept for its waiter's poll


class Requests:
    """In-kernel request/reply with correlation: ``tag = req.start(ctx)``, send the request
    with the tag; the reply handler calls ``req.complete(tag, value)`` (any value but None:
    ValueError); the waiting task polls ``req.poll(ctx, tag)``: the value, ``None`` (not
    yet: ``return ctx.wait_()``) or :data:`TIMEOUT` once ``timeout`` ticks passed since
    ``start`` with no reply (counted in ``timeouts``; a reply after that is refused:
    ``complete`` answers False, counted in ``late``). Polling a tag it does not await (never
    started here, its outcome already taken, or left untaken ``timeout`` ticks: its waiter is
    gone) raises ValueError. Nothing is kept for good: ``start``, ``complete`` and
    ``pending`` also time out what ran out of time and forget outcomes nobody took. Tags are
    48-bit.

    Example::

        req = sdk.Requests(timeout=100)

        @app.handler("ASK")
        def ask(ctx):
            tag = ctx.task.meta1 or req.start(ctx)
            if ctx.task.meta1 == 0:
                ctx.emit("kv.get", ctx.task.meta0, tag)
                return ctx.wait_(meta1=tag)
            r = req.poll(ctx, tag)
            if r is None:
                return ctx.wait_()
            ...                                       # r: the value, or sdk.TIMEOUT

        @app.handler("ANSWER", consumes="kv.resp", message="KV_RESP")
        def answer(ctx):
            req.complete(kv.unpack(ctx.task.meta0)[2], ctx.task.meta1)
    """

    def __init__(self, timeout: int = 1000):
        if not isinstance(timeout, int) or timeout < 1:
            raise ValueError(f"Requests: timeout must be a positive tick count, got {timeout!r}")
        self.timeout = timeout
        self._tags = itertools.count(1)
        # tag -> (tick started, the clock: its system's wall_tick), in start order
        self._open: dict[int, tuple] = {}
        # tag -> (value or _EXPIRED, tick settled, the clock), in settle order
        self._done: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self.timeouts = 0
        self.late = 0

    def _expire(self) -> None:
        """(Under the lock.) Time out the oldest open tags whose time ran out and forget the
        outcomes untaken for ``timeout`` ticks; both stop at the first one still in time."""
        op, dn = self._open, self._done
        while op:
            tag, (t0, clock) = next(iter(op.items()))
            now = clock()
            if now - t0 <= self.timeout:
                break
            del op[tag]
            self.timeouts += 1
            dn[tag] = (_EXPIRED, now, clock)
        while dn:
            tag, (_, t1, clock) = next(iter(dn.items()))
            if clock() - t1 <= self.timeout:
                break
            del dn[tag]

    def start(self, ctx) -> int:
        clock = ctx.system.wall_tick
        with self._lock:
            self._expire()
            tag = next(self._tags) & ((1 << 48) - 1)
            self._open[tag] = (clock(), clock)
        return tag

    def complete(self, tag: int, value) -> bool:
        """Record the reply of ``tag``; False for an unknown or timed-out tag (counted in
        ``late``). ``value`` may be anything but None (``poll``'s None means "not yet")."""
        if value is None:           # poll would read it as "not yet", then say TIMEOUT
            raise ValueError(f"Requests.complete: tag={tag!r}, value=None: allowed any value "
                             "but None (poll's None means 'not yet'): pass a value of your own")
        with self._lock:
            self._expire()
            t = self._open.pop(tag, None)
            if t is None:
                self.late += 1
                return False
            t0, clock = t
            now = clock()
            if now - t0 > self.timeout:     # ran out of time, not noticed yet
                self.timeouts += 1
                self.late += 1
                self._done[tag] = (_EXPIRED, now, clock)
                return False
            self._done[tag] = (value, now, clock)
        return True

    def poll(self, ctx, tag: int):
        with self._lock:
            d = self._done.pop(tag, None)
            if d is not None:
                return TIMEOUT if d[0] is _EXPIRED else d[0]
            t = self._open.get(tag)
            if t is None:
                raise ValueError(f"Requests.poll: tag={tag!r}: not awaited here: allowed a tag "
                                 "from this Requests' start() whose outcome (the value or "
                                 "TIMEOUT) was not taken yet")
            if ctx.system.wall_tick() - t[0] > self.timeout:
                del self._open[tag]
                self.timeouts += 1
                return TIMEOUT
        return None

    def pending(self) -> int:
        """Tags awaiting a reply (the ones whose time ran out are timed out first)."""
        with self._lock:
            self._expire()
            return len(self._open)
