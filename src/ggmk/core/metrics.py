"""Metrics for the CPU kernel (SPEC §7): counters, gauges and histograms, never sampled.

Independent of tracing. Each worker writes only its own shard (NumPy arrays), so the hot path
takes no lock; ``snapshot()`` sums the shards. Every array is preallocated at construction, so
registering a name (cold path, under a lock) never moves memory a writer is using.

Per-type counters (``TYPE_COUNTERS``: enqueued, dequeued, ok, fail, retry, yield, dropped) are a
2-D int64 array ``[counter, task_type]`` per shard. Named counters, gauges and log2-bucket
histograms are registered by name and addressed by the id that registration returns (or by name,
a dict lookup slower).

Example::

    from ggmk.core.metrics import Metrics, TypeCounter
    m = Metrics(nworkers=2)
    tick = m.histogram("tick_ns")
    full = m.counter("chan.full")
    depth = m.gauge("ready.depth.hwm", agg="max")
    s = m.shard(0)                                  # worker 0's shard; only worker 0 writes it
    s.add_types(TypeCounter.DEQUEUED, batch["type"])
    s.add_type(TypeCounter.OK, 7, n=3)
    s.inc(full)
    s.max(depth, 120)
    s.observe(tick, 15_000)
    snap = m.snapshot()          # JSON-serialisable dict
    snap["types"]["ok"]["7"], snap["histograms"]["tick_ns"]["p99"]
"""
from __future__ import annotations

import enum
import threading

import numpy as np

from ggmk.core import bigbuf

__all__ = ["Metrics", "MetricsShard", "TypeCounter", "TYPE_COUNTERS", "NBUCKETS",
           "bucket_of", "bucket_bounds", "percentile_from_buckets"]


class TypeCounter(enum.IntEnum):
    """Rows of the per-type counter array."""
    ENQUEUED = 0
    DEQUEUED = 1
    OK = 2
    FAIL = 3
    RETRY = 4
    YIELD = 5
    DROPPED = 6
    WAIT = 7          # ctx.wait_(): re-runs that waited for channel room (not yields)


TYPE_COUNTERS = tuple(c.name.lower() for c in TypeCounter)

# bucket 0 holds 0; bucket k >= 1 holds [2**(k-1), 2**k): k is the value's bit length
NBUCKETS = 65
GAUGE_AGGS = ("sum", "max")


def bucket_of(value) -> int:
    """Histogram bucket of one value (negative and fractional parts count as 0)."""
    v = int(value)
    return v.bit_length() if v > 0 else 0


def bucket_bounds(k: int) -> tuple[int, int]:
    """``[lo, hi)`` of bucket ``k``."""
    return (0, 1) if k == 0 else (1 << (k - 1), 1 << k)


