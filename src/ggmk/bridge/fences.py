"""Tick fences for deterministic bridge channels.

The GPU kernel's tick T (the epoch of deterministic bridge traffic it gets) does not start
until the CPU kernel acknowledged that its tick T-1 tasks were delivered, and the reverse: the
CPU kernel gets the GPU's tick-T output only once the GPU finished tick T. ``Fences`` keeps the
log of both kinds of event in one order and refuses an out-of-order start (FenceError), so a
test can check the property from the log.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np

from ggmk.errors import GgmkError


class FenceError(GgmkError):
    """A kernel was about to start a tick before the other acknowledged the previous one."""


class Fences:
    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.cpu_acked = -1
        self.gpu_acked = -1
        self.epoch = 0
        self.hash = hashlib.sha256()

    def _add(self, **ev) -> dict:
        ev["n"] = len(self.log)
        self.log.append(ev)
        return ev

    def cpu_ack(self, tick: int) -> None:
        with self.lock:
            self.cpu_acked = max(self.cpu_acked, tick)
            self._add(event="cpu_ack", tick=tick)

    def gpu_start(self, tick: int, **info) -> None:
        with self.lock:
            if tick >= 1 and self.cpu_acked < tick - 1:
                raise FenceError(f"GPU tick {tick} would start before the CPU acknowledged tick "
                                 f"{tick - 1} (last acknowledged: {self.cpu_acked})")
            self._add(event="gpu_start", tick=tick, **info)

    def gpu_ack(self, tick: int, **info) -> None:
        with self.lock:
            self.gpu_acked = max(self.gpu_acked, tick)
            self._add(event="gpu_ack", tick=tick, **info)

    def fold(self, tick: int, direction: str, name: str, recs: np.ndarray,
             payloads: list | None = None, digests: np.ndarray | None = None) -> None:
        """Fold one fence's crossing records (canonical order) into the bridge hash: their
        inline words, then ``digests`` (one 64-bit digest of each record's payload bytes, 0
        for none: ``Bridge.det_digests``), then any ``payloads`` (bytes) as given."""
        h = self.hash
        h.update(f"{tick}:{direction}:{name}:{len(recs)}".encode())
        cols = np.stack([recs["flags"].astype(np.uint64) & 3, recs["tenant"].astype(np.uint64),
                         recs["meta0"].astype(np.uint64), recs["meta1"].astype(np.uint64),
                         recs["payload_len"].astype(np.uint64)], axis=1) if len(recs) else \
            np.zeros((0, 5), np.uint64)
        h.update(np.ascontiguousarray(cols).tobytes())
        if digests is not None:
            h.update(np.ascontiguousarray(np.asarray(digests, np.uint64)).tobytes())
        for p in payloads or ():
            h.update(bytes(p))

    def hexdigest(self) -> str:
        return self.hash.hexdigest()
