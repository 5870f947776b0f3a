"""The channel registry of one CPU kernel (SPEC §5): names to ids, open/get/close, the system
channels, dead letters, draining and per-channel metrics.

:class:`Channels` (``system.channels``) opens a channel once per name (opening it again with
another type, mode, guarantee, or another value of an option given, is an error) and hands
out ids in opening order. It owns the system channels, opened at boot:

* ``sys.error`` and ``sys.dropped`` (:class:`SysChannel`): dead letters. Failed tasks go to
  ``sys.error`` (or to their channel's ``error_handler``, see :meth:`Channels.route_failures`);
  every message a channel accepted but could not deliver goes to ``sys.dropped`` with a reason
  (CHAN_FULL, CHAN_CLOSED, CHAN_REPLAY_OVERFLOW, CHAN_NO_SUBSCRIBER, CHAN_TYPE_MISMATCH). Both
  keep their records with the reason in a bounded store until ``system.dead_letters`` takes
  them, never block the kernel, and cannot be closed.
* ``sys.trace``, ``sys.tick``, ``sys.heartbeat``, ``host.rx``, ``host.tx``: lossy fan-out
  channels any module may subscribe to.

Draining: the registry keeps the channels that have handler subscribers (``_hot``), the
deterministic ones (``_det``, ascending id) and those with ordered subscribers (``_ordered``).
``drain_some`` is the opportunistic drain after each handler batch and from idle workers;
``on_batch_done`` is the worker's hook after every finished batch of channel messages (it lets
an ordered subscriber's next batch go); ``tick_boundary`` drains the deterministic channels, in
ascending channel id order, when a tick ends (and ``drain_some`` opens the boundary itself
when nothing runs in the tick).
"""
from __future__ import annotations

import difflib
import threading

import numpy as np

from ggmk import task as T
from ggmk.core.channel import Channel
from ggmk.core.channel_spec import (DEFAULT_CAPACITY, ring_capacity, validate_capacity,
                                    validate_channel_name, validate_channel_spec, validate_hook,
                                    validate_ordered, validate_replay, validate_window)
from ggmk.core.sched import MAX_TYPES
from ggmk.errors import ChannelError
from ggmk.events import EventType
from ggmk.task import CHAN_CLOSED, CHAN_TYPE_MISMATCH, CHAN_UNKNOWN, FLAG_CHANNEL_MSG

SYS_CHANNELS = ("sys.error", "sys.dropped", "sys.trace", "sys.tick", "sys.heartbeat",
                "host.rx", "host.tx")
_SYS_TYPES = {"sys.trace": "SYS_TRACE", "sys.tick": "SYS_TICK", "sys.heartbeat": "SYS_HEARTBEAT"}


# the keywords Channels.open takes (besides ``name``): what an unknown one is checked against
OPEN_OPTIONS = ("type", "mode", "guarantee", "capacity", "replay", "error_handler", "window",
                "ordered", "system")


def _unknown_options(name, unknown) -> str:
    """The message for options ``Channels.open`` does not take: each one, with its close match
    among OPEN_OPTIONS where there is one, and the allowed options."""
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, OPEN_OPTIONS, n=1)
        parts.append(f"{key}={unknown[key]!r}"
                     + (f" (did you mean {close[0]!r}?)" if close else ""))
    s = "s" if len(parts) > 1 else ""
    return (f"channel {name!r}: unknown option{s} {', '.join(parts)}; allowed options: "
            f"{', '.join(OPEN_OPTIONS)}")


