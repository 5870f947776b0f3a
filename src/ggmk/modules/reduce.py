"""The ``reduce`` module (SPEC §10): fold ``n`` partials per group into one result.

Channels (``NAME`` = the module name, ``reduce`` by default):

==============  =========  ==============  ================================================
channel         direction  type            record
==============  =========  ==============  ================================================
NAME.in         consume    REDUCE_PART     meta0 = group, meta1 = value (a word);
                                           concat: payload = bytes (no payload: meta1's
                                           8 bytes, little-endian)
NAME.out        produce    REDUCE_RESULT   meta0 = group, meta1 = result word, or the byte
                                           length with the bytes as payload
NAME.missing    produce    REDUCE_MISSING  meta0 = group, meta1 = partials received
==============  =========  ==============  ================================================

``op``: ``"sum"`` (wrapping at 2**64 for u64/i64), ``"min"``, ``"max"``, ``"concat"`` (bytes), or
a callable ``f(values) -> int | float | bytes`` over the group's values (ints, floats or bytes)
in sequence order. ``dtype``: how meta1 is read - ``"u64"``, ``"i64"`` or ``"f64"`` (the bits
of a float64; the result is returned as f64 bits too). Partials may also be submitted
directly (``system.submit("REDUCE_PART", meta0=g, meta1=v)``).

Determinism: each group's values are folded in the order of their sequence numbers (the
channel sequence for channel messages), whatever the worker count or batch split, so float
sums, concatenations and custom folds give the same bytes every run. Integer sum/min/max
are folded as they come (order does not change them).

Timeout: with ``timeout=T`` (ticks), a group that has not got ``n`` partials ``T`` ticks after
its first one is reported on ``NAME.missing`` and discarded; a partial of it that arrives
later fails with ``REDUCE_LATE`` (on ``sys.error``: never silently folded into a new round).
A group id is reusable once its result is out. Each group's check is a task deferred on the
event queue: until it falls due the system is not idle (``system.run()`` waits for it), so
pick a timeout in proportion to how long a group takes.

Example::

    import ggmk
    from ggmk.modules import reduce

    red = reduce.module(n=4, op="sum")
    app = ggmk.Module("app")
    out = []

    @app.handler("APP_SUM", consumes="reduce.out", message="REDUCE_RESULT")
    def got(ctx): out.append((ctx.task.meta0, ctx.task.meta1))

    with ggmk.boot([red, app], workers=2) as system:
        system.channel("reduce.in").publish(meta0=9, meta1=[1, 2, 3, 4])
        system.run()
    print(out)   # [(9, 10)]
"""
from __future__ import annotations

import struct
import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import Outbox, defer, instance_type, std_module

__all__ = ["module", "REDUCE_LATE", "f64", "as_f64"]

REDUCE_LATE = T.REDUCE_LATE
OPS = ("sum", "min", "max", "concat")
DTYPES = ("u64", "i64", "f64")
_M64 = (1 << 64) - 1


def f64(x: float) -> int:
    """The word carrying float ``x`` (for meta1)."""
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def as_f64(w: int) -> float:
    """The float a word carries."""
    return struct.unpack("<d", struct.pack("<Q", int(w) & _M64))[0]


class _Group:
    __slots__ = ("round", "count", "acc", "vals", "t0")

    def __init__(self, rnd, t0):
        self.round, self.count, self.acc, self.vals, self.t0 = rnd, 0, None, [], t0


