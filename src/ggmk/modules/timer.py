"""The ``timer`` module (SPEC §10): one-shot and repeating timers on the kernel's event queue.

Channels (``NAME`` = the module name, ``timer`` by default):

=============  =========  ============  =====================================================
channel        direction  type          record
=============  =========  ============  =====================================================
NAME.set       consume    TIMER_SET     meta0 = timer id; meta1 = delay | period << 32
                                        (ticks; period 0 = once)
NAME.cancel    consume    TIMER_CANCEL  meta0 = timer id
NAME.fire      produce    TIMER_FIRE    meta0 = timer id, meta1 = fire number (1, 2, ...)
NAME.ack       produce    TIMER_ACK     meta0 = timer id, meta1 = op << 32 | status
=============  =========  ============  =====================================================

``TIMER_SET``/``TIMER_CANCEL`` may also be submitted directly. Each timer is a task deferred
on the kernel's event queue (``submit(..., due=tick)``, wall ticks): nothing polls. A
repeating timer is re-armed at ``due + period`` (no drift; if it fired more than a period
late, missed periods are skipped and counted in ``skipped``). While a timer is armed the
system is not idle, so ``system.run()`` returns only when every timer fired or was cancelled:
a cancel takes the timer's pending tick off the event queue (nothing of it is left to wait
for, nor to land on ``sys.error`` at halt).

Acks and fires that find their channel full wait in order in the module's outboxes (never
lost); at most ``outbox_limit`` of each wait: a set or cancel whose ack, or a due tick whose
fire, would go past it is pushed back with ``WAIT`` and runs again later, as it was (nothing
done twice); ``waits`` counts those push-backs.

Statuses in acks (``ack_status(meta1)``): ``OK``; ``UNKNOWN`` (cancel of an id never set,
or already cancelled); ``FIRED`` (cancel of a one-shot timer that already fired; the last
``fired_keep`` fired ones, 65 536 by default, are remembered for it: a cancel of a timer that
fired before them answers ``UNKNOWN``, as the device version forgets a fired timer once a new
one needs its slot); ``EXISTS``
(set of an id that is armed: cancel it first); ``BAD`` (delay 0 or period too large);
``FULL`` (the kernel's event queue refused the timer's tick: that tick is on ``sys.error``
with ``EVENT_FULL`` and the timer is not armed; set it again later; also while halting). A
repeating timer whose next tick is refused so stops (a cancel then answers ``FIRED``);
``stats()["full"]`` counts both. Acks go out only when something subscribes to
``NAME.ack``. Lateness (tick fired - tick due) is kept in ``m.timer.lateness`` (the last
100 000) for measurement.

Example::

    import ggmk
    from ggmk.modules import timer

    tm = timer.module()
    app = ggmk.Module("app")
    fired = []

    @app.handler("APP_FIRE", consumes="timer.fire", message="TIMER_FIRE")
    def on_fire(ctx): fired.append((ctx.task.meta0, ctx.task.meta1))

    with ggmk.boot([tm, app], workers=2) as system:
        system.submit("TIMER_SET", meta0=1, meta1=timer.arg(delay=5))               # once
        system.submit("TIMER_SET", meta0=2, meta1=timer.arg(delay=2, period=3))     # repeat
        system.run(0.05, until_idle=False)
        system.submit("TIMER_CANCEL", meta0=2)
        system.run()
    print(fired[:2])
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque

import numpy as np

from ggmk import task as T
from ggmk.core.det import check_int
from ggmk.errors import BootError
from ggmk.modules import (Outbox, defer, emit_or_later, instance_type, slot_key, std_module,
                          try_lock, unlock)

__all__ = ["module", "arg", "ack_status", "OK", "UNKNOWN", "FIRED", "EXISTS", "BAD",
           "STATUS_NAMES", "OP_SET", "OP_CANCEL", "FULL", "FIRED_KEEP", "device_module",
           "type_ids"]

OK, UNKNOWN, FIRED, EXISTS, BAD, FULL = 0, 1, 2, 3, 4, 5
STATUS_NAMES = {OK: "OK", UNKNOWN: "UNKNOWN", FIRED: "FIRED", EXISTS: "EXISTS", BAD: "BAD",
                FULL: "FULL"}      # FULL: the event queue (both), the device's timer table
OP_SET, OP_CANCEL = 1, 2
_M32 = 0xFFFFFFFF
_STALE = 10_000     # ticks: a pushed-back set/cancel not run again for this long is gone
FIRED_KEEP = 65536  # fired one-shot timers remembered for FIRED (see the docstring)


def arg(delay: int, period: int = 0) -> int:
    """TIMER_SET's meta1 for ``delay`` ticks (>= 1) and ``period`` ticks (0: once)."""
    def tick_count(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not (tick_count(delay) and tick_count(period)) or not 1 <= delay <= _M32 \
            or not 0 <= period <= _M32:
        raise ValueError(f"timer: delay must be 1..2**32-1 and period 0..2**32-1 ticks, got "
                         f"delay={delay!r} period={period!r}")
    return int(period) << 32 | int(delay)


def ack_status(meta1: int) -> tuple[int, int]:
    """(op, status) of a TIMER_ACK's meta1."""
    return int(meta1) >> 32, int(meta1) & _M32


def _wait_codes(n: int, wait: list):
    """A batch handler's result when the tasks at ``wait`` (of ``n``) wait, the rest done."""
    if not wait:
        return None
    if len(wait) == n:
        return T.WAIT
    codes = np.zeros(n, dtype=np.int32)
    codes[wait] = T.WAIT
    return codes


def _withdraw(system, tick_type: str, gone: dict) -> int:
    """Take the deferred ticks of cancelled timers (``gone``: {due: {(id, generation)}}) back
    (``System.withdraw_deferred``): left on the event queue, one keeps the system from idling
    until its due tick (hours, for a long timeout) and lands on sys.error with HALTED at halt.
    A tick not found was already popped: it runs, finds no armed timer of its generation and
    is dropped. The ``ggmk.testing`` sandbox takes it off its queue the same way."""
    withdraw = getattr(system, "withdraw_deferred", None)
    return withdraw(tick_type, gone) if withdraw is not None else 0


class _Timer:
    __slots__ = ("gen", "period", "due", "fires")

    def __init__(self, gen, period, due):
        self.gen, self.period, self.due, self.fires = gen, period, due, 0


class _Timers:
    def __init__(self, name, limit, fired_keep=FIRED_KEEP):
        self.name = name
        self.armed: dict[int, _Timer] = {}
        self.fired: OrderedDict = OrderedDict()      # one-shot ids that fired (the last keep)
        self.fired_keep = check_int("timer: fired_keep", fired_keep, 0, err=BootError,
                                    what=" (fired one-shot timers remembered for FIRED)")
        self.gen = 0
        self.lock = threading.Lock()
        self.tick_type = instance_type("TIMER_TICK", name, "timer")
        flush = instance_type("TIMER_FLUSH", name, "timer")
        self.fire_out = Outbox(f"{name}.fire", flush, limit)
        self.ack_out = Outbox(f"{name}.ack", flush, limit, optional=True)   # (see the doc)
        self.lateness: deque = deque(maxlen=100_000)
        # sets/cancels pushed back (WAIT): key -> [id, tick last seen]; id -> {key: None}
        # in the order they were first pushed back (see _admit)
        self.held: dict[tuple, list] = {}
        self.held_ids: dict[int, dict] = {}
        self.counters = {"set": 0, "cancel": 0, "fires": 0, "skipped": 0, "bad": 0,
                         "waits": 0, "full": 0}

    def _room(self, system, out: Outbox) -> int:
        """How many more messages ``out`` may take (under ``self.lock``, which every ``put``
        holds: a flush meanwhile only makes room). ``outbox_limit`` bounds what waits for a
        stalled consumer; nobody subscribed: no bound (``flush`` drops them, nothing waits)."""
        ch = system.channel(out.channel)
        if not ch.subs and not ch.closed:
            return 1 << 62
        return out.limit - len(out)

    def _admit(self, system, op, batch, ids, m1s, now) -> tuple[list, list]:
        """Under ``self.lock``: which tasks of a set/cancel batch run now and which WAIT (both
        lists of indices, in order). A task waits when its ack finds no room (``outbox_limit``)
        or behind a set/cancel of the same id pushed back before it: an id's sets and cancels
        keep their order (a cancel does not overtake the pushed-back set it cancels). A
        waiting task runs again as it was (nothing done twice, no ack lost)."""
        room = self._room(system, self.ack_out)
        held = self.held_ids
        run, wait = [], []
        keys = None
        for i, tid in enumerate(ids):
            if room > 0 and tid not in held:      # (the usual case: nothing pushed back)
                run.append(i)
                room -= 1
                continue
            if keys is None:                      # a task's identity across its re-runs
                r = batch.records
                keys = list(zip(r["channel"].tolist(), r["seq"].tolist()))
            key = (op, *keys[i], tid, m1s[i])
            if room > 0 and not self._behind(key, tid, now):
                self._unhold(key, tid)
                run.append(i)
                room -= 1
            else:
                h = self.held.get(key)
                if h is None:
                    self.held[key] = [tid, now]
                    held.setdefault(tid, {})[key] = None
                else:
                    h[1] = now
                wait.append(i)
        self.counters["waits"] += len(wait)
        return run, wait

    def _behind(self, key, tid, now) -> bool:
        """Whether a pushed-back set/cancel of ``tid`` came before the task ``key``. One not
        seen for ``_STALE`` ticks is forgotten (its task is gone: sys.error), so that it can
        not hold its id's later ones for ever."""
        for k in list(self.held_ids.get(tid, ())):
            if k == key:
                return False
            if now - self.held[k][1] <= _STALE:
                return True
            self._unhold(k, tid)
        return False

    def _unhold(self, key, tid) -> None:
        if self.held.pop(key, None) is not None:
            q = self.held_ids[tid]
            del q[key]
            if not q:
                del self.held_ids[tid]

    def on_set(self, ctx, batch):
        system = ctx.system
        self.ack_out.flush(system)
        ids, m1s = batch.meta0.tolist(), batch.meta1.tolist()
        now = system.wall_tick()
        arm: dict[int, list] = {}                 # due -> [(id, generation, ack index)]
        acks = []                                 # [id, status], in batch order
        with self.lock:
            run, wait = self._admit(system, OP_SET, batch, ids, m1s, now)
            for i in run:
                tid, m1 = ids[i], m1s[i]
                delay, period = m1 & _M32, m1 >> 32
                self.counters["set"] += 1
                if delay == 0 or period > _M32:
                    self.counters["bad"] += 1
                    st = BAD
                elif tid in self.armed:
                    st = EXISTS
                else:
                    self.gen += 1
                    due = now + delay
                    self.armed[tid] = _Timer(self.gen, period, due)
                    self.fired.pop(tid, None)
                    arm.setdefault(due, []).append((tid, self.gen, len(acks)))
                    st = OK
                acks.append([tid, st])
            # one deferred submission per due tick, under the lock: a cancel that takes a
            # timer out of ``armed`` finds its tick on the event queue (or already popped)
            for due, items in arm.items():
                a = np.array(items, dtype=np.uint64)
                k = defer(system, self.tick_type, a[:, 0], a[:, 1], due=due)
                for tid, gen, j in items[k:]:
                    # refused (event queue full: that tick is on sys.error) or halting: a
                    # timer that can never fire is not left armed, and its ack says FULL
                    if self.armed.get(tid) is not None and self.armed[tid].gen == gen:
                        del self.armed[tid]
                    acks[j][1] = FULL
                    self.counters["full"] += 1
            for tid, st in acks:
                self.ack_out.put(tid, OP_SET << 32 | st)
        if run:
            self.ack_out.flush(system)
        return _wait_codes(len(ids), wait)

    def on_cancel(self, ctx, batch):
        system = ctx.system
        self.ack_out.flush(system)
        ids = batch.meta0.tolist()
        gone: dict[int, set] = {}                 # due -> {(id, generation)}: their ticks
        with self.lock:
            run, wait = self._admit(system, OP_CANCEL, batch, ids, batch.meta1.tolist(),
                                    system.wall_tick())
            for i in run:
                tid = ids[i]
                self.counters["cancel"] += 1
                t = self.armed.pop(tid, None)
                if t is not None:
                    gone.setdefault(t.due, set()).add((tid, t.gen))
                    st = OK
                elif tid in self.fired:
                    st = FIRED
                else:
                    st = UNKNOWN
                self.ack_out.put(tid, OP_CANCEL << 32 | st)
        if gone:
            _withdraw(system, self.tick_type, gone)
        if run:
            self.ack_out.flush(system)
        return _wait_codes(len(ids), wait)

    def on_tick(self, ctx, batch):
        system = ctx.system
        self.fire_out.flush(system)
        now = system.wall_tick()
        ticks = list(zip(batch.meta0.tolist(), batch.meta1.tolist()))
        again: dict[int, list] = {}               # repeating timers: next due -> [(id, gen)]
        wait = []                                 # ticks with no room for their fire: WAIT
        with self.lock:
            room = self._room(system, self.fire_out)
            for i, (tid, gen) in enumerate(ticks):
                t = self.armed.get(tid)
                if t is None or t.gen != gen:
                    continue                      # cancelled (or re-set) meanwhile
                if room <= 0:
                    wait.append(i)                # fires next time, as it is (nothing done)
                    continue
                room -= 1
                self.lateness.append(now - t.due)
                t.fires += 1
                self.counters["fires"] += 1
                self.fire_out.put(tid, t.fires)
                if t.period:
                    nxt = t.due + t.period
                    if nxt <= now:
                        skip = (now - t.due) // t.period
                        self.counters["skipped"] += skip
                        nxt = t.due + (skip + 1) * t.period
                    t.due = nxt
                    again.setdefault(nxt, []).append((tid, gen))
                else:
                    del self.armed[tid]
                    self._fired(tid)
            self.counters["waits"] += len(wait)
            for due, items in again.items():      # under the lock, as in on_set
                a = np.array(items, dtype=np.uint64)
                k = defer(system, self.tick_type, a[:, 0], a[:, 1], due=due)
                for tid, gen in items[k:]:
                    # no next tick (on sys.error with EVENT_FULL): the timer stops, as the
                    # device one does; a cancel now answers FIRED
                    t = self.armed.get(tid)
                    if t is not None and t.gen == gen:
                        del self.armed[tid]
                        self._fired(tid)
                    self.counters["full"] += 1
        self.fire_out.flush(system)
        return _wait_codes(len(ticks), wait)

    def _fired(self, tid) -> None:
        """Under the lock: timer ``tid`` is done; a cancel answers FIRED (the last
        ``fired_keep``: the oldest is forgotten)."""
        self.fired[tid] = True
        if len(self.fired) > self.fired_keep:
            self.fired.popitem(last=False)

    def stats(self) -> dict:
        return dict(self.counters, armed=len(self.armed),
                    waiting=len(self.fire_out) + len(self.ack_out))


def module(*, name: str = "timer", capacity: int = 1024, outbox_limit: int = 4096,
           fired_keep: int = FIRED_KEEP):
    """A configured timer ``ggmk.Module`` (see the module docstring; ``fired_keep``: how many
    fired one-shot timers a cancel still answers ``FIRED`` for); ``m.timer``: state."""
    m = std_module(name, "timer")
    st = _Timers(name, outbox_limit, fired_keep)
    m.timer = st
    m.produces(f"{name}.fire", "TIMER_FIRE", mode="fanout", capacity=capacity)
    m.produces(f"{name}.ack", "TIMER_ACK", mode="fanout", capacity=capacity)
    m.handler(instance_type("TIMER_SET", name, "timer"), batch=True, consumes=f"{name}.set",
              message="TIMER_SET", name="on_set")(st.on_set)
    m.handler(instance_type("TIMER_CANCEL", name, "timer"), batch=True,
              consumes=f"{name}.cancel", message="TIMER_CANCEL", name="on_cancel")(st.on_cancel)
    m.handler(st.tick_type, batch=True, name="on_tick")(st.on_tick)

    @m.handler(st.fire_out.flush_type, name="on_flush")
    def on_flush(ctx):
        st.fire_out.flushed(ctx.system)
        st.ack_out.flushed(ctx.system)

    @m.fini
    def _fini(system):
        st.fire_out.drop_all(system)
        st.ack_out.drop_all(system)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)
