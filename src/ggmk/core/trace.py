"""Tracing for the CPU kernel (SPEC §7): per-worker rings of 24-byte trace events.

Each worker owns one ring (it is the only writer; a ring that several threads write, the
kernel's host ring, is declared ``shared`` and its writers take its lock); one drainer reads all
rings. Writers never wait for the drainer, nor the drainer for them: a full ring overwrites its
oldest records and the drainer counts what it missed. Cost control, cheapest first:

* stripping: ``make_tracer(False)`` (or ``GGMK_TRACE=0`` in the environment) returns a
  ``NullTracer`` whose methods do nothing, and ``tracer.enabled`` lets the kernel skip even
  building the arguments;
* per-module levels (off/error/warn/info/all, default warn), checked by an array lookup indexed
  by task type;
* sampling: keep 1 of ``sample_rate`` events, flagged with ``SAMPLED_BIT`` so counts can be
  scaled back up.

Tasks flagged ``FLAG_EMIT_TRACE`` are always traced, whatever the level and the sampling.

Example::

    from ggmk.core.trace import make_tracer, trace_hash
    from ggmk.events import EventType
    from ggmk import task as T

    tr = make_tracer(True, nworkers=2, default_level="warn")
    tr.register_type(7, "kv")
    tr.set_level("kv", "all")
    recs = T.make(100, type=7, seq=range(100))
    tr.emit_batch(0, EventType.TASK_START, recs)           # 100 events, arg0 = seq
    tr.emit(1, EventType.CHAN_FULL, tenant=0, task_type=7, arg0=3)
    events = tr.drain()                                     # TRACE_DTYPE, sorted by ts
    print(tr.stats()["total"], trace_hash(events))

Records are written by one or two slice assignments per batch; the only Python-level work per
batch is a handful of NumPy calls, independent of the batch size.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable, Iterable

import numpy as np

from ggmk.core import bigbuf
from ggmk.events import EVENT_LEVEL, SAMPLED_BIT, TRACE_DTYPE, EventType, Level
from ggmk.task import FLAG_EMIT_TRACE, TASK_DTYPE

__all__ = [
    "ENABLED", "Tracer", "NullTracer", "make_tracer", "trace_hash", "TraceHasher",
    "scaled_counts", "parse_level", "check_sample_rate", "DEFAULT_CAPACITY",
]

DEFAULT_CAPACITY = 65536
MAX_TYPES = 1 << 20  # task types above this cannot be given a module (the array would be huge)

# The run/build switch: GGMK_TRACE=0 strips tracing for the whole process.
ENABLED: bool = os.environ.get("GGMK_TRACE", "1").strip().lower() not in ("0", "off", "false", "no")

# event code -> the level at which it is recorded; codes nobody declared count as ALL.
_EV_LEVEL_LIST = [int(Level.ALL)] * 256
for _ev, _lv in EVENT_LEVEL.items():
    _EV_LEVEL_LIST[int(_ev)] = int(_lv)
_EVENT_MASK = SAMPLED_BIT - 1
# Bulk moves go through an opaque 24-byte view: NumPy copies structured arrays field by field,
# which is ~10x slower than a plain memcpy of the same bytes.
_RAW = np.dtype((np.void, TRACE_DTYPE.itemsize))
_STAT_KEYS = ("emitted", "sampled_out", "filtered", "overwritten")


def parse_level(level, where: str = "level") -> Level:
    """``Level`` from a Level, an int 0..4 or a name ("off", "error", "warn", "info", "all")."""
    if isinstance(level, Level):
        return level
    if isinstance(level, str):
        try:
            return Level[level.strip().upper()]
        except KeyError:
            raise ValueError(f"{where}: unknown trace level {level!r}; expected one of "
                             f"{', '.join(l.name.lower() for l in Level)}") from None
    if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
        try:
            return Level(int(level))
        except ValueError:
            pass
    raise ValueError(f"{where}: unknown trace level {level!r}; expected a Level, 0..4 or a name")


def check_sample_rate(rate, where: str = "sample_rate") -> int:
    """``rate`` as an int >= 1 (an int or a NumPy integer; a bool is not a rate)."""
    if isinstance(rate, (int, np.integer)) and not isinstance(rate, (bool, np.bool_)) \
            and rate >= 1:
        return int(rate)
    raise ValueError(f"{where}={rate!r}: allowed an int >= 1 (keep 1 of that many events)")


def _check_config(nworkers, capacity, default_level, sample_rate) -> Level:
    """What ``Tracer`` checks of its configuration (``make_tracer`` checks it for the stripped
    tracer too); returns the default level."""
    if (not isinstance(nworkers, (int, np.integer)) or isinstance(nworkers, (bool, np.bool_))
            or nworkers < 1):
        raise ValueError(f"Tracer: nworkers must be a positive int, got {nworkers!r}")
    if (not isinstance(capacity, (int, np.integer)) or isinstance(capacity, (bool, np.bool_))
            or capacity < 2 or capacity & (capacity - 1)):
        raise ValueError(f"Tracer: capacity must be a power of two >= 2, got {capacity!r}")
    check_sample_rate(sample_rate, "Tracer: sample_rate")
    return parse_level(default_level, "Tracer: default_level")


def _check_max_events(max_events) -> None:
    if max_events is None:
        return
    if isinstance(max_events, (int, np.integer)) and not isinstance(
            max_events, (bool, np.bool_)) and max_events >= 0:
        return
    raise ValueError(f"Tracer.drain: max_events={max_events!r}: allowed None or an int >= 0")


def _event_level(event, where: str) -> int:
    code = int(event)
    if not 0 < code < len(_EV_LEVEL_LIST):
        raise ValueError(f"{where}: event code {event!r} out of range 1..{len(_EV_LEVEL_LIST) - 1}")
    return _EV_LEVEL_LIST[code]


class _Ring:
    """Single-producer ring of trace records.

    Positions grow forever; slot = position & mask. The writer announces ``reserved`` (the end of
    the positions it is about to write), writes the records, then publishes ``tail``. The reader
    copies ``[head, tail)`` and afterwards discards every position ``< reserved - capacity``:
    those slots may have been rewritten while it copied. Python int attribute stores are atomic,
    so each counter is read whole.
    """

    __slots__ = ("buf", "raw", "cap", "mask", "tail", "reserved", "head", "lost")

    def __init__(self, capacity: int):
        self.buf = bigbuf.zeros(capacity, TRACE_DTYPE)
        self.raw = self.buf.view(_RAW)
        self.cap = capacity
        self.mask = capacity - 1
        self.tail = 0       # published end (writer)
        self.reserved = 0   # end of positions being written (writer); always >= tail
        self.head = 0       # next position to drain (reader)
        self.lost = 0       # positions the reader found overwritten (reader)

    def write(self, data: np.ndarray) -> None:
        k = len(data)
        t = self.tail
        cap = self.cap
        self.reserved = t + k
        data = data.view(_RAW)
        if k > cap:                 # only the newest `cap` can survive; the rest are lost
            t += k - cap
            data = data[k - cap:]
            k = cap
        i = t & self.mask
        first = cap - i
        if k <= first:
            self.raw[i:i + k] = data
        else:
            self.raw[i:] = data[:first]
            self.raw[:k - first] = data[first:]
        self.tail = self.reserved

    def write_one(self, rec: tuple) -> None:
        t = self.tail
        self.reserved = t + 1
        self.buf[t & self.mask] = rec
        self.tail = t + 1

    def read(self, limit: int | None) -> np.ndarray | None:
        """Copy out up to ``limit`` of the oldest undrained records (reader side only)."""
        cap = self.cap
        tail = self.tail
        head = self.head
        start = max(head, self.reserved - cap)   # older positions are already gone
        end = tail if limit is None else min(tail, start + limit)
        out = None
        if end > start:
            n = end - start
            i = start & self.mask
            first = cap - i
            if n <= first:
                out = self.raw[i:i + n].copy()
            else:
                out = np.concatenate((self.raw[i:], self.raw[:n - first]))
        # anything a writer started on since we looked may have torn the copied slots
        valid = max(start, self.reserved - cap)
        if out is not None and valid > start:
            out = out[valid - start:] if valid < end else None
        new_head = max(end, valid)
        self.lost += (new_head - head) - (0 if out is None else len(out))
        self.head = new_head
        return None if out is None else out.view(TRACE_DTYPE)


class _Sampler:
    """Keep 1 of every ``rate`` candidate events: one at a random position in each block of
    ``rate`` consecutive candidates (stratified sampling). Counts are exact to within one block,
    and unlike "every rate-th event" it cannot alias with periodic patterns (START/END pairs)."""

    __slots__ = ("rate", "rng", "count", "off")

    def __init__(self, rate: int, seed: int, worker: int):
        self.rate = rate
        self.rng = np.random.default_rng([seed, worker])
        self.count = 0   # candidates seen so far
        self.off = 0     # kept offset within the current block (valid when count % rate != 0)

    def one(self) -> bool:
        r = self.rate
        pos = self.count % r
        if pos == 0:
            self.off = int(self.rng.random() * r)
        self.count += 1
        return pos == self.off

    def many(self, m: int) -> np.ndarray:
        """Indices (0..m-1) of the kept ones among the next ``m`` candidates."""
        r = self.rate
        c = self.count
        b0, pos0 = divmod(c, r)
        b_last = (c + m - 1) // r
        # floor(U * r): uniform on 0..r-1, and far cheaper than Generator.integers per call
        offs = (self.rng.random(b_last - b0 + 1) * r).astype(np.int64)
        if pos0:
            offs[0] = self.off       # the current block's choice was already made
        self.off = int(offs[-1])
        self.count = c + m
        keep = np.arange(b0 * r - c, b_last * r - c + 1, r, dtype=np.int64)
        keep += offs
        # only the first block (partly seen already) and the last (partly in the future) can
        # put their pick outside 0..m-1
        lo = 1 if keep[0] < 0 else 0
        hi = len(keep) - 1 if keep[-1] >= m else len(keep)
        return keep[lo:hi]


_TALLY_LOCK = threading.Lock()     # registration of tallies only (rare)


class Tracer:
    """Per-worker trace rings with level filtering, sampling and forced tracing.

    ``nworkers`` rings of ``capacity`` records (a power of two). Worker ``w`` must be the only
    thread emitting with ``worker=w``, except for the rings listed in ``shared`` (the kernel's
    host ring, which any non-worker thread may write): emits to one of those serialize on that
    ring's lock. ``drain`` may run concurrently from any one thread.

    Example::

        tr = Tracer(2, capacity=1024, default_level="warn", sample_rate=1)
        tr.emit(0, EventType.TASK_FAIL, tenant=1, task_type=5, arg0=42)
        ev = tr.drain()
    """

    enabled = True

    def __init__(self, nworkers: int, capacity: int = DEFAULT_CAPACITY,
                 default_level=Level.WARN, sample_rate: int = 1, seed: int = 0,
                 clock: Callable[[], int] = time.perf_counter_ns, shared: Iterable[int] = ()):
        default = _check_config(nworkers, capacity, default_level, sample_rate)
        self.nworkers = int(nworkers)
        self.capacity = int(capacity)
        self.sample_rate = int(sample_rate)
        self.seed = int(seed)
        self.clock = clock
        self._rings = [_Ring(self.capacity) for _ in range(self.nworkers)]
        self._samplers = [_Sampler(self.sample_rate, self.seed, w) for w in range(self.nworkers)]
        # per worker: [emitted, sampled_out, filtered]; each list is written by its worker only
        self._counts = [[0, 0, 0] for _ in range(self.nworkers)]
        # counts kept outside the rings' locks, added to a slot's by ``stats``: (slot, list)
        self._tallies: list = []
        # rings written by several threads: a lock each (the ring, its counts and its sampler)
        self._locks: list = [None] * self.nworkers
        for w in shared:
            if not 0 <= w < self.nworkers:
                raise ValueError(f"Tracer: shared ring {w!r} out of range 0..{self.nworkers - 1}")
            self._locks[w] = threading.Lock()
        self._drain_lock = threading.Lock()   # drainers only; writers never take it
        self._drain_start = 0
        self._cfg_lock = threading.Lock()
        self._default = default
        self._module_level: dict[str, Level] = {}
        self._type_module: dict[int, str] = {}
        # level per task type; index L (the last slot) stands for every type >= L
        self._lvl = np.full(1, int(self._default), dtype=np.uint8)
        self._lvl_list = [int(self._default)]
        self._refresh_bounds()

    # -- configuration (cold path) -----------------------------------------------------------

    def register_type(self, task_type: int, module: str) -> None:
        """Map ``task_type`` to ``module``; the type then follows that module's level."""
        t = int(task_type)
        if not 0 <= t < MAX_TYPES:
            raise ValueError(f"Tracer.register_type: task type {task_type!r} for module "
                             f"{module!r} out of range 0..{MAX_TYPES - 1}")
        if not isinstance(module, str) or not module:
            raise ValueError(f"Tracer.register_type: module name for type {t} must be a "
                             f"non-empty str, got {module!r}")
        with self._cfg_lock:
            self._type_module[t] = module
            self._rebuild()

    def set_level(self, module: str, level) -> None:
        """Set ``module``'s level (a Level, 0..4 or "off"/"error"/"warn"/"info"/"all").

        A module may be given a level before any of its types is registered."""
        lv = parse_level(level, f"Tracer.set_level({module!r})")
        with self._cfg_lock:
            self._module_level[module] = lv
            self._rebuild()

    def set_default_level(self, level) -> None:
        """Level of unregistered types and of modules that were never given one."""
        lv = parse_level(level, "Tracer.set_default_level")
        with self._cfg_lock:
            self._default = lv
            self._rebuild()

    def level_of(self, task_type: int) -> Level:
        """The level currently applied to ``task_type``."""
        t = int(task_type)
        lst = self._lvl_list
        return Level(lst[t] if t < len(lst) - 1 else lst[-1])

    def _rebuild(self) -> None:
        size = (max(self._type_module) + 1) if self._type_module else 0
        lvl = np.full(size + 1, int(self._default), dtype=np.uint8)
        for t, mod in self._type_module.items():
            lvl[t] = int(self._module_level.get(mod, self._default))
        # swap whole objects so a concurrent emit sees either the old or the new table
        self._lvl = lvl
        self._lvl_list = lvl.tolist()
        self._refresh_bounds()

    def _refresh_bounds(self) -> None:
        self._min_level = int(self._lvl.min())
        self._max_level = int(self._lvl.max())
        # no type is traced at level ALL (TASK_START / TASK_END): only tasks flagged
        # FLAG_EMIT_TRACE can be recorded, so the kernel checks that flag once per batch and
        # skips the call (``skipped``) instead of paying emit_batch's checks twice a batch
        self.quiet_all = int(Level.ALL) > self._max_level

    def tally(self, worker: int) -> list:
        """A count list like a slot's ``[emitted, sampled_out, filtered]``, added to slot
        ``worker``'s in ``stats``; its writer keeps it under a lock of its own (the call
        lanes of one reply channel: ``ggmk.core.lane``) instead of the slot's."""
        if not 0 <= worker < self.nworkers:
            raise IndexError(f"Tracer.tally: worker {worker!r} out of range "
                             f"0..{self.nworkers - 1}")
        t = [0, 0, 0]
        with _TALLY_LOCK:            # (a new list: stats iterates the old one unlocked)
            self._tallies = self._tallies + [(worker, t)]
        return t

    def skipped(self, worker: int, n: int) -> None:
        """Count ``n`` level-ALL events the kernel did not offer to ``emit_batch`` because
        ``quiet_all`` said none could pass (the same ``filtered`` count emit_batch keeps)."""
        lk = self._locks[worker]
        if lk is not None:
            lk.acquire()             # (a pair, not ``with``: ~2.5x cheaper on CPython 3.11)
            self._counts[worker][2] += n
            lk.release()
            return
        self._counts[worker][2] += n

    # -- hot path ----------------------------------------------------------------------------

    def emit(self, worker: int, event, tenant: int, task_type: int, arg0: int = 0,
             arg1: int = 0, *, ts: int | None = None, force: bool = False) -> bool:
        """Record one event on ``worker``'s ring; returns whether it was recorded.

        Recorded when the event's level <= the level of ``task_type``'s module, or always when
        ``force`` (the kernel passes ``force=True`` for tasks flagged FLAG_EMIT_TRACE). With
        ``sample_rate > 1`` non-forced events are sampled and carry SAMPLED_BIT."""
        if not 0 <= worker < self.nworkers:
            raise IndexError(f"Tracer.emit: worker {worker!r} out of range 0..{self.nworkers - 1}")
        lk = self._locks[worker]
        if lk is not None:
            with lk:
                return self._emit(worker, event, tenant, task_type, arg0, arg1, ts, force)
        return self._emit(worker, event, tenant, task_type, arg0, arg1, ts, force)

    def _emit(self, worker, event, tenant, task_type, arg0, arg1, ts, force) -> bool:
        cnt = self._counts[worker]
        code = int(event)
        if not force:
            try:
                evl = _EV_LEVEL_LIST[code]
            except IndexError:
                raise ValueError(f"Tracer.emit: event code {event!r} out of range") from None
            lst = self._lvl_list
            if evl > (lst[task_type] if task_type < len(lst) - 1 else lst[-1]):
                cnt[2] += 1
                return False
            if self.sample_rate > 1:
                if not self._samplers[worker].one():
                    cnt[1] += 1
                    return False
                code |= SAMPLED_BIT
        elif code <= 0 or code >= len(_EV_LEVEL_LIST):
            raise ValueError(f"Tracer.emit: event code {event!r} out of range")
        self._rings[worker].write_one(
            (self.clock() if ts is None else ts, code, tenant, task_type, arg0, arg1))
        cnt[0] += 1
        return True

    def emit_batch(self, worker: int, event, records: np.ndarray, arg0=None, arg1=None, *,
                   ts=None, force: bool = False) -> int:
        """Record ``event`` for each task in ``records`` (a TASK_DTYPE array) that passes.

        Filtering by level (per task type), FLAG_EMIT_TRACE forcing and sampling are vectorized;
        survivors are written with one or two slice assignments. ``arg0`` defaults to the task's
        ``seq``, ``arg1`` to 0; each of ``arg0``, ``arg1`` and ``ts`` may be a scalar or an array
        of ``len(records)`` (values are truncated to 32 bits; ts to 64). ``ts=None`` reads the
        clock once for the whole batch. Returns the number of events written."""
        if not 0 <= worker < self.nworkers:
            raise IndexError(
                f"Tracer.emit_batch: worker {worker!r} out of range 0..{self.nworkers - 1}")
        lk = self._locks[worker]
        if lk is not None:
            with lk:
                return self._emit_batch(worker, event, records, arg0, arg1, ts, force)
        return self._emit_batch(worker, event, records, arg0, arg1, ts, force)

    def _emit_batch(self, worker, event, records, arg0, arg1, ts, force) -> int:
        if records.dtype != TASK_DTYPE:
            raise TypeError(f"Tracer.emit_batch: records must be TASK_DTYPE, got {records.dtype}")
        n = len(records)
        if n == 0:
            return 0
        evl = _event_level(event, "Tracer.emit_batch")
        code = int(event)
        cnt = self._counts[worker]
        rate = self.sample_rate
        idx = None           # indices of the records to write; None = all of them
        sampled = None       # indices into idx of the sampled ones; None = none, True = all
        if force or (rate == 1 and evl <= self._min_level):
            pass                                     # everything is recorded
        elif evl > self._max_level:
            # no type is traced at this level: only flagged tasks survive
            forced = records["flags"] & FLAG_EMIT_TRACE
            if not np.count_nonzero(forced):
                cnt[2] += n
                return 0
            idx = np.flatnonzero(forced)
            cnt[2] += n - len(idx)
        else:
            fl = records["flags"] & FLAG_EMIT_TRACE
            nforced = int(np.count_nonzero(fl))
            forced = (fl != 0) if nforced else None   # None: no flagged task (the usual case)
            if evl <= self._min_level:
                passing = None                       # every type passes the level check
            else:
                lvl = self._lvl
                passing = lvl[np.minimum(records["type"], len(lvl) - 1)] >= evl
            if rate == 1:
                if passing is None:                  # only if a level changed meanwhile
                    nfilt = 0
                else:
                    idx = np.flatnonzero(passing if forced is None else passing | forced)
                    nfilt = n - len(idx)
                    if nfilt == 0:
                        idx = None
            else:
                if forced is None:
                    cidx = np.arange(n) if passing is None else np.flatnonzero(passing)
                else:
                    cidx = np.flatnonzero(~forced if passing is None else passing & ~forced)
                nfilt = n - nforced - len(cidx)
                kept = cidx[self._samplers[worker].many(len(cidx))] if len(cidx) else cidx
                cnt[1] += len(cidx) - len(kept)
                if forced is None:
                    idx, sampled = kept, True
                else:
                    keep = forced.copy()
                    keep[kept] = True
                    idx = np.flatnonzero(keep)
                    if len(kept):
                        sampled = np.searchsorted(idx, kept)
            cnt[2] += nfilt
            if idx is not None and len(idx) == 0:
                return 0

        k = n if idx is None else len(idx)
        out = np.empty(k, dtype=TRACE_DTYPE)
        if ts is None:
            out["ts"] = self.clock()
        else:
            out["ts"] = ts if (idx is None or np.ndim(ts) == 0) else np.asarray(ts)[idx]
        if sampled is True:
            out["event"] = code | SAMPLED_BIT
        else:
            out["event"] = code
            if sampled is not None:
                out["event"][sampled] = code | SAMPLED_BIT
        if idx is None:
            out["tenant"] = records["tenant"]
            out["task_type"] = records["type"]
            out["arg0"] = records["seq"] if arg0 is None else arg0
            out["arg1"] = 0 if arg1 is None else arg1
        else:
            out["tenant"] = records["tenant"][idx]
            out["task_type"] = records["type"][idx]
            out["arg0"] = (records["seq"][idx] if arg0 is None else
                           arg0 if np.ndim(arg0) == 0 else np.asarray(arg0)[idx])
            out["arg1"] = (0 if arg1 is None else
                           arg1 if np.ndim(arg1) == 0 else np.asarray(arg1)[idx])
        self._rings[worker].write(out)
        cnt[0] += k
        return k

    # -- reader side -------------------------------------------------------------------------

    def drain(self, max_events: int | None = None) -> np.ndarray:
        """Collect undrained events from every ring, without stopping the writers.

        Returns a TRACE_DTYPE array sorted by ts (stable: ties keep ring order). With
        ``max_events``, at most that many, oldest first per ring, starting at a rotating ring so
        no worker starves."""
        _check_max_events(max_events)
        with self._drain_lock:
            chunks = []
            left = max_events
            nw = self.nworkers
            start = self._drain_start
            self._drain_start = (start + 1) % nw
            for j in range(nw):
                if left == 0:
                    break
                part = self._rings[(start + j) % nw].read(left)
                if part is not None:
                    chunks.append(part)
                    if left is not None:
                        left -= len(part)
        if not chunks:
            return np.empty(0, dtype=TRACE_DTYPE)
        out = chunks[0] if len(chunks) == 1 else np.concatenate(
            [c.view(_RAW) for c in chunks]).view(TRACE_DTYPE)
        order = np.argsort(out["ts"], kind="stable")
        return out.view(_RAW)[order].view(TRACE_DTYPE)

    def stats(self) -> dict:
        """``{"workers": [{emitted, sampled_out, filtered, overwritten}, ...], "total": {...}}``.

        ``overwritten`` counts events lost to a full ring: those the drainer found gone plus
        those currently lapped and not yet drained."""
        workers = []
        for cnt, ring in zip(self._counts, self._rings):
            pending_lost = max(0, ring.tail - ring.head - ring.cap)
            workers.append({"emitted": cnt[0], "sampled_out": cnt[1], "filtered": cnt[2],
                            "overwritten": ring.lost + pending_lost})
        for w, t in self._tallies:
            for key, v in zip(("emitted", "sampled_out", "filtered"), t):
                workers[w][key] += v
        total = {k: sum(w[k] for w in workers) for k in _STAT_KEYS}
        return {"workers": workers, "total": total}

    def scaled_counts(self, events: np.ndarray) -> dict:
        """Event counts with each sampled event counted ``sample_rate`` times."""
        return scaled_counts(events, self.sample_rate)


