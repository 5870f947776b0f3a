"""Storage statistics: operation counts, bytes, throughput, errors by kind, sparse regions,
batch sizes, per-path counts, O_DIRECT use and fallbacks, latency histogram, state transitions."""
from __future__ import annotations

import threading
import time

from ggmk.storage.errors import KINDS

PATHS = ("gds", "bounce", "direct", "buffered")
_LAT_BUCKETS_US = tuple(1 << i for i in range(0, 25))      # 1 us .. ~16.8 s, powers of two


def _pow2_bucket(n: int) -> str:
    if n <= 1:
        return "1"
    lo = 1 << (n.bit_length() - 1)
    return str(lo) if lo == n else f"{lo}-{(lo << 1) - 1}"


class StorageStats:
    def __init__(self):
        self.lock = threading.Lock()
        self.t_created = time.monotonic()
        self.ops = {"read": 0, "write": 0}
        self.bytes = {"read": 0, "written": 0, "zero_filled": 0}
        self.errors = {k: 0 for k in KINDS}
        self.short_reads = 0
        self.short_bytes = 0
        self.sparse = {"holes": 0, "data_regions": 0, "hole_bytes_skipped": 0,
                       "sparse_reads": 0, "dense_fallbacks": 0}
        self.batches = {"count": 0, "requests": 0, "max": 0, "sizes": {}, "queued": 0,
                        "queue_high_watermark": 0}
        self.paths = {p: 0 for p in PATHS}
        self.o_direct = {"used": 0, "fallbacks": 0, "fallback": {}}
        self.lat = [0] * (len(_LAT_BUCKETS_US) + 1)
        self.lat_sum_ns = 0
        self.lat_max_ns = 0
        self.lat_n = 0
        self.block_transitions: dict = {}
        self.io_transitions: dict = {}
        self.active_ns = 0
        self._active_since = None
        self.inflight = 0
        self.fast_batches = 0

    # -- updates (callers hold no lock) ------------------------------------------------------
    def batch(self, n: int) -> None:
        with self.lock:
            b = self.batches
            b["count"] += 1
            b["requests"] += n
            b["max"] = max(b["max"], n)
            k = _pow2_bucket(n)
            b["sizes"][k] = b["sizes"].get(k, 0) + 1

    def queued(self, n: int, depth: int) -> None:
        with self.lock:
            self.batches["queued"] += n
            if depth > self.batches["queue_high_watermark"]:
                self.batches["queue_high_watermark"] = depth

    def start(self) -> None:
        with self.lock:
            if self.inflight == 0:
                self._active_since = time.perf_counter_ns()
            self.inflight += 1

    def start_many(self, n: int) -> None:
        """``n`` I/Os of a fast batch started (one update for the batch)."""
        if n <= 0:
            return
        with self.lock:
            if self.inflight == 0:
                self._active_since = time.perf_counter_ns()
            self.inflight += n

    def fallback(self, reason: str) -> None:
        with self.lock:
            self.o_direct["fallbacks"] += 1
            self.o_direct["fallback"][reason] = self.o_direct["fallback"].get(reason, 0) + 1

    def finish(self, io, started: bool) -> None:
        """Account one finished I/O (any outcome)."""
        r = io.result
        with self.lock:
            if started:
                self.inflight -= 1
                if self.inflight == 0 and self._active_since is not None:
                    self.active_ns += time.perf_counter_ns() - self._active_since
                    self._active_since = None
            self.ops[io.op] += 1
            if r.error is not None:
                self.errors[r.error.kind] = self.errors.get(r.error.kind, 0) + 1
                # what a failed I/O put in the file / the destination before it stopped
                self.bytes["written" if io.op == "write" else "read"] += io.landed_bytes
            else:
                self.bytes["read" if io.op == "read" else "written"] += r.nbytes
                self.bytes["zero_filled"] += r.hole_bytes
                if r.status == "short":
                    self.short_reads += 1
                    self.short_bytes += r.requested - r.nbytes
            if r.io_path in self.paths:
                self.paths[r.io_path] += 1
            if r.o_direct:
                self.o_direct["used"] += 1
            if r.holes:
                self.sparse["holes"] += r.holes
                self.sparse["hole_bytes_skipped"] += r.hole_bytes
                self.sparse["sparse_reads"] += 1
            self.sparse["data_regions"] += r.data_regions
            if r.dense_fallback:
                self.sparse["dense_fallbacks"] += 1
            ns = r.latency_ns
            if ns is not None:
                self.lat_n += 1
                self.lat_sum_ns += ns
                self.lat_max_ns = max(self.lat_max_ns, ns)
                us = ns // 1000
                i = us.bit_length() if us else 0
                self.lat[min(i, len(self.lat) - 1)] += 1
            for k, v in io.block_counts.items():
                self.block_transitions[k] = self.block_transitions.get(k, 0) + v
            for k, v in io.io_counts.items():
                self.io_transitions[k] = self.io_transitions.get(k, 0) + v

    def finish_fast(self, b) -> None:
        """Account a finished fast batch (:class:`~ggmk.storage.fast.FastBatch`) at once:
        the same counters as :meth:`finish` gives its I/Os one by one, from its arrays."""
        import numpy as np

        from ggmk.storage.fast import CANCELLED, ERROR, SHORT
        st = b.status
        acc = b._refused == 0
        ran = acc & (st != CANCELLED) & (b._late == 0)     # late: its file did not open
        short = st == SHORT
        bad = np.flatnonzero(st >= ERROR)
        kinds: dict = {}
        if len(bad):
            for i in bad:                       # errors are few; their kinds one by one
                k = b.error(int(i)).kind
                kinds[k] = kinds.get(k, 0) + 1
        nbytes = int(b.nbytes.sum())       # a failed read's: what landed before the error
        n_direct = int((b.direct & ran).sum())
        n_buf = int(ran.sum()) - n_direct
        fallbacks = b.fallbacks()
        lat_us = b.latency_ns[ran] // 1000
        idx = np.minimum(np.where(lat_us > 0, np.floor(np.log2(np.maximum(lat_us, 1))) + 1, 0)
                         .astype(np.int64), len(self.lat) - 1)
        hist = np.bincount(idx, minlength=len(self.lat))
        with self.lock:
            started = int(acc.sum())
            if started:
                self.inflight -= started
                if self.inflight == 0 and self._active_since is not None:
                    self.active_ns += time.perf_counter_ns() - self._active_since
                    self._active_since = None
            self.ops["read"] += len(st)
            for k, v in kinds.items():
                self.errors[k] = self.errors.get(k, 0) + v
            self.bytes["read"] += nbytes
            ns = int(short.sum())
            if ns:
                self.short_reads += ns
                self.short_bytes += int((b.lengths[short] - b.nbytes[short]).sum())
            self.paths["direct"] += n_direct
            self.paths["buffered"] += n_buf
            self.o_direct["used"] += n_direct
            for reason, c in fallbacks.items():
                if c:
                    self.o_direct["fallbacks"] += c
                    self.o_direct["fallback"][reason] = self.o_direct["fallback"].get(reason, 0) + c
            self.sparse["data_regions"] += int(ran.sum())
            for i in np.flatnonzero(hist):
                self.lat[int(i)] += int(hist[i])
            if len(lat_us):
                self.lat_n += len(lat_us)
                self.lat_sum_ns += int(b.latency_ns[ran].sum())
                self.lat_max_ns = max(self.lat_max_ns, int(b.latency_ns[ran].max()))
            for src, dst in ((b.blocks.counts, self.block_transitions),
                             (b.ios.counts, self.io_transitions)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
            self.fast_batches += 1

    # -- snapshot ----------------------------------------------------------------------------
    def _quantile(self, q: float) -> float | None:
        if not self.lat_n:
            return None
        target = q * self.lat_n
        acc = 0
        for i, c in enumerate(self.lat):
            acc += c
            if acc >= target:
                return float(_LAT_BUCKETS_US[i]) if i < len(_LAT_BUCKETS_US) else float("inf")
        return float("inf")

    def snapshot(self) -> dict:
        with self.lock:
            active = self.active_ns
            if self._active_since is not None:
                active += time.perf_counter_ns() - self._active_since
            secs = active / 1e9
            hist = {}
            for i, c in enumerate(self.lat):
                if c:
                    hi = _LAT_BUCKETS_US[i] if i < len(_LAT_BUCKETS_US) else "inf"
                    hist[f"<{hi}us" if i < len(_LAT_BUCKETS_US) else ">=16.8s"] = c
            return {
                "ops": dict(self.ops, total=self.ops["read"] + self.ops["write"]),
                "bytes": dict(self.bytes),
                "throughput": {
                    "active_s": secs,
                    "read_bytes_per_s": self.bytes["read"] / secs if secs else 0.0,
                    "write_bytes_per_s": self.bytes["written"] / secs if secs else 0.0,
                    "ops_per_s": (self.ops["read"] + self.ops["write"]) / secs if secs else 0.0,
                },
                "errors": dict(self.errors, total=sum(self.errors.values())),
                "short_reads": {"count": self.short_reads, "bytes_missing": self.short_bytes},
                "sparse": dict(self.sparse),
                "batches": {**self.batches, "sizes": dict(self.batches["sizes"])},
                "paths": dict(self.paths),
                "o_direct": {**self.o_direct, "fallback": dict(self.o_direct["fallback"])},
                "latency": {
                    "count": self.lat_n,
                    "mean_us": self.lat_sum_ns / self.lat_n / 1e3 if self.lat_n else None,
                    "p50_us_le": self._quantile(0.5), "p99_us_le": self._quantile(0.99),
                    "max_us": self.lat_max_ns / 1e3 if self.lat_n else None,
                    "histogram_us": hist,
                },
                "states": {"block": dict(self.block_transitions),
                           "io": dict(self.io_transitions)},
                "inflight": self.inflight,
                "fast_batches": self.fast_batches,
            }