_IDMASK = (1 << 62) - 1


def type_ids() -> dict[str, int]:
    """The timer types' ids (from timer.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return {t.name: t.id for t in _manifest(str(Path(__file__).with_name("timer.toml"))).types}


def device_module(*, timers: int = 64, base: int | None = None, name: str = "timer",
                  channels: bool = False, capacity: int = 256):
    """The timer module for the GPU kernel (``ggmk.device``): the same types, ids, statuses.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    ``TIMER_SET`` (meta0 = timer id, meta1 = ``arg(delay, period)``) arms a timer on the
    device event queue (``g.emit_at``: a ``TIMER_TICK`` task due at tick now + delay; nothing
    polls); ``TIMER_CANCEL`` (meta0 = id) disarms it. Each firing sends ``TIMER_FIRE``
    (meta0 = id, meta1 = fire number 1, 2, ...); a repeating timer is re-armed at due +
    period (missed periods skipped, no drift). Every set and cancel is answered with
    ``TIMER_ACK`` (meta0 = id, meta1 = op << 32 | status): ``OK``; ``UNKNOWN`` (cancel of an
    id never set or already cancelled); ``FIRED`` (cancel of a one-shot timer that already
    fired); ``EXISTS`` (set of an armed id); ``BAD`` (delay 0, or an id outside 0..2**62-1);
    ``FULL`` (device only: all ``timers`` slots hold armed timers, or the kernel's event inbox
    could not take the tick: that tick is on ``sys.error`` with CHAN_FULL and the timer is not
    armed; a repeating timer whose next tick finds it full stops). Out: to the host
    (``channels=False``), or subscribed to ``NAME.set``/``NAME.cancel`` and published on
    device channels ``NAME.fire``/``NAME.ack`` (``channels=True``: the CPU version's channels;
    a full one is retried by a ``TIMER_FLUSH`` task).

    State: user words ``base .. base + 4 + 6 * timers`` (a lock, a generation counter, the
    largest lateness seen, the fire count, then 6 words per slot; ``timers`` rounded up to a
    power of two; without ``base`` from 4096, or where the kernel's build finds free words
    when other modules' words are there: ``m.user_words`` says where once the kernel is
    made). A fired one-shot slot is remembered (for ``FIRED``) until a new timer
    needs it. Lateness (tick fired - tick due) is in user word ``base + 2`` (the maximum).

    What the numeric subset forbids here: nothing a timer needs, but the table is fixed at
    build (no dict: ``FULL`` instead of growing) and lateness is a maximum, not the CPU
    version's list of samples.

    Example::

        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import timer

        ids = timer.type_ids()
        with gd.DeviceKernel([timer.device_module()], target="cpu") as k:
            k.push(task.make(1, type=ids["TIMER_SET"], meta0=5, meta1=timer.arg(delay=3)))
            got = k.pull_until(2, timeout=300)             # the ack, then the fire
        print(sorted(int(t) - ids["TIMER_FIRE"] for t in got["type"]))    # [0, 1]
    """
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g
    import ggmk.device as gd
    from ggmk.modules import device_api, device_check, pow2
    g = device_api()
    device_check("timer (device): timers", timers, 1, 4096)
    TN = pow2(timers)
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = 4096
    device_check("timer (device): base", base, 0, 65536 - (4 + 6 * TN))
    ids = type_ids()
    SET, CAN, FIRE, ACK, TICK, FLUSH = (ids["TIMER_SET"], ids["TIMER_CANCEL"], ids["TIMER_FIRE"],
                                        ids["TIMER_ACK"], ids["TIMER_TICK"], ids["TIMER_FLUSH"])
    TM = TN - 1
    IDM = _IDMASK
    CH = bool(channels)
    YIELD, WAITC = T.YIELD, T.WAIT
    A_SET, A_CAN = OP_SET << 32, OP_CANCEL << 32
    S_OK, S_UNK, S_FIRED, S_EX, S_BAD, S_FULL = OK, UNKNOWN, FIRED, EXISTS, BAD, FULL
    m = gd.Module(name)
    LOCK = GEN = LATE = NFIRE = T0 = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region)."""
        nonlocal LOCK, GEN, LATE, NFIRE, T0
        LOCK, GEN, LATE, NFIRE, T0 = b, b + 1, b + 2, b + 3, b + 4
        m.timer_layout = {"lock": LOCK, "lateness_max": LATE, "fires": NFIRE, "table": T0,
                          "timers": TN}
    place(base)
    m.user_words = (base, base + 4 + 6 * TN, f"{name}: timer (device) lock, generation, "
                    f"lateness, fired, 6 words x {TN} timer slots")
    C_FIRE = C_ACK = 0
    if CH:
        C_FIRE = m.channel(f"{name}.fire", message=FIRE, mode="fanout", capacity=capacity)
        C_ACK = m.channel(f"{name}.ack", message=ACK, mode="fanout", capacity=capacity)

    @m.handler(SET, max_yields=60000, consumes=f"{name}.set" if CH else None)
    def timer_set(ctx, task):
        tid = g.meta0(task)
        arg_ = g.meta1(task)
        delay = arg_ & 0xFFFFFFFF
        period = (arg_ >> 32) & 0xFFFFFFFF
        st = S_OK
        if delay == 0 or tid < 0 or tid > IDM:
            st = S_BAD
        else:
            if not try_lock(ctx, LOCK):
                return YIELD
            h = slot_key(tid, TM)
            found = -1
            free = -1
            old = -1
            for p in range(TN):
                s = T0 + 6 * ((h + p) & TM)
                state = g.user_get(ctx, s)
                if state == 0:
                    if free < 0:
                        free = s
                elif g.user_get(ctx, s + 1) == tid:
                    found = s
                    break
                elif state == 2 and old < 0:
                    old = s
            if found >= 0 and g.user_get(ctx, found) == 1:
                st = S_EX
            else:
                s = found
                if s < 0:
                    s = free if free >= 0 else old
                if s < 0:
                    st = S_FULL
                else:
                    gen = g.user_add(ctx, GEN, 1) + 1
                    due = g.tick(ctx) + delay
                    g.user_set(ctx, s + 1, tid)
                    g.user_set(ctx, s + 2, gen)
                    g.user_set(ctx, s + 3, period)
                    g.user_set(ctx, s + 4, due)
                    g.user_set(ctx, s + 5, 0)
                    g.user_set(ctx, s, 1)
                    if g.emit_at(ctx, due, TICK, tid, gen) != 0:
                        # the event inbox is full (the tick is on sys.error): not armed, and
                        # the ack says so (it said OK for a timer that would never fire)
                        g.user_set(ctx, s, 0)
                        st = S_FULL
            unlock(ctx, LOCK)
        if CH:
            if g.emit_chan(ctx, C_ACK, tid, A_SET | st) != 0:
                emit_or_later(ctx, FLUSH, (tid & IDM) | (1 << 62), A_SET | st)
        else:
            g.emit_host(ctx, ACK, tid, A_SET | st)
        return 0

    @m.handler(CAN, max_yields=60000, consumes=f"{name}.cancel" if CH else None)
    def timer_cancel(ctx, task):
        tid = g.meta0(task)
        if not try_lock(ctx, LOCK):
            return YIELD
        h = slot_key(tid, TM)
        st = S_UNK
        for p in range(TN):
            s = T0 + 6 * ((h + p) & TM)
            state = g.user_get(ctx, s)
            if state != 0 and g.user_get(ctx, s + 1) == tid:
                if state == 1:
                    st = S_OK
                    g.user_set(ctx, s, 0)             # its pending tick finds no match
                else:
                    st = S_FIRED
                break
        unlock(ctx, LOCK)
        if CH:
            if g.emit_chan(ctx, C_ACK, tid, A_CAN | st) != 0:
                emit_or_later(ctx, FLUSH, (tid & IDM) | (1 << 62), A_CAN | st)
        else:
            g.emit_host(ctx, ACK, tid, A_CAN | st)
        return 0

    @m.handler(TICK, max_yields=60000)
    def timer_tick(ctx, task):
        tid = g.meta0(task)
        gen = g.meta1(task)
        if not try_lock(ctx, LOCK):
            return YIELD
        h = slot_key(tid, TM)
        fires = 0
        for p in range(TN):
            s = T0 + 6 * ((h + p) & TM)
            if g.user_get(ctx, s) == 1 and g.user_get(ctx, s + 1) == tid:
                if g.user_get(ctx, s + 2) != gen:
                    break                             # re-set meanwhile: not this one
                now = g.tick(ctx)
                due = g.user_get(ctx, s + 4)
                if now - due > g.user_get(ctx, LATE):
                    g.user_set(ctx, LATE, now - due)
                fires = g.user_get(ctx, s + 5) + 1
                g.user_set(ctx, s + 5, fires)
                period = g.user_get(ctx, s + 3)
                if period > 0:
                    nxt = due + period
                    if nxt <= now:
                        nxt = due + ((now - due) // period + 1) * period
                    g.user_set(ctx, s + 4, nxt)
                    if g.emit_at(ctx, nxt, TICK, tid, gen) != 0:
                        g.user_set(ctx, s, 2)         # no next tick (on sys.error): stopped
                else:
                    g.user_set(ctx, s, 2)             # fired: a cancel now answers FIRED
                break
        unlock(ctx, LOCK)
        if fires > 0:
            g.user_add(ctx, NFIRE, 1)
            if CH:
                if g.emit_chan(ctx, C_FIRE, tid, fires) != 0:
                    emit_or_later(ctx, FLUSH, tid, fires)
            else:
                g.emit_host(ctx, FIRE, tid, fires)
        return 0

    if CH:
        @m.handler(FLUSH, max_yields=0)
        def timer_flush(ctx, task):
            m0 = g.meta0(task)
            if (m0 >> 62) == 0:
                c = g.emit_chan(ctx, C_FIRE, m0 & IDM, g.meta1(task))
            else:
                c = g.emit_chan(ctx, C_ACK, m0 & IDM, g.meta1(task))
            if c != 0:
                return WAITC
            return 0

    if movable:
        m.movable(place)
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