class NullTracer:
    """The stripped tracer: same API as ``Tracer``, every method does nothing.

    ``enabled`` is False so the kernel can skip building arguments altogether::

        if tracer.enabled:
            tracer.emit_batch(w, EventType.TASK_END, recs, arg0=codes)
    """

    enabled = False
    quiet_all = True
    nworkers = 0
    capacity = 0
    sample_rate = 1
    seed = 0

    def __init__(self, nworkers: int = 0, *args, **kwargs):
        self.nworkers = int(nworkers)

    def register_type(self, task_type: int, module: str) -> None:
        pass

    def set_level(self, module: str, level) -> None:
        pass

    def tally(self, worker: int) -> list:
        return [0, 0, 0]

    def skipped(self, worker: int, n: int) -> None:
        pass

    def set_default_level(self, level) -> None:
        pass

    def level_of(self, task_type: int) -> Level:
        return Level.OFF

    def emit(self, worker, event, tenant, task_type, arg0=0, arg1=0, *, ts=None,
             force=False) -> bool:
        return False

    def emit_batch(self, worker, event, records, arg0=None, arg1=None, *, ts=None,
                   force=False) -> int:
        return 0

    def drain(self, max_events=None) -> np.ndarray:
        _check_max_events(max_events)
        return np.empty(0, dtype=TRACE_DTYPE)

    def stats(self) -> dict:
        zero = dict.fromkeys(_STAT_KEYS, 0)
        return {"workers": [dict(zero) for _ in range(self.nworkers)], "total": zero}

    def scaled_counts(self, events) -> dict:
        return {}


