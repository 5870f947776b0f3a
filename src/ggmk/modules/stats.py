"""The ``stats`` module (SPEC §10): counters, gauges, histograms and periodic snapshots.

Input (channels ``NAME.add`` / ``NAME.set`` / ``NAME.obs``, or the types submitted directly):
``STAT_ADD`` (counter += meta1), ``STAT_SET`` (gauge = meta1), ``STAT_OBS`` (histogram: one
observation of meta1); ``meta0`` is the metric id. Names are optional: ``m.stats.name(id,
"requests")`` (or ``names={id: "requests"}``); unnamed metrics show as ``"#<id>"``. Values are
words (u64; a counter wraps at 2**64). A metric id used with two kinds is refused: that
record fails with ``STATS_KIND`` (on ``sys.error``).

Gauges keep the last set applied. Sets through ``NAME.set`` are applied in the order they
were published (its handler is an ordered subscriber: one batch at a time, in channel order),
so the last one published sticks. Sets submitted directly (``system.submit("STAT_SET",
...)``) have no such order: the kernel orders only a channel's messages for its subscriber,
and direct submits run in parallel batches on any worker, so of two sets submitted one after
the other the older can be applied last. Set a gauge whose last value matters through
``NAME.set``.

Histograms: 65 power-of-two buckets (bucket ``b`` counts values in ``[2**(b-1), 2**b)``,
bucket 0 the zeros), plus count, sum, min and max; ``quantile(h, q)`` estimates from buckets.

Snapshots: every ``period`` ticks *in which something changed* a snapshot (a dict: tick,
number, counters, gauges, histograms) is taken: kept in ``m.stats.snapshots`` (the last
``keep``), passed to ``sink(snapshot)`` when given, and published as ``STATS_SNAPSHOT`` on
``NAME.snapshot`` (meta0 = number, meta1 = tick, payload = JSON) when something subscribes.
At most ``outbox_limit`` published snapshots wait for a slow subscriber; while that many
wait, a new snapshot is kept but not published (``"unpublished": True`` in it, counted in
``m.stats.unpublished``).
Nothing is scheduled while nothing changes, so an idle system stays idle.
``m.stats.snapshot()`` takes one now.

Example::

    import ggmk
    from ggmk.modules import stats

    st = stats.module(period=10, names={1: "requests", 2: "latency_us"})
    with ggmk.boot([st], workers=2) as system:
        system.submit("STAT_ADD", meta0=1, meta1=[1, 1, 1])
        system.submit("STAT_OBS", meta0=2, meta1=[3, 5, 900])
        system.run()
    snap = st.stats.snapshots[-1]
    print(snap["counters"]["requests"], snap["histograms"]["latency_us"]["count"])   # 3 3
"""
from __future__ import annotations

import json
import threading
from collections import deque

import numpy as np

from ggmk import task as T
from ggmk.core.det import check_int
from ggmk.errors import BootError
from ggmk.modules import Outbox, defer, instance_type, std_module, try_lock, unlock, word_key

__all__ = ["module", "quantile", "STATS_KIND", "device_module", "collect", "type_ids"]

STATS_KIND = T.STATS_KIND
_M64 = (1 << 64) - 1
NBUCKETS = 65


def quantile(h: dict, q: float) -> int:
    """Upper bound of the bucket holding quantile ``q`` of histogram snapshot ``h``."""
    b = h["buckets"]
    total = sum(b)
    if not total:
        return 0
    want = q * total
    acc = 0
    for i, c in enumerate(b):
        acc += c
        if acc >= want:
            return 0 if i == 0 else min((1 << i) - 1, h["max"])
    return h["max"]


