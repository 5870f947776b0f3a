"""Fault handling policy: retry backoff and rate-based poison detection (SPEC §6).

Poison: a type is poisoned when it fails at a *sustained* rate of ``threshold`` failures per
``window`` ticks (default 32 per 1000). The window is split into 10 buckets and each bucket
counts at most ``2 * threshold / 10`` failures, so a one-off spike (any size) contributes at most
a fifth of the threshold and cannot poison by itself; failures spread over the window do.
"""
from __future__ import annotations

import math

import numpy as np

MAX_TYPES = 1 << 16


def backoff_ticks(attempt: int, base: int = 1, cap: int = 64) -> int:
    """Ticks to wait before retry number ``attempt`` (1-based): 1, 2, 4, ... capped."""
    return min(cap, base << max(0, attempt - 1))


class PoisonDetector:
    def __init__(self, threshold: int = 32, window: int = 1000, buckets: int = 10):
        self.threshold = threshold
        self.window = window
        self.nb = buckets
        self.width = max(1, window // buckets)
        self.cap = max(1, math.ceil(2 * threshold / buckets))
        self.counts: dict[int, np.ndarray] = {}
        self.epochs: dict[int, np.ndarray] = {}
        self.poisoned = np.zeros(MAX_TYPES, dtype=bool)
        self.events: list[tuple[int, int]] = []   # (tick, type) when a type was poisoned

    def record(self, type_id: int, n: int, tick: int) -> bool:
        """Count ``n`` failures of ``type_id`` at ``tick``; True when the type just became poisoned."""
        c = self.counts.get(type_id)
        if c is None:
            c = self.counts[type_id] = np.zeros(self.nb, dtype=np.int64)
            self.epochs[type_id] = np.full(self.nb, -1, dtype=np.int64)
        epoch = tick // self.width
        i = epoch % self.nb
        e = self.epochs[type_id]
        if e[i] != epoch:
            e[i] = epoch
            c[i] = 0
        c[i] = min(self.cap, c[i] + n)
        live = e > epoch - self.nb
        rate = int(c[live].sum())
        if rate >= self.threshold and not self.poisoned[type_id]:
            self.poisoned[type_id] = True
            self.events.append((tick, type_id))
            return True
        return False

    def rate(self, type_id: int, tick: int) -> int:
        c = self.counts.get(type_id)
        if c is None:
            return 0
        return int(c[self.epochs[type_id] > tick // self.width - self.nb].sum())

    def clear(self, type_id: int) -> None:
        self.poisoned[type_id] = False
        self.counts.pop(type_id, None)
        self.epochs.pop(type_id, None)
