"""``ggmk.sdk``: the second tier for module authors (SPEC §10) - helpers over the kernel API.

In a handler every helper returns a code to pass on: ``OK`` (0) when the message went out,
``WAIT`` when the channel was full (return it: the task runs again on a later tick - waiting
is backpressure, not a yield), or a negative code (``CHAN_CLOSED``; ``CHAN_FULL`` once a
task has waited longer than ``deadline`` ticks: the bound, so a stuck consumer fails the
producer's task onto ``sys.error`` instead of parking it forever)::

    code = sdk.send(ctx, "work.out", x)
    if code:
        return code

=====================  ==========================================================================
helper                 what
=====================  ==========================================================================
send / send_all        emit with backpressure (``send_all`` resumes at meta1 after a WAIT)
Requests               in-kernel request/reply: correlation tags, replies, timeouts
Client                 host-side request/reply over a request channel and a reply channel
KV                     host-side kv client (put/get/delete, correlated by tag; get_many /
                       get_array: a block of gets in one column, replies matched in bulk)
new_tags               request tags unique in the process (clients of a reply channel share it)
kv_put/kv_get/kv_del   in-handler requests to a kv module
log / logf             a line to the log module (``logf``: format + up to 4 ints, host-formatted)
timer_once/_every      timers (the timer module); ``timer_cancel``
gate_arrive            arrive at a gate (the gate module)
count/gauge/observe    the stats module's counter / gauge / histogram
=====================  ==========================================================================

Example (a handler that counts, logs and answers through kv, all with backpressure)::

    import ggmk
    from ggmk import sdk
    from ggmk.modules import kv, log, stats

    app = ggmk.Module("app")

    @app.handler("APP_WORK")
    def work(ctx):
        if ctx.task.yield_count == 0:               # phase 0: the put (resumed on WAIT)
            code = sdk.kv_put(ctx, ctx.task.meta0, 42)
            return code or ctx.yield_()
        code = sdk.logf(ctx, "info", "work %d done", ctx.task.meta0)   # phase 1: the log
        return code or sdk.count(ctx, 1)

    mods = [app, kv.module(capacity=64), log.module(), stats.module(period=5)]
    with ggmk.boot(mods, workers=2) as system:
        system.submit("APP_WORK", meta0=7)
        system.run()
        kvc = sdk.KV(system)
        print(kvc.get(7))                   # 42: one request, one reply
        print(kvc.get_many([7, 8, 7]))      # [42, None, 42]: one column out, matched in bulk
        kvc.close()

Request/reply from the host: ``KV.get`` (and ``Client.call``) is one request in flight. With
caller runs (boot's ``host_helps``, on by default) the calling thread runs the request itself
while a worker is idle: first the direct request path (``System.direct``: when the request
channel's only subscriber is a handler with nothing waiting, the request runs as a task on
the caller's thread, no ring, gather or hand-off), else the idle worker's steps
(``hal.help``); without it, two OS-thread wake-ups per round trip (publish -> a parked
worker, reply -> the waiting caller);
``KV.get_many`` / ``get_array`` (and ``Client.publish_many``/``wait_many``) send a block of
requests as one column and file the block of replies by tag with NumPy: use them whenever
there is more than one request to make.
"""
from __future__ import annotations

import itertools
import math
import operator
import threading
import time
import weakref

import numpy as np

from ggmk import task as T
from ggmk.errors import KernelStopped
from ggmk.task import CHAN_FULL, OK, WAIT

__all__ = ["send", "send_all", "Requests", "Client", "KV", "new_tags", "TAG_MASK", "kv_put",
           "kv_get", "kv_del", "log", "logf", "timer_once", "timer_every", "timer_cancel",
           "gate_arrive", "count", "gauge", "observe", "TIMEOUT", "DEFAULT_DEADLINE"]

_U64 = (1 << 64) - 1
_REC = T.RECORD_STRUCT            # one record as plain ints (seq at 4, payload_ptr at 5, ...)
_FEW = 8                           # replies filed with plain ints when no block is awaited
_BLOCK = 4096                      # requests a client's reused emit buffer holds
_FULL_NAP = 0.002                  # s: longest wait for a reply while a request ring is full
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


def _u64_column(name: str, v, n: int | None = None) -> np.ndarray:
    """``v`` (a column, or a scalar when ``n`` is given) as uint64, or a ValueError naming
    the argument and the value."""
    try:
        if n is not None and np.ndim(v) == 0:
            x = operator.index(v)               # (np.full would truncate a float)
            if isinstance(v, (bool, np.bool_)) or not 0 <= x <= _U64:
                raise ValueError
            a = np.full(n, x, dtype=np.uint64)
        else:
            a = np.asarray(v)
            if a.dtype != np.uint64:
                if a.dtype.kind in "fO" and not isinstance(v, np.ndarray):
                    # Python ints past 2**63 make a list float64 (past 2**64 object) to
                    # NumPy: range-check them as ints and convert exactly
                    xs = [operator.index(x) for x in v]
                    if xs and (min(xs) < 0 or max(xs) > _U64):
                        raise ValueError
                    a = np.array(xs, dtype=np.uint64)
                elif a.size and (a.dtype.kind not in "iu" or
                                 (a.dtype.kind == "i" and a.min() < 0)):
                    raise ValueError
                else:
                    a = a.astype(np.uint64)
            if isinstance(v, (list, tuple)):
                types = set(map(type, v))       # NumPy made True a 1: refuse it as get(True) is
                if bool in types or np.bool_ in types:
                    raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{name}: expected integers in 0..2**64-1 (a column, no bools), got "
                         f"{v!r:.80}") from None
    if a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError(f"{name}: expected a 1-D column" +
                         (f" of {n} values" if n is not None else "") +
                         f", got shape {a.shape}")
    return a


def _check_timeout(who: str, timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{who}: timeout={timeout!r}: allowed a finite number of seconds > 0")
    return timeout


# ------------------------------------------------------------------------------- tags
TAG_MASK = (1 << 48) - 1                # tags are 48-bit (what a kv reply carries)
_tag_lock = threading.Lock()
_tag_next = 1


def new_tags(n: int = 1) -> int:
    """The first of ``n`` consecutive request tags (48-bit, never 0, a run never wraps) that
    no other call in this process gets (until 2**48 tags later): what ``KV`` numbers its
    requests with. Clients of one reply channel share its replies, so their tags must not
    collide: take them here (a tag already awaited on the channel raises ValueError)."""
    global _tag_next
    if n.__class__ is not int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"new_tags: n={n!r}: allowed an int in 0..2**48-1")
        n = int(n)
    if not 0 <= n <= TAG_MASK:
        raise ValueError(f"new_tags: n={n!r}: allowed an int in 0..2**48-1")
    with _tag_lock:
        lo = _tag_next
        if lo + n - 1 > TAG_MASK:
            lo = 1
        _tag_next = lo + n
    return lo