def make_tracer(enabled: bool | None = None, **kw):
    """A ``Tracer(**kw)``, or a ``NullTracer`` when ``enabled`` is False or the process was
    started with ``GGMK_TRACE=0`` (the environment switch wins). ``enabled=None`` follows the
    environment alone. The configuration is checked either way: a bad level or rate is an
    error whether or not tracing is on."""
    if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
        raise ValueError(f"make_tracer: enabled={enabled!r}: allowed True, False or None")
    if enabled is None:
        enabled = True
    if enabled and ENABLED:
        return Tracer(**kw)
    _check_config(kw.get("nworkers"), kw.get("capacity", DEFAULT_CAPACITY),
                  kw.get("default_level", Level.WARN), kw.get("sample_rate", 1))
    return NullTracer(kw["nworkers"])


# -- analysis -------------------------------------------------------------------------------

def scaled_counts(events: np.ndarray, rate: int) -> dict:
    """``{EventType: count}`` where each event carrying SAMPLED_BIT counts ``rate`` times.

    Codes that are not an EventType are keyed by their int."""
    ev = np.asarray(events)["event"].astype(np.int64)
    base = ev & _EVENT_MASK
    weight = np.where(ev & SAMPLED_BIT, float(rate), 1.0)
    if len(base) == 0:
        return {}
    sums = np.bincount(base, weights=weight)
    out = {}
    for code in np.flatnonzero(np.bincount(base)):
        try:
            key = EventType(int(code))
        except ValueError:
            key = int(code)
        out[key] = float(sums[code])
    return out