class _Reduce:
    def __init__(self, name, n, op, dtype, timeout, limit):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BootError(f"reduce: n must be a positive int, got {n!r}")
        if not (callable(op) or op in OPS):
            raise BootError(f"reduce: op must be one of {OPS} or a callable, got {op!r}")
        if dtype not in DTYPES:
            raise BootError(f"reduce: dtype must be one of {DTYPES}, got {dtype!r}")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                    or timeout < 1):
            raise BootError(f"reduce: timeout must be a positive tick count or None, "
                            f"got {timeout!r}")
        self.n, self.op, self.dtype, self.timeout = n, op, dtype, timeout
        self.incremental = op in ("sum", "min", "max") and dtype != "f64"
        self.groups: dict[int, _Group] = {}
        self.expired: dict[int, int] = {}          # group -> its expired round (late parts)
        self.rounds: dict[int, int] = {}
        self.lock = threading.Lock()
        self.flush_type = instance_type("REDUCE_FLUSH", name, "reduce")
        self.check_type = instance_type("REDUCE_CHECK", name, "reduce")
        self.out = Outbox(f"{name}.out", self.flush_type, limit)
        self.missing = Outbox(f"{name}.missing", self.flush_type, limit)
        self.counters = {"partials": 0, "results": 0, "missing": 0, "late": 0, "waits": 0}

    # values of a batch as Python objects in the dtype's interpretation
    def _values(self, m1: np.ndarray):
        if self.dtype == "u64":
            return m1
        if self.dtype == "i64":
            return m1.view(np.int64)
        return m1.view(np.float64)

    def run(self, ctx, batch):
        system = ctx.system
        if (self.out.flush(system) and self.out.full) or \
                (self.missing.flush(system) and self.missing.full):
            self.counters["waits"] += len(batch)
            return T.WAIT
        recs = batch.records
        order = np.argsort(recs["seq"], kind="stable")
        recs = recs[order]                    # fold in seq order (a copy: codes re-ordered)
        n = len(recs)
        codes = np.zeros(n, dtype=np.int32)
        g0 = recs["meta0"]
        concat = self.op == "concat"
        with self.lock:
            # fast path: one group, no payloads, fits the group's remaining count
            if self.incremental and n and (g0 == g0[0]).all() and not recs["payload_ptr"].any():
                gid = int(g0[0])
                g = self._group(ctx, gid)
                if g is not None and g.count + n <= self.n:
                    self._fold_many(g, self._values(recs["meta1"]))
                    self.counters["partials"] += n
                    if g.count == self.n:
                        self._finish(system, gid, g)
                    fast = True
                else:
                    fast = False
            else:
                fast = False
            if fast:
                n = 0
            arena = system.arena
            for i in range(n):
                gid = int(g0[i])
                g = self._group(ctx, gid)
                if g is None:
                    codes[order[i]] = REDUCE_LATE
                    self.counters["late"] += 1
                    continue
                r = recs[i]
                if concat or (callable(self.op) and int(r["payload_ptr"])):
                    ptr, ln = int(r["payload_ptr"]), int(r["payload_len"])
                    v = bytes(arena.view(ptr, ln)) if ptr else int(r["meta1"]).to_bytes(8, "little")
                    g.vals.append(v)
                    g.count += 1
                elif self.incremental:
                    self._fold_many(g, self._values(recs["meta1"][i:i + 1]))
                else:
                    g.vals.append(self._values(recs["meta1"][i:i + 1])[0].item())
                    g.count += 1
                self.counters["partials"] += 1
                if g.count == self.n:
                    self._finish(system, gid, g)
        self.out.flush(system)
        return codes if codes.any() else None

    def _group(self, ctx, gid):
        g = self.groups.get(gid)
        if g is not None:
            return g
        if gid in self.expired:
            return None
        rnd = self.rounds.get(gid, 0) + 1
        self.rounds[gid] = rnd
        g = self.groups[gid] = _Group(rnd, ctx.system.wall_tick())
        if self.timeout is not None:
            defer(ctx.system, self.check_type, gid, rnd, due=ctx.system.wall_tick() + self.timeout)
        return g

    def _fold_many(self, g, vals):
        op = self.op
        if op == "sum":
            s = int(vals.astype(np.uint64).sum(dtype=np.uint64)) if self.dtype == "u64" \
                else int(vals.sum(dtype=np.int64))
            g.acc = s if g.acc is None else g.acc + s
        elif op == "min":
            s = vals.min().item()
            g.acc = s if g.acc is None else min(g.acc, s)
        else:
            s = vals.max().item()
            g.acc = s if g.acc is None else max(g.acc, s)
        g.count += len(vals)

    def _finish(self, system, gid, g):
        del self.groups[gid]
        op = self.op
        if self.incremental:
            res = g.acc
        elif op == "concat":
            res = b"".join(g.vals)
        elif callable(op):
            res = op(list(g.vals))
        elif op == "sum":
            res = 0.0
            for v in g.vals:          # left to right, in seq order
                res += v
        elif op == "min":
            res = min(g.vals)
        else:
            res = max(g.vals)
        self.counters["results"] += 1
        if isinstance(res, (bytes, bytearray, memoryview)):
            res = bytes(res)
            p = system.arena.alloc_or_raise(max(len(res), 1))
            system.arena.view(p, len(res))[:] = np.frombuffer(res, np.uint8)
            self.out.put(gid, len(res), p, len(res))
        elif isinstance(res, float):
            self.out.put(gid, f64(res))
        else:
            self.out.put(gid, int(res) & _M64)

    def check(self, ctx):
        gid, rnd = ctx.task.meta0, ctx.task.meta1
        with self.lock:
            g = self.groups.get(gid)
            if g is None or g.round != rnd:
                return
            del self.groups[gid]
            self.expired[gid] = rnd
            if len(self.expired) > 65536:
                self.expired.pop(next(iter(self.expired)))
            self.counters["missing"] += 1
            self.missing.put(gid, g.count)
        self.missing.flush(ctx.system)

    def reopen(self, gid: int) -> None:
        """Accept partials of an expired group again (a new round)."""
        with self.lock:
            self.expired.pop(gid, None)

    def stats(self) -> dict:
        return dict(self.counters, open=len(self.groups), waiting=len(self.out) + len(self.missing))


def module(n: int, op="sum", *, name: str = "reduce", dtype: str = "u64",
           timeout: int | None = None, capacity: int = 1024, outbox_limit: int = 1024,
           mode: str = "fanout"):
    """A configured reduce ``ggmk.Module`` folding ``n`` partials per group (see the module
    docstring). ``m.reduce``: the state (``stats()``, ``reopen(group)``)."""
    m = std_module(name, "reduce")
    st = _Reduce(name, n, op, dtype, timeout, outbox_limit)
    m.reduce = st
    m.produces(f"{name}.out", "REDUCE_RESULT", mode=mode, capacity=capacity)
    m.produces(f"{name}.missing", "REDUCE_MISSING", mode=mode, capacity=capacity)
    m.handler(instance_type("REDUCE_PART", name, "reduce"), batch=True,
              consumes=f"{name}.in", message="REDUCE_PART", name="on_part")(st.run)
    m.handler(st.check_type, name="on_check")(st.check)

    @m.handler(st.flush_type, name="on_flush")
    def on_flush(ctx):
        st.out.flushed(ctx.system)
        st.missing.flushed(ctx.system)

    @m.fini
    def _fini(system):
        st.out.drop_all(system)
        st.missing.drop_all(system)
    return m
