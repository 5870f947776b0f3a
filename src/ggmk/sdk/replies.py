"""Replies filed by tag: one hub per reply channel, shared by every client of it (a block of
replies matched with NumPy, single requests with a dict look-up)."""
from __future__ import annotations

import threading
import time
import weakref

import numpy as np

from ggmk.errors import KernelStopped
from ggmk.sdk.tags import TAG_MASK, _U64, _tag48

_FEW = 8                           # replies filed with plain ints when no block is awaited
_FULL_NAP = 0.002                  # s: longest wait for a reply while a request ring is full


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
        with self.lock:                             # (cond's own lock, without its wrapper)
            if not self.pumping and self.pump() and self.waiters:
                self.cond.notify_all()              # others' replies may have come too
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