def percentile_from_buckets(buckets: np.ndarray, q: float, vmax: float | None = None) -> float:
    """Estimate the ``q``-th percentile (0..100) from log2 bucket counts.

    Linear interpolation inside the bucket holding the rank; the error is at most the bucket's
    width (a factor of 2). Clamped to ``vmax`` when given. 0.0 for an empty histogram."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile_from_buckets: q must be in 0..100, got {q!r}")
    b = np.asarray(buckets, dtype=np.int64)
    total = int(b.sum())
    if total == 0:
        return 0.0
    rank = q / 100.0 * total
    cum = np.cumsum(b)
    k = int(np.searchsorted(cum, max(rank, 1e-12), side="left"))
    k = min(k, len(b) - 1)
    before = int(cum[k - 1]) if k else 0
    lo, hi = bucket_bounds(k)
    est = lo + (hi - lo) * (rank - before) / max(int(b[k]), 1)
    if vmax is not None:
        est = min(est, float(vmax))
    return float(est)


class MetricsShard:
    """One worker's metrics. Only that worker may write it; any thread may read it.

    Counters, gauges and histograms are addressed by the int id ``Metrics.counter()`` /
    ``gauge()`` / ``histogram()`` returned, or by name."""

    __slots__ = ("worker", "types", "counters", "gauges", "hist", "hist_sum", "hist_max",
                 "_m", "tv", "_hv", "_hsv", "_hmv")

    def __init__(self, metrics: "Metrics", worker: int):
        self._m = metrics
        self.worker = worker
        self.types = bigbuf.zeros((len(TypeCounter), metrics.max_types), np.int64)
        self.counters = np.zeros(metrics.max_names, dtype=np.int64)
        self.gauges = np.zeros(metrics.max_names, dtype=np.float64)
        self.hist = bigbuf.zeros((metrics.max_names, NBUCKETS), np.int64)
        self.hist_sum = np.zeros(metrics.max_names, dtype=np.int64)
        self.hist_max = np.zeros(metrics.max_names, dtype=np.int64)
        # the same arrays as memoryviews: an element read or add through one is plain Python
        # ints (~2x cheaper than a NumPy scalar index), for the one-task paths (``tv[c, t]``)
        self.tv = memoryview(self.types)
        self._hv = memoryview(self.hist)
        self._hsv = memoryview(self.hist_sum)
        self._hmv = memoryview(self.hist_max)

    # per-type counters
    def add_types(self, counter: int, types: np.ndarray, n=1) -> None:
        """Add ``n`` (scalar or array like ``types``) to ``counter`` for each type in ``types``.

        ``types`` is typically ``records["type"]``; repeated types accumulate."""
        try:
            types = np.asarray(types)
            t0 = types[0] if len(types) else 0
            if (n.__class__ is int or np.ndim(n) == 0) and not np.count_nonzero(types != t0):
                self.types[counter, t0] += n * len(types)   # one type: no scatter (np.add.at)
                return
            np.add.at(self.types[counter], types, n)
        except (IndexError, ValueError, TypeError) as e:
            raise ValueError(self._type_error("add_types", counter, types)) from e

    def add_type(self, counter: int, task_type: int, n: int = 1) -> None:
        """Add ``n`` to ``counter`` for one task type."""
        if not 0 <= task_type < self._m.max_types:
            raise ValueError(self._type_error("add_type", counter, [task_type]))
        self.types[counter, task_type] += n

    def _type_error(self, where, counter, types) -> str:
        if not (isinstance(counter, (int, np.integer)) and 0 <= counter < len(TypeCounter)):
            return (f"MetricsShard.{where} (worker {self.worker}): unknown type counter "
                    f"{counter!r}; expected one of {TYPE_COUNTERS}")
        t = np.asarray(types)
        return (f"MetricsShard.{where} (worker {self.worker}): task types must be ints in "
                f"0..{self._m.max_types - 1} (max_types), got values in "
                f"{t.min() if t.size else None}..{t.max() if t.size else None}")

    # named counters
    def inc(self, counter, n: int = 1) -> None:
        """Add ``n`` to a named counter (id or name)."""
        if type(counter) is str:
            counter = self._m.counter_id(counter)
        self.counters[counter] += n

    # gauges
    def set(self, gauge, value) -> None:
        """Set this worker's value of a gauge (summed or maxed across workers at snapshot)."""
        if type(gauge) is str:
            gauge = self._m.gauge_id(gauge)
        self.gauges[gauge] = value

    def max(self, gauge, value) -> None:
        """Raise a high-watermark gauge to ``value`` if it is higher."""
        if type(gauge) is str:
            gauge = self._m.gauge_id(gauge)
        g = self.gauges
        if value > g[gauge]:
            g[gauge] = value

    # histograms
    def observe_int(self, hist: int, v: int) -> None:
        """``observe`` for a histogram id and a plain int (a worker's batch time): the same
        sums, through memoryviews instead of NumPy scalars."""
        if v.__class__ is not int:
            v = int(v)
        if v < 0:
            v = 0
        self._hv[hist, v.bit_length()] += 1
        self._hsv[hist] += v
        if v > self._hmv[hist]:
            self._hmv[hist] = v

    def observe(self, hist, value) -> None:
        """Add one value (e.g. a duration in ns) to a histogram."""
        if type(hist) is str:
            hist = self._m.histogram_id(hist)
        v = value if value.__class__ is int else int(value)
        if v < 0:
            v = 0
        self.hist[hist, v.bit_length()] += 1
        self.hist_sum[hist] += v
        if v > self.hist_max[hist]:
            self.hist_max[hist] = v

    def observe_many(self, hist, values: np.ndarray) -> None:
        """Add every value of ``values`` to a histogram (vectorized)."""
        if type(hist) is str:
            hist = self._m.histogram_id(hist)
        v = np.asarray(values)
        if v.size == 0:
            return
        if v.dtype.kind not in "iuf":
            raise TypeError(f"MetricsShard.observe_many (worker {self.worker}): values must be "
                            f"numeric, got {v.dtype}")
        v = np.maximum(v.ravel(), 0)
        if v.dtype.kind == "f":
            v = np.floor(v)
        # frexp's exponent of a positive integer is its bit length (exact below 2**53)
        _, e = np.frexp(v.astype(np.float64))
        np.minimum(e, NBUCKETS - 1, out=e)
        self.hist[hist] += np.bincount(e, minlength=NBUCKETS)
        self.hist_sum[hist] += int(v.sum())
        top = int(v.max())
        if top > self.hist_max[hist]:
            self.hist_max[hist] = top


