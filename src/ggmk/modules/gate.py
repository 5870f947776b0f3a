"""The ``gate`` module (SPEC §10): a reusable barrier - ``n`` arrivals open it.

Input: ``GATE_ARRIVE`` on channel ``NAME.arrive`` or submitted directly: ``meta0`` = gate id,
``meta1`` = the arriving task's tag, with any payload. Each arrival is held (its payload kept)
until the gate has ``n`` of them (``n`` per gate: ``sizes={gate: n}``, or ``gate.set_size``);
then all are released, in arrival (sequence) order, as ``GATE_PASS`` on ``NAME.open``
(``meta0`` = gate id, ``meta1`` = tag, the payload as it came) and the gate closes again for
the next round (``m.gate.rounds[gate]`` counts openings). Arrivals past ``n`` in one batch
belong to the next round. A round's arrivals are released in sequence order even when their
batches ran on different workers; which arrivals make up a round is the order the batches
were handled in (with several workers not always their sequence order). ``set_size`` checks
its arguments as ``sizes=`` is checked at boot (ValueError).

Releases that find ``NAME.open`` full wait in order in the module's outbox (never lost); while
``outbox_limit`` of them wait, new arrivals are pushed back with ``WAIT``. At halt, arrivals
still waiting at a closed gate go to ``sys.dropped`` with ``CHAN_CLOSED`` (their count is in
``stats()``), so nothing disappears silently.

Example::

    import ggmk
    from ggmk.modules import gate

    g = gate.module(n=3)
    app = ggmk.Module("app")
    passed = []

    @app.handler("APP_GO", consumes="gate.open", message="GATE_PASS")
    def go(ctx): passed.append(ctx.task.meta1)

    with ggmk.boot([g, app], workers=2) as system:
        system.submit("GATE_ARRIVE", meta0=1, meta1=[10, 11])
        system.run()
        assert passed == []                       # 2 of 3: still closed
        system.submit("GATE_ARRIVE", meta0=1, meta1=12)
        system.run()
    print(sorted(passed))   # [10, 11, 12]
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import (Outbox, drop_rows, instance_type, slot_key, std_module, try_lock,
                          unlock, word_key)

__all__ = ["module"]

_M32, _HALF = 0xFFFFFFFF, 1 << 31       # record seq: 32 bits, compared across a wrap


def _check_n(n, what="n"):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BootError(f"gate: {what} must be a positive int, got {n!r}")
    return n


class _Gates:
    def __init__(self, name, n, sizes, limit):
        self.name = name
        self.n = _check_n(n)
        self.sizes = {word_key(k, f"gate {name!r} sizes"): _check_n(v, f"sizes[{k!r}]")
                      for k, v in (sizes or {}).items()}
        self.waiting: dict[int, list] = {}
        self.rounds: dict[int, int] = {}
        self.lock = threading.Lock()
        self.out = Outbox(f"{name}.open", instance_type("GATE_FLUSH", name, "gate"), limit)
        self.counters = {"arrivals": 0, "released": 0, "opened": 0, "waits": 0, "halted": 0}

    def set_size(self, gate: int, n: int) -> None:
        """Gate ``gate`` opens after ``n`` arrivals. Checked as ``sizes=`` is at boot (int()
        made 1.7 gate 1, and -1 or 2**70 ids no task can carry): ValueError otherwise."""
        if isinstance(gate, bool) or not isinstance(gate, (int, np.integer)) \
                or not 0 <= int(gate) < 1 << 64:
            raise ValueError(f"{self.name}.set_size: gate={gate!r}: allowed an int 0..2**64-1 "
                             f"(a gate id, meta0)")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{self.name}.set_size: n={n!r}: allowed an int >= 1 (arrivals that "
                             f"open the gate)")
        with self.lock:
            self.sizes[int(gate)] = int(n)

    def size(self, gate: int) -> int:
        return self.sizes.get(gate, self.n)

    def arrive(self, ctx, batch):
        system = ctx.system
        if self.out.flush(system) and self.out.full:
            self.counters["waits"] += len(batch)
            return T.WAIT
        recs = batch.records
        seq = recs["seq"]
        if len(seq):
            # seq is 32 bits and wraps: ordered by the distance from the first record
            seq = (seq.astype(np.int64) - int(seq[0]) + _HALF) & _M32
        order = np.argsort(seq, kind="stable")
        arena = system.arena
        with self.lock:
            for i in order.tolist():
                r = recs[i]
                g = int(r["meta0"])
                ptr, ln = int(r["payload_ptr"]), int(r["payload_len"])
                if ptr:
                    arena.retain(ptr)           # ours now (the worker releases its own ref)
                w = self.waiting.setdefault(g, [])
                w.append((int(r["seq"]), int(r["meta1"]), ptr, ln))
                self.counters["arrivals"] += 1
                if len(w) >= self.size(g):
                    del self.waiting[g]
                    self.rounds[g] = self.rounds.get(g, 0) + 1
                    self.counters["opened"] += 1
                    self.counters["released"] += len(w)
                    # batches of one gate run on several workers at once, so w is in
                    # handling order: released in sequence (arrival) order
                    s0 = w[0][0]
                    w.sort(key=lambda a: (a[0] - s0 + _HALF) & _M32)   # (seq wraps)
                    for _, tag, p, n in w:
                        self.out.put(g, tag, p, n)
        self.out.flush(system)
        return None

    def fini(self, system):
        self.out.drop_all(system)
        with self.lock:
            items = [(g, tag, p, n) for g, w in self.waiting.items() for _, tag, p, n in w]
            self.waiting.clear()
        self.counters["halted"] += drop_rows(system, system.type_id("GATE_ARRIVE"), items)

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counters, waiting_arrivals=sum(len(w) for w in self.waiting.values()),
                        waiting_releases=len(self.out))


def module(n: int, *, sizes: dict | None = None, name: str = "gate", capacity: int = 1024,
           outbox_limit: int = 4096, mode: str = "fanout"):
    """A configured gate ``ggmk.Module``: ``n`` arrivals open a gate (``sizes`` per gate id).
    ``m.gate``: state (``set_size``, ``rounds``, ``stats()``)."""
    m = std_module(name, "gate")
    st = _Gates(name, n, sizes, outbox_limit)
    m.gate = st
    m.produces(f"{name}.open", "GATE_PASS", mode=mode, capacity=capacity)
    m.handler(instance_type("GATE_ARRIVE", name, "gate"), batch=True,
              consumes=f"{name}.arrive", message="GATE_ARRIVE", name="on_arrive")(st.arrive)

    @m.handler(st.out.flush_type, name="on_flush")
    def on_flush(ctx):
        st.out.flushed(ctx.system)

    m.fini(st.fini)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)


def type_ids() -> dict[str, int]:
    """The gate types' ids (from gate.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return {t.name: t.id for t in _manifest(str(Path(__file__).with_name("gate.toml"))).types}


