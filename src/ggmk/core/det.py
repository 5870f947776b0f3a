"""Determinism mode (SPEC §3): deterministic tasks run tick by tick in canonical order.

Each tick's set of deterministic tasks is sorted by (priority, type, seq) and handed out in that
order; what they emit or yield runs in the next tick. Children get fresh seqs at the boundary in
(parent seq, emit order), so the numbering does not depend on which worker ran the parent or how
batches were split. At each boundary the finished tick is folded into the trace hash: one
TASK_START (arg1 = low 32 bits of meta0) and one TASK_END (arg1 = result code) event per task,
with ts = tick. Same seed + same input stream gives the same hash on any worker count and HAL.

Which tick host input belongs to: deterministic tasks submitted without ``due`` are held until
the next ``System.run()`` (or ``halt()``), which hands everything submitted since the previous
one to the tick after the last tick opened, in submission order. So the input stream is "what
was submitted between two ``run()`` calls", independent of what the workers were doing while
the host called ``submit``. This holds when the previous ``run()`` finished (returned True); a
``run()`` that timed out leaves the tick counter wherever the workers were. ``submit(...,
due=T)`` puts input in tick T exactly (or the next tick, if T has already opened; T is
0..2**63-1); from the host it is held until ``run()`` too, which places it then (a worker
that saw it earlier opened tick T before ``run()``, and the plain input went after it). A host
thread's publish on a deterministic channel is host input as well: the channel keeps it apart
(admitted against its room, not drained) until ``run()``, whose tick its subscribers' tasks
run in, beside that ``run()``'s submissions, the messages in publish order. (Records flagged
deterministic are not host input: the bridge's tick fences deliver those, already placed.)

Poison: the enqueue core lets deterministic records of a poisoned type through; the stage
refuses them (sys.error, POISONED) when it opens their tick, from the poison flags as of then,
so a type poisoned mid-tick refuses the same tasks on any worker count.

Limits: a deterministic channel that runs out of room, or an arena that runs out, inside a
tick refuses whichever emits come last in real time (CHAN_FULL, ALLOC_FAIL): the hash then
depends on the worker count.
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.core.sched import Route
from ggmk.events import TRACE_DTYPE, EventType
from ggmk.task import POISONED, PRIO_MASK, empty

_KEEP_SEQ = frozenset({Route.YIELD, Route.RETRY, Route.DEFER, Route.EVENT})

MAX_DUE = (1 << 63) - 1       # the last tick a trace event's ts (and the event queue) holds


def check_flag(name: str, value, err=ValueError) -> bool:
    """``value`` of the option ``name`` as a bool: True or False (or a NumPy bool) only, so
    ``deterministic="no"`` or ``2`` is refused instead of turning the mode on."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise err(f"{name}={value!r}: allowed True or False")


