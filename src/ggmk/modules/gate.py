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


_HDR = 6          # device gate slot header: state, id, held, round, release index, releaser pos


def _gate_fit(n: int, gates: int, slots: int, base: int) -> str:
    """What would fit the user words from ``base`` (a device gate's region too big)."""
    room = (1 << 16) - 1 - base                   # (the lock word first)
    fit = []
    n_max = (room // slots - _HDR) // 3 + 1
    if n_max >= 1:
        fit.append(f"n <= {n_max} at gates={gates}")
    g_max = _pow2_floor(room // (_HDR + 3 * (n - 1)))
    if g_max >= 1:
        fit.append(f"gates <= {g_max} at n={n}")
    return " or ".join(fit)


def device_module(n: int, *, gates: int = 64, base: int | None = None, name: str = "gate",
                  channels: bool = False, capacity: int = 256):
    """The gate module for the GPU kernel (``ggmk.device``): the same types and ids.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    A ``GATE_ARRIVE`` task (meta0 = gate id 0..2**31-1, meta1 = tag, any payload) short of
    ``n`` in its round is held as the CPU version holds it, in module state: its tag, payload
    (retained) and length go into its gate's slot in user words and the task finishes OK, so
    a round short of ``n`` leaves the kernel idle (a dual system's ``run(timeout=T)`` answers
    True). The ``n``-th arrival opens the gate: it sends the held arrivals and itself as
    ``GATE_PASS`` (meta0 = gate id, meta1 = tag, the payload handed on) in arrival order
    (their ``NAME.arrive`` seq, as the CPU version; tasks pushed without one in the order
    handled), and the gate is closed again for the next round (reusable). Out: to the host
    (``channels=False``; a payload is then the host's to release), or subscribed to
    ``NAME.arrive`` and published on the device channel ``NAME.open`` (``channels=True``, the
    CPU version's channels). Where
    the output is full the opening arrival waits (one ``YIELD`` that marks it the releaser in
    meta0 bit 62, then ``WAIT``) and goes on where it stopped, nothing lost or sent twice;
    arrivals at that gate meanwhile wait (``WAIT``) until the release is done.

    State: user words ``base .. base + 1 + gates * (6 + 3 * (n - 1))`` (exclusive: a lock,
    then per gate slot a header - state, id, arrivals held, round, release index, the
    releaser's place - and (tag, payload, seq << 32 | length) per held arrival; ``gates``
    rounded up to a power of two; ``m.user_words``, ``m.gate_layout``): ``n`` is bounded by
    the 65536 user words (a BootError names what fits). Without ``base`` the region starts
    at 8192, or where the kernel's build finds free words when other modules' words are
    there (``m.user_words`` says where once the kernel is made). A slot stays bound to its
    gate id (its round counter lives there), so a kernel serves at most ``gates`` distinct
    gate ids. Bad input: ``GATE_BAD_ID`` (an id outside 0..2**31-1), ``GATE_TABLE_FULL`` (an
    arrival at one gate id more than ``gates``); both on sys.error.

    At a dual system's halt the arrivals still held are on sys.dropped with ``CHAN_CLOSED``
    as the CPU version's (``GATE_ARRIVE``, meta0 = gate id, meta1 = tag): the host hook
    ``m.halt_records(words)`` reads them from the stopped kernel's user words (a device
    process hands them back; a kernel killed because it hung cannot be read: the bridge's
    errors say so). Their payloads were in the device arena, gone with the kernel: the records
    carry none. Of a release stopped half-way, the held arrivals not yet sent are named so;
    the opening arrival itself is a task still waiting (on sys.error with ``HALTED``, as any).
    A ``DeviceKernel`` of its own names nothing at stop (``halt_records`` of
    ``ggmk.bridge.device_tasks.user_words(kernel)`` does).

    What the numeric subset forbids here: keeping the arrivals in a Python list (a fixed
    table in user words instead, hence the bound on ``n``), per-gate sizes as a dict (one
    ``n``).

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
    from ggmk.modules import default_base, device_api, device_check, device_region, pow2
    g = device_api()
    device_check("gate (device): n", n, 1, 2**31)
    device_check("gate (device): gates", gates, 1, 8192)
    GN = pow2(gates)
    SW = _HDR + 3 * (n - 1)                       # one slot's words
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = default_base(8192, 1 + GN * SW)
    lo, hi = device_region("gate (device)", base, 1 + GN * SW,
                           f"n={n}, gates={gates} (1 + {SW} words x {GN} slots: {_HDR} + 3 "
                           f"per held arrival)",
                           lambda: _gate_fit(n, gates, GN, 0 if movable else base),
                           given=not movable)
    ids = type_ids()
    ARR, PASS = ids["GATE_ARRIVE"], ids["GATE_PASS"]
    GMK, N, HDR = GN - 1, n, _HDR
    CH = bool(channels)
    YIELD, WAITC, BADID, FULLC = T.YIELD, T.WAIT, T.GATE_BAD_ID, T.GATE_TABLE_FULL
    RELEASER, M32, HALF = 1 << 62, _M32, _HALF
    m = gd.Module(name)
    LOCK = T0 = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region)."""
        nonlocal LOCK, T0
        LOCK, T0 = b, b + 1
        m.gate_layout = {"lock": LOCK, "table": T0, "gates": GN, "slot_words": SW,
                         "header": HDR}
    place(base)
    C_OPEN = 0
    if CH:
        C_OPEN = m.channel(f"{name}.open", message=PASS, mode="fanout", capacity=capacity)

    @m.handler(ARR, max_yields=60000, consumes=f"{name}.arrive" if CH else None)
    def gate_arrive(ctx, task):
        m0 = g.meta0(task)
        gid = m0 & 0x7FFFFFFF
        # the releaser marker (bit 62) is this handler's only after it yielded once (a task's
        # first run has the meta0 it was sent with: an id, checked, never a marker)
        parked = g.yield_count(task) > 0
        releasing = parked and (m0 >> 62) == 1
        if not releasing and m0 != gid:
            return BADID                              # an id outside 0..2**31-1
        h = slot_key(gid, GMK)
        if releasing:
            s = -1                                    # its slot: bound, never unbound
            for p in range(GN):
                s = T0 + SW * ((h + p) & GMK)
                if g.user_get(ctx, s + 1) == gid and g.user_get(ctx, s) != 0:
                    break
        else:
            if not try_lock(ctx, LOCK):
                return YIELD
            s = -1
            for p in range(GN):
                q = T0 + SW * ((h + p) & GMK)
                if g.user_get(ctx, q) == 0:           # slots are never freed: not bound
                    s = q
                    g.user_set(ctx, s + 1, gid)
                    g.user_set(ctx, s + 2, 0)
                    g.user_set(ctx, s, 1)
                    break
                if g.user_get(ctx, q + 1) == gid:
                    s = q
                    break
            if s < 0:
                unlock(ctx, LOCK)
                return FULLC
            if g.user_get(ctx, s) == 2:
                unlock(ctx, LOCK)
                return WAITC                          # its gate is releasing: woken after
            c = g.user_get(ctx, s + 2)
            sq = g.seq(task)
            pos = c                                   # its place in arrival (seq) order
            for j in range(c):
                sj = (g.user_get(ctx, s + HDR + 3 * j + 2) >> 32) & M32
                if ((sq - sj) & M32) >= HALF:         # before j (seq wraps)
                    pos = j
                    break
            if c + 1 < N:                             # held: state, not a waiting task
                for j in range(c - 1, pos - 1, -1):
                    w = s + HDR + 3 * j
                    g.user_set(ctx, w + 3, g.user_get(ctx, w))
                    g.user_set(ctx, w + 4, g.user_get(ctx, w + 1))
                    g.user_set(ctx, w + 5, g.user_get(ctx, w + 2))
                w = s + HDR + 3 * pos
                ptr = g.payload_ptr(task)
                if ptr != 0:
                    g.retain(ctx, ptr, 1)             # the gate's (the task's is released)
                g.user_set(ctx, w, g.meta1(task))
                g.user_set(ctx, w + 1, ptr)
                g.user_set(ctx, w + 2, (sq << 32) | g.payload_len(task))
                g.user_set(ctx, s + 2, c + 1)
                unlock(ctx, LOCK)
                return 0
            g.user_set(ctx, s + 4, 0)                 # the n-th: it releases the round
            g.user_set(ctx, s + 5, pos)
            g.user_set(ctx, s, 2)
            unlock(ctx, LOCK)
            g.set_meta0(task, gid | RELEASER)
        i = g.user_get(ctx, s + 4)
        me = g.user_get(ctx, s + 5)
        while i < N:
            if i == me:
                ptr = g.payload_ptr(task)
                if ptr != 0:
                    g.retain(ctx, ptr, 1)
                tag = g.meta1(task)
                ln = g.payload_len(task)
            else:
                w = s + HDR + 3 * (i if i < me else i - 1)
                tag = g.user_get(ctx, w)
                ptr = g.user_get(ctx, w + 1)          # the gate's reference, handed on
                ln = g.user_get(ctx, w + 2) & M32
            if CH:
                r = g.emit_chan_full(ctx, C_OPEN, gid, tag, ptr, ln, -1)
            else:
                r = g.emit_full(ctx, PASS, gid, tag, ptr, ln, -1, 0)
            if r != 0:
                if i == me and ptr != 0:
                    g.release(ctx, ptr)
                g.user_set(ctx, s + 4, i)             # full: go on from i
                if not parked:
                    return YIELD                      # the first park marks the releaser
                return WAITC
            i += 1
        g.user_set(ctx, s + 4, i)
        if not try_lock(ctx, LOCK):
            return YIELD                              # (all sent: only the close is left)
        g.user_set(ctx, s + 2, 0)
        g.user_set(ctx, s + 3, g.user_get(ctx, s + 3) + 1)
        g.user_set(ctx, s, 1)                         # closed: the next round
        unlock(ctx, LOCK)
        g.wake_waiters(ctx)                           # arrivals that waited for the release
        return 0

    def halt_records(words):
        """Host side, at halt (``DualSystem``): the arrivals each slot of the stopped kernel's
        user ``words`` still holds, in arrival order, as GATE_ARRIVE records (meta0 = gate
        id, meta1 = tag; their payloads died with the kernel) for sys.dropped."""
        tab = np.asarray(words[T0:T0 + GN * SW], np.int64).reshape(GN, SW)
        gids, tags = [], []
        for row in tab:
            if row[0] == 1:
                held = range(int(row[2]))
            elif row[0] == 2:                         # a release stopped half-way
                me = int(row[5])
                held = [i if i < me else i - 1 for i in range(int(row[4]), N) if i != me]
            else:
                continue
            for j in held:
                gids.append(int(row[1]))
                tags.append(row[HDR + 3 * j])
        return T.make(len(gids), type=ARR, meta0=np.array(gids, np.uint64),
                      meta1=np.array(tags, np.int64).view(np.uint64))

    m.halt_records = halt_records
    m.user_words = (lo, hi, f"{name}: gate (device) lock, {SW} words x {GN} gate slots")
    if movable:
        m.movable(place)
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