def bit_length(v: np.ndarray) -> np.ndarray:
    """Each uint64's bit length (0 for 0), exactly: a binary search on shifts. (log2 through
    float64 rounds 2**k - 1 up to 2**k for k >= 49: one bucket too high.)"""
    x = v.astype(np.uint64)
    bl = np.zeros(len(x), dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        m = x >= np.uint64(1 << s)
        bl[m] += s
        x[m] >>= np.uint64(s)
    return bl + (x > 0)


class _Hist:
    __slots__ = ("buckets", "count", "sum", "min", "max")

    def __init__(self):
        self.buckets = np.zeros(NBUCKETS, dtype=np.int64)
        self.count = self.sum = 0
        self.min = self.max = None

    def add(self, vals: np.ndarray):
        v = vals.astype(np.uint64)
        np.add.at(self.buckets, np.minimum(bit_length(v), NBUCKETS - 1), 1)
        self.count += len(v)
        self.sum = (self.sum + int(v.sum(dtype=np.uint64))) & _M64
        lo, hi = int(v.min()), int(v.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def snap(self):
        return {"count": self.count, "sum": self.sum, "min": self.min or 0,
                "max": self.max or 0, "buckets": self.buckets.tolist()}


class _Stats:
    KINDS = ("counter", "gauge", "histogram")

    def __init__(self, name, period, names, sink, keep, limit):
        if not isinstance(period, int) or isinstance(period, bool) or period < 1:
            raise BootError(f"stats: period must be a positive tick count, got {period!r}")
        check_int("stats: keep", keep, 0, err=BootError, what=" (snapshots kept in "
                  "m.stats.snapshots)")
        if sink is not None and not callable(sink):
            raise BootError(f"stats: sink must be None or a callable (sink(snapshot)), got "
                            f"{sink!r}")
        self.period = period
        self.names = {word_key(k, f"stats {name!r} names"): str(v)
                      for k, v in (names or {}).items()}
        self.sink = sink
        self.counters: dict[int, int] = {}
        self.gauges: dict[int, int] = {}
        self.hists: dict[int, _Hist] = {}
        self.kind: dict[int, str] = {}
        self.snapshots: deque = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.dirty = False
        self.scheduled = False
        self.number = 0
        self.system = None
        self.tick_type = instance_type("STATS_TICK", name, "stats")
        self.out = Outbox(f"{name}.snapshot", instance_type("STATS_FLUSH", name, "stats"), limit,
                          optional=True)     # (kept in snapshots / the sink as well)
        self.updates = 0
        self.unpublished = 0      # snapshots not published: the outbox was full (see the doc)

    def name(self, mid: int, label: str) -> None:
        """Show metric ``mid`` as ``label``; ``mid`` is checked as a metric id (int() made
        1.7 metric 1, and -1 named an id no task can carry): ValueError otherwise."""
        mid = check_int("stats.name: mid", mid, 0, _M64, what=" (a metric id, meta0)")
        with self.lock:
            self.names[mid] = str(label)

    def _label(self, mid):
        return self.names.get(mid, f"#{mid}")

    def _update(self, ctx, batch, kind):
        recs = batch.records
        ids, vals = recs["meta0"], recs["meta1"]
        codes = None
        with self.lock:
            uniq = np.unique(ids).tolist()
            for mid in uniq:
                have = self.kind.setdefault(mid, kind)
                sel = ids == mid
                if have != kind:
                    if codes is None:
                        codes = np.zeros(len(recs), dtype=np.int32)
                    codes[sel] = STATS_KIND
                    continue
                v = vals[sel]
                if kind == "counter":
                    self.counters[mid] = (self.counters.get(mid, 0)
                                          + int(v.sum(dtype=np.uint64))) & _M64
                elif kind == "gauge":
                    self.gauges[mid] = int(v[-1]) if len(v) else 0   # the last in batch order
                else:
                    h = self.hists.get(mid)
                    if h is None:
                        h = self.hists[mid] = _Hist()
                    h.add(v)
                self.updates += int(sel.sum())
            self.dirty = True
            need = not self.scheduled
            self.scheduled = True
        if need:
            sysm = ctx.system
            now = sysm.wall_tick()
            if not defer(sysm, self.tick_type, due=(now // self.period + 1) * self.period):
                # refused (the event queue is full) or halting: not scheduled, so the next
                # update tries again (fini takes the last snapshot)
                with self.lock:
                    self.scheduled = False
        return codes

    def snapshot(self, tick: int | None = None) -> dict:
        with self.lock:
            return self._snapshot(tick)

    def _snapshot(self, tick):
        self.number += 1
        s = {"number": self.number, "tick": tick,
             "counters": {self._label(k): v for k, v in sorted(self.counters.items())},
             "gauges": {self._label(k): v for k, v in sorted(self.gauges.items())},
             "histograms": {self._label(k): h.snap() for k, h in sorted(self.hists.items())}}
        self.snapshots.append(s)
        self.dirty = False
        return s

    def on_tick(self, ctx):
        system = ctx.system
        tick = system.wall_tick()
        with self.lock:
            self.scheduled = False
            if not self.dirty:
                return
            s = self._snapshot(tick)
        if self.sink is not None:
            self.sink(s)
        ch = system.channel(self.out.channel)
        if ch.subs and self.out.full:
            # a stalled consumer: ``outbox_limit`` snapshots already wait; this one is kept
            # (``snapshots``, the sink) but not published, so the backlog stays bounded
            with self.lock:
                self.unpublished += 1
            s["unpublished"] = True
        elif ch.subs:
            data = json.dumps(s).encode()
            p = system.arena.alloc(len(data))
            if p:
                system.arena.view(p, len(data))[:] = np.frombuffer(data, np.uint8)
                self.out.put(s["number"], tick, p, len(data))
            else:
                s["dropped_publish"] = True
        self.out.flush(system)

    def fini(self, system):
        with self.lock:
            if self.dirty:
                s = self._snapshot(system.wall_tick())
            else:
                s = None
        if s is not None and self.sink is not None:
            self.sink(s)
        self.out.drop_all(system)


def module(*, period: int = 100, names: dict | None = None, sink=None, keep: int = 100,
           name: str = "stats", capacity: int = 256, outbox_limit: int = 256):
    """A configured stats ``ggmk.Module`` (see the module docstring); ``m.stats``: state."""
    m = std_module(name, "stats")
    st = _Stats(name, period, names, sink, keep, outbox_limit)
    m.stats = st
    m.produces(f"{name}.snapshot", "STATS_SNAPSHOT", mode="fanout", capacity=capacity)
    for base, verb, kind in (("STAT_ADD", "add", "counter"), ("STAT_SET", "set", "gauge"),
                             ("STAT_OBS", "obs", "histogram")):
        def fn(ctx, batch, _k=kind):
            return st._update(ctx, batch, _k)
        m.handler(instance_type(base, name, "stats"), batch=True, consumes=f"{name}.{verb}",
                  message=base, name=f"on_{verb}")(fn)
    m.handler(st.tick_type, name="on_tick")(st.on_tick)

    @m.handler(st.out.flush_type, name="on_flush")
    def on_flush(ctx):
        st.out.flushed(ctx.system)

    m.fini(st.fini)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)
KIND_CODES = {"counter": 1, "gauge": 2, "histogram": 3}
F_VALUE, F_COUNT, F_SUM, F_MIN, F_MAX, F_BUCKET0 = 1, 3, 4, 5, 6, 16
_MW = 72                          # words per metric: kind, value, count, sum, min, max, 65 buckets


def type_ids() -> dict[str, int]:
    """The stats types' ids (from stats.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return {t.name: t.id for t in _manifest(str(Path(__file__).with_name("stats.toml"))).types}


def collect(records, names: dict | None = None) -> list[dict]:
    """The snapshots in device records (``DeviceKernel.pull`` output; other records are
    ignored), as the CPU version's dicts: ``{"number", "tick", "counters", "gauges",
    "histograms"}`` (a histogram: count, sum, min, max, 65 buckets). A snapshot is complete
    when its ``STATS_SNAPSHOT`` record (sent after its rows) is among ``records``."""
    ids = type_ids()
    names = {int(k): str(v) for k, v in (names or {}).items()}
    rows: dict[int, list] = {}
    heads = {}
    for r in records:
        t = int(r["type"])
        m0, m1 = int(r["meta0"]) & ((1 << 64) - 1), int(r["meta1"]) & ((1 << 64) - 1)
        if t == ids["STATS_ROW"]:
            rows.setdefault(m0 >> 40, []).append(((m0 >> 32) & 0xFF, m0 & 0xFFFFFFFF, m1))
        elif t == ids["STATS_SNAPSHOT"]:
            heads[m0] = m1
    out = []
    for num in sorted(heads):
        s = {"number": num, "tick": heads[num], "counters": {}, "gauges": {}, "histograms": {}}
        for field, mid, v in sorted(rows.get(num, []), key=lambda x: (x[1], x[0])):
            label = names.get(mid, f"#{mid}")
            if field == F_VALUE:
                s["counters"][label] = v
            elif field == 2:
                s["gauges"][label] = v
            else:
                h = s["histograms"].setdefault(label, {"count": 0, "sum": 0, "min": 0, "max": 0,
                                                       "buckets": [0] * NBUCKETS})
                if field >= F_BUCKET0:
                    h["buckets"][field - F_BUCKET0] = v
                else:
                    h[{F_COUNT: "count", F_SUM: "sum", F_MIN: "min", F_MAX: "max"}[field]] = v
        out.append(s)
    return out


def device_module(*, period: int = 100, metrics: int = 64, base: int | None = None,
                  name: str = "stats", channels: bool = False):
    """The stats module for the GPU kernel (``ggmk.device``): the same types and ids.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    ``STAT_ADD`` (counter += meta1), ``STAT_SET`` (gauge = meta1), ``STAT_OBS`` (histogram:
    65 power-of-two buckets, count, sum, min, max); meta0 = metric id, 0..``metrics``-1. A
    metric used with two kinds fails with ``STATS_KIND``, an id out of range with
    ``STATS_BAD_METRIC`` (both on sys.error, as on the CPU). Every ``period`` ticks in which
    something changed, a snapshot goes to the host: one ``STATS_ROW`` record per value
    (meta0 = number << 40 | field << 32 | metric id: field 1 a counter, 2 a gauge, 3..6 a
    histogram's count, sum, min, max, 16 + b its non-zero bucket b), then ``STATS_SNAPSHOT``
    (meta0 = number, meta1 = tick); :func:`collect` turns them into the CPU version's
    snapshot dicts. Nothing is scheduled while nothing changes. ``channels=True`` subscribes
    to ``NAME.add``/``NAME.set``/``NAME.obs`` (the CPU version's input channels).

    State: user words ``base .. base + 4 + 72 * metrics`` (exclusive: a lock, the snapshot
    number, the schedule flag, then 72 words per metric; ``m.user_words``). Without ``base``
    the region starts at 12288 (ending at 16900 at 64 metrics), or where the kernel's build
    finds free words when other modules' words are there (``m.user_words`` says where once
    the kernel is made). Counters and buckets are atomic adds; a histogram's min/max take the
    lock.

    What the numeric subset forbids here: names (strings) and the JSON payload of the CPU
    version's ``NAME.snapshot`` (the device ships numbers; :func:`collect` labels them on
    the host), a dict of metrics (ids are indexes into a fixed table), and an atomic snapshot
    (rows are read while updates go on: a snapshot is a consistent view per word, not across
    words).

    Example::

        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import stats

        ids = stats.type_ids()
        with gd.DeviceKernel([stats.device_module(period=5)], target="cpu") as k:
            k.push(task.make(3, type=ids["STAT_ADD"], meta0=1, meta1=[1, 2, 3]))
            got = k.pull_until(2, timeout=300)            # one row, then the snapshot
        print(stats.collect(got, {1: "requests"})[0]["counters"])     # {'requests': 6}
    """
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g
    import ggmk.device as gd
    from ggmk.modules import default_base, device_api, device_check, device_region
    g = device_api()
    device_check("stats (device): period", period, 1, 2**31)
    device_check("stats (device): metrics", metrics, 1, 900)
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = default_base(12288, 4 + _MW * metrics)
    at = 0 if movable else base       # (where a movable one's bound is: the whole words)
    lo, hi = device_region("stats (device)", base, 4 + _MW * metrics,
                           f"metrics={metrics} (4 + {_MW} words per metric)",
                           lambda: f"metrics <= {max((65536 - 4 - at) // _MW, 0)}"
                                   + ("" if movable else " at this base"), given=not movable)
    ids = type_ids()
    ADD, SET, OBS, SNAP, TICK, ROW = (ids["STAT_ADD"], ids["STAT_SET"], ids["STAT_OBS"],
                                      ids["STATS_SNAPSHOT"], ids["STATS_TICK"], ids["STATS_ROW"])
    NM, MW, P = metrics, _MW, period
    KINDC, BADM, YIELD = STATS_KIND, T.STATS_BAD_METRIC, T.YIELD
    CH = bool(channels)
    m = gd.Module(name)
    LOCK = NUM = SCHED = M0 = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region)."""
        nonlocal LOCK, NUM, SCHED, M0
        LOCK, NUM, SCHED, M0 = b, b + 1, b + 2, b + 4
        m.stats_layout = {"lock": LOCK, "metrics": M0, "words_per_metric": MW}
    place(base)

    def make(kind, verb):
        K = KIND_CODES[kind]

        def update(ctx, task):
            mid = g.meta0(task)
            v = g.meta1(task)
            if mid < 0 or mid >= NM:
                return BADM
            w = M0 + MW * mid
            k = g.user_get(ctx, w)
            if k == 0:                                # first use: claim the kind
                if not try_lock(ctx, LOCK):
                    return YIELD
                k = g.user_get(ctx, w)
                if k == 0:
                    g.user_set(ctx, w, K)
                    k = K
                unlock(ctx, LOCK)
            if k != K:
                return KINDC
            if K == 1:
                g.user_add(ctx, w + 1, v)
            elif K == 2:
                g.user_set(ctx, w + 1, v)
            else:
                if not try_lock(ctx, LOCK):
                    return YIELD
                b = 0
                x = v
                while x != 0:                         # bit length of v as a u64
                    b += 1
                    x = (x >> 1) & 0x7FFFFFFFFFFFFFFF
                n0 = g.user_get(ctx, w + 2)
                if n0 == 0 or (v ^ -9223372036854775808) < (g.user_get(ctx, w + 4)
                                                         ^ -9223372036854775808):
                    g.user_set(ctx, w + 4, v)
                if n0 == 0 or (v ^ -9223372036854775808) > (g.user_get(ctx, w + 5)
                                                         ^ -9223372036854775808):
                    g.user_set(ctx, w + 5, v)
                g.user_set(ctx, w + 2, n0 + 1)
                g.user_set(ctx, w + 3, g.user_get(ctx, w + 3) + v)
                g.user_set(ctx, w + 6 + b, g.user_get(ctx, w + 6 + b) + 1)
                unlock(ctx, LOCK)
            if g.user_add(ctx, SCHED, 1) == 0:        # the first change since a snapshot
                if g.emit_at(ctx, (g.tick(ctx) // P + 1) * P, TICK, 0, 0) != 0:
                    g.user_set(ctx, SCHED, 0)         # (on sys.error) the next change tries again
            return 0
        update.__name__ = update.__qualname__ = f"stats_{verb}"
        return update

    for t, kind, verb in ((ADD, "counter", "add"), (SET, "gauge", "set"),
                          (OBS, "histogram", "obs")):
        m.handler(t, max_yields=60000, consumes=f"{name}.{verb}" if CH else None,
                  name=f"stats_{verb}")(make(kind, verb))

    @m.handler(TICK, max_yields=0)
    def stats_tick(ctx, task):
        g.user_set(ctx, SCHED, 0)                     # a change from now on schedules again
        num = g.user_add(ctx, NUM, 1) + 1
        hi = num << 40
        for mid in range(NM):
            w = M0 + MW * mid
            k = g.user_get(ctx, w)
            if k == 1 or k == 2:
                g.emit_host(ctx, ROW, hi | (k << 32) | mid, g.user_get(ctx, w + 1))
            elif k == 3:
                for f in range(4):
                    g.emit_host(ctx, ROW, hi | ((3 + f) << 32) | mid, g.user_get(ctx, w + 2 + f))
                for b in range(65):
                    c = g.user_get(ctx, w + 6 + b)
                    if c != 0:
                        g.emit_host(ctx, ROW, hi | ((16 + b) << 32) | mid, c)
        g.emit_host(ctx, SNAP, num, g.tick(ctx))
        return 0

    m.user_words = (lo, hi, f"{name}: stats (device) lock, snapshot number, schedule flag, "
                            f"{MW} words x {metrics} metrics")
    if movable:
        m.movable(place)
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
