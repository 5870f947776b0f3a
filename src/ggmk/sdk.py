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
import threading
import time
from collections import OrderedDict

import numpy as np

from ggmk import task as T
from ggmk.task import CHAN_FULL, OK, WAIT

__all__ = ["send", "send_all", "Requests", "Client", "KV", "kv_put", "kv_get", "kv_del", "log",
           "logf", "timer_once", "timer_every", "timer_cancel", "gate_arrive", "count", "gauge",
           "observe", "TIMEOUT", "DEFAULT_DEADLINE"]

_U64 = (1 << 64) - 1
_REC = T.RECORD_STRUCT            # one record as plain ints (seq at 4, payload_ptr at 5, ...)
_FEW = 8                           # replies filed with plain ints when no block is awaited
_BLOCK = 4096                      # requests a client's reused emit buffer holds
_FULL_NAP = 0.002                  # s: longest wait for a reply while a request ring is full
DEFAULT_DEADLINE = 10_000          # ticks a task may wait on one full channel (10 s at 1 kHz)
TIMEOUT = T.SDK_TIMEOUT

_waiting: OrderedDict = OrderedDict()     # task identity -> tick of its first WAIT
_wlock = threading.Lock()


def _ident(ctx):
    if getattr(ctx, "batch", None) is not None:
        return None
    t = ctx.task
    # not seq (a re-enqueued task may be renumbered) nor meta1 (the usual resume cursor):
    # tasks alike in these share one clock, which only makes the bound stricter
    try:
        return (t.type, t.channel, t.tenant, t.meta0, t.payload_ptr)
    except (TypeError, AttributeError, IndexError):
        return None


def _backpressure(ctx, deadline):
    """CHAN_FULL seen: WAIT, or CHAN_FULL past the deadline."""
    key = _ident(ctx)
    if key is None:                 # a batch handler: the caller decides per record
        return WAIT
    now = ctx.system.wall_tick()
    with _wlock:
        first = _waiting.setdefault(key, now)
        _waiting.move_to_end(key)
        if len(_waiting) > 65536:
            _waiting.popitem(last=False)
        if deadline is not None and now - first > deadline:
            del _waiting[key]
            return CHAN_FULL
    return WAIT


def _sent(ctx):
    if _waiting:
        key = _ident(ctx)
        if key is not None:
            with _wlock:
                _waiting.pop(key, None)


def send(ctx, target, meta0: int = 0, meta1: int = 0, *, payload=None,
         deadline: int | None = DEFAULT_DEADLINE) -> int:
    """Emit one message; OK, WAIT (return it) or a negative code. See the module docstring."""
    code = ctx.emit(target, meta0, meta1, payload=payload)
    if code == CHAN_FULL:
        return _backpressure(ctx, deadline)
    if code == OK:
        _sent(ctx)
    return code


def send_all(ctx, target, meta0s, meta1s=None, *, deadline: int | None = DEFAULT_DEADLINE) -> int:
    """Emit ``meta0s[i]`` (with ``meta1s[i]``) for i from ``ctx.task.meta1`` on. On a full
    channel the task's meta1 is set to the first one not sent and WAIT comes back: return it,
    and the task resumes there (so the task's own meta1 is the cursor: start it at 0)."""
    start = ctx.task.meta1
    send1 = ctx.emitter(target)
    for i in range(start, len(meta0s)):
        c = send1(int(meta0s[i]), 0 if meta1s is None else int(meta1s[i]))
        if c == CHAN_FULL:
            ctx.task.meta1 = i
            return _backpressure(ctx, deadline)
        if c:
            return c
    _sent(ctx)
    return OK