def _canonical(events: np.ndarray) -> np.ndarray:
    ev = np.asarray(events)
    if ev.dtype != TRACE_DTYPE:
        raise TypeError(f"trace_hash: events must be TRACE_DTYPE, got {ev.dtype}")
    # np.lexsort's last key is the primary one: ts, event, tenant, task_type, arg0, arg1
    order = np.lexsort((ev["arg1"], ev["arg0"], ev["task_type"], ev["tenant"], ev["event"],
                        ev["ts"]))
    return np.ascontiguousarray(ev).view(_RAW)[order].view(TRACE_DTYPE)


def trace_hash(events: np.ndarray) -> str:
    """Hex blake2b-128 of ``events`` in canonical order: the same multiset of events hashes the
    same whatever order the workers recorded them in.

    Example::

        assert trace_hash(ev) == trace_hash(ev[::-1])
    """
    return hashlib.blake2b(_canonical(events).tobytes(), digest_size=16).hexdigest()


class TraceHasher:
    """Incremental run identity for determinism mode (ts = tick).

    Feed drained chunks in any order and size; events are grouped by tick, each tick's events
    hashed in canonical order, and the tick digests chained in tick order. Only ticks not yet
    sealed are kept in memory. A tick is sealed by ``update(..., complete_through=t)`` (every
    tick <= t is final) or by ``hexdigest()``; an event for an already sealed tick is an error.

    Example::

        h = TraceHasher()
        while running:
            h.update(tracer.drain(), complete_through=kernel.tick - 1)
        run_id = h.hexdigest()
    """

    def __init__(self):
        self._chain = hashlib.blake2b(digest_size=16).digest()
        self._pending: list[np.ndarray] = []
        self._sealed_through = -1
        self.ticks = 0     # number of ticks folded (ticks without events are not counted)
        self.events = 0

    def update(self, events: np.ndarray, complete_through: int | None = None) -> None:
        ev = np.asarray(events)
        if ev.dtype != TRACE_DTYPE:
            raise TypeError(f"TraceHasher.update: events must be TRACE_DTYPE, got {ev.dtype}")
        if len(ev):
            low = int(ev["ts"].min())
            if low <= self._sealed_through:
                raise ValueError(f"TraceHasher.update: event for tick {low} arrived after ticks "
                                 f"<= {self._sealed_through} were sealed")
            self._pending.append(np.ascontiguousarray(ev).view(_RAW).copy())
        if complete_through is not None:
            self._seal(int(complete_through))

    def _seal(self, through: int | None) -> None:
        if through is not None and through <= self._sealed_through:
            return
        if self._pending:
            raw = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            allev = raw.view(TRACE_DTYPE)
            if through is None:
                done, rest = allev, raw[:0]
            else:
                m = allev["ts"] <= through
                done, rest = raw[m].view(TRACE_DTYPE), raw[~m]
            self._pending = [rest] if len(rest) else []
            if len(done):
                canon = _canonical(done)
                ticks, starts = np.unique(canon["ts"], return_index=True)
                bounds = list(starts[1:]) + [len(canon)]
                for tick, a, b in zip(ticks.tolist(), starts.tolist(), bounds):
                    d = hashlib.blake2b(canon[a:b].tobytes(), digest_size=16).digest()
                    self._chain = hashlib.blake2b(
                        self._chain + int(tick).to_bytes(8, "little") + d,
                        digest_size=16).digest()
                self.ticks += len(ticks)
                self.events += len(canon)
                through = max(through if through is not None else -1, int(ticks[-1]))
        if through is not None:
            self._sealed_through = max(self._sealed_through, through)

    def hexdigest(self) -> str:
        """Seal every pending tick and return the chained digest (hex, 16 bytes)."""
        self._seal(None)
        return self._chain.hex()
