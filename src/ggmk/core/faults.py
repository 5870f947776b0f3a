"""Fault handling policy: retry backoff and rate-based poison detection (SPEC §6).

Poison means a failure *rate*: a type is poisoned when, within the last ``window`` ticks (default
1000), it failed at least ``threshold`` times (default 32) **and** at least ``fraction`` of its
attempts failed (default 0.5). So a busy type that fails 1% of 6,000 tasks a second is not
poisoned however many failures that adds up to, and a type that fails everything it is given is.
The window is split into 10 buckets; for the count each bucket contributes at most ``2 *
threshold / 10`` failures, so a one-off spike (any size) cannot poison by itself: failures
spread over the window do.

Attempts are counted only for types that have failed at least once in the window (the worker
asks ``tracking(type)`` per batch, one dict lookup), so a type that never fails costs nothing.
"""
from __future__ import annotations

import math

import numpy as np

MAX_TYPES = 1 << 16


def backoff_ticks(attempt: int, base: int = 1, cap: int = 64) -> int:
    """Ticks to wait before retry number ``attempt`` (1-based): 1, 2, 4, ... capped."""
    return min(cap, base << max(0, attempt - 1))


class _Window:
    """One type's buckets: [epoch, capped failures, failures, attempts] each."""
    __slots__ = ("epoch", "capped", "fails", "attempts")

    def __init__(self, nb: int):
        self.epoch = [-1] * nb
        self.capped = [0] * nb
        self.fails = [0] * nb
        self.attempts = [0] * nb


class PoisonDetector:
    def __init__(self, threshold: int = 32, window: int = 1000, buckets: int = 10,
                 fraction: float = 0.5):
        if not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"poison_threshold={threshold!r}: allowed an integer >= 1")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"poison_window={window!r}: allowed an integer >= 1 (ticks)")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"poison_fraction={fraction!r}: allowed 0 < fraction <= 1")
        self.threshold = threshold
        self.window = window
        self.fraction = fraction
        self.nb = buckets
        self.width = max(1, window // buckets)
        self.cap = max(1, math.ceil(2 * threshold / buckets))
        self.counts: dict[int, _Window] = {}
        self.poisoned = np.zeros(MAX_TYPES, dtype=bool)
        self.events: list[tuple[int, int]] = []   # (tick, type) when a type was poisoned

    def _bucket(self, type_id: int, tick: int) -> tuple[_Window, int, int]:
        w = self.counts.get(type_id)
        if w is None:
            w = self.counts[type_id] = _Window(self.nb)
        epoch = tick // self.width
        i = epoch % self.nb
        if w.epoch[i] != epoch:
            w.epoch[i] = epoch
            w.capped[i] = w.fails[i] = w.attempts[i] = 0
        return w, i, epoch

    def tracking(self, type_id: int) -> bool:
        return type_id in self.counts

    def attempted(self, type_id: int, n: int, tick: int) -> None:
        """``n`` attempts of ``type_id`` that did not fail (OK, yield, retry) at ``tick``."""
        w, i, _ = self._bucket(type_id, tick)
        w.attempts[i] += n

    def record(self, type_id: int, n: int, tick: int) -> bool:
        """Count ``n`` failures (attempts too) of ``type_id`` at ``tick``; True when the type
        just became poisoned."""
        w, i, epoch = self._bucket(type_id, tick)
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

    def rate(self, type_id: int, tick: int) -> int:
        """Failures of ``type_id`` counted toward the threshold in the window ending at ``tick``."""
        w = self.counts.get(type_id)
        if w is None:
            return 0
        lo = tick // self.width - self.nb
        return sum(c for e, c in zip(w.epoch, w.capped) if e > lo)

    def clear(self, type_id: int) -> None:
        self.poisoned[type_id] = False
        self.counts.pop(type_id, None)
