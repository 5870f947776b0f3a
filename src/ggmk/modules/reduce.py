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
channel sequence for channel messages; 32 bits, ordered across their wrap), whatever the
worker count or batch split, so float sums, concatenations and custom folds give the same
bytes every run (the values are kept with their sequence numbers and sorted when the group
completes). Integer sum/min/max are folded as they come (order does not change them).

A bytes result (``concat``, or a custom fold returning bytes) that finds no room in the arena
(larger than its largest block, or the arena full) is not published: the group is reported
as a ``REDUCE_RESULT`` record on ``sys.error`` with ``ALLOC_FAIL`` (meta0 = group, meta1 =
the result's byte length, no payload) and counted in ``stats()["failed"]``. So is a group
whose custom fold raised or returned something else (a str, None): one ``REDUCE_RESULT``
record on ``sys.error`` with ``HANDLER_EXCEPTION`` (meta0 = group, meta1 = partials folded;
the exception is kept with the system's, ``system.exceptions``); its partials are not failed
a second time, and later partials of its id start a new group.

Timeout: with ``timeout=T`` (ticks), a group that has not got ``n`` partials ``T`` ticks after
its first one is reported on ``NAME.missing`` and discarded; a partial of it that arrives
later fails with ``REDUCE_LATE`` (on ``sys.error``: not folded into a new round; see below).
A group id is reusable once its result is out. The last ``EXPIRED_KEEP`` (65 536) timed-out
groups are remembered for ``REDUCE_LATE``: a partial of a group that timed out before them
(more than 65 536 time-outs ago) opens a new round of that group instead, as after
``m.reduce.reopen(group)``. Each group's check is a task deferred on the event queue: until
it falls due the system is not idle (``system.run()`` waits for it), so pick a timeout in
proportion to how long a group takes. A group whose check the event queue refused (full: the
check is on ``sys.error`` with ``EVENT_FULL``; or halting) times out at once, at the end of
the batch that opened it, unless that batch completed it. A group still open at ``halt`` is
reported on ``sys.dropped`` with ``CHAN_CLOSED`` (a REDUCE_MISSING record: meta0 = group,
meta1 = partials received; ``stats()["halted"]``).

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
import traceback

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import (Outbox, defer, drop_rows, emit_or_later, instance_type, slot_key,
                          std_module, try_lock, unlock)

__all__ = ["module", "REDUCE_LATE", "f64", "as_f64", "EXPIRED_KEEP"]

REDUCE_LATE = T.REDUCE_LATE
OPS = ("sum", "min", "max", "concat")
DTYPES = ("u64", "i64", "f64")
_M64 = (1 << 64) - 1
_M32, _HALF = 0xFFFFFFFF, 1 << 31       # record seq: 32 bits, compared across a wrap
EXPIRED_KEEP = 65536      # timed-out groups remembered for REDUCE_LATE (see the docstring)


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
        self.name, self.n, self.op, self.dtype, self.timeout = name, n, op, dtype, timeout
        self.incremental = op in ("sum", "min", "max") and dtype != "f64"
        self.groups: dict[int, _Group] = {}
        self.expired: dict[int, int] = {}          # group -> its expired round (late parts)
        # rounds tell a group's timeout check from a later group of the same id: one counter
        # for all (no entry per group id ever seen)
        self.round = 0
        self.unchecked: list = []                 # (group, round): check refused (see run)
        self.lock = threading.Lock()
        self.flush_type = instance_type("REDUCE_FLUSH", name, "reduce")
        self.check_type = instance_type("REDUCE_CHECK", name, "reduce")
        self.out = Outbox(f"{name}.out", self.flush_type, limit)
        self.missing = Outbox(f"{name}.missing", self.flush_type, limit)
        self.counters = {"partials": 0, "results": 0, "missing": 0, "late": 0, "waits": 0,
                         "halted": 0, "failed": 0}

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
        seq = recs["seq"]
        if len(seq):
            # seq is 32 bits and wraps: ordered by the distance from the first record
            seq = (seq.astype(np.int64) - int(seq[0]) + _HALF) & _M32
        order = np.argsort(seq, kind="stable")
        recs = T.select(recs, order)        # fold in seq order (a copy: codes re-ordered)
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
                    g.vals.append((int(r["seq"]), v))
                    g.count += 1
                elif self.incremental:
                    self._fold_many(g, self._values(recs["meta1"][i:i + 1]))
                else:
                    g.vals.append((int(r["seq"]), self._values(recs["meta1"][i:i + 1])[0].item()))
                    g.count += 1
                self.counters["partials"] += 1
                if g.count == self.n:
                    self._finish(system, gid, g)
            if self.unchecked:
                # groups opened here whose timeout check the event queue refused: they would
                # stay open for ever, so they time out now (unless this batch completed them)
                for gid, rnd in self.unchecked:
                    g = self.groups.get(gid)
                    if g is not None and g.round == rnd:
                        self._expire(gid, g)
                self.unchecked.clear()
        self.out.flush(system)
        self.missing.flush(system)
        return codes if codes.any() else None

    def _group(self, ctx, gid):
        g = self.groups.get(gid)
        if g is not None:
            return g
        if gid in self.expired:
            return None
        self.round += 1
        rnd = self.round
        g = self.groups[gid] = _Group(rnd, ctx.system.wall_tick())
        if self.timeout is not None and not defer(ctx.system, self.check_type, gid, rnd,
                                                  due=ctx.system.wall_tick() + self.timeout):
            self.unchecked.append((gid, rnd))     # (run expires it at the batch's end)
        return g

    def halt_open(self, system) -> None:
        """At halt: each group still open (fewer than ``n`` partials) can never complete; its
        partials are folded away (only the running value is kept), so the group is reported,
        as ``NAME.missing`` would report it (meta0 = group, meta1 = partials received), on
        ``sys.dropped`` with ``CHAN_CLOSED``: nothing the module accepted vanishes."""
        with self.lock:
            items = [(gid, g.count) for gid, g in self.groups.items()]
            self.groups.clear()
        self.counters["halted"] += drop_rows(system, system.type_id("REDUCE_MISSING"), items)

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
        # the group goes first: a fold that fails must not leave it open at n partials, where
        # no later partial of its id could ever complete it
        del self.groups[gid]
        op = self.op
        try:
            if self.incremental:
                res = g.acc
            else:
                # in seq order across batches (each batch came sorted, but batches of one
                # group may run on several workers in any order); seq wraps, as in run
                s0 = g.vals[0][0]
                vals = [v for _, v in sorted(g.vals,
                                             key=lambda sv: (sv[0] - s0 + _HALF) & _M32)]
                if op == "concat":
                    res = b"".join(vals)
                elif callable(op):
                    res = op(vals)
                elif op == "sum":
                    res = 0.0
                    for v in vals:            # left to right, in seq order
                        res += v
                elif op == "min":
                    res = min(vals)
                else:
                    res = max(vals)
            if not isinstance(res, (bytes, bytearray, memoryview, float, np.floating, int,
                                    np.integer)):
                raise TypeError(f"{self.name}: op={op!r} returned {res!r}: allowed int | "
                                f"float | bytes")
        except Exception as e:  # noqa: BLE001 - the user's fold: reported, never jams the id
            note = getattr(system, "note_exception", None)      # (the sandbox keeps none)
            if note is not None:
                note((self.name, "op", repr(e), traceback.format_exc()))
            self._failed(system, gid, g.count, T.HANDLER_EXCEPTION)
            return
        if isinstance(res, (bytes, bytearray, memoryview)):
            res = bytes(res)
            # no room (larger than the arena's largest block, or the arena full) reports the
            # group instead of raising
            p = system.arena.alloc(max(len(res), 1))
            if not p:
                self._failed(system, gid, len(res), T.ALLOC_FAIL)
                return
            system.arena.view(p, len(res))[:] = np.frombuffer(res, np.uint8)
            self.out.put(gid, len(res), p, len(res))
        elif isinstance(res, (float, np.floating)):
            self.out.put(gid, f64(res))
        else:
            self.out.put(gid, int(res) & _M64)
        self.counters["results"] += 1

    def _failed(self, system, gid, meta1, code) -> None:
        """Group ``gid`` gives no result: one REDUCE_RESULT record on sys.error with ``code``."""
        self.counters["failed"] += 1
        system.dead_letter(T.make(1, type=system.type_id("REDUCE_RESULT"), meta0=gid,
                                  meta1=meta1), code)

    def check(self, ctx):
        gid, rnd = ctx.task.meta0, ctx.task.meta1
        with self.lock:
            g = self.groups.get(gid)
            if g is None or g.round != rnd:
                return
            self._expire(gid, g)
        self.missing.flush(ctx.system)

    def _expire(self, gid, g) -> None:
        """Under the lock: group ``gid`` timed out: reported on ``NAME.missing``, and its
        late partials fail (the last ``EXPIRED_KEEP`` expired groups are remembered)."""
        del self.groups[gid]
        self.expired[gid] = g.round
        if len(self.expired) > EXPIRED_KEEP:
            self.expired.pop(next(iter(self.expired)))      # the oldest expiry
        self.counters["missing"] += 1
        self.missing.put(gid, g.count)

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
        st.halt_open(system)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)
DEVICE_OPS = ("sum", "min", "max")
_GMASK = (1 << 62) - 1


def type_ids() -> dict[str, int]:
    """The reduce types' ids (from reduce.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return {t.name: t.id for t in _manifest(str(Path(__file__).with_name("reduce.toml"))).types}


def device_module(n: int, op: str = "sum", *, dtype: str = "u64", timeout: int | None = None,
                  groups: int = 64, base: int | None = None, name: str = "reduce",
                  channels: bool = False, capacity: int = 256):
    """The reduce module for the GPU kernel (``ggmk.device``): the same types and ids.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    ``REDUCE_PART`` tasks (meta0 = group, meta1 = a word) fold into their group; after ``n``
    partials ``REDUCE_RESULT`` (meta0 = group, meta1 = the result) goes out. With
    ``timeout=T`` ticks, a group still short of ``n`` partials T ticks after its first one is
    reported as ``REDUCE_MISSING`` (meta0 = group, meta1 = partials received; a check task on
    the device event queue, nothing polls) and a partial of it arriving later fails with
    ``REDUCE_LATE``. Out: with ``channels=False`` (a kernel of its own) the results go to the
    host (``emit_host``); with ``channels=True`` the handler subscribes to ``NAME.in`` and
    publishes on device channels ``NAME.out`` / ``NAME.missing`` (lossless; a full one is
    retried by a ``REDUCE_FLUSH`` task), the CPU version's channels, so an application places
    reduce on either kernel and the bridge carries them.

    State: user words ``base .. base + 2 + 6 * groups`` (a lock, a round counter, 6 words per
    group slot; ``groups`` rounded up to a power of two; without ``base`` from 1024, or where
    the kernel's build finds free words when other modules' words are there: ``m.user_words``
    says where once the kernel is made): at most ``groups`` groups open at once; a partial of
    one more fails with ``REDUCE_TABLE_FULL`` (sys.error). Timed-out groups are remembered
    (for ``REDUCE_LATE``) until their slot is needed.

    What the numeric subset forbids here: ``concat`` and custom Python reducers (no bytes, no
    Python objects, no calls the compiler cannot see), and f64 (folding on arrival is not in
    sequence order, so float sums would differ run to run); integer sum (wrapping), min and
    max of u64 or i64 words are order-free, so the result is deterministic anyway. Group ids
    are 0..2**62-1 (``REDUCE_BAD_GROUP`` otherwise: the top bits tag retried outputs). A
    group still open at a dual system's halt is reported as the CPU version does, on
    sys.dropped with ``CHAN_CLOSED`` as ``REDUCE_MISSING`` (meta0 = group, meta1 = partials
    received): its partials are folded into user words, which the host hook
    ``m.halt_records(words)`` reads from the stopped kernel (a kernel killed because it hung
    cannot be read: the bridge's errors say so); with ``timeout=``, its pending check is on
    sys.error with ``HALTED`` (REDUCE_CHECK, meta0 = group, meta1 = round).

    Example::

        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import reduce

        ids = reduce.type_ids()
        with gd.DeviceKernel([reduce.device_module(n=4, op="max")], target="cpu") as k:
            k.push(task.make(4, type=ids["REDUCE_PART"], meta0=9, meta1=[3, 1, 7, 2]))
            r = k.pull_until(1, timeout=300)
        print(int(r["meta0"][0]), int(r["meta1"][0]))      # 9 7
    """
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g
    import ggmk.device as gd
    from ggmk.modules import device_api, device_check, pow2
    g = device_api()
    device_check("reduce (device): n", n, 1, 2**62)
    if op not in DEVICE_OPS:
        raise BootError(f"reduce (device): op must be one of {DEVICE_OPS} (concat, f64 and "
                        f"custom reducers are CPU-kernel only), got {op!r}")
    if dtype not in ("u64", "i64"):
        raise BootError(f"reduce (device): dtype must be 'u64' or 'i64', got {dtype!r}")
    if timeout is not None:
        device_check("reduce (device): timeout", timeout, 1, 2**31)
    device_check("reduce (device): groups", groups, 1, 4096)
    G = pow2(groups)
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = 1024
    device_check("reduce (device): base", base, 0, 65536 - (2 + 6 * G))
    ids = type_ids()
    PART, RES, MISS, CHECK, FLUSH = (ids["REDUCE_PART"], ids["REDUCE_RESULT"],
                                     ids["REDUCE_MISSING"], ids["REDUCE_CHECK"],
                                     ids["REDUCE_FLUSH"])
    GM, N = G - 1, n
    OPK = DEVICE_OPS.index(op)
    SIGN = -(1 << 63) if dtype == "u64" else 0    # u64 order: compare with the sign bit flipped
    TMO = timeout or 0
    CH = bool(channels)
    LATE, FULLC, BADG, YIELD, WAITC = (REDUCE_LATE, T.REDUCE_TABLE_FULL, T.REDUCE_BAD_GROUP,
                                       T.YIELD, T.WAIT)
    GMASK = _GMASK
    m = gd.Module(name)
    LOCK = GEN = T0 = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region)."""
        nonlocal LOCK, GEN, T0
        LOCK, GEN, T0 = b, b + 1, b + 2
        m.reduce_layout = {"lock": LOCK, "table": T0, "groups": G}
    place(base)
    m.user_words = (base, base + 2 + 6 * G,
                    f"{name}: reduce (device) lock, round, 6 words x {G} group slots")
    C_OUT = C_MISS = 0
    if CH:
        C_OUT = m.channel(f"{name}.out", message=RES, mode="fanout", capacity=capacity)
        C_MISS = m.channel(f"{name}.missing", message=MISS, mode="fanout", capacity=capacity)

    @m.handler(PART, max_yields=60000, consumes=f"{name}.in" if CH else None)
    def reduce_part(ctx, task):
        gid = g.meta0(task)
        v = g.meta1(task)
        if gid < 0 or gid > GMASK:
            return BADG
        if not try_lock(ctx, LOCK):
            return YIELD
        h = slot_key(gid, GM)
        found = -1
        free = -1
        old = -1
        for p in range(G):
            s = T0 + 6 * ((h + p) & GM)
            st = g.user_get(ctx, s)
            if st == 0:
                if free < 0:
                    free = s
            elif g.user_get(ctx, s + 1) == gid:
                found = s
                break
            elif st == 2 and old < 0:
                old = s
        if found >= 0 and g.user_get(ctx, found) == 2:
            unlock(ctx, LOCK)
            return LATE                               # its group timed out: never folded
        new = found < 0
        if new:
            s = free if free >= 0 else old
            if s < 0:
                unlock(ctx, LOCK)
                return FULLC
            rnd = g.user_add(ctx, GEN, 1) + 1
            g.user_set(ctx, s + 1, gid)
            g.user_set(ctx, s + 4, rnd)
            g.user_set(ctx, s, 1)
            acc = v
            c = 1
        else:
            s = found
            rnd = g.user_get(ctx, s + 4)
            acc = g.user_get(ctx, s + 3)
            c = g.user_get(ctx, s + 2) + 1
            if OPK == 0:
                acc = acc + v
            elif OPK == 1:
                if (v ^ SIGN) < (acc ^ SIGN):
                    acc = v
            elif (v ^ SIGN) > (acc ^ SIGN):
                acc = v
        if c >= N:
            g.user_set(ctx, s, 0)                     # done: the slot is free again
        else:
            g.user_set(ctx, s + 2, c)
            g.user_set(ctx, s + 3, acc)
        unlock(ctx, LOCK)
        if new and TMO > 0 and c < N:
            g.emit_at(ctx, g.tick(ctx) + TMO, CHECK, gid, rnd)
        if c >= N:
            if CH:
                if g.emit_chan(ctx, C_OUT, gid, acc) != 0:
                    emit_or_later(ctx, FLUSH, gid, acc)      # full: a flush task retries
            else:
                g.emit_host(ctx, RES, gid, acc)
        return 0

    @m.handler(CHECK, max_yields=60000)
    def reduce_check(ctx, task):
        gid = g.meta0(task)
        rnd = g.meta1(task)
        if not try_lock(ctx, LOCK):
            return YIELD
        h = slot_key(gid, GM)
        got = -1
        for p in range(G):
            s = T0 + 6 * ((h + p) & GM)
            if g.user_get(ctx, s) == 1 and g.user_get(ctx, s + 1) == gid:
                if g.user_get(ctx, s + 4) == rnd:
                    got = g.user_get(ctx, s + 2)
                    g.user_set(ctx, s, 2)             # expired: later partials are LATE
                break
        unlock(ctx, LOCK)
        if got >= 0:
            if CH:
                if g.emit_chan(ctx, C_MISS, gid, got) != 0:
                    emit_or_later(ctx, FLUSH, gid | (1 << 62), got)
            else:
                g.emit_host(ctx, MISS, gid, got)
        return 0

    if CH:
        @m.handler(FLUSH, max_yields=0)
        def reduce_flush(ctx, task):
            m0 = g.meta0(task)
            if (m0 >> 62) == 0:
                c = g.emit_chan(ctx, C_OUT, m0 & GMASK, g.meta1(task))
            else:
                c = g.emit_chan(ctx, C_MISS, m0 & GMASK, g.meta1(task))
            if c != 0:
                return WAITC                          # still full: come back, meta kept
            return 0

    def halt_records(words):
        """Host side, at halt (``DualSystem``): each group still open in the stopped kernel's
        user ``words`` as the CPU version reports it, a REDUCE_MISSING record (meta0 = group,
        meta1 = partials received) for sys.dropped."""
        tab = np.asarray(words[T0:T0 + 6 * G], np.int64).reshape(G, 6)
        live = tab[:, 0] == 1
        return T.make(int(live.sum()), type=MISS, meta0=tab[live, 1].astype(np.uint64),
                      meta1=tab[live, 2].astype(np.uint64))

    m.halt_records = halt_records
    if movable:
        m.movable(place)
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
