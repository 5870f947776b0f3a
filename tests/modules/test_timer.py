"""The timer module on the CPU kernel: a cancelled timer leaves nothing behind (the system goes
idle, nothing on sys.error at halt), and ``outbox_limit`` bounds the acks and fires waiting
for a stalled consumer (push-back with WAIT, every ack and fire delivered exactly once).
Real threads (workers=2), small channel capacities, consumers blocked on an Event."""
from __future__ import annotations

import threading
from collections import Counter

import numpy as np

import ggmk
from ggmk.modules import timer

FAR = 10_000_000                 # ticks (~3 hours at 1 kHz): never due in a test


def gated(name, chan, msg, gate: threading.Event):
    """A module collecting (meta0, meta1) from ``chan``; its handler blocks until ``gate``."""
    m = ggmk.Module(name)
    got = []
    lock = threading.Lock()

    @m.handler(f"{name.upper()}_IN", batch=True, consumes=chan, message=msg)
    def take(ctx, batch):
        assert gate.wait(60), "test consumer gate never released"
        rows = list(zip(batch.meta0.tolist(), batch.meta1.tolist()))
        with lock:
            got.extend(rows)
    m.got = got
    return m


def acks_by(got) -> Counter:
    """(id, op, status) -> how many acks."""
    return Counter((m0, *timer.ack_status(m1)) for m0, m1 in got)


def assert_clean_halt(system):
    rep = system.halt(timeout=2)
    assert rep["drained"] and rep["halted"] == 0 and rep["outstanding"] == 0, rep
    err, ecodes = system.dead_letters("sys.error")
    drop, dcodes = system.dead_letters("sys.dropped")
    assert len(err) == 0, [(system.type_name(int(t)), int(c)) for t, c in zip(err["type"], ecodes)]
    assert len(drop) == 0, (drop, dcodes)
    assert list(system.exceptions) == []


# --------------------------------------------------------------- a cancel leaves nothing behind
def test_timer_cancelled_timers_let_the_system_go_idle(wait_until):
    gate_a = threading.Event()
    tm = timer.module(capacity=4, outbox_limit=8)
    acks = gated("ca", "timer.ack", "TIMER_ACK", gate_a)
    gate_f = threading.Event()
    gate_f.set()
    fires = gated("cf", "timer.fire", "TIMER_FIRE", gate_f)
    system = ggmk.boot([tm, acks, fires], workers=2)
    try:
        far = list(range(0, 40, 2))                   # cancelled before they are due
        soon = list(range(1, 40, 2))                  # fire (once) before the cancels
        rep = [100, 101]                              # repeating, cancelled while armed
        system.channel("timer.set").publish(meta0=np.array(far), meta1=timer.arg(FAR))
        system.channel("timer.set").publish(meta0=np.array(soon), meta1=timer.arg(2))
        system.channel("timer.set").publish(meta0=np.array(rep), meta1=timer.arg(FAR, period=5))
        gate_a.set()                                  # the ack consumer was stalled until here
        n_set = len(far) + len(soon) + len(rep)
        assert wait_until(lambda: len(acks.got) == n_set, 10)
        assert wait_until(lambda: len(fires.got) == len(soon), 10)
        system.channel("timer.cancel").publish(meta0=np.array(far + rep))
        assert wait_until(lambda: len(acks.got) == n_set + len(far) + len(rep), 10)
        assert tm.timer.stats()["armed"] == 0
        # nothing of the cancelled timers is left: idle at once, not at their due tick
        assert system.run(timeout=5)
        assert system.stats()["sched"]["events"]["depth"] == 0
        assert_clean_halt(system)
    finally:
        gate_a.set()
        system.halt(timeout=0.5)
    a = acks_by(acks.got)
    assert a == Counter({**{(i, timer.OP_SET, timer.OK): 1 for i in far + soon + rep},
                         **{(i, timer.OP_CANCEL, timer.OK): 1 for i in far + rep}})
    assert sorted(fires.got) == [(i, 1) for i in soon]
    st = tm.timer.stats()
    assert st["fires"] == len(soon) and st["armed"] == 0 and st["waiting"] == 0