class Metrics:
    """Sharded metrics for ``nworkers`` workers (add shards for other writers, e.g. the drainer:
    ``Metrics(nworkers + 1)``).

    ``max_types`` bounds the task type ids of the per-type counters; ``max_names`` bounds how
    many counters, gauges and histograms (each) can be registered.
    """

    def __init__(self, nworkers: int, max_types: int = 4096, max_names: int = 256):
        for what, v in (("nworkers", nworkers), ("max_types", max_types),
                        ("max_names", max_names)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Metrics: {what} must be a positive int, got {v!r}")
        self.nworkers = int(nworkers)
        self.max_types = int(max_types)
        self.max_names = int(max_names)
        self._lock = threading.Lock()          # registration only
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, int] = {}
        self._gauge_agg: list[str] = []
        self._hists: dict[str, int] = {}
        self._shards = [MetricsShard(self, w) for w in range(self.nworkers)]

    def add_shard(self) -> MetricsShard:
        """One more shard, for a writer that is no worker (its writes serialized by a lock of
        its own: e.g. the call lanes answering on one reply channel, ``ggmk.core.lane``);
        summed with the others by every reader."""
        with self._lock:
            sh = MetricsShard(self, len(self._shards))
            self._shards = self._shards + [sh]   # (a new list: readers iterate the old one)
            return sh

    def shard(self, worker: int) -> MetricsShard:
        """Worker ``worker``'s shard (only that worker may write it)."""
        if not 0 <= worker < self.nworkers:
            raise IndexError(f"Metrics.shard: worker {worker!r} out of range "
                             f"0..{self.nworkers - 1}")
        return self._shards[worker]

    # registration (idempotent: the same name returns the same id)
    def _register(self, table: dict, name: str, kind: str, agg: str | None = None) -> int:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Metrics.{kind}: name must be a non-empty str, got {name!r}")
        with self._lock:
            i = table.get(name)
            if i is not None:
                if agg is not None and self._gauge_agg[i] != agg:
                    raise ValueError(f"Metrics.gauge({name!r}): already registered with "
                                     f"agg={self._gauge_agg[i]!r}, not {agg!r}")
                return i
            if len(table) >= self.max_names:
                raise ValueError(f"Metrics.{kind}: cannot register {name!r}: all "
                                 f"{self.max_names} {kind} slots are used (max_names)")
            i = table[name] = len(table)
            if agg is not None:
                self._gauge_agg.append(agg)
            return i

    def counter(self, name: str) -> int:
        """Register (or look up) a named counter; returns its id."""
        return self._register(self._counters, name, "counter")

    def gauge(self, name: str, agg: str = "sum") -> int:
        """Register (or look up) a gauge; ``agg`` says how shards combine: "sum" (e.g. per-worker
        queue depth -> total) or "max" (high watermarks). A gauge written from one shard only
        reads back as that shard's value with either."""
        if agg not in GAUGE_AGGS:
            raise ValueError(f"Metrics.gauge({name!r}): agg must be one of {GAUGE_AGGS}, "
                             f"got {agg!r}")
        return self._register(self._gauges, name, "gauge", agg)

    def histogram(self, name: str) -> int:
        """Register (or look up) a log2-bucket histogram; returns its id."""
        return self._register(self._hists, name, "histogram")

    def _lookup(self, table: dict, name: str, kind: str) -> int:
        try:
            return table[name]
        except KeyError:
            raise KeyError(f"Metrics: no {kind} named {name!r}; register it with "
                           f"Metrics.{kind}({name!r})") from None

    def counter_id(self, name: str) -> int:
        return self._lookup(self._counters, name, "counter")

    def gauge_id(self, name: str) -> int:
        return self._lookup(self._gauges, name, "gauge")

    def histogram_id(self, name: str) -> int:
        return self._lookup(self._hists, name, "histogram")

    # reading
    def type_counts(self, counter) -> np.ndarray:
        """``counter`` (a TypeCounter or its name) summed over shards, indexed by task type."""
        if isinstance(counter, str):
            counter = TYPE_COUNTERS.index(counter)
        return sum(s.types[counter].copy() for s in self._shards)

    def counter_value(self, name: str) -> int:
        i = self.counter_id(name)
        return int(sum(int(s.counters[i]) for s in self._shards))

    def gauge_value(self, name: str) -> float:
        i = self.gauge_id(name)
        vals = [float(s.gauges[i]) for s in self._shards]
        return max(vals) if self._gauge_agg[i] == "max" else sum(vals)

    def histogram_buckets(self, name: str) -> np.ndarray:
        i = self.histogram_id(name)
        return sum(s.hist[i].copy() for s in self._shards)

    def percentile(self, name: str, q: float) -> float:
        """Estimated ``q``-th percentile (0..100) of histogram ``name`` over all shards."""
        i = self.histogram_id(name)
        vmax = max(int(s.hist_max[i]) for s in self._shards)
        return percentile_from_buckets(self.histogram_buckets(name), q, vmax)

    def snapshot(self, type_names: dict | None = None) -> dict:
        """Sum the shards into a JSON-serialisable dict.

        ``{"types": {counter: {type: n}}, "counters": {name: n}, "gauges": {name: v},
        "histograms": {name: {count, sum, max, mean, p50, p90, p99, buckets: [[lo, hi, n]]}}}``.
        Type keys are ``str(type_id)``, or ``type_names[type_id]`` when given. Writers keep
        running: each value is read whole, but values are not one atomic cut across counters.
        """
        shards = self._shards
        with self._lock:
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            aggs = list(self._gauge_agg)
            hists = dict(self._hists)
        types = shards[0].types.copy()
        for s in shards[1:]:
            types += s.types
        tmap = {}
        for c, cname in enumerate(TYPE_COUNTERS):
            nz = np.flatnonzero(types[c])
            tmap[cname] = {(type_names.get(int(t), str(int(t))) if type_names else str(int(t))):
                           int(types[c, t]) for t in nz}
        csum = sum(s.counters.copy() for s in shards)
        out_c = {name: int(csum[i]) for name, i in counters.items()}
        gstack = np.stack([s.gauges.copy() for s in shards])
        out_g = {}
        for name, i in gauges.items():
            v = gstack[:, i].max() if aggs[i] == "max" else gstack[:, i].sum()
            out_g[name] = int(v) if float(v).is_integer() else float(v)
        out_h = {}
        for name, i in hists.items():
            b = sum(s.hist[i].copy() for s in shards)
            total = int(b.sum())
            hsum = int(sum(int(s.hist_sum[i]) for s in shards))
            hmax = int(max(int(s.hist_max[i]) for s in shards))
            out_h[name] = {
                "count": total, "sum": hsum, "max": hmax,
                "mean": hsum / total if total else 0.0,
                "p50": percentile_from_buckets(b, 50, hmax),
                "p90": percentile_from_buckets(b, 90, hmax),
                "p99": percentile_from_buckets(b, 99, hmax),
                "buckets": [[*bucket_bounds(int(k)), int(b[k])] for k in np.flatnonzero(b)],
            }
        return {"workers": self.nworkers, "types": tmap, "counters": out_c, "gauges": out_g,
                "histograms": out_h}