def _tag_m0(m0, m1):
    return m0


def _tag48(m0, m1):
    return m0 & TAG_MASK


_U48 = np.uint64(TAG_MASK)


def _tags48(m0, m1):
    return m0 & _U48


class _Pending:
    """One awaited request, or a run of requests with consecutive tags ``lo .. lo + n - 1``:
    replies land in its columns by ``tag - lo`` (one NumPy scatter per taken block, not a
    Python step per reply)."""

    __slots__ = ("lo", "n", "left", "m0", "m1", "data", "got")

    def __init__(self, lo: int, n: int, m0=None, m1=None):
        self.lo = lo
        self.n = n
        self.left = n
        # the caller's columns (views of a longer stream) or fresh ones
        self.m0 = np.zeros(n, np.uint64) if m0 is None else m0
        self.m1 = np.zeros(n, np.uint64) if m1 is None else m1
        self.got = np.zeros(n, np.bool_)
        self.data = None            # a list of bytes/None once a reply carried a payload


class _One:
    """One awaited reply with any tag (a dict look-up files it)."""

    __slots__ = ("lo", "n", "left", "m0", "m1", "data")

    def __init__(self, tag):
        self.lo = tag
        self.n = self.left = 1
        self.m0 = self.m1 = 0
        self.data = None


def _tags_of(p) -> str:
    return f"tag {p.lo}" if p.n == 1 else f"tags {p.lo}..{p.lo + p.n - 1}"


def _all_new(got, idx) -> bool:
    """Set ``got[idx]`` (all unset) when ``idx`` names each slot once: True; False (``got``
    left as it was) when a slot comes twice (a duplicated reply in one take)."""
    a, b = int(idx.min()), int(idx.max()) + 1
    before = np.count_nonzero(got[a:b])
    got[idx] = True
    if np.count_nonzero(got[a:b]) - before == len(idx):
        return True
    got[idx] = False
    return False


_RUN = object()                     # register's "a run of tags" (None is a bad tag, not this)
_hubs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_hubs_lock = threading.Lock()