def test_timer_cancel_then_reset_same_id_fires_the_new_one_only(wait_until):
    gate_a = threading.Event()
    gate_a.set()
    tm = timer.module(capacity=4, outbox_limit=8)
    acks = gated("ca", "timer.ack", "TIMER_ACK", gate_a)
    fires = gated("cf", "timer.fire", "TIMER_FIRE", gate_a)
    with ggmk.boot([tm, acks, fires], workers=2) as system:
        for rnd in range(5):                          # set far, cancel, set far again ...
            system.submit("TIMER_SET", meta0=7, meta1=timer.arg(FAR))
            assert wait_until(lambda: len(acks.got) == 2 * rnd + 1, 10)
            system.submit("TIMER_CANCEL", meta0=7)
            assert wait_until(lambda: len(acks.got) == 2 * rnd + 2, 10)
        system.submit("TIMER_SET", meta0=7, meta1=timer.arg(3))     # ... then one that fires
        assert system.run(timeout=5)
        assert system.stats()["sched"]["events"]["depth"] == 0
        assert_clean_halt(system)
    assert fires.got == [(7, 1)]
    a = acks_by(acks.got)
    assert a == Counter({(7, timer.OP_SET, timer.OK): 6, (7, timer.OP_CANCEL, timer.OK): 5})


# ------------------------------------------------------------- outbox_limit bounds acks and fires
def test_timer_outbox_limit_pushes_back_sets_cancels_and_fires(wait_until):
    limit, cap, n = 8, 4, 300
    gate_a, gate_f = threading.Event(), threading.Event()
    tm = timer.module(capacity=cap, outbox_limit=limit)
    acks = gated("ca", "timer.ack", "TIMER_ACK", gate_a)
    fires = gated("cf", "timer.fire", "TIMER_FIRE", gate_f)
    system = ggmk.boot([tm, acks, fires], workers=2)
    try:
        # at most: the outbox + what the channel holds + the batch stuck in the consumer
        held = max(system.channel(c).stats()["capacity"] for c in ("timer.ack", "timer.fire"))
        bound = limit + 2 * held
        assert bound <= 3 * limit
        st = tm.timer
        ids = np.arange(n)
        # sets: the ack consumer is stalled, so sets must wait (not pile acks up in memory)
        system.channel("timer.set").publish(meta0=ids, meta1=timer.arg(2))
        assert wait_until(lambda: st.stats().get("waits", 0) > 0, 10)
        s = st.stats()
        assert s["set"] <= bound and len(st.ack_out) <= limit, s
        gate_a.set()
        assert wait_until(lambda: len(acks.got) == n, 20)
        # fires: the fire consumer is stalled, so due ticks must wait
        w0 = st.stats()["waits"]
        assert wait_until(lambda: st.stats()["waits"] > w0, 10)
        s = st.stats()
        assert s["fires"] <= bound and len(st.fire_out) <= limit, s
        gate_f.set()
        assert system.run(timeout=30)
        assert sorted(fires.got) == [(i, 1) for i in range(n)]
        # cancels (all FIRED by now): the ack consumer is stalled again
        gate_a.clear()
        system.channel("timer.cancel").publish(meta0=ids)
        w0 = st.stats()["waits"]
        assert wait_until(lambda: st.stats()["waits"] > w0, 10)
        s = st.stats()
        assert s["cancel"] <= bound and len(st.ack_out) <= limit, s
        gate_a.set()
        assert system.run(timeout=30)
        assert_clean_halt(system)
    finally:
        gate_a.set()
        gate_f.set()
        system.halt(timeout=0.5)
    a = acks_by(acks.got)
    assert a == Counter({**{(i, timer.OP_SET, timer.OK): 1 for i in range(n)},
                         **{(i, timer.OP_CANCEL, timer.FIRED): 1 for i in range(n)}})
    assert sorted(fires.got) == [(i, 1) for i in range(n)]
    s = tm.timer.stats()
    assert s["set"] == n and s["cancel"] == n and s["fires"] == n and s["waiting"] == 0


def test_timer_cancel_does_not_overtake_its_pushed_back_set(wait_until):
    """Sets pushed back (ack consumer stalled), then every timer cancelled: each cancel runs
    after its set (OK, not UNKNOWN with the timer left armed), and the system goes idle."""
    limit, cap, n = 8, 4, 300
    gate_a = threading.Event()
    tm = timer.module(capacity=cap, outbox_limit=limit)
    acks = gated("ca", "timer.ack", "TIMER_ACK", gate_a)
    system = ggmk.boot([tm, acks], workers=2)
    try:
        st = tm.timer
        ids = np.arange(n)
        assert system.channel("timer.set").publish(meta0=ids, meta1=timer.arg(FAR)) == n
        assert wait_until(lambda: st.stats().get("waits", 0) > 0, 10)

        def sets_seen():                          # done, or pushed back (held) by the module
            with st.lock:
                return st.counters["set"] + sum(1 for k in st.held if k[0] == timer.OP_SET)
        assert wait_until(lambda: sets_seen() == n, 10)
        assert system.channel("timer.cancel").publish(meta0=ids) == n
        w0 = st.stats()["waits"]
        assert wait_until(lambda: st.stats()["waits"] > w0 + n, 10)
        assert len(st.ack_out) <= limit
        gate_a.set()
        assert system.run(timeout=5)
        assert st.stats()["armed"] == 0 and system.stats()["sched"]["events"]["depth"] == 0
        assert_clean_halt(system)
    finally:
        gate_a.set()
        system.halt(timeout=0.5)
    a = acks_by(acks.got)
    assert a == Counter({**{(i, timer.OP_SET, timer.OK): 1 for i in range(n)},
                         **{(i, timer.OP_CANCEL, timer.OK): 1 for i in range(n)}})
    assert not tm.timer.held and not tm.timer.held_ids


