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
system is not idle, so ``system.run()`` returns only when every timer fired or was cancelled.

Statuses in acks (``ack_status(meta1)``): ``OK``; ``UNKNOWN`` (cancel of an id never set,
or already cancelled); ``FIRED`` (cancel of a one-shot timer that already fired); ``EXISTS``
(set of an id that is armed: cancel it first); ``BAD`` (delay 0 or period too large). Acks
go out only when something subscribes to ``NAME.ack``. Lateness (tick fired - tick due) is
kept in ``m.timer.lateness`` (the last 100 000) for measurement.

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

from ggmk.modules import Outbox, defer, instance_type, std_module

__all__ = ["module", "arg", "ack_status", "OK", "UNKNOWN", "FIRED", "EXISTS", "BAD",
           "STATUS_NAMES", "OP_SET", "OP_CANCEL"]

OK, UNKNOWN, FIRED, EXISTS, BAD = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: "OK", UNKNOWN: "UNKNOWN", FIRED: "FIRED", EXISTS: "EXISTS", BAD: "BAD"}
OP_SET, OP_CANCEL = 1, 2
_M32 = 0xFFFFFFFF


def arg(delay: int, period: int = 0) -> int:
    """TIMER_SET's meta1 for ``delay`` ticks (>= 1) and ``period`` ticks (0: once)."""
    if not 1 <= delay <= _M32 or not 0 <= period <= _M32:
        raise ValueError(f"timer: delay must be 1..2**32-1 and period 0..2**32-1 ticks, got "
                         f"delay={delay!r} period={period!r}")
    return period << 32 | delay


def ack_status(meta1: int) -> tuple[int, int]:
    """(op, status) of a TIMER_ACK's meta1."""
    return int(meta1) >> 32, int(meta1) & _M32


class _Timer:
    __slots__ = ("gen", "period", "due", "fires")

    def __init__(self, gen, period, due):
        self.gen, self.period, self.due, self.fires = gen, period, due, 0


class _Timers:
    def __init__(self, name, limit):
        self.name = name
        self.armed: dict[int, _Timer] = {}
        self.fired: OrderedDict = OrderedDict()      # one-shot ids that fired (bounded)
        self.gen = 0
        self.lock = threading.Lock()
        self.tick_type = instance_type("TIMER_TICK", name, "timer")
        flush = instance_type("TIMER_FLUSH", name, "timer")
        self.fire_out = Outbox(f"{name}.fire", flush, limit)
        self.ack_out = Outbox(f"{name}.ack", flush, limit)
        self.lateness: deque = deque(maxlen=100_000)
        self.counters = {"set": 0, "cancel": 0, "fires": 0, "skipped": 0, "bad": 0}

    def on_set(self, ctx, batch):
        system = ctx.system
        ids, m1s = batch.meta0.tolist(), batch.meta1.tolist()
        now = system.wall_tick()
        arm: dict[int, list] = {}                 # due -> [(id, generation)]
        with self.lock:
            for tid, m1 in zip(ids, m1s):
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
                    arm.setdefault(due, []).append((tid, self.gen))
                    st = OK
                self.ack_out.put(tid, OP_SET << 32 | st)
        for due, items in arm.items():            # one deferred submission per due tick
            a = np.array(items, dtype=np.uint64)
            defer(system, self.tick_type, a[:, 0], a[:, 1], due=due)
        self.ack_out.flush(system)

    def on_cancel(self, ctx):
        tid = ctx.task.meta0
        with self.lock:
            self.counters["cancel"] += 1
            if self.armed.pop(tid, None) is not None:
                st = OK
            elif tid in self.fired:
                st = FIRED
            else:
                st = UNKNOWN
            self.ack_out.put(tid, OP_CANCEL << 32 | st)
        self.ack_out.flush(ctx.system)

    def on_tick(self, ctx, batch):
        system = ctx.system
        now = system.wall_tick()
        again: dict[int, list] = {}               # repeating timers: next due -> [(id, gen)]
        with self.lock:
            for tid, gen in zip(batch.meta0.tolist(), batch.meta1.tolist()):
                t = self.armed.get(tid)
                if t is None or t.gen != gen:
                    continue                      # cancelled (or re-set) meanwhile
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
                    self.fired[tid] = True
                    if len(self.fired) > 65536:
                        self.fired.popitem(last=False)
        for due, items in again.items():
            a = np.array(items, dtype=np.uint64)
            defer(system, self.tick_type, a[:, 0], a[:, 1], due=due)
        self.fire_out.flush(system)

    def stats(self) -> dict:
        return dict(self.counters, armed=len(self.armed),
                    waiting=len(self.fire_out) + len(self.ack_out))


def module(*, name: str = "timer", capacity: int = 1024, outbox_limit: int = 4096):
    """A configured timer ``ggmk.Module`` (see the module docstring); ``m.timer``: state."""
    m = std_module(name, "timer")
    st = _Timers(name, outbox_limit)
    m.timer = st
    m.produces(f"{name}.fire", "TIMER_FIRE", mode="fanout", capacity=capacity)
    m.produces(f"{name}.ack", "TIMER_ACK", mode="fanout", capacity=capacity)
    m.handler(instance_type("TIMER_SET", name, "timer"), batch=True, consumes=f"{name}.set",
              message="TIMER_SET", name="on_set")(st.on_set)
    m.handler(instance_type("TIMER_CANCEL", name, "timer"), consumes=f"{name}.cancel",
              message="TIMER_CANCEL", name="on_cancel")(st.on_cancel)
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