class SysChannel(Channel):
    """``sys.error`` / ``sys.dropped``: fan-out, never blocks the kernel. Records are kept with
    their reason code in a bounded store until ``system.dead_letters`` takes them (overflow is
    counted as ``rejected`` in stats); handler subscribers also get a copy (lossy) whose
    ``_pad`` holds the reason (``ctx.reason``)."""

    def __init__(self, reg, cid, name, store):
        super().__init__(reg, cid, name, 0, mode="fanout", guarantee="lossy",
                         capacity=store.capacity, system=True)
        self.store = store

    def put(self, recs: np.ndarray, codes) -> None:
        n = len(recs)
        if n == 0:
            return
        self.store.push_coded(recs, codes)
        self.emitted += n
        if self.subs:
            out = T.copy(recs)
            out["channel"] = self.id
            out["flags"] |= FLAG_CHANNEL_MSG
            out["_pad"] = np.broadcast_to(np.asarray(codes, dtype=np.int64), (n,)) & 0xFFFF
            with self.lock:
                s = self.seq
                out["seq"] = np.arange(s + 1, s + n + 1, dtype=np.int64)
                self.seq = s + n
                self.committed = self.seq
                for sub in self.subs:
                    got = T.copy(out) if sub.type_id else out
                    if sub.type_id:
                        got["type"] = sub.type_id
                    k = sub.ring.push(got)
                    sub.dropped += n - k          # never blocks: the overflow is counted

    def emit(self, recs: np.ndarray) -> int:
        recs = T.copy(recs)
        if recs["payload_ptr"].any():
            self.kernel.arena.release_many(recs["payload_ptr"])
            recs["payload_ptr"] = 0
        self.put(recs, T.FAIL)
        return len(recs)

    def take_coded(self, max_n: int):
        return self.store.pop_coded(max_n)

    def stats(self) -> dict:
        d = super().stats()
        st = self.store.stats()
        d.update(stored=st["depth"], overflow=st["rejected"])
        return d


