"""The host-side request/reply client over a request channel and a reply channel."""
from __future__ import annotations

import threading
import time

import numpy as np

from ggmk import task as T
from ggmk.errors import KernelStopped
from ggmk.task import CHAN_FULL, OK
from ggmk.sdk.replies import _Hub, _One, _Pending
from ggmk.sdk.tags import _U64, _check_timeout, _tag_m0, _u64_column

_BLOCK = 4096                      # requests a client's reused emit buffer holds


class Client:
    """Host-side request/reply: publish on ``request`` (a channel name), read replies from a
    host-side subscription of ``reply``; ``reply_tag(meta0, meta1)`` gives a reply's tag
    (``reply_tags(m0s, m1s)``, its column form, lets whole blocks of replies be matched
    with NumPy; given alone, it tags single replies too; neither: the tag is meta0).
    ``call(meta0, meta1, tag=..., payload=...)`` -> (meta0, meta1, payload bytes or None);
    ``TimeoutError`` after ``timeout`` seconds; ``KernelStopped`` as soon as the system
    halts (no reply can come). With caller runs (boot's ``host_helps``, the default) the
    calling thread may run the answering handler itself, and a handler cannot be cut short:
    a slow one returns its reply up to one handler run past ``timeout`` instead of a
    TimeoutError (``host_helps=False``: the timeout holds to the wait). Thread-safe: replies for another thread's tags are kept for
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
        hub = self._hub
        # (the usual call, an open client's own channel and a plain int tag in range, is
        # checked inline; anything else gets the checks that name the problem)
        ch = self.request if channel is None and not self._closed else self._open("call", channel)
        if tag.__class__ is not int or not 0 <= tag <= hub.tag_max:
            tag = hub.check_tag("Client.call", tag)
        if not hal.helping:
            self.publish(meta0, meta1, tag=tag, payload=payload, type=type, channel=ch)
            return self._wait(tag)
        hub.register(_One(tag), tag)
        direct = self._direct
        try:
            if direct is not None and type is None and meta0.__class__ is int \
                    and meta1.__class__ is int and 0 <= meta0 <= _U64 and 0 <= meta1 <= _U64:
                if direct(ch, meta0, meta1, payload):   # answered on this thread: file it
                    return hub.filed(tag) or self._wait(tag)
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