def _pow2_floor(n: int) -> int:
    """The largest power of two <= n (0 for n < 1)."""
    return 1 << (n.bit_length() - 1) if n >= 1 else 0


def device_module(n: int, *, gates: int = 64, base: int = 8192, name: str = "gate",
                  channels: bool = False, capacity: int = 256):
    """The gate module for the GPU kernel (``ggmk.device``): the same types and ids.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    A ``GATE_ARRIVE`` task (meta0 = gate id 0..2**31-1, meta1 = tag, any payload) counts
    itself in and then *waits* (one ``YIELD`` that marks it a waiter, then ``WAIT``: re-queued
    behind the work already queued, not counted as a yield, its payload kept) until ``n``
    arrivals of its round are in; the ``n``-th one opens the gate, every waiting arrival of
    that round then sends its ``GATE_PASS`` (meta0 = gate id, meta1 = tag, the payload handed
    on) and finishes, and the gate is closed again for the next round (reusable: arrivals
    after the ``n``-th belong to the next round). Out: to the host (``channels=False``; a
    payload is then the host's to release), or subscribed to ``NAME.arrive`` and published on
    the device channel ``NAME.open`` (``channels=True``, the CPU version's channels; a full
    channel makes the arrival wait).

    State: user words ``base .. base + 1 + 4 * gates`` (exclusive: a lock, then 4 words per
    gate slot: state, id, arrivals, round; ``gates`` rounded up to a power of two;
    ``m.user_words``). A slot stays bound to its gate id (its round counter lives there), so a
    kernel serves at most ``gates`` distinct gate ids. Bad input: ``GATE_BAD_ID`` (an id
    outside 0..2**31-1, whatever its high bits: a waiting arrival keeps its round in meta0's
    high bits, marked by bit 62, but the marker is read only once the handler has parked the
    task with one ``YIELD``, so an arrival's own meta0 is always checked as an id;
    ``yield_count`` is the runtime's), ``GATE_TABLE_FULL`` (an arrival at one gate id more
    than ``gates``); both on sys.error.

    What the numeric subset forbids here: keeping the arrivals in a Python list (they wait as
    tasks instead, so the gate needs no storage), per-gate sizes as a dict (one ``n``), and
    the CPU version's release in sequence order (each waiter passes when it next runs, in
    queue order). A waiting arrival is a task the GPU kernel keeps running, so a round short
    of ``n`` keeps it busy: a dual system's ``run(timeout=T)`` waits out T and answers False
    (``run()`` with no timeout does not return), where the CPU version's waiting arrivals
    leave the system idle. At halt of a dual system, each arrival still waiting that came
    through the bridge is named on sys.error with ``HALTED`` (the CPU version: sys.dropped,
    ``CHAN_CLOSED``); a ``DeviceKernel`` of its own has no drain of waiting tasks.

    Example::

        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import gate

        ids = gate.type_ids()
        with gd.DeviceKernel([gate.device_module(n=3)], target="cpu") as k:
            k.push(task.make(3, type=ids["GATE_ARRIVE"], meta0=1, meta1=[10, 11, 12]))
            got = k.pull_until(3, timeout=300)
        print(sorted(got["meta1"].tolist()))      # [10, 11, 12]
    """
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g
    import ggmk.device as gd
    from ggmk.modules import device_api, device_check, device_region, pow2
    g = device_api()
    device_check("gate (device): n", n, 1, 2**31)
    device_check("gate (device): gates", gates, 1, 8192)
    GN = pow2(gates)
    lo, hi = device_region("gate (device)", base, 1 + 4 * GN,
                           f"gates={gates} (1 + 4 words x {GN} slots)",
                           lambda: f"gates <= {_pow2_floor((65535 - base) // 4)} at this "
                                   f"base")
    ids = type_ids()
    ARR, PASS = ids["GATE_ARRIVE"], ids["GATE_PASS"]
    LOCK, T0, GMK, N = base, base + 1, GN - 1, n
    CH = bool(channels)
    YIELD, WAITC, BADID, FULLC = T.YIELD, T.WAIT, T.GATE_BAD_ID, T.GATE_TABLE_FULL
    WAITING = 1 << 62
    m = gd.Module(name)
    C_OPEN = 0
    if CH:
        C_OPEN = m.channel(f"{name}.open", message=PASS, mode="fanout", capacity=capacity)

    @m.handler(ARR, max_yields=60000, consumes=f"{name}.arrive" if CH else None)
    def gate_arrive(ctx, task):
        m0 = g.meta0(task)
        gid = m0 & 0x7FFFFFFF
        rnd = 0                                       # 0: a new arrival; r + 1: waits for r
        # the waiting marker (bit 62) is this handler's only after it yielded once (a task's
        # first run has the meta0 it was sent with: an id, checked, never a marker)
        parked = g.yield_count(task) > 0
        if parked and (m0 >> 62) == 1:
            rnd = (m0 >> 32) & 0x3FFFFFFF             # a waiter (bit 62: set by this handler)
        elif m0 != gid:
            return BADID                              # an id outside 0..2**31-1
        h = slot_key(gid, GMK)
        if rnd == 0:
            if not try_lock(ctx, LOCK):
                return YIELD
            found = -1
            free = -1
            for p in range(GN):
                s = T0 + 4 * ((h + p) & GMK)
                st = g.user_get(ctx, s)
                if st == 0:
                    if free < 0:
                        free = s
                elif g.user_get(ctx, s + 1) == gid:
                    found = s
                    break
            if found < 0:
                found = free
                if found < 0:
                    unlock(ctx, LOCK)
                    return FULLC
                g.user_set(ctx, found + 1, gid)
                g.user_set(ctx, found + 2, 0)
                g.user_set(ctx, found, 1)
            r = g.user_get(ctx, found + 3)
            c = g.user_get(ctx, found + 2) + 1
            if c >= N:
                g.user_set(ctx, found + 2, 0)
                g.user_set(ctx, found + 3, r + 1)     # open: round r's waiters pass
            else:
                g.user_set(ctx, found + 2, c)
                g.set_meta0(task, gid | ((r + 1) << 32) | WAITING)
                unlock(ctx, LOCK)
                if not parked:
                    return YIELD                      # the first park: marks it a waiter
                return WAITC
            unlock(ctx, LOCK)
            g.set_meta0(task, gid | ((r + 1) << 32) | WAITING)  # passes below, as a waiter
        else:
            # waiting for round rnd - 1 to open: the round word of its slot moved past it
            r = rnd - 1
            opened = False
            for p in range(GN):
                s = T0 + 4 * ((h + p) & GMK)
                if g.user_get(ctx, s) == 0:
                    break
                if g.user_get(ctx, s + 1) == gid:
                    opened = g.user_get(ctx, s + 3) > r
                    break
            if not opened:
                return WAITC
        if CH:
            ptr = g.payload_ptr(task)
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_chan_full(ctx, C_OPEN, gid, g.meta1(task), ptr, g.payload_len(task),
                                -1) != 0:
                if ptr != 0:
                    g.release(ctx, ptr)
                if not parked:
                    return YIELD                      # (the first park is a yield, above)
                return WAITC                          # full: pass on the next run
        else:
            ptr = g.payload_ptr(task)
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_full(ctx, PASS, gid, g.meta1(task), ptr, g.payload_len(task), -1,
                           0) != 0:
                if ptr != 0:
                    g.release(ctx, ptr)
                if not parked:
                    return YIELD
                return WAITC                          # queues full: pass on the next run
        return 0

    m.gate_layout = {"lock": LOCK, "table": T0, "gates": GN}
    m.user_words = (lo, hi, f"{name}: gate (device) lock, 4 words x {GN} gate slots")
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