# -------------------------------------------------------------------------- request / reply
class Requests:
    """In-kernel request/reply with correlation: ``tag = req.start(ctx)``, send the request
    with the tag; the reply handler calls ``req.complete(tag, value)``; the waiting task polls
    ``req.poll(ctx, tag)``: the value, ``None`` (not yet: ``return ctx.wait_()``) or raises
    nothing but returns :data:`TIMEOUT` after ``timeout`` ticks. Tags are 48-bit.

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
        self._open: dict[int, int] = {}          # tag -> tick started
        self._done: dict[int, object] = {}
        self._lock = threading.Lock()
        self.timeouts = 0
        self.late = 0

    def start(self, ctx) -> int:
        with self._lock:
            tag = next(self._tags) & ((1 << 48) - 1)
            self._open[tag] = ctx.system.wall_tick()
        return tag

    def complete(self, tag: int, value) -> bool:
        """Record the reply of ``tag``; False for an unknown or timed-out tag (counted)."""
        with self._lock:
            if self._open.pop(tag, None) is None:
                self.late += 1
                return False
            self._done[tag] = value
        return True

    def poll(self, ctx, tag: int):
        with self._lock:
            if tag in self._done:
                return self._done.pop(tag)
            t0 = self._open.get(tag)
            if t0 is None:
                return TIMEOUT
            if ctx.system.wall_tick() - t0 > self.timeout:
                del self._open[tag]
                self.timeouts += 1
                return TIMEOUT
        return None

    def pending(self) -> int:
        return len(self._open)


def _u64_column(name: str, v, n: int | None = None) -> np.ndarray:
    """``v`` (a column, or a scalar when ``n`` is given) as uint64, or a ValueError naming
    the argument and the value."""
    try:
        if n is not None and np.ndim(v) == 0:
            a = np.full(n, v, dtype=np.uint64)
        else:
            a = np.asarray(v)
            if a.dtype != np.uint64:
                if a.size and (a.dtype.kind not in "iu" or (a.dtype.kind == "i" and a.min() < 0)):
                    raise ValueError
                a = a.astype(np.uint64)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{name}: expected integers in 0..2**64-1 (a column), got "
                         f"{v!r:.80}") from None
    if a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError(f"{name}: expected a 1-D column" +
                         (f" of {n} values" if n is not None else "") +
                         f", got shape {a.shape}")
    return a


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


class Client:
    """Host-side request/reply: publish on ``request`` (a channel name), read replies from a
    host-side subscription of ``reply``; ``reply_tag(meta0, meta1)`` gives a reply's tag
    (``reply_tags(m0s, m1s)``, its column form, lets whole blocks of replies be matched
    with NumPy). ``call(meta0, meta1, tag=..., payload=...)`` -> (meta0, meta1, payload
    bytes or None); ``TimeoutError`` after ``timeout`` seconds. Thread-safe: replies for
    another thread's tags are kept for it.

    ``publish_many`` + ``wait_many`` pipeline a block of requests with consecutive tags:
    one column publish, and the replies matched by tag in bulk.

    How a caller waits (no polling): one waiting thread at a time (the *pumper*) sleeps on a
    plain lock that the reply subscription's delivery hook releases (the same primitive a
    parked worker sleeps on: one wake-up per delivery, nothing allocated per wait), takes
    what arrived, files it by tag and wakes the other waiters (a Condition); when its own
    replies are in it hands the role on. A full request channel is backpressure: the caller
    keeps taking replies (which is what frees the kernel's side) and retries, up to
    ``timeout`` seconds, then raises ``TimeoutError`` naming CHAN_FULL.
    """

    def __init__(self, system, request: str, reply: str, *, reply_tag=None, reply_tags=None,
                 timeout: float = 5.0):
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"Client: timeout must be a positive number of seconds, "
                             f"got {timeout!r}")
        self.system = system
        self.arena = system.arena
        self.request = system.channel(request)
        self.reply_name = reply
        self.reply_tag = reply_tag or (lambda m0, m1: m0)
        if reply_tags is None and reply_tag is None:
            reply_tags = lambda m0, m1: m0          # noqa: E731 - the default: tag = meta0
        self.reply_tags = reply_tags
        self.timeout = timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pumping = False
        self._waiters = 0           # threads in _cond.wait (under _lock): whom a notify wakes
        self._sem = threading.Lock()                # released by the delivery hook
        self._sem.acquire()
        self._sleeping = False
        self._single: dict = {}                     # tag -> _Pending (n == 1, any tag)
        self._runs: list[_Pending] = []             # consecutive-tag blocks
        self._plock = threading.Lock()              # the reusable one-record request
        self._rec = None
        self._blk = None                            # the reusable block of requests
        self.ignored = 0            # replies nobody here waited for (other clients' tags)
        self.sub = system.channel(reply).subscribe(name=f"client-{id(self):x}",
                                                   notify=self._wake)
        self._hal = system.hal
        self._help = system.hal.help
        # the direct request path (System.direct), where the system has one
        self._direct = getattr(system, "direct", None) if hasattr(system.hal, "lend") else None

    # -- waking ---------------------------------------------------------------------------
    def _wake(self) -> None:
        """The subscription's delivery hook (runs under the ring's lock: keep it tiny)."""
        if self._sleeping:
            self._sleeping = False
            try:
                self._sem.release()
            except RuntimeError:                    # released already: one token is enough
                pass

    def _arrived(self) -> bool:
        r = self.sub.ring
        return r.tail != r.head or self.sub.behind

    def _sleep(self, left: float) -> None:
        """Block until a delivery (or ``left`` seconds). First the caller runs: while a worker
        is idle, this thread runs the steps that answer it (``hal.help``: no wake-up either
        way). A stale token only makes one wake-up spurious: the caller looks again."""
        if self._help(self._arrived, time.monotonic() + left):
            return
        self._sleeping = True
        if not self._arrived():
            self._sem.acquire(True, left)
        self._sleeping = False

    # -- filing replies -------------------------------------------------------------------
    def _pump(self) -> int:
        """Take what the subscription holds and file it by tag (holding ``_lock``). Every
        payload taken is copied out and its arena reference released, matched or not."""
        sub = self.sub
        r = sub.ring
        if r.tail - r.head == 1 and not self._runs and not sub.behind \
                and sub.chan.log is None:
            # one reply (one request in flight): popped as one record and read with one
            # struct call, acknowledged as Subscriber.take does
            f = r.pop1_fields()
            if f is None:
                return 0
            sub.delivered += 1
            sub.acked = f[4]
            return self._pump_one(f)
        recs = sub.take()
        n = len(recs)
        if not n:
            return 0
        m0, m1 = recs["meta0"], recs["meta1"]
        ptrs = recs["payload_ptr"]
        if n <= _FEW and not self._runs:
            return self._pump_few(recs, m0.tolist(), m1.tolist(), ptrs.tolist())
        has_data = bool(np.count_nonzero(ptrs))
        if self.reply_tags is not None:
            tags = np.asarray(self.reply_tags(m0, m1), dtype=np.uint64)
        else:
            tags = np.fromiter((self.reply_tag(int(a), int(b)) for a, b in zip(m0, m1)),
                               dtype=np.uint64, count=n)
        left = None                                 # mask of the records not filed yet
        for p in self._runs:
            rel = tags - np.uint64(p.lo)            # wraps for tags below lo: out of range
            hit = rel < np.uint64(p.n)
            nh = np.count_nonzero(hit)
            if not nh:
                continue
            idx = rel.astype(np.intp) if nh == n and left is None else None
            if idx is not None and not np.count_nonzero(p.got[idx]):
                # every reply taken is of this block and none came before (the usual case
                # of one block in flight): no masks to apply
                p.m0[idx] = m0
                p.m1[idx] = m1
                p.got[idx] = True
                p.left -= n
                if has_data:
                    self._file_data(p, range(n), idx.tolist(), recs, ptrs)
                left = ~hit
                break                               # (nothing is left for the others)
            idx = rel[hit].astype(np.intp)
            fresh = ~p.got[idx]                     # a duplicate reply fills nothing twice
            idx = idx[fresh]
            p.m0[idx] = m0[hit][fresh]
            p.m1[idx] = m1[hit][fresh]
            p.got[idx] = True
            p.left -= len(idx)
            if has_data:
                self._file_data(p, np.flatnonzero(hit)[fresh].tolist(), idx.tolist(), recs,
                                ptrs)
            left = ~hit if left is None else left & ~hit
        rest = range(n) if left is None else np.flatnonzero(left).tolist()
        single = self._single
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
        p = self._single.get(self.reply_tag(a, b))
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
        single = self._single
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

    def _await(self, p: _Pending, what) -> None:
        """Block until every reply of ``p`` is in, or raise TimeoutError (``what()``: the
        message) after ``timeout`` seconds. ``p`` is unregistered either way."""
        deadline = time.monotonic() + self.timeout
        cond = self._cond
        with cond:
            try:
                while p.left:
                    if self._pumping:               # another thread takes: wait for its news
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._waiters += 1
                        try:
                            cond.wait(left)
                        finally:
                            self._waiters -= 1
                        continue
                    if self._pump():
                        cond.notify_all()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._pump_after_sleep(left)
            finally:
                self._unregister(p)
                cond.notify_all()                   # leaving: someone else may pump now
        if p.left:
            raise TimeoutError(what())

    def _register(self, p: _Pending, tag=None) -> None:
        with self._lock:
            if tag is None:
                self._runs.append(p)
            else:
                if tag in self._single:
                    raise ValueError(f"Client: tag {tag} is already awaited on "
                                     f"{self.reply_name!r}; tags must be unique in flight")
                self._single[tag] = p

    def _unregister(self, p: _Pending) -> None:       # holding _lock
        if p.__class__ is _One:
            if self._single.get(p.lo) is p:
                del self._single[p.lo]
        else:
            try:
                self._runs.remove(p)
            except ValueError:
                pass

    # -- publishing -----------------------------------------------------------------------
    def _send_one(self, ch, meta0, meta1) -> int:
        """One request without a payload through a reused record (no per-call array)."""
        if not ch.type_id:                      # an any-type channel: the general path
            return ch.publish(meta0, meta1)
        if ch.kernel is self.system:            # one record from plain ints, no array
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

    def _backoff(self, deadline: float, what) -> None:
        """The request channel is full: take replies meanwhile (that is what drains the
        kernel's side) and let the kernel run; TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(what())
        # no hook reports room in a request ring, but replies do come back as the kernel
        # works through it: wait for the next delivery, bounded (room can also come without
        # a reply to us, e.g. another client's requests were taken)
        nap = min(left, _FULL_NAP)
        cond = self._cond
        with cond:
            if self._pump():
                cond.notify_all()
                return
            if self._pumping:
                self._waiters += 1
                try:
                    cond.wait(nap)
                finally:
                    self._waiters -= 1
                return
            self._pump_after_sleep(nap)

    def _pump_after_sleep(self, left: float) -> None:
        """Holding ``_cond``, nobody else pumping: take the pumper role, sleep (or run the
        answering steps: ``_sleep``) outside the lock for at most ``left`` s, then file what
        came and wake the other waiters (news, or the pumper role is free)."""
        cond = self._cond
        self._pumping = True
        cond.release()
        try:
            self._sleep(left)
        finally:
            cond.acquire()
            self._pumping = False
        self._pump()
        cond.notify_all()

    def _try_send(self, ch, meta0, meta1, payload, type) -> int:
        """One attempt to publish a request: OK or the channel's code."""
        if (payload is None and type is None and meta0.__class__ is int
                and meta1.__class__ is int and 0 <= meta0 <= _U64 and 0 <= meta1 <= _U64):
            return self._send_one(ch, meta0, meta1)
        return ch.publish(meta0, meta1, payload=payload, type=type)

    def publish(self, meta0=0, meta1=0, *, tag=None, payload=None, type=None, channel=None) -> None:
        """Send a request without waiting for the reply (waits up to ``timeout`` for room)."""
        if tag is not None:
            self.expect(tag)
        ch = channel or self.request
        self._send(ch, meta0, meta1, payload, type, tag, self._try_send(ch, meta0, meta1,
                                                                        payload, type))

    def _send(self, ch, meta0, meta1, payload, type, tag, code) -> None:
        """The first attempt answered ``code``: retry while the channel is full (taking
        replies meanwhile) up to ``timeout``; a refused request forgets ``tag``."""
        deadline = time.monotonic() + self.timeout
        while True:
            if code == OK:
                return
            if code != CHAN_FULL:
                self.forget(tag)
                raise TimeoutError(f"request channel {ch.name!r}: "
                                   f"{T.CODE_NAMES.get(code, code)}")
            try:
                self._backoff(deadline, lambda: f"request channel {ch.name!r}: CHAN_FULL for "
                              f"{self.timeout} s")
            except TimeoutError:
                self.forget(tag)
                raise
            code = self._try_send(ch, meta0, meta1, payload, type)

    def expect(self, tag) -> None:
        """Say a reply with ``tag`` is awaited (``publish(..., tag=)`` does it)."""
        self._register(_One(tag), tag)

    def forget(self, tag) -> None:
        """Stop awaiting ``tag`` (a reply that comes later is counted in ``ignored``)."""
        if tag is None:
            return
        with self._lock:
            self._single.pop(tag, None)

    def wait(self, tag):
        """The reply for ``tag`` (blocks up to ``timeout`` seconds)."""
        with self._lock:
            p = self._single.get(tag)
        if p is None:                    # not announced: wait for it anyway
            p = _One(tag)
            self._register(p, tag)
        self._await(p, lambda: f"no reply for tag {tag} on {self.reply_name!r} within "
                               f"{self.timeout} s")
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
        if not hal.helping:
            self.publish(meta0, meta1, tag=tag, payload=payload, type=type, channel=channel)
            return self.wait(tag)
        self.expect(tag)
        ch = channel or self.request
        direct = self._direct
        if direct is not None and type is None and meta0.__class__ is int \
                and meta1.__class__ is int and 0 <= meta0 <= _U64 and 0 <= meta1 <= _U64:
            try:
                ran = direct(ch, meta0, meta1, payload)
            except BaseException:
                self.forget(tag)
                raise
            if ran:                                 # answered on this thread: file the reply
                return self._filed(tag) or self.wait(tag)
        sent = []
        try:
            hal.help(self._arrived, time.monotonic() + self.timeout,
                     before=lambda: sent.append(self._try_send(ch, meta0, meta1, payload, type)))
            if sent[0] != OK:                       # full (backoff) or closed: the slow path
                self._send(ch, meta0, meta1, payload, type, tag, sent[0])
        except BaseException:
            self.forget(tag)
            raise
        return self.wait(tag)

    def _filed(self, tag):
        """The reply of ``tag`` if it is in already (a request ``System.direct`` ran on this
        thread: its reply was delivered before ``direct`` returned, unless the handler
        yielded, retried or failed): one pump under the lock, none of ``_await``'s waiting.
        None: not in (``wait`` for it)."""
        cond = self._cond
        with cond:
            if not self._pumping and self._pump() and self._waiters:
                cond.notify_all()                   # others' replies may have come too
            p = self._single.get(tag)
            if p is None or p.left:
                return None
            del self._single[tag]
        return p.m0, p.m1, None if p.data is None else p.data[0]

    def stream(self, meta0, meta1, lo: int, depth: int, *, channel=None):
        """Many requests with at most ``depth`` in flight: blocks of ``depth``, the next sent
        once the replies of the one before are all in. Tags ``lo, lo + 1, ...``; returns
        (meta0s, meta1s, data) like :meth:`wait_many`.

        Why not overlap blocks (send the next half while the first is answered)? Measured:
        slower (78 K/s against 170 K/s at depth 100, half-blocks of 50): the caller and the
        worker are both Python, so overlapping them only makes them take the GIL from each
        other (a thread asking for it waits up to the 5 ms switch interval) and doubles the
        per-block costs; one block out, one block back keeps each hand-off a clean wake-up."""
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
        for i in range(0, n, depth):
            j = min(n, i + depth)
            p = self.publish_many(meta0[i:j], meta1[i:j], lo + i, channel=channel,
                                  _out=(r0[i:j], r1[i:j]))
            data = self._merge(p, i, data, n)
        return r0, r1, data

    def _merge(self, p: _Pending, off: int, data, n: int):
        """Wait for slice ``p`` (its columns are views of the stream's); place its payloads."""
        self.wait_many(p)
        if p.data is not None:
            if data is None:
                data = [None] * n
            data[off:off + p.n] = p.data
        return data

    def publish_many(self, meta0, meta1, lo: int, *, channel=None, _out=None) -> _Pending:
        """Send ``len(meta0)`` requests as columns (one emit per block the channel takes)
        whose replies carry the consecutive tags ``lo, lo + 1, ...``; returns the handle for
        :meth:`wait_many`. Waits for room (taking replies meanwhile) up to ``timeout``."""
        meta0 = _u64_column("meta0", meta0)
        n = len(meta0)
        meta1 = _u64_column("meta1", meta1, n)
        if not isinstance(lo, (int, np.integer)) or not 0 <= int(lo) <= _U64 - n:
            raise ValueError(f"publish_many: lo must be an int in 0..2**64-1-len(meta0), "
                             f"got {lo!r}")
        p = _Pending(int(lo), n) if _out is None else _Pending(int(lo), n, *_out)
        self._register(p)
        ch = channel or self.request
        try:
            sent = 0
            deadline = time.monotonic() + self.timeout
            while sent < n:
                sent += self._send_block(ch, meta0[sent:], meta1[sent:])
                if sent < n:
                    if ch.closed:
                        raise TimeoutError(f"request channel {ch.name!r}: CHAN_CLOSED "
                                           f"({sent}/{n} sent)")
                    self._backoff(deadline, lambda: f"request channel {ch.name!r}: CHAN_FULL "
                                  f"for {self.timeout} s ({sent}/{n} sent)")
        except BaseException:
            with self._lock:
                self._unregister(p)
            raise
        return p

    def _send_block(self, ch, m0: np.ndarray, m1: np.ndarray) -> int:
        """Emit a block of requests through a reused record buffer (the columns are already
        validated: no per-call ``make``); how many the channel took."""
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
        if not hal.helping:
            return self.wait_many(self.publish_many(meta0, meta1, lo, channel=channel))
        out = []
        hal.help(self._arrived, time.monotonic() + self.timeout,
                 before=lambda: out.append(self.publish_many(meta0, meta1, lo,
                                                             channel=channel)))
        return self.wait_many(out[0])

    def wait_many(self, p: _Pending) -> tuple:
        """(meta0s, meta1s, data) of a :meth:`publish_many` block, in request order: two
        uint64 columns and None (no reply carried a payload) or a list of bytes/None."""
        self._await(p, lambda: f"{p.left} of {p.n} replies (tags {p.lo}..{p.lo + p.n - 1}) "
                               f"missing on {self.reply_name!r} after {self.timeout} s")
        return p.m0, p.m1, p.data

    def close(self) -> None:
        try:
            self.system.channel(self.reply_name).unsubscribe(self.sub)
        except Exception:   # noqa: BLE001 - closed at halt
            pass


class KV:
    """Host-side client of a kv module (``prefix`` = its name): synchronous ``put``, ``get``,
    ``delete`` correlated by tag; ``get_many`` / ``get_array`` pipeline a block of gets (one
    column publish, replies matched by tag with NumPy). Values are ints (inline tables) or
    bytes. A status other than OK/NOT_FOUND raises ``KVError``; no reply within ``timeout``
    seconds raises ``TimeoutError``. Thread-safe (several threads may share one client)."""

    class KVError(RuntimeError):
        pass

    def __init__(self, system, prefix: str = "kv", *, timeout: float = 5.0):
        from ggmk.modules import kv as _kv
        self._kv = _kv
        self.system = system
        self.prefix = prefix
        self._next = 1
        self._tlock = threading.Lock()
        mask = _kv.TAG_MASK
        umask = np.uint64(mask)
        self.client = Client(system, f"{prefix}.get", f"{prefix}.resp",
                             reply_tag=lambda m0, m1: m0 & mask,
                             reply_tags=lambda m0, m1: m0 & umask, timeout=timeout)
        self.put_ch = system.channel(f"{prefix}.put")
        self.del_ch = system.channel(f"{prefix}.del")

    def _tags(self, n: int = 1) -> int:
        """The first of ``n`` fresh consecutive tags (48-bit, never 0, never wrapping)."""
        with self._tlock:
            lo = self._next
            if lo + n > self._kv.TAG_MASK:
                lo = 1
            self._next = lo + n
        return lo

    def _check(self, m0, what):
        st = int(m0) >> 56
        if st > self._kv.NOT_FOUND:
            raise KV.KVError(f"kv {what}: {self._kv.STATUS_NAMES.get(st, st)}")
        return st

    def put(self, key: int, value) -> None:
        """Store ``value`` (bytes, or an int 0..2**64-1) under ``key``."""
        if isinstance(value, (bytes, bytearray)):
            data = value
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                and 0 <= int(value) < 1 << 64:
            # the shortest little-endian form: fits any value_size
            data = int(value).to_bytes(8, "little").rstrip(b"\0") or b"\0"
        else:                      # (a float or a str was converted: 3.9 came back as 3)
            raise TypeError(f"KV.put: value={value!r}: allowed bytes or an int "
                            f"0..2**64-1")
        tag = self._tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, payload=bytes(data), channel=self.put_ch)
        self._check(m0, f"put {key}")

    def get(self, key: int, default=None):
        tag = self._tags()
        m0, m1, data = self.client.call(key, tag, tag=tag)
        st = m0 >> 56
        if st:                                  # (the message is built only when needed)
            if self._check(m0, f"get {key}") != self._kv.OK:
                return default
        return data if data is not None else m1

    def delete(self, key: int) -> bool:
        tag = self._tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, channel=self.del_ch)
        return self._check(m0, f"del {key}") == self._kv.OK

    def _get_block(self, keys, depth):
        keys = _u64_column("keys", keys)
        n = len(keys)
        lo = self._tags(n)
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