class _Hub:
    """The reply side shared by every ``Client`` of one reply channel of a system: one
    host-side subscription, drained by whichever client waits, each reply filed by tag to
    the request that awaits it, whichever client sent it (one that nobody awaits is counted
    in ``ignored`` and dropped). Why shared: the reply channel is a lossless fan-out, so a
    subscription per client would fill with the others' replies while its client is idle,
    and then refuse, stalling the replier and every other client. So one hub per channel,
    and its clients must pass the same tag functions (``fns``; another pair: ValueError).
    Reference-counted by its clients: the last ``close`` unsubscribes and wakes the waiters
    (they fail at once: nothing files their replies any more)."""

    def __init__(self, system, chan, key, fns):
        self.system = system                        # (a DualSystem: its halted flag)
        cpu = getattr(system, "cpu", system)        # (a DualSystem: its CPU kernel's parts)
        self.chan = chan
        self.key = key
        self.name = chan.name
        self.arena = cpu.arena
        self.fns = fns                              # (reply_tag, reply_tags) as given
        reply_tag, reply_tags = fns
        if reply_tag is None:                       # only the column form: one reply of it
            def reply_tag(m0, m1, _f=reply_tags):
                return int(_f(np.array([m0], np.uint64), np.array([m1], np.uint64))[0])
        self.reply_tag = reply_tag
        self.reply_tags = reply_tags
        # KV's tags are 48-bit (the reply carries no more): a wider one could never match
        self.tag_max = TAG_MASK if reply_tag is _tag48 else _U64
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.pumping = False
        self.waiters = 0            # threads in cond.wait (under lock): whom a notify wakes
        self.sem = threading.Lock()                 # released by the delivery hook
        self.sem.acquire()
        self.sleeping = False
        self.single: dict = {}                      # tag -> _One
        self.runs: list[_Pending] = []              # consecutive-tag blocks
        self.ignored = 0
        self.users = 0
        self.closed = False
        self.help = cpu.hal.help
        self.sub = chan.subscribe(name=f"clients-{id(self):x}", notify=self.wake)
        # (System.halt lets a waiting client take replies already delivered before it closes
        # the channel: a reply emitted while the halt drained is still taken)
        self.sub.awaited = lambda: bool(self.single or self.runs)

    @staticmethod
    def join(system, reply: str, reply_tag, reply_tags) -> "_Hub":
        """The hub of channel ``reply`` (made on first use); ValueError when it files
        replies with other tag functions (a second subscription would fill while idle and
        stall the replier)."""
        ch = system.channel(reply)
        key = id(ch)                # (the hub holds the channel: its id is not reused)
        fns = (reply_tag, reply_tags)
        with _hubs_lock:
            hub = _hubs.get(key)
            if hub is None or hub.closed:
                hub = _hubs[key] = _Hub(system, ch, key, fns)
            elif hub.fns != fns:
                raise ValueError(
                    f"Client: reply channel {reply!r} already has clients with "
                    f"reply_tag={hub.fns[0]!r}, reply_tags={hub.fns[1]!r}; got "
                    f"reply_tag={reply_tag!r}, reply_tags={reply_tags!r}: all clients of one "
                    f"reply channel share its subscription, so they must pass the same tag "
                    f"functions (module-level functions, not a lambda per client)")
            hub.users += 1
        return hub

    def leave(self) -> None:
        with _hubs_lock:
            self.users -= 1
            if self.users > 0:
                return
            self.closed = True
            if _hubs.get(self.key) is self:
                del _hubs[self.key]
        with self.cond:             # (no pump runs meanwhile: pump looks at closed first)
            try:
                self.chan.unsubscribe(self.sub)     # what its ring holds goes to sys.dropped
            except Exception:   # noqa: BLE001 - closed at halt
                pass
            self.cond.notify_all()                  # the waiters fail at once, not at timeout
        try:
            self.sem.release()                      # and so does the sleeping pumper
        except RuntimeError:
            pass

    def closed_error(self, what: str) -> ValueError:
        return ValueError(f"Client: closed (the last client of {self.name!r} left, its "
                          f"subscription is gone): {what}")

    def check_tag(self, who: str, tag) -> int:
        """``tag`` as an int, or a ValueError naming it and what is allowed."""
        if tag.__class__ is not int:
            if isinstance(tag, (bool, np.bool_)) or not isinstance(tag, (int, np.integer)):
                raise ValueError(f"{who}: tag={tag!r}: allowed an int in 0..{self.tag_max}")
            tag = int(tag)
        if not 0 <= tag <= self.tag_max:
            raise ValueError(f"{who}: tag={tag!r}: allowed an int in 0..{self.tag_max}" +
                             (" (the tags of a kv reply are 48-bit: sdk.new_tags)"
                              if self.tag_max == TAG_MASK else ""))
        return tag

    # -- waking ---------------------------------------------------------------------------
    def wake(self) -> None:
        """The subscription's delivery hook (runs under the ring's lock: keep it tiny)."""
        if self.sleeping:
            self.sleeping = False
            try:
                self.sem.release()
            except RuntimeError:                    # released already: one token is enough
                pass

    def arrived(self) -> bool:
        if self.closed:                             # (stop helping: nothing will come)
            return True
        r = self.sub.ring
        return r.tail != r.head or self.sub.behind

    def gone(self) -> bool:
        """No reply can come any more: the reply channel is closed (halt), not suspended."""
        ch = self.chan
        return ch.closed and not ch.suspended

    def sleep(self, left: float) -> None:
        """Block until a delivery (or ``left`` seconds). First the caller runs: while a worker
        is idle, this thread runs the steps that answer it (``hal.help``: no wake-up either
        way). A stale token only makes one wake-up spurious: the caller looks again."""
        if self.help(self.arrived, time.monotonic() + left):
            return
        self.sleeping = True
        # (a close wakes a sleeper like a delivery: looked at after ``sleeping`` is set)
        if not self.arrived() and not self.gone():
            self.sem.acquire(True, left)
        self.sleeping = False

    # -- filing replies -------------------------------------------------------------------
    def pump(self) -> int:
        """Take what the subscription holds and file it by tag (holding ``lock``). Every
        payload taken is copied out and its arena reference released, matched or not."""
        if self.closed:                             # unsubscribed: its ring is not ours
            return 0
        sub = self.sub
        r = sub.ring
        if r.tail - r.head == 1 and not self.runs and not sub.behind \
                and sub.chan.log is None:
            # one reply (one request in flight): popped as one record and read with one
            # struct call, acknowledged as Subscriber.take does
            f = r.pop1_fields()
            if f is None:
                return 0
            sub.delivered += 1
            sub.acked = sub.chan.unwrap(f[4])
            return self._pump_one(f)
        recs = sub.take()
        n = len(recs)
        if not n:
            return 0
        m0, m1 = recs["meta0"], recs["meta1"]
        ptrs = recs["payload_ptr"]
        if n <= _FEW and not self.runs:
            return self._pump_few(recs, m0.tolist(), m1.tolist(), ptrs.tolist())
        has_data = bool(np.count_nonzero(ptrs))
        if self.reply_tags is not None:
            tags = np.asarray(self.reply_tags(m0, m1), dtype=np.uint64)
        else:
            tags = np.fromiter((self.reply_tag(int(a), int(b)) for a, b in zip(m0, m1)),
                               dtype=np.uint64, count=n)
        left = None                                 # mask of the records not filed yet
        for p in self.runs:
            rel = tags - np.uint64(p.lo)            # wraps for tags below lo: out of range
            hit = rel < np.uint64(p.n)
            nh = np.count_nonzero(hit)
            if not nh:
                continue
            idx = rel.astype(np.intp) if nh == n and left is None else None
            if idx is not None and not np.count_nonzero(p.got[idx]) and _all_new(p.got, idx):
                # every reply taken is of this block, none came before and none twice (the
                # usual case of one block in flight): no masks to apply
                p.m0[idx] = m0
                p.m1[idx] = m1
                p.left -= n
                if has_data:
                    self._file_data(p, range(n), idx.tolist(), recs, ptrs)
                left = ~hit
                break                               # (nothing is left for the others)
            src = np.flatnonzero(hit)
            idx = rel[src].astype(np.intp)
            fresh = ~p.got[idx]                     # a reply that came before fills nothing
            src, idx = src[fresh], idx[fresh]
            if len(idx) > 1:                        # nor one twice in this take: first copies
                idx, first = np.unique(idx, return_index=True)
                src = src[first]
            p.m0[idx] = m0[src]
            p.m1[idx] = m1[src]
            p.got[idx] = True
            p.left -= len(idx)
            self.ignored += nh - len(idx)           # the duplicates: awaited by nobody now
            if has_data:
                self._file_data(p, src.tolist(), idx.tolist(), recs, ptrs)
            left = ~hit if left is None else left & ~hit
        rest = range(n) if left is None else np.flatnonzero(left).tolist()
        single = self.single
        for i in rest:                              # single requests: a dict look-up each
            p = single.get(int(tags[i]))
            if p is None or p.left == 0:
                self.ignored += 1
                continue
            p.m0, p.m1 = int(m0[i]), int(m1[i])
            if has_data and ptrs[i]:
                p.data = [self._copy(recs[i])]
            p.left = 0
        if has_data:                                # every reference taken is given back
            self.arena.release_many(ptrs[ptrs != 0])
        return n

    def _pump_one(self, f) -> int:
        """One reply given as its fields (``Ring.pop1_fields``): ``_pump_few`` for one,
        without the lists and the loop (the one-request-in-flight round trip)."""
        a, b, ptr = f[9], f[10], f[5]
        p = self.single.get(self.reply_tag(a, b))
        if p is None or p.left == 0:
            self.ignored += 1
        else:
            p.m0, p.m1 = a, b
            if ptr:
                p.data = [bytes(self.arena.view(ptr, f[6]))]
            p.left = 0
        if ptr:
            self.arena.release(ptr)
        return 1

    def _pump_few(self, recs, m0s, m1s, ptrs) -> int:
        """A few replies and no block awaited (one request in flight): plain ints."""
        tag_of = self.reply_tag
        single = self.single
        release = None
        for i, (a, b, ptr) in enumerate(zip(m0s, m1s, ptrs)):
            p = single.get(tag_of(a, b))
            if p is None or p.left == 0:
                self.ignored += 1
            else:
                p.m0, p.m1 = a, b
                if ptr:
                    p.data = [self._copy(recs[i])]
                p.left = 0
            if ptr:
                release = release or []
                release.append(ptr)
        if release:
            self.arena.release_many(np.array(release, dtype=np.uint64))
        return len(m0s)

    def _file_data(self, p, src, dst, recs, ptrs) -> None:
        """The payloads of replies ``src`` (positions in ``recs``) copied out into block
        ``p``'s slots ``dst``."""
        for i, j in zip(src, dst):
            if ptrs[i]:
                if p.data is None:
                    p.data = [None] * p.n
                p.data[j] = self._copy(recs[i])

    def _copy(self, r) -> bytes:
        return bytes(self.arena.view(int(r["payload_ptr"]), int(r["payload_len"])))

    def filed(self, tag):
        """The reply of ``tag`` if it is in already: one pump under the lock, none of
        ``wait``'s waiting. None: not in."""
        cond = self.cond
        with cond:
            if not self.pumping and self.pump() and self.waiters:
                cond.notify_all()                   # others' replies may have come too
            p = self.single.get(tag)
            if p is None or p.left:
                return None
            del self.single[tag]
        return p.m0, p.m1, None if p.data is None else p.data[0]

    def wait(self, p, timeout: float, what) -> None:
        """Block until every reply of ``p`` is in; TimeoutError (``what()``: the message)
        after ``timeout`` seconds, KernelStopped once the reply channel closed (the system
        halted: no reply can come). ``p`` is unregistered either way."""
        deadline = time.monotonic() + timeout
        cond = self.cond
        with cond:
            try:
                while p.left:
                    if self.closed:
                        break
                    if not self.pumping and self.pump():
                        if self.waiters:
                            cond.notify_all()
                        continue
                    if self.gone():
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if self.pumping:                # another thread takes: wait for its news
                        self.waiters += 1
                        try:
                            cond.wait(left)
                        finally:
                            self.waiters -= 1
                    else:
                        self._pump_after_sleep(left)
            finally:
                self.unregister(p)
                if self.waiters:
                    cond.notify_all()               # leaving: someone else may pump now
        if p.left:
            if self.closed:
                raise self.closed_error(f"{p.left} of {p.n} replies ({_tags_of(p)}) "
                                        "left unfiled")
            if self.gone():
                raise self.stopped(p.left, p.n, _tags_of(p))
            raise TimeoutError(what())

    def stopped(self, left: int, n: int, tags: str):
        """The error of a wait the halt ended: how many requests it left unanswered."""
        why = "the system halted" if getattr(self.system, "halted", False) \
            else "the channel was closed"
        return KernelStopped(f"{why}: {left} of {n} request(s) ({tags}) left unanswered on "
                             f"{self.name!r} (the requests are on sys.error / sys.dropped, or "
                             f"ran and their replies were dropped)")

    def register(self, p, tag=_RUN) -> None:
        """Await ``p`` (a run when no ``tag`` is given; a checked one: ``check_tag``);
        ValueError when its tags are awaited already on this channel (by any client)."""
        with self.lock:
            if self.closed:
                raise ValueError(f"Client: closed (its reply channel {self.name!r} is "
                                 "unsubscribed)")
            if tag is _RUN:
                lo, hi = p.lo, p.lo + p.n
                clash = next((max(lo, q.lo) for q in self.runs
                              if q.lo < hi and lo < q.lo + q.n), None)
                if clash is None and p.n:
                    single = self.single
                    if len(single) < p.n:
                        clash = next((t for t in single if lo <= t < hi), None)
                    else:
                        clash = next((t for t in range(lo, hi) if t in single), None)
                if clash is not None:
                    raise ValueError(f"Client: tags {lo}..{hi - 1} overlap tags already "
                                     f"awaited on {self.name!r} (at {clash}); tags must be "
                                     f"unique in flight (sdk.new_tags)")
                self.runs.append(p)
            else:
                if tag in self.single or \
                        (self.runs and any(0 <= tag - q.lo < q.n for q in self.runs)):
                    raise ValueError(f"Client: tag {tag} is already awaited on {self.name!r}; "
                                     f"tags must be unique in flight (sdk.new_tags)")
                self.single[tag] = p

    def unregister(self, p) -> None:       # holding lock
        if p.__class__ is _One:
            if self.single.get(p.lo) is p:
                del self.single[p.lo]
        else:
            try:
                self.runs.remove(p)
            except ValueError:
                pass

    def backoff(self, deadline: float, what) -> None:
        """A request channel is full: take replies meanwhile (that is what drains the
        kernel's side) and let the kernel run; TimeoutError past the deadline."""
        if self.closed:
            raise self.closed_error("a request channel was full")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(what())
        # no hook reports room in a request ring, but replies do come back as the kernel
        # works through it: wait for the next delivery, bounded (room can also come without
        # a reply to us, e.g. another client's requests were taken)
        nap = min(left, _FULL_NAP)
        cond = self.cond
        with cond:
            if self.pump():
                cond.notify_all()
                return
            if self.pumping:
                self.waiters += 1
                try:
                    cond.wait(nap)
                finally:
                    self.waiters -= 1
                return
            self._pump_after_sleep(nap)

    def _pump_after_sleep(self, left: float) -> None:
        """Holding ``cond``, nobody else pumping: take the pumper role, sleep (or run the
        answering steps: ``sleep``) outside the lock for at most ``left`` s, then file what
        came and wake the other waiters (news, or the pumper role is free)."""
        cond = self.cond
        self.pumping = True
        cond.release()
        try:
            self.sleep(left)
        finally:
            cond.acquire()
            self.pumping = False
        self.pump()
        cond.notify_all()