def test_timer_repeats_cancelled_while_their_fires_wait(wait_until):
    """Repeating timers whose ticks are pushed back (fire consumer stalled) are cancelled: no
    fire lost or duplicated (each id's fire numbers are 1..k), and nothing left behind."""
    limit, cap, n = 4, 2, 20
    gate_f = threading.Event()
    gate_a = threading.Event()
    gate_a.set()
    tm = timer.module(capacity=cap, outbox_limit=limit)
    acks = gated("ca", "timer.ack", "TIMER_ACK", gate_a)
    fires = gated("cf", "timer.fire", "TIMER_FIRE", gate_f)
    system = ggmk.boot([tm, acks, fires], workers=2)
    try:
        st = tm.timer
        ids = np.arange(n)
        system.channel("timer.set").publish(meta0=ids, meta1=timer.arg(1, period=1))
        assert wait_until(lambda: len(acks.got) == n, 10)
        assert wait_until(lambda: st.stats().get("waits", 0) > n, 10)
        assert len(st.fire_out) <= limit
        system.channel("timer.cancel").publish(meta0=ids)
        assert wait_until(lambda: len(acks.got) == 2 * n, 10)
        assert st.stats()["armed"] == 0
        gate_f.set()
        assert system.run(timeout=10)
        assert system.stats()["sched"]["events"]["depth"] == 0
        assert_clean_halt(system)
    finally:
        gate_f.set()
        system.halt(timeout=0.5)
    a = acks_by(acks.got)
    assert a == Counter({**{(i, timer.OP_SET, timer.OK): 1 for i in range(n)},
                         **{(i, timer.OP_CANCEL, timer.OK): 1 for i in range(n)}})
    per = {}
    for i, k in fires.got:
        per.setdefault(i, []).append(k)
    for i, ks in per.items():
        assert sorted(ks) == list(range(1, len(ks) + 1)), (i, ks)
    assert sum(len(ks) for ks in per.values()) == tm.timer.stats()["fires"]


def test_device_timer_set_that_cannot_queue_its_tick_is_acked_full_not_ok(wait_until):
    """The GPU kernel's timer acked OK even when its tick could not be queued (the event inbox
    full: the tick went to sys.error), so the timer never fired. Now such a set is acked FULL
    and left unarmed; every timer acked OK fires once. A 4-slot event inbox, 32 sets in one
    batch."""
    import ggmk.device as gd
    from ggmk import task as taskmod
    from ggmk.device.host import SYS_ERROR, error_code
    ids = timer.type_ids()
    k = gd.DeviceKernel([timer.device_module(timers=64)], target="cpu", workers=1,
                        event_inbox_cap=4)
    n = 32
    acks, fires, errs = {}, Counter(), []

    def pull():
        for r in k.pull():
            if int(r["channel"]) == SYS_ERROR:
                errs.append((int(r["type"]), int(error_code(r[None])[0])))
            elif int(r["type"]) == ids["TIMER_ACK"]:
                acks[int(r["meta0"])] = timer.ack_status(int(r["meta1"]))[1]
            elif int(r["type"]) == ids["TIMER_FIRE"]:
                fires[int(r["meta0"])] += 1

    def ok():
        return [t for t, st in acks.items() if st == timer.OK]
    with k:
        k.push_all(taskmod.make(n, type=ids["TIMER_SET"], meta0=np.arange(n),
                                meta1=timer.arg(5)))
        assert wait_until(lambda: len(acks) == n and len(fires) == len(ok()), 120, step=pull), \
            (acks, fires)
    full = [t for t, st in acks.items() if st == timer.FULL]
    assert len(ok()) + len(full) == n, acks
    assert full, "no set found the event inbox full: the test no longer reaches it"
    assert fires == {t: 1 for t in ok()}
    assert errs == [(ids["TIMER_TICK"], taskmod.CHAN_FULL)] * len(full)