class Channels:
    """The channel registry of one CPU kernel: names to ids, open/get/close, the system
    channels, dead letters, draining and per-channel metrics.

    ``open(..., ordered=None)``: see :class:`Channel` (None: the default, True unless the
    channel is deterministic). ``on_batch_done(recs)`` is the worker's hook after every
    finished batch of channel messages: it lets an ordered subscriber's next batch go."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.by_name: dict[str, Channel] = {}
        self.by_id: dict[int, Channel] = {}
        self._next_id = 1
        self.lock = threading.Lock()
        # _rebuild's: taken before ``lock`` (a channel's lock may be held: _det_message)
        self._rebuild_lock = threading.Lock()
        self._hot: list[Channel] = []        # channels with handler subscribers (drain targets)
        self._det: list[Channel] = []        # deterministic ones, ascending id
        self._ordered: dict[int, Channel] = {}   # id -> channel with ordered handler subscribers
        self.closed: list[Channel] = []
        self.sys_error = self._add(SysChannel(self, self._take_id(), "sys.error", kernel.sys_error))
        self.sys_dropped = self._add(SysChannel(self, self._take_id(), "sys.dropped",
                                                kernel.sys_dropped))
        for name in SYS_CHANNELS[2:]:
            tname = _SYS_TYPES.get(name)
            if tname and tname not in kernel.types:
                # defined here (a doc), not registered on sight: types.auto_registered() lists
                # the names a module used that nothing defines, not the kernel's own
                kernel.types.register(tname, doc=f"the kernel's {name} channel")
            tid = kernel.type_id(tname, register=True) if tname else 0
            self.open(name, tid, mode="fanout", guarantee="lossy", system=True)

    def _take_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def _add(self, ch: Channel) -> Channel:
        self.by_name[ch.name] = ch
        self.by_id[ch.id] = ch
        return ch

    # -- registry -------------------------------------------------------------------------------
    def open(self, name: str, type=0, *, mode: str = "p2p", guarantee: str = "lossless",
             capacity: int | None = None, replay: int | None = None, error_handler=None,
             window: int | None = None, system: bool = False, ordered: bool | None = None,
             **unknown) -> Channel:
        """Open (or return the already open) channel ``name`` carrying ``type``. Opening an
        existing name with a different type, mode, guarantee, or a different value of an option
        the call gives (``capacity``, ``replay``, ``error_handler``, ``window``, ``ordered``;
        None: as the channel has it) raises ChannelError. ``capacity`` defaults to
        DEFAULT_CAPACITY, ``replay`` to 0 (no log). A lossy channel of a type that needs
        lossless delivery (``lossy = false``) is refused, as in a module's declaration.
        ``ordered`` (default True; ignored on a deterministic channel): each handler subscriber
        gets its messages in channel order, one batch of at most ``max_batch`` in flight at a
        time; False lets several batches of one subscriber run at once, on several workers
        (more throughput for a handler that does not care about order). See :class:`Channel`.
        Any other keyword (e.g. a ``produces(...)`` typo) is ChannelError(CHAN_UNKNOWN)."""
        validate_channel_name(name)
        if unknown:
            # a typo such as capcity=16 would otherwise open a channel the caller did not ask for
            raise ChannelError(_unknown_options(name, unknown), CHAN_UNKNOWN)
        window = validate_window(name, window)
        if capacity is not None:
            capacity = validate_capacity(name, capacity)
        if replay is not None:
            replay = validate_replay(name, replay, guarantee)
        ordered = validate_ordered(name, ordered)
        error_handler = validate_hook(name, "error_handler", error_handler,
                                      "called with (records, codes) of failed messages")
        k = self.kernel
        untyped = type is None or (type.__class__ is int and type == 0)
        tid = 0 if untyped else k.type_id(type, register=True, where=f"channel {name!r}")
        with self.lock:
            ch = self.by_name.get(name)
            if ch is None and untyped and not system:
                # any type ('*') skips every type check: the system channels' only
                raise ChannelError(f"channel {name!r}: type={type!r} is not allowed: a channel "
                                   f"carries one task type (a name, or an id 1..{MAX_TYPES - 1})"
                                   f"; untyped channels are the system's", CHAN_UNKNOWN)
            if ch is not None:
                if ch.type_id != tid:
                    raise ChannelError(
                        f"channel {name!r} carries {k.type_name(ch.type_id)!r}, cannot open it "
                        f"for {k.type_name(tid)!r}", CHAN_TYPE_MISMATCH)
                for attr, v in (("mode", mode), ("guarantee", guarantee), ("ordered", ordered)):
                    if v is not None and not (attr == "ordered" and ch.det) and getattr(ch, attr) != v:
                        raise ChannelError(f"channel {name!r} is {getattr(ch, attr)}, cannot "
                                           f"open it as {v}", CHAN_TYPE_MISMATCH)
                # any other option given must be the channel's too (a second capacity was
                # ignored, a replay log bolted on unchecked, an error handler swapped)
                for attr, v, has in (("capacity", capacity, ch.capacity),
                                     ("replay", replay, ch.replay), ("window", window, ch.window),
                                     ("error_handler", error_handler, ch.error_handler)):
                    if v is not None and (ring_capacity(v) if attr == "capacity" else v) != has:
                        raise ChannelError(f"channel {name!r} is open with {attr}={has!r}, "
                                           f"cannot open it with {attr}={v!r}",
                                           CHAN_TYPE_MISMATCH)
                return ch
            capacity = DEFAULT_CAPACITY if capacity is None else capacity
            replay = replay or 0
            det = bool(tid) and k.det is not None and k.types.info(tid).deterministic
            validate_channel_spec(name, mode, guarantee, replay=replay, deterministic=det)
            if guarantee == "lossy" and tid and not system and not k.types.info(tid).lossy:
                raise ChannelError(f"channel {name!r} is lossy but type {k.type_name(tid)} needs "
                                   f"lossless delivery (lossy = false)", CHAN_TYPE_MISMATCH)
            ch = self._add(Channel(self, self._take_id(), name, tid, mode=mode,
                                   guarantee=guarantee, capacity=capacity, replay=replay,
                                   error_handler=error_handler, window=window,
                                   deterministic=det, system=system, ordered=ordered))
        self._rebuild()
        self._trace(EventType.CHAN_OPEN, tid, ch.id, 0)
        return ch

    def get(self, name) -> Channel:
        """The open channel ``name`` (or id); ChannelError(CHAN_UNKNOWN) naming it otherwise."""
        ch = self.by_id.get(name) if isinstance(name, int) else self.by_name.get(name)
        if ch is None:
            if any(c.name == name for c in self.closed):
                why = " (the system was halted)" if self.kernel.halted else ""
                raise ChannelError(f"channel {name!r} is closed{why}", CHAN_CLOSED)
            close = difflib.get_close_matches(str(name), list(self.by_name), n=1)
            raise ChannelError(
                f"unknown channel {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; open channels: {', '.join(sorted(self.by_name))}", CHAN_UNKNOWN)
        return ch

    def find(self, name) -> Channel | None:
        """The open channel ``name``, else the last one of that name that was closed (what an
        emit to it answers CHAN_CLOSED from), else None."""
        ch = self.by_name.get(name)
        if ch is None:
            ch = next((c for c in reversed(self.closed) if c.name == name), None)
        return ch

    def __contains__(self, name) -> bool:
        return name in self.by_name

    def __iter__(self):
        return iter(list(self.by_name.values()))

    def close(self, name) -> int:
        ch = self.get(name)
        if ch.system and ch.name in ("sys.error", "sys.dropped"):
            raise ChannelError(f"channel {ch.name!r} cannot be closed", CHAN_CLOSED)
        return ch.close()

    def _closed(self, ch: Channel) -> None:
        with self.lock:
            if self.by_name.get(ch.name) is ch:
                del self.by_name[ch.name]
            self.closed.append(ch)
        self.kernel._chan_cache.clear()
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute the drain lists from a snapshot of the table (copied under ``lock``: a
        thread opening a channel meanwhile changed the dict under the iteration). Rebuilds run
        one at a time (``_rebuild_lock``), so the last one published took the newest snapshot:
        two racing ones could otherwise publish the older last and lose a channel."""
        with self._rebuild_lock:
            with self.lock:
                chans = list(self.by_name.values())
            # a suspended channel still drains what it accepted (Channel.suspend): out of
            # these lists, run() took it for idle and its ordered subscriber stalled for good
            chans = sorted((c for c in chans if not c.closed or c.suspended), key=lambda c: c.id)
            self._hot = [c for c in chans if not c.det and any(s.type_id for s in c.subs)]
            self._det = [c for c in chans if c.det]
            self._ordered = {c.id: c for c in chans if c._osubs}

    # -- dead letters ---------------------------------------------------------------------------
    def to_sys_error(self, recs, code) -> None:
        self.sys_error.put(recs, code)

    def to_sys_dropped(self, recs, code, count_on: Channel | None = None) -> None:
        if count_on is not None:
            count_on.dropped += len(recs)
            count_on.drop_reasons[code] = count_on.drop_reasons.get(code, 0) + len(recs)
        self.sys_dropped.put(recs, code)

    def take_dead(self, which: str = "sys.error"):
        if which not in ("sys.error", "sys.dropped"):
            raise ChannelError(f"dead letters live on 'sys.error' or 'sys.dropped', not {which!r}",
                               CHAN_UNKNOWN)
        ch = self.sys_error if which == "sys.error" else self.sys_dropped
        return ch.take_coded(ch.store.capacity)

    def route_failures(self, recs, codes):
        """Failed channel messages go to their channel's error handler when it has one.
        Returns (records, codes) left for sys.error."""
        cids = recs["channel"]
        codes = np.broadcast_to(np.asarray(codes, dtype=np.int32), (len(recs),))
        keep = np.ones(len(recs), dtype=bool)
        for cid in np.unique(cids[(recs["flags"] & FLAG_CHANNEL_MSG) != 0]).tolist():
            ch = self.by_id.get(cid)
            if ch is None or ch.error_handler is None:
                continue
            sel = cids == cid
            try:
                ch.error_handler(T.select(recs, sel), codes[sel].copy())
            except Exception as e:   # noqa: BLE001 - a broken error handler: fall back to sys.error
                self.kernel.note_exception((ch.name, "error_handler", repr(e), ""))
                continue
            keep &= ~sel
            p = recs["payload_ptr"][sel]
            if p.any():
                self.kernel.arena.release_many(p)
        return T.select(recs, keep), codes[keep]

    # -- draining -------------------------------------------------------------------------------
    def on_batch_done(self, recs: np.ndarray) -> None:
        """A worker finished a batch of channel messages (whatever their outcome: done, failed,
        yielded or retried). An ordered subscriber's in-flight batch is over once all of its
        messages were finished: deliver its next one now."""
        if not len(recs) or not self._ordered:
            return
        cids = recs["channel"]
        if not cids.any():                   # direct tasks only
            return
        types = recs["type"]
        c0, t0 = cids[0], types[0]
        if (cids == c0).all() and (types == t0).all():     # the usual batch: one channel
            ch = self._ordered.get(int(c0))
            if ch is not None:
                sub = ch._osubs.get(int(t0))
                if sub is not None and sub.busy:
                    ch._batch_done(sub, recs)
            return
        # a mixed batch (one handler type on several channels, direct tasks among them):
        # each channel's ordered subscriber finishes its own records
        msg = (recs["flags"] & FLAG_CHANNEL_MSG) != 0
        for cid, t in {(int(c), int(y)) for c, y in zip(cids[msg].tolist(),
                                                       types[msg].tolist())}:
            ch = self._ordered.get(cid)
            if ch is None:
                continue
            sub = ch._osubs.get(t)
            if sub is not None and sub.busy:
                ch._batch_done(sub, T.select(recs, msg & (cids == cid) & (types == t)))

    def on_batch_done1(self, cid: int, t: int, seq: int) -> None:
        """``on_batch_done`` for a batch of one record, given as its channel id, type and
        seq (plain ints: the worker read them with one struct call): a request run on the
        direct path or a lone round trip, without NumPy indexing."""
        ch = self._ordered.get(cid)
        if ch is not None:
            sub = ch._osubs.get(t)
            if sub is not None and sub.busy:
                ch._batch_done1(sub, seq)

    def drain_some(self, worker: int = -1) -> int:
        """Opportunistic drain: called after each handler batch and by idle workers."""
        n = 0
        for ch in self._hot:
            for sub in ch.subs:
                if sub.type_id and (sub.ring.tail != sub.ring.head or sub.behind):
                    n += ch._drain_sub(sub)
        if self._det:
            det = self.kernel.det
            # (``held``, not ``held_n``: a host's publishes wait for run(), see DetStage)
            if det is not None and any(c.held for c in self._det) and not det.has_work():
                with det.lock:   # nothing runs this tick: open the boundary ourselves
                    if not det.has_work() and not det.inflight:
                        self.tick_boundary(det.tick)
        return n

    def _drain_channel(self, ch: Channel) -> int:
        return 0 if ch.det else ch._drain_channel()

    def tick_boundary(self, tick: int) -> None:
        """Deterministic channels drain here only, in ascending channel id (under DetStage's lock)."""
        for ch in self._det:
            ch.tick_boundary()

    def idle(self) -> bool:
        """Whether no channel holds a message for a handler subscriber (``Channel.pending``
        is 0 for all): asked before a borrowed worker parks again, once per direct request,
        so the rings' indices are read in place instead of through ``pending``/``len``."""
        for ch in self._hot:
            if ch.held_n:
                return False
            for s in ch.subs:
                if s.type_id:
                    r = s.ring
                    if r.tail != r.head or (s.behind and ch.committed >= s.next):
                        return False
        det = self._det                 # (usually none: no generator built for nothing)
        return not det or not any(c.held_n for c in det)

    def _trace(self, event, task_type: int, cid: int, arg1: int, recs=None,
               worker: int | None = None) -> None:
        """A channel event on the calling worker's ring (``worker``, or the worker whose
        thread calls), else on the host ring (shared: the tracer takes its lock)."""
        k = self.kernel
        tr = k.tracer
        if not tr.enabled:
            return
        if worker is None:
            worker = k.calling_worker()
        w = worker if worker >= 0 else k.nworkers
        if recs is not None:
            tr.emit_batch(w, event, recs, arg0=recs["seq"],
                          arg1=np.full(len(recs), arg1 & 0xFFFFFFFF))
        else:
            tr.emit(w, event, 0, task_type, cid, arg1 & 0xFFFFFFFF)

    def stats(self) -> dict:
        with self.lock:            # a snapshot: another thread may open or close meanwhile
            chans = list(self.by_name.values())
            closed = list(self.closed)
        out = {ch.name: ch.stats() for ch in chans}
        for ch in closed:
            out.setdefault(ch.name, ch.stats())
        return out


__all__ = ["Channels", "SysChannel", "SYS_CHANNELS"]