def check_int(name: str, value, lo: int, hi: int | None = None, err=ValueError,
              what: str = "") -> int:
    """``value`` of the option ``name`` as an int in ``lo``..``hi``: an int or a NumPy
    integer (not a bool, a float or a string)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        v = int(value)
        if v >= lo and (hi is None or v <= hi):
            return v
    rng = f"an int >= {lo}" if hi is None else f"an int {lo}..{hi}"
    raise err(f"{name}={value!r}: allowed {rng}{what}")


def check_seconds(what: str, name: str, value, none_ok: bool = True):
    """A time in seconds (``run``'s timeout, ``halt``'s): a number >= 0 (not a bool), or None
    when ``none_ok``; else ValueError naming ``what``, ``name`` and the value."""
    if (value is None and none_ok) or (
            isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and value >= 0):
        return value
    raise ValueError(f"{what}: {name}={value!r}: allowed {'None or ' if none_ok else ''}a "
                     f"number of seconds >= 0")


class DetStage:
    def __init__(self, hasher, on_boundary=None):
        # re-entrant: the boundary hook drains deterministic channels through the enqueue core,
        # which hands the records back to take() on the same thread
        self.lock = threading.RLock()
        self.hasher = hasher
        self.on_boundary = on_boundary      # (tick) -> None: drain deterministic channels
        self.tick = 0
        self.cur = empty(0)
        self.codes = np.zeros(0, dtype=np.int32)
        self.cursor = 0
        self.inflight = 0
        self.pending: dict[int, list[np.ndarray]] = {}
        self.next_emit: list[np.ndarray] = []   # children: seq holds the parent's seq for ordering
        self.next_keep: list[np.ndarray] = []   # yields: keep their seq
        # host submissions since the last run(): (due tick, or None, records), in order
        self.staged: list[tuple[int | None, np.ndarray]] = []
        # deterministic channels a host thread published on since the last run(), in call
        # order (Channel._stamp_commit): appended under the channel's lock, so a lock of its own
        # (the channel lock is taken after ``lock``, never before it)
        self.staged_chans: list = []
        self.staged_lock = threading.Lock()
        # () -> whether the calling thread is a host thread (not a handler's): set by the kernel
        self.from_host = None
        self.seq = 0
        self.ticks_run = 0
        self.tasks_run = 0
        self.sched = None                   # the scheduler whose enqueue core hands us records

    def take(self, recs: np.ndarray, route: Route, due: int = 0, sched=None) -> None:
        recs = T.copy(recs)
        # a host's submit(due=T) waits for run() as plain input does; a handler's (a timer
        # deferring itself) goes to its tick now: it runs inside a tick, run() already called
        host_due = route == Route.DEFER and self.from_host is not None and self.from_host()
        with self.lock:
            if sched is not None:
                self.sched = sched          # its poison flags, dead letters and task count
            if route == Route.EMIT:
                self.next_emit.append(recs)
            elif route == Route.YIELD or route == Route.WAIT:
                self.next_keep.append(recs)
            elif route == Route.SUBMIT and not due:
                self.staged.append((None, recs))    # host input: opened by release_input()
            elif host_due:
                self.staged.append((int(due), recs))
            else:
                if route not in _KEEP_SEQ:
                    # external input: number it in arrival order (the input stream's order)
                    recs["seq"] = np.arange(self.seq + 1, self.seq + 1 + len(recs)) & 0xFFFFFFFF
                    self.seq += len(recs)
                tick = max(int(due), self.tick + 1)
                self.pending.setdefault(tick, []).append(recs)

    def release_input(self) -> None:
        """Hand the host's submissions since the last call to the tick stage, in submission
        order, as one tick's input: the tick after the last one opened. ``System.run`` calls
        this, so input given in several ``submit()`` calls before one ``run()`` lands in one
        tick whatever the workers were doing meanwhile. Input with a due tick goes to that tick
        (the next one if it has opened already), keeping its seq as a due'd task does. What the
        host published on deterministic channels meanwhile is released to them too: their
        subscribers' tasks run in that same tick."""
        with self.lock:
            # host publishes on deterministic channels first, under the lock: they join the
            # channel's held messages, drained by the boundary that opens the same tick as
            # the submissions below (a worker cannot open one in between)
            with self.staged_lock:
                chans, self.staged_chans = self.staged_chans, []
            for ch in chans:
                ch.release_host()
            if not self.staged:
                return
            nxt = self.tick + 1
            plain = [r for due, r in self.staged if due is None]
            for due, r in self.staged:
                if due is not None:
                    self.pending.setdefault(max(due, nxt), []).append(r)
            self.staged = []
            if not plain:
                return
            recs = T.concat(plain) if len(plain) > 1 else plain[0]
            recs["seq"] = np.arange(self.seq + 1, self.seq + 1 + len(recs)) & 0xFFFFFFFF
            self.seq += len(recs)
            self.pending.setdefault(nxt, []).append(recs)

    def take_all(self) -> list[np.ndarray]:
        """Remove every record the stage holds and has not handed out (for ``halt``)."""
        with self.lock:
            out = [self.cur[self.cursor:]] + [r for _, r in self.staged] + self.next_emit \
                + self.next_keep
            out += [r for parts in self.pending.values() for r in parts]
            self.cur = self.cur[:self.cursor]
            self.codes = self.codes[:self.cursor]     # (the hash folds the two side by side)
            self.staged, self.next_emit, self.next_keep, self.pending = [], [], [], {}
            return [r for r in out if len(r)]

    def has_work(self) -> bool:
        return (self.cursor < len(self.cur) or bool(self.pending) or bool(self.next_emit)
                or bool(self.next_keep))

    def pop(self, max_n: int):
        """Return (records, start) of the next homogeneous run in canonical order, or None."""
        with self.lock:
            if self.cursor >= len(self.cur):
                if self.inflight or not self._boundary():
                    return None
            start = self.cursor
            types = self.cur["type"]
            end = min(len(self.cur), start + max_n)
            t = types[start]
            run = np.flatnonzero(types[start:end] != t)
            if len(run):
                end = start + int(run[0])
            self.cursor = end
            self.inflight += end - start
            return T.copy(self.cur[start:end]), start

    def finish(self, start: int, codes: np.ndarray) -> None:
        with self.lock:
            self.codes[start:start + len(codes)] = codes
            self.inflight -= len(codes)

    def _boundary(self) -> bool:
        """Close the current tick and open the next one that has work. Called under the lock."""
        if len(self.cur):
            self._fold()
        if self.on_boundary is not None:
            self.on_boundary(self.tick)
        parts = []
        if self.next_emit:
            kids = T.concat(self.next_emit)
            self.next_emit = []
            order = np.argsort(kids["seq"], kind="stable")   # (parent seq, emit order)
            kids = kids[order]
            kids["seq"] = np.arange(self.seq + 1, self.seq + 1 + len(kids)) & 0xFFFFFFFF
            self.seq += len(kids)
            parts.append(kids)
        if self.next_keep:
            parts.extend(self.next_keep)
            self.next_keep = []
        if parts:
            nxt = self.tick + 1
        elif self.pending:
            nxt = min(self.pending)
        else:
            self.cur = empty(0)
            self.cursor = 0
            return False
        parts.extend(self.pending.pop(nxt, []))
        cur = T.concat(parts)
        order = np.lexsort((cur["seq"], cur["type"], cur["flags"] & PRIO_MASK))
        self.cur = cur[order]
        self.codes = np.zeros(len(self.cur), dtype=np.int32)
        self.cursor = 0
        self.tick = nxt
        self.ticks_run += 1
        sched = self.sched
        if sched is not None:
            # poison is applied here, at the boundary, from the flags as of the end of the
            # previous tick (the enqueue core lets deterministic records of a poisoned type
            # through): a flag set mid-tick refuses the same tasks on any number of workers
            bad = sched.poisoned[self.cur["type"]]
            if bad.any():
                gone = T.select(self.cur, bad)
                self.cur = T.select(self.cur, ~bad)
                self.codes = np.zeros(len(self.cur), dtype=np.int32)
                sched.dead(gone, POISONED)
                sched.done(len(gone))
                if not len(self.cur):
                    return self._boundary()
        return True

    def _fold(self) -> None:
        n = len(self.cur)
        ev = np.zeros(2 * n, dtype=TRACE_DTYPE)
        ev["ts"] = self.tick
        ev["event"][:n] = EventType.TASK_START
        ev["event"][n:] = EventType.TASK_END
        for half in (slice(0, n), slice(n, 2 * n)):
            ev["tenant"][half] = self.cur["tenant"]
            ev["task_type"][half] = self.cur["type"]
            ev["arg0"][half] = self.cur["seq"]
        ev["arg1"][:n] = self.cur["meta0"] & 0xFFFFFFFF
        ev["arg1"][n:] = self.codes.astype(np.int64) & 0xFFFFFFFF
        # ticks before this one get no more events: hash them now, so the hasher holds one
        # tick's events, not every task's since boot (48 bytes a task, freed only when the
        # hash was read: ~100 MB/s of trivial tasks). (tick - 1: a flush() may fold this tick
        # while it still gets events)
        self.hasher.update(ev, complete_through=self.tick - 1)
        self.tasks_run += n
        self.cur = empty(0)

    def flush(self) -> None:
        """Fold a finished tick into the hash (at halt or before reading the hash)."""
        with self.lock:
            if len(self.cur) and self.cursor >= len(self.cur) and not self.inflight:
                self._fold()
                self.cursor = 0
