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
KV                     host-side kv client (put/get/delete, synchronous, correlated by tag)
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
        print(sdk.KV(system).get(7))        # 42
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


class Client:
    """Host-side request/reply: publish on ``request`` (a channel name), read replies from a
    host-side subscription of ``reply``; ``reply_tag(meta0, meta1)`` gives a reply's tag.
    ``call(meta0, meta1, tag=..., payload=...)`` -> (meta0, meta1, payload bytes or None);
    ``TimeoutError`` after ``timeout`` seconds. Replies for other tags are kept for their
    callers. Thread-safe.
    """

    def __init__(self, system, request: str, reply: str, *, reply_tag=None,
                 timeout: float = 5.0):
        self.system = system
        self.request = system.channel(request)
        self.reply_name = reply
        # set on every delivery to our subscription and whenever a reply is stashed: waiters
        # block on it instead of polling
        self._arrived = threading.Event()
        self.sub = system.channel(reply).subscribe(name=f"client-{id(self):x}",
                                                   notify=self._arrived.set)
        self.reply_tag = reply_tag or (lambda m0, m1: m0)
        self.timeout = timeout
        self._stash: dict = {}
        self._expect: set = set()
        self._lock = threading.Lock()
        self.ignored = 0            # replies nobody here waited for (other clients' tags)

    def _pump(self) -> None:
        recs = self.sub.take()
        if not len(recs):
            return
        arena = self.system.arena
        for r in recs:
            m0, m1 = int(r["meta0"]), int(r["meta1"])
            p, n = int(r["payload_ptr"]), int(r["payload_len"])
            data = None
            if p:
                data = bytes(arena.view(p, n))
                arena.release(p)
            tag = self.reply_tag(m0, m1)
            if tag not in self._expect:
                self.ignored += 1
                continue
            self._stash.setdefault(tag, []).append((m0, m1, data))
            self._arrived.set()            # another thread may be waiting for this tag

    def expect(self, tag) -> None:
        """Say a reply with ``tag`` is awaited (``publish(..., tag=)`` does it)."""
        with self._lock:
            self._expect.add(tag)

    def publish(self, meta0=0, meta1=0, *, tag=None, payload=None, type=None, channel=None) -> None:
        """Send a request without waiting for the reply (waits up to ``timeout`` for room)."""
        if tag is not None:
            self.expect(tag)
        ch = channel or self.request
        deadline = time.monotonic() + self.timeout
        while True:
            code = ch.publish(meta0, meta1, payload=payload, type=type)
            if code == OK:
                return
            if code != CHAN_FULL or time.monotonic() > deadline:
                raise TimeoutError(f"request channel {ch.name!r}: {T.CODE_NAMES.get(code, code)}")
            time.sleep(0.0002)

    def wait(self, tag):
        """The reply for ``tag`` (blocks up to ``timeout`` seconds)."""
        deadline = time.monotonic() + self.timeout
        while True:
            # cleared before looking: a delivery or a stash after this point sets it again
            self._arrived.clear()
            with self._lock:
                q = self._stash.get(tag)
                if not q:
                    self._pump()
                    q = self._stash.get(tag)
                if q:
                    out = q.pop(0)
                    if not q:
                        del self._stash[tag]
                        self._expect.discard(tag)
                    return out
            left = deadline - time.monotonic()
            if left <= 0:
                with self._lock:
                    self._expect.discard(tag)
                raise TimeoutError(f"no reply for tag {tag} on {self.reply_name!r} within "
                                   f"{self.timeout} s")
            # woken by the delivery; the 10 ms bound only matters when several threads wait
            # on one client (one thread's clear can swallow the wake-up meant for another)
            self._arrived.wait(min(left, 0.01))

    def call(self, meta0=0, meta1=0, *, tag, payload=None, type=None):
        self.publish(meta0, meta1, tag=tag, payload=payload, type=type)
        return self.wait(tag)

    def close(self) -> None:
        try:
            self.system.channel(self.reply_name).unsubscribe(self.sub)
        except Exception:   # noqa: BLE001 - closed at halt
            pass


class KV:
    """Host-side client of a kv module (``prefix`` = its name): synchronous ``put``, ``get``,
    ``delete`` correlated by tag; ``put_many``/``get_many`` pipeline many requests. Values are
    ints (inline tables) or bytes. A status other than OK/NOT_FOUND raises ``KVError``."""

    class KVError(RuntimeError):
        pass

    def __init__(self, system, prefix: str = "kv", *, timeout: float = 5.0):
        from ggmk.modules import kv as _kv
        self._kv = _kv
        self.system = system
        self.prefix = prefix
        self._tags = itertools.count(1)
        tag_of = lambda m0, m1: m0 & _kv.TAG_MASK   # noqa: E731
        self.client = Client(system, f"{prefix}.get", f"{prefix}.resp", reply_tag=tag_of,
                             timeout=timeout)
        self.put_ch = system.channel(f"{prefix}.put")
        self.del_ch = system.channel(f"{prefix}.del")

    def _tag(self):
        return next(self._tags) & self._kv.TAG_MASK

    def _check(self, m0, what):
        st = self._kv.unpack(m0)[0]
        if st not in (self._kv.OK, self._kv.NOT_FOUND):
            raise KV.KVError(f"kv {what}: {self._kv.STATUS_NAMES.get(st, st)}")
        return st

    def put(self, key: int, value) -> None:
        tag = self._tag()
        if isinstance(value, (bytes, bytearray)):
            data = value
        else:                      # the shortest little-endian form: fits any value_size
            data = int(value).to_bytes(8, "little").rstrip(b"\0") or b"\0"
        self.client.publish(key, tag, tag=tag, payload=bytes(data), channel=self.put_ch)
        m0, _, _ = self.client.wait(tag)
        self._check(m0, f"put {key}")

    def get(self, key: int, default=None):
        tag = self._tag()
        m0, m1, data = self.client.call(key, tag, tag=tag)
        if self._check(m0, f"get {key}") != self._kv.OK:
            return default
        return data if data is not None else m1

    def delete(self, key: int) -> bool:
        tag = self._tag()
        self.client.publish(key, tag, tag=tag, channel=self.del_ch)
        m0, _, _ = self.client.wait(tag)
        return self._check(m0, f"del {key}") == self._kv.OK

    def get_many(self, keys) -> list:
        """Values (or None) of ``keys``, pipelined: every request goes out as one column (one
        publish: the per-message cost of the channel path is paid once per column), then the
        replies are matched by tag."""
        n = len(keys)
        tags = [self._tag() for _ in range(n)]
        with self.client._lock:
            self.client._expect.update(tags)
        col_k = np.asarray(keys, dtype=np.uint64)
        col_t = np.asarray(tags, dtype=np.uint64)
        sent = 0
        deadline = time.monotonic() + self.client.timeout
        while sent < n:
            acc = self.client.request.publish(meta0=col_k[sent:], meta1=col_t[sent:],
                                              count=n - sent)
            sent += acc
            if sent < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"request channel {self.client.request.name!r}: full "
                                       f"for {self.client.timeout} s ({sent}/{n} sent)")
                time.sleep(0.0002)
        out = []
        for t in tags:
            m0, m1, data = self.client.wait(t)
            out.append((data if data is not None else m1)
                       if self._kv.unpack(m0)[0] == self._kv.OK else None)
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