class Client:
    """Host-side request/reply: publish on ``request`` (a channel name), read replies from a
    host-side subscription of ``reply``; ``reply_tag(meta0, meta1)`` gives a reply's tag
    (``reply_tags(m0s, m1s)``, its column form, lets whole blocks of replies be matched
    with NumPy; given alone, it tags single replies too; neither: the tag is meta0).
    ``call(meta0, meta1, tag=..., payload=...)`` -> (meta0, meta1, payload bytes or None);
    ``TimeoutError`` after ``timeout`` seconds; ``KernelStopped`` as soon as the system
    halts (no reply can come). Thread-safe: replies for another thread's tags are kept for
    it. A tag is an int 0..2**64-1 (0..2**48-1 with KV's tag functions), else ValueError;
    ``channel=`` (a call's request channel instead of ``request``) is a name or a Channel
    of this system, else ValueError.

    Every client of one reply channel shares one subscription: whichever waits takes the
    replies and files them by tag for whoever awaits them, so an idle client holds nothing
    up. So they must pass the same tag functions (module-level ones, or the defaults; other
    ones raise ValueError), and their tags must be unique across them: take them from
    :func:`new_tags` (a tag already awaited on the channel raises ValueError). ``close()``
    leaves it (the last one unsubscribes); a closed client's calls raise ValueError.

    ``publish_many`` + ``wait_many`` pipeline a block of requests with consecutive tags:
    one column publish, and the replies matched by tag in bulk.

    How a caller waits (no polling): one waiting thread at a time (the *pumper*) sleeps on a
    plain lock that the reply subscription's delivery hook releases (the same primitive a
    parked worker sleeps on: one wake-up per delivery, nothing allocated per wait), takes
    what arrived, files it by tag and wakes the other waiters (a Condition); when its own
    replies are in it hands the role on (a halt closes the reply channel, which wakes it like
    a delivery). A full request channel is backpressure: the caller keeps taking
    replies (which is what frees the kernel's side) and retries, up to ``timeout`` seconds,
    then raises ``TimeoutError`` naming CHAN_FULL. A request channel to the GPU kernel that is
    suspended while that kernel is reset (CHAN_CLOSED, not for good) is waited out the same
    way. ``system``: a ``System`` or the ``DualSystem`` of ``ggmk.boot(..., device=)``.
    """

    def __init__(self, system, request: str, reply: str, *, reply_tag=None, reply_tags=None,
                 timeout: float = 5.0):
        self.timeout = _check_timeout("Client", timeout)
        # a DualSystem stays the system (its halted flag is set first at halt, its channel()
        # finds bridge channels); the CPU kernel's parts come from its CPU kernel
        self.system = system
        cpu = self._cpu = getattr(system, "cpu", system)
        self.arena = cpu.arena
        self.request = system.channel(request)
        self.reply_name = reply
        if reply_tags is None and reply_tag is None:
            reply_tag = reply_tags = _tag_m0        # the default: tag = meta0
        hub = self._hub = _Hub.join(system, reply, reply_tag, reply_tags)
        self.reply_tag = hub.reply_tag              # (made from reply_tags when not given)
        self.reply_tags = reply_tags
        # the shared reply side's state, under the names this class always had
        self._cond = hub.cond
        self._lock = hub.lock
        self._single = hub.single
        self._runs = hub.runs
        self._pump = hub.pump
        self._arrived = hub.arrived
        self._plock = threading.Lock()              # the reusable one-record request
        self._rec = None
        self._blk = None                            # the reusable block of requests
        self._closed = False
        self._hal = cpu.hal
        # the direct request path (System.direct), where the system has one
        self._direct = getattr(cpu, "direct", None) if hasattr(cpu.hal, "lend") else None

    @property
    def sub(self):
        """The reply channel's subscription (shared by every client of it)."""
        return self._hub.sub

    @property
    def ignored(self) -> int:
        """Replies taken that nobody awaited (late, or of requests sent by others)."""
        return self._hub.ignored

    def _open(self, who: str, channel=None):
        """The request channel of a call (``channel``: None, a name or a Channel of this
        system); ValueError once this client is closed, or for another system's channel."""
        if self._closed:
            raise ValueError(f"Client.{who}: this client is closed (close() was called): "
                             f"make a new one")
        if channel is None:
            return self.request
        if channel.__class__ is str:                # (ChannelError when unknown)
            return self.system.channel(channel)
        if getattr(channel, "kernel", None) is not self.request.kernel:
            raise ValueError(f"Client.{who}: channel={channel!r:.120}: allowed None, a "
                             f"channel name or a Channel of this client's system")
        return channel

    def _closed_for_good(self, ch) -> bool:
        """A request channel refusing with CHAN_CLOSED for good (halt), not suspended while
        the GPU kernel is reset: a suspended one is waited out like a full one."""
        return not getattr(ch, "suspended", False) or getattr(self.system, "halted", False)

    @staticmethod
    def _refusal(ch) -> str:
        return "CHAN_CLOSED (suspended: the GPU kernel is being reset)" if ch.closed \
            else "CHAN_FULL"

    def _stopped_sending(self, ch, sent: str = ""):
        """The error of a request refused with CHAN_CLOSED."""
        if getattr(self.system, "halted", False):
            return KernelStopped(f"the system halted: request channel {ch.name!r} is closed"
                                 + (f" ({sent} sent)" if sent else ""))
        return TimeoutError(f"request channel {ch.name!r}: CHAN_CLOSED"
                            + (f" ({sent} sent)" if sent else ""))

    # -- publishing -----------------------------------------------------------------------
    def _send_one(self, ch, meta0, meta1) -> int:
        """One request without a payload through a reused record (no per-call array)."""
        if not ch.type_id:                      # an any-type channel: the general path
            return ch.publish(meta0, meta1)
        if ch.kernel is self._cpu:              # one record from plain ints, no array
            return ch.emit_one(ch.type_id, 0, 0, 0, 0, meta0, meta1)
        with self._plock:
            rec = self._rec
            if rec is None or rec["channel"][0] != ch.id:
                rec = self._rec = T.make(1, type=ch.type_id, flags=T.FLAG_CHANNEL_MSG,
                                         channel=ch.id)
            rec["meta0"] = meta0
            rec["meta1"] = meta1
            rec["seq"] = 0
            if ch.emit(rec, built=True, prio=0):
                return OK
        return T.CHAN_CLOSED if ch.closed else CHAN_FULL

    def _try_send(self, ch, meta0, meta1, payload, type) -> int:
        """One attempt to publish a request: OK or the channel's code."""
        if (payload is None and type is None and meta0.__class__ is int
                and meta1.__class__ is int and 0 <= meta0 <= _U64 and 0 <= meta1 <= _U64):
            return self._send_one(ch, meta0, meta1)
        return ch.publish(meta0, meta1, payload=payload, type=type)

    def publish(self, meta0=0, meta1=0, *, tag=None, payload=None, type=None, channel=None) -> None:
        """Send a request without waiting for the reply (waits up to ``timeout`` for room)."""
        ch = self._open("publish", channel)
        if tag is not None:
            tag = self._hub.check_tag("Client.publish", tag)
            self._hub.register(_One(tag), tag)
        try:
            self._send(ch, meta0, meta1, payload, type,
                       self._try_send(ch, meta0, meta1, payload, type))
        except BaseException:                   # refused: nothing will answer the tag
            self.forget(tag)
            raise

    def _send(self, ch, meta0, meta1, payload, type, code) -> None:
        """The first attempt answered ``code``: retry while the channel is full or suspended
        (taking replies meanwhile) up to ``timeout``."""
        if code == OK:
            return
        deadline = time.monotonic() + self.timeout
        while True:
            if code == T.CHAN_CLOSED and self._closed_for_good(ch):
                raise self._stopped_sending(ch)
            if code != CHAN_FULL and code != T.CHAN_CLOSED:
                raise TimeoutError(f"request channel {ch.name!r}: "
                                   f"{T.CODE_NAMES.get(code, code)}")
            self._hub.backoff(deadline, lambda: f"request channel {ch.name!r}: "
                              f"{self._refusal(ch)} for {self.timeout} s")
            code = self._try_send(ch, meta0, meta1, payload, type)
            if code == OK:
                return

    def expect(self, tag) -> None:
        """Say a reply with ``tag`` is awaited (``publish(..., tag=)`` does it). ``tag``: an
        int 0..2**64-1 (0..2**48-1 for a kv reply channel), else ValueError."""
        self._open("expect")
        tag = self._hub.check_tag("Client.expect", tag)
        self._hub.register(_One(tag), tag)

    def forget(self, tag) -> None:
        """Stop awaiting ``tag`` (a reply that comes later is counted in ``ignored``)."""
        if tag is None:
            return
        with self._lock:
            self._single.pop(tag, None)

    def wait(self, tag):
        """The reply for ``tag`` (blocks up to ``timeout`` seconds)."""
        self._open("wait")
        return self._wait(self._hub.check_tag("Client.wait", tag))

    def _wait(self, tag):
        with self._lock:
            p = self._single.get(tag)
        if p is None:                    # not announced: wait for it anyway
            p = _One(tag)
            self._hub.register(p, tag)
        self._hub.wait(p, self.timeout, lambda: f"no reply for tag {tag} on "
                                                f"{self.reply_name!r} within {self.timeout} s")
        return p.m0, p.m1, None if p.data is None else p.data[0]

    def call(self, meta0=0, meta1=0, *, tag, payload=None, type=None, channel=None):
        """``publish`` + ``wait``: the reply ``(meta0, meta1, payload bytes or None)``.

        With caller runs (boot's ``host_helps``, on by default), the calling thread runs the
        handler that answers while a worker is idle: no thread wake-up on the round trip.
        First the direct path (``System.direct``: the request, payload and all, runs as a
        task on this thread when the channel's only subscriber is a handler with nothing of
        its waiting; its reply is then usually in before ``direct`` returns), else the idle
        worker's steps (``hal.help``)."""
        hal = self._hal
        ch = self._open("call", channel)
        tag = self._hub.check_tag("Client.call", tag)
        if not hal.helping:
            self.publish(meta0, meta1, tag=tag, payload=payload, type=type, channel=ch)
            return self._wait(tag)
        self._hub.register(_One(tag), tag)
        direct = self._direct
        try:
            if direct is not None and type is None and meta0.__class__ is int \
                    and meta1.__class__ is int and 0 <= meta0 <= _U64 and 0 <= meta1 <= _U64:
                if direct(ch, meta0, meta1, payload):   # answered on this thread: file it
                    return self._hub.filed(tag) or self._wait(tag)
            sent = []
            hal.help(self._arrived, time.monotonic() + self.timeout,
                     before=lambda: sent.append(self._try_send(ch, meta0, meta1, payload, type)))
            if sent[0] != OK:                       # full (backoff) or closed: the slow path
                self._send(ch, meta0, meta1, payload, type, sent[0])
        except BaseException:
            self.forget(tag)
            raise
        return self._wait(tag)

    def stream(self, meta0, meta1, lo: int, depth: int, *, channel=None):
        """Many requests with at most ``depth`` in flight: blocks of ``depth``, the next sent
        once the replies of the one before are all in. Tags ``lo, lo + 1, ...``; returns
        (meta0s, meta1s, data) like :meth:`wait_many`.

        Why not overlap blocks (send the next half while the first is answered)? Measured:
        slower (78 K/s against 170 K/s at depth 100, half-blocks of 50): the caller and the
        worker are both Python, so overlapping them only makes them take the GIL from each
        other (a thread asking for it waits up to the 5 ms switch interval) and doubles the
        per-block costs; one block out, one block back keeps each hand-off a clean wake-up."""
        channel = self._open("stream", channel)
        meta0 = _u64_column("meta0", meta0)
        n = len(meta0)
        meta1 = _u64_column("meta1", meta1, n)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"stream: depth must be a positive int, got {depth!r}")
        if n <= depth:
            return self.wait_many(self.publish_many(meta0, meta1, lo, channel=channel))
        r0 = np.zeros(n, np.uint64)
        r1 = np.zeros(n, np.uint64)
        data = None
        done = 0
        try:
            for i in range(0, n, depth):
                j = min(n, i + depth)
                p = self.publish_many(meta0[i:j], meta1[i:j], lo + i, channel=channel,
                                      _out=(r0[i:j], r1[i:j]))
                try:
                    data = self._merge(p, i, data, n)
                finally:
                    done = i + p.n - p.left
        except KernelStopped as e:                  # name what the whole stream lost
            raise KernelStopped(f"stream of {n} requests (tags {lo}..{lo + n - 1}): "
                                f"{n - done} left unanswered: {e}") from None
        return r0, r1, data

    def _merge(self, p: _Pending, off: int, data, n: int):
        """Wait for slice ``p`` (its columns are views of the stream's); place its payloads."""
        self.wait_many(p)
        if p.data is not None:
            if data is None:
                data = [None] * n
            data[off:off + p.n] = p.data
        return data

    def _prepare_many(self, meta0, meta1, lo, _out):
        """The validated columns and the registered block handle of a publish_many."""
        meta0 = _u64_column("meta0", meta0)
        n = len(meta0)
        meta1 = _u64_column("meta1", meta1, n)
        top = self._hub.tag_max                     # (2**48-1 on a kv reply channel)
        if not isinstance(lo, (int, np.integer)) or isinstance(lo, bool) \
                or not 0 <= int(lo) <= top - max(n - 1, 0):
            raise ValueError(f"publish_many: lo={lo!r}: allowed an int such that the tags "
                             f"lo..lo+len(meta0)-1 lie in 0..{top} (len(meta0)={n})")
        p = _Pending(int(lo), n) if _out is None else _Pending(int(lo), n, *_out)
        self._hub.register(p)
        return meta0, meta1, p

    def publish_many(self, meta0, meta1, lo: int, *, channel=None, _out=None) -> _Pending:
        """Send ``len(meta0)`` requests as columns (one emit per block the channel takes)
        whose replies carry the consecutive tags ``lo, lo + 1, ...``; returns the handle for
        :meth:`wait_many`. Waits for room (taking replies meanwhile) up to ``timeout``."""
        ch = self._open("publish_many", channel)
        meta0, meta1, p = self._prepare_many(meta0, meta1, lo, _out)
        self._send_many(p, ch, meta0, meta1, 0)
        return p

    def _send_many(self, p, ch, meta0, meta1, sent: int) -> None:
        """Send ``meta0[sent:]``: a block per emit, backing off while the channel is full;
        ``p`` is unregistered on any error."""
        n = len(meta0)
        try:
            deadline = time.monotonic() + self.timeout
            while sent < n:
                sent += self._send_block(ch, meta0[sent:], meta1[sent:])
                if sent < n:
                    if ch.closed and self._closed_for_good(ch):
                        raise self._stopped_sending(ch, f"{sent}/{n}")
                    self._hub.backoff(deadline, lambda: f"request channel {ch.name!r}: "
                                      f"{self._refusal(ch)} for {self.timeout} s "
                                      f"({sent}/{n} sent)")
        except BaseException:
            with self._lock:
                self._hub.unregister(p)
            raise

    def _send_block(self, ch, m0: np.ndarray, m1: np.ndarray) -> int:
        """Emit a block of requests through a reused record buffer (the columns are already
        validated: no per-call ``make``); how many the channel took (no waiting)."""
        n = len(m0)
        if not ch.type_id or n > _BLOCK:
            return ch.publish(meta0=m0, meta1=m1, count=n)
        with self._plock:
            blk = self._blk
            if blk is None or blk["channel"][0] != ch.id:
                blk = self._blk = T.make(_BLOCK, type=ch.type_id, flags=T.FLAG_CHANNEL_MSG,
                                         channel=ch.id)
            recs = blk[:n]
            recs["meta0"] = m0
            recs["meta1"] = m1
            recs["seq"] = 0
            return ch.emit(recs, built=True, prio=0) if n else 0

    def call_many(self, meta0, meta1, lo: int, *, channel=None) -> tuple:
        """``publish_many`` + ``wait_many``. With caller runs (the default), the calling
        thread runs the handlers that answer while a worker is idle (as in :meth:`call`)."""
        hal = self._hal
        ch = self._open("call_many", channel)
        if not hal.helping:
            return self.wait_many(self.publish_many(meta0, meta1, lo, channel=ch))
        meta0, meta1, p = self._prepare_many(meta0, meta1, lo, None)
        n = len(meta0)
        if n:
            # the borrowed worker is the only one that may drain the request ring (workers=1):
            # while it is held, send only what fits; the rest once it is given back
            sent = [0]

            def first():
                sent[0] = self._send_block(ch, meta0, meta1)
            try:
                hal.help(self._arrived, time.monotonic() + self.timeout, before=first)
            except BaseException:
                with self._lock:
                    self._hub.unregister(p)
                raise
            if sent[0] < n:
                self._send_many(p, ch, meta0, meta1, sent[0])
        return self.wait_many(p)

    def wait_many(self, p: _Pending) -> tuple:
        """(meta0s, meta1s, data) of a :meth:`publish_many` block, in request order: two
        uint64 columns and None (no reply carried a payload) or a list of bytes/None."""
        self._open("wait_many")
        self._hub.wait(p, self.timeout,
                       lambda: f"{p.left} of {p.n} replies (tags {p.lo}..{p.lo + p.n - 1}) "
                               f"missing on {self.reply_name!r} after {self.timeout} s")
        return p.m0, p.m1, p.data

    def close(self) -> None:
        """Leave the reply channel's shared subscription (the last client unsubscribes it:
        what it still holds goes to sys.dropped, and the threads still waiting on it raise
        ValueError at once). This client's calls raise ValueError from now on."""
        with self._plock:
            if self._closed:
                return
            self._closed = True
        self._hub.leave()


