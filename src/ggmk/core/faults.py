"""Fault handling policy: retry backoff and rate-based poison detection (SPEC §6).

Poison means a failure *rate*: a type is poisoned when, within the last ``window`` ticks (default
1000), it failed at least ``threshold`` times (default 32) **and** at least ``fraction`` of its
attempts failed (default 0.5). So a busy type that fails 1% of 6,000 tasks a second is not
poisoned however many failures that adds up to, and a type that fails everything it is given is.
The window is split into 10 buckets (a window shorter than 10 ticks: one a tick); for the count
each bucket contributes at most ``2 * threshold / buckets`` failures, so a one-off spike (any
size) cannot poison by itself: failures spread over the window do. The buckets of a window add
up to exactly ``window`` ticks (when 10 does not divide it, their widths differ by one tick), so
the window covers the last ``window`` ticks, less the part of the current bucket still to come.

Attempts are counted only for types that have failed at least once in the window (the worker
asks ``tracking(type)`` per batch, one dict lookup), so a type that never fails costs nothing.

Two clocks: in determinism mode the kernel counts deterministic tasks in the tick stage's ticks
(the same decisions on any worker count) and its other tasks in wall ticks (the stage's counter
only moves with deterministic work: their failures all fell into one bucket and never poisoned
the type). Each clock has its own window per type (``wall=True``: the second one); either one
can poison the type, and a window counts attempts only from its clock's first failure.
"""
from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

MAX_TYPES = 1 << 16
DEFAULT_BUCKETS = 10


def backoff_ticks(attempt: int, base: int = 1, cap: int = 64) -> int:
    """Ticks to wait before retry number ``attempt`` (1-based): 1, 2, 4, ... capped."""
    # (the shift is bounded: past cap's bit length it is past cap anyway; up to 65535 retries)
    return min(cap, base << min(max(0, attempt - 1), cap.bit_length()))


def _count_arg(name: str, value, what: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
            and value >= 1:
        return int(value)
    raise ValueError(f"{name}={value!r}: allowed an int >= 1{what}")


def _fraction_arg(value) -> float:
    if isinstance(value, (int, float, np.integer, np.floating)) \
            and not isinstance(value, (bool, np.bool_)) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"poison_fraction={value!r}: allowed a number 0 < fraction <= 1 (of the "
                     f"type's attempts in the window that failed)")


class _Window:
    """One type's buckets on one clock: [epoch, capped failures, failures, attempts] each."""
    __slots__ = ("epoch", "capped", "fails", "attempts")

    def __init__(self, nb: int):
        self.epoch = [-1] * nb
        self.capped = [0] * nb
        self.fails = [0] * nb
        self.attempts = [0] * nb


class _Track:
    """A tracked type's windows: ``main`` (the kernel's tick) and ``wall`` (determinism mode:
    tasks that are not deterministic, in wall ticks); None until a failure on that clock."""
    __slots__ = ("main", "wall")

    def __init__(self):
        self.main: _Window | None = None
        self.wall: _Window | None = None


class PoisonDetector:
    def __init__(self, threshold: int = 32, window: int = 1000, buckets: int = DEFAULT_BUCKETS,
                 fraction: float = 0.5):
        threshold = _count_arg("poison_threshold", threshold, " (failures in the window)")
        window = _count_arg("poison_window", window, " (ticks)")
        buckets = _count_arg("buckets", buckets, "")
        fraction = _fraction_arg(fraction)
        self.threshold = threshold
        self.window = window
        self.fraction = fraction
        # the window is nb buckets of whole ticks adding up to exactly `window` ticks: bucket j
        # of a window-long period starts at tick j * window // nb of it
        self.nb = nb = min(buckets, window)
        self.width = window // nb               # (the narrowest bucket's ticks)
        self._even = window % nb == 0
        self._starts = [j * window // nb for j in range(nb)]
        self.cap = max(1, math.ceil(2 * threshold / nb))
        self.counts: dict[int, _Track] = {}
        self.poisoned = np.zeros(MAX_TYPES, dtype=bool)
        self.events: list[tuple[int, int]] = []   # (tick, type) when a type was poisoned

    def epoch(self, tick: int) -> int:
        """The number of ``tick``'s bucket, counted from tick 0 (``nb`` a window)."""
        if self._even:
            return tick // self.width
        q, r = divmod(tick, self.window)
        return q * self.nb + bisect_right(self._starts, r) - 1

    def _bucket(self, type_id: int, tick: int, wall: bool) -> tuple[_Window, int, int]:
        tr = self.counts.get(type_id)
        if tr is None:
            tr = self.counts[type_id] = _Track()
        w = tr.wall if wall else tr.main
        if w is None:
            w = _Window(self.nb)
            if wall:
                tr.wall = w
            else:
                tr.main = w
        return (w, *self._slot(w, tick))

    def _slot(self, w: _Window, tick: int) -> tuple[int, int]:
        epoch = self.epoch(tick)
        i = epoch % self.nb
        if w.epoch[i] != epoch:
            w.epoch[i] = epoch
            w.capped[i] = w.fails[i] = w.attempts[i] = 0
        return i, epoch

    def tracking(self, type_id: int) -> bool:
        return type_id in self.counts

    def attempted(self, type_id: int, n: int, tick: int, wall: bool = False) -> None:
        """``n`` attempts of ``type_id`` that did not fail (OK, yield, retry) at ``tick`` (of
        the wall clock's window with ``wall``). Counted from the clock's first failure on."""
        tr = self.counts.get(type_id)
        if tr is None:
            return
        w = tr.wall if wall else tr.main
        if w is None:
            return
        i, _ = self._slot(w, tick)
        w.attempts[i] += n

    def record(self, type_id: int, n: int, tick: int, wall: bool = False) -> bool:
        """Count ``n`` failures (attempts too) of ``type_id`` at ``tick`` (of the wall clock's
        window with ``wall``); True when the type just became poisoned."""
        w, i, epoch = self._bucket(type_id, tick, wall)
        w.capped[i] = min(self.cap, w.capped[i] + n)
        w.fails[i] += n
        w.attempts[i] += n
        if self.poisoned[type_id]:
            return False
        live = [j for j in range(self.nb) if w.epoch[j] > epoch - self.nb]
        if sum(w.capped[j] for j in live) < self.threshold:
            return False
        fails = sum(w.fails[j] for j in live)
        if fails < self.fraction * sum(w.attempts[j] for j in live):
            return False
        self.poisoned[type_id] = True
        self.events.append((tick, type_id))
        return True

    def rate(self, type_id: int, tick: int, wall: bool = False) -> int:
        """Failures of ``type_id`` counted toward the threshold in the window ending at ``tick``
        (the wall clock's window with ``wall``)."""
        tr = self.counts.get(type_id)
        w = None if tr is None else tr.wall if wall else tr.main
        if w is None:
            return 0
        lo = self.epoch(tick) - self.nb
        return sum(c for e, c in zip(w.epoch, w.capped) if e > lo)

    def clear(self, type_id: int) -> None:
        self.poisoned[type_id] = False
        self.counts.pop(type_id, None)