class KV:
    """Host-side client of a kv module (``prefix`` = its name): synchronous ``put``, ``get``,
    ``delete`` correlated by tag; ``get_many`` / ``get_array`` pipeline a block of gets (one
    column publish, replies matched by tag with NumPy). Values are ints (inline tables) or
    bytes. A status other than OK/NOT_FOUND raises ``KVError``; no reply within ``timeout``
    seconds raises ``TimeoutError``; a halt, ``KernelStopped``. Thread-safe (several threads
    may share one client); any number of clients may share one kv module (their tags come
    from :func:`new_tags`, their replies from one shared subscription)."""

    class KVError(RuntimeError):
        pass

    def __init__(self, system, prefix: str = "kv", *, timeout: float = 5.0):
        from ggmk.modules import kv as _kv
        _check_timeout("KV", timeout)
        assert _kv.TAG_MASK == TAG_MASK
        self._kv = _kv
        self.system = system
        self.prefix = prefix
        self.client = Client(system, f"{prefix}.get", f"{prefix}.resp",
                             reply_tag=_tag48, reply_tags=_tags48, timeout=timeout)
        self.put_ch = system.channel(f"{prefix}.put")
        self.del_ch = system.channel(f"{prefix}.del")
        # the kv module's state, where this process runs it (a DualSystem: its CPU kernel's)
        mods = getattr(getattr(system, "cpu", system), "modules", ())
        st = next((getattr(m, "kv", None) for m in mods if getattr(m, "name", None) == prefix),
                  None)
        self._bytes_table = st is not None and not st.inline

    def _check(self, m0, what):
        st = int(m0) >> 56
        if st > self._kv.NOT_FOUND:
            raise KV.KVError(f"kv {what}: {self._kv.STATUS_NAMES.get(st, st)}")
        return st

    def put(self, key: int, value) -> None:
        """Store ``value`` (bytes, or an int 0..2**64-1) under ``key``. An int in a bytes
        table (``value_size`` > 8) is stored as its 8 little-endian bytes, as a handler's
        ``kv_put`` of it is."""
        if isinstance(value, (bytes, bytearray)):
            data = value
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                and 0 <= int(value) < 1 << 64:
            data = int(value).to_bytes(8, "little")
            if not self._bytes_table:   # a word table: the shortest form fits any value_size
                data = data.rstrip(b"\0") or b"\0"
        else:                      # (a float or a str was converted: 3.9 came back as 3)
            raise TypeError(f"KV.put: value={value!r}: allowed bytes or an int "
                            f"0..2**64-1")
        tag = new_tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, payload=bytes(data), channel=self.put_ch)
        self._check(m0, f"put {key}")

    def get(self, key: int, default=None):
        tag = new_tags()
        m0, m1, data = self.client.call(key, tag, tag=tag)
        st = m0 >> 56
        if st:                                  # (the message is built only when needed)
            if self._check(m0, f"get {key}") != self._kv.OK:
                return default
        return data if data is not None else m1

    def delete(self, key: int) -> bool:
        tag = new_tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, channel=self.del_ch)
        return self._check(m0, f"del {key}") == self._kv.OK

    def _get_block(self, keys, depth):
        keys = _u64_column("keys", keys)
        n = len(keys)
        lo = new_tags(n)
        tags = np.arange(lo, lo + n, dtype=np.uint64)
        if depth is None:
            m0, m1, data = self.client.call_many(keys, tags, lo)
        else:
            m0, m1, data = self.client.stream(keys, tags, lo, depth)
        st = m0 >> np.uint64(56)
        if not np.count_nonzero(st):                     # all found: the usual case
            return m1, None, data
        bad = st > np.uint64(self._kv.NOT_FOUND)
        if bad.any():
            i = int(np.argmax(bad))
            raise KV.KVError(f"kv get {int(keys[i])}: "
                             f"{self._kv.STATUS_NAMES.get(int(st[i]), int(st[i]))} "
                             f"({int(bad.sum())} of {n} gets failed)")
        return m1, st == np.uint64(self._kv.OK), data

    def get_array(self, keys, *, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) of ``keys`` (inline tables): two columns, no Python per reply.
        ``values[i]`` is meaningful where ``found[i]``. ``depth``: at most that many requests
        in flight (see :meth:`Client.stream`); None: all at once. Example::

            vals, found = kvc.get_array(np.arange(100_000), depth=1000)
        """
        m1, found, data = self._get_block(keys, depth)
        if found is None:
            found = np.ones(len(m1), np.bool_)
        if data is not None:
            raise KV.KVError(f"kv {self.prefix!r}: get_array is for inline (word) values; "
                             "this table answers with payloads: use get_many")
        return m1, found

    def get_many(self, keys, *, depth: int | None = None) -> list:
        """Values (or None) of ``keys``, pipelined: the requests go out as columns (one emit
        while the channel has room) and the replies are matched by tag in bulk. ``depth``:
        at most that many in flight, kept full (see :meth:`Client.stream`); None: all."""
        m1, found, data = self._get_block(keys, depth)
        out = m1.tolist() if data is None else \
            [d if d is not None else v for d, v in zip(data, m1.tolist())]
        if found is not None:
            for i in np.flatnonzero(~found).tolist():
                out[i] = None
        return out

    def close(self):
        self.client.close()


# -------------------------------------------------------------------------- module helpers
def kv_put(ctx, key: int, value, *, tag: int = 0, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    """Put ``value`` (an int: inline; bytes: payload, with ``tag``) into kv module ``prefix``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return send(ctx, f"{prefix}.put", key, tag, payload=bytes(value), deadline=deadline)
    return send(ctx, f"{prefix}.put", key, value, deadline=deadline)


def kv_get(ctx, key: int, tag: int = 0, *, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.get", key, tag, deadline=deadline)


def kv_del(ctx, key: int, tag: int = 0, *, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.del", key, tag, deadline=deadline)


def log(ctx, level, text: str, *, prefix: str = "log", deadline=DEFAULT_DEADLINE):
    """One line (taken as is, no formatting) to log module ``prefix``."""
    from ggmk.modules import log as _log
    return send(ctx, f"{prefix}.in", payload=_log.encode(level, text), deadline=deadline)


def logf(ctx, level, fmt: str, *args, prefix: str = "log", deadline=DEFAULT_DEADLINE):
    """``fmt % args`` formatted by the log module on the host (up to 4 int args)."""
    from ggmk.modules import log as _log
    return send(ctx, f"{prefix}.in", payload=_log.encode(level, fmt, *args) if args
                else _log.encode(level, fmt.replace("%%", "%")), deadline=deadline)


def timer_once(ctx, timer_id: int, delay: int, *, prefix: str = "timer",
               deadline=DEFAULT_DEADLINE):
    from ggmk.modules import timer as _t
    return send(ctx, f"{prefix}.set", timer_id, _t.arg(delay), deadline=deadline)


def timer_every(ctx, timer_id: int, period: int, *, delay: int | None = None,
                prefix: str = "timer", deadline=DEFAULT_DEADLINE):
    from ggmk.modules import timer as _t
    return send(ctx, f"{prefix}.set", timer_id, _t.arg(delay or period, period),
                deadline=deadline)


def timer_cancel(ctx, timer_id: int, *, prefix: str = "timer", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.cancel", timer_id, deadline=deadline)


def gate_arrive(ctx, gate: int, tag: int = 0, *, payload=None, prefix: str = "gate",
                deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.arrive", gate, tag, payload=payload, deadline=deadline)


def count(ctx, metric: int, delta: int = 1, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.add", metric, delta, deadline=deadline)


def gauge(ctx, metric: int, value: int, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.set", metric, value, deadline=deadline)


def observe(ctx, metric: int, value: int, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.obs", metric, value, deadline=deadline)


