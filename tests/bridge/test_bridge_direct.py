"""Issue 12, fewer host hops per round trip: CPU -> GPU messages sent from the emitting thread
(``Bridge._after_emit``: the publisher takes the bridge's lock when it is free and does the
pump's host -> device half itself, instead of waking the pump) and, with
``bridge={"pump_helps": True}``, the pump running the CPU handler of a GPU -> CPU message
itself (caller runs) instead of waking a CPU worker (off by default, also when the CPU
kernel's own caller runs is on, as here).

Both race with the pump: several publisher threads, a 16-slot host -> device ring and an
8-credit window, so sends meet a full ring, no credit and a busy lock. (The 8-credit window
also found a stall: GPU -> CPU records held for a sequence gap held every credit while the
gap's own message waited for one on the device; they now get their credits when held,
``Bridge._hold_credit``.) Accounting: every
published message crosses exactly once, each publisher's messages go onto the host -> device
ring in the order it published them (the channel's order), every message comes back, and
sys.error / sys.dropped stay empty.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from ggmk.bridge import device_side as ds
from ggmk.errors import ChannelError
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot

RX_CAP = 16          # the host -> device ring: small, so sends meet a full ring
WINDOW = 8           # credits per bridge channel and direction: small, so they run out
PUBLISHERS = 3
ROUNDS = 4
PER = 30             # messages per publisher thread and round


class _Recording:
    """The bridge's transport, recording the meta0 of every ingress record that went onto
    the host -> device ring, in ring order (``send`` runs under the bridge's lock: the pump's
    and the emitting threads' sends are serialized, so the list is the ring's order)."""

    def __init__(self, inner):
        self.inner = inner
        self.sent: list[int] = []

    def send(self, records):
        k = self.inner.send(records)
        t = records["type"][:k]
        m = (t >= ds.BASE + 0x1000) & (t < ds.BASE + 0x2000)
        self.sent.extend(records["meta0"][:k][m].tolist())
        return k

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _no_dead_letters(s):
    err, ecodes = s.dead_letters("sys.error")
    drop, dcodes = s.dead_letters("sys.dropped")
    assert len(err) == 0, f"sys.error: {len(err)}, codes {set(np.asarray(ecodes).tolist())}"
    assert len(drop) == 0, f"sys.dropped: {len(drop)}, codes {set(np.asarray(dcodes).tolist())}"


def test_a_publish_while_the_pump_sleeps_is_sent_by_the_publisher(wait_until):
    s = boot(device_process=False)
    try:
        b = s.bridge
        ch = s.channel("cpu.in")
        b.stop()                     # no pump thread: whatever crosses now, the publisher sent
        b._stop.clear()
        b._asleep = True             # what the pump says while it waits
        b._wake.clear()
        before = b.stats()
        assert ch.publish(meta0=7) == 0
        st = b.stats()
        assert st["direct_sends"] == before["direct_sends"] + 1
        assert st["transfers_out"] == before["transfers_out"] + 1
        assert st["channels"]["cpu.in"]["pushed"] == 1
        assert st["channels"]["cpu.in"]["bridge_ring"] == 0
        # the notify hook skipped the pump's wake-up (the publisher sent), and the device ->
        # host bell (cpu) announces the reply: nothing else wakes the pump
        assert not b._wake.is_set()

        # not sent from the publisher: direct off, or paused (a reset) -> the pump is woken
        b.direct = False
        assert ch.publish(meta0=8) == 0
        assert b._wake.is_set() and b.stats()["direct_sends"] == st["direct_sends"]
        assert b.stats()["channels"]["cpu.in"]["bridge_ring"] == 1
        b.direct = True
        b._wake.clear()
        b.paused = "test"
        assert ch.publish(meta0=9) == 0
        assert b._wake.is_set() and b.stats()["direct_sends"] == st["direct_sends"]
        assert b.stats()["channels"]["cpu.in"]["bridge_ring"] == 2
        b.paused = None

        b._asleep = False
        b.start()                    # the pump takes 8 and 9 and receives all three replies
        assert wait_until(lambda: W.REC.back_n == 3, timeout=60)
        assert sorted(r[0] for r in W.REC.back) == [7, 8, 9]

        # the core hook: run on the emitting thread with the channel's lock let go; only for
        # host-side subscribers
        seen = []
        b.by_name["cpu.in"].sub.add_after(lambda: seen.append(ch.lock.locked()))
        assert ch.publish(meta0=10) == 0
        assert seen == [False]
        handler_sub = next(x for x in s.channel("gpu.back").subs if x.type_id)
        with pytest.raises(ChannelError, match="after-emit hooks are for host-side"):
            handler_sub.add_after(lambda: None)
        assert wait_until(lambda: W.REC.back_n == 4, timeout=60)
        assert s.run(timeout=60)
        _no_dead_letters(s)
        c = s.stats()["bridge"]["channels"]["cpu.in"]
        assert c["in_flight"] == 0 and c["dead"] == 0 and c["pushed"] == 4
    finally:
        s.halt()


def _publisher(ch, first, n, wait_until, out, errs):
    try:
        for v in range(first, first + n):
            assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=60), \
                f"publish of {v} refused for 60 s"
            out.append(v)
    except BaseException as e:      # noqa: BLE001 - reported by the test thread
        errs.append(e)


@pytest.mark.parametrize("device_process,pump_helps",
                         [(False, False), (False, True), (True, True)],
                         ids=["in_process", "in_process_pump_helps", "device_process_pump_helps"])
def test_publishers_racing_the_pump_deliver_each_message_once_in_order(
        device_process, pump_helps, wait_until):
    s = boot(device_process=device_process, device_config={"rx_cap": RX_CAP},
             bridge={"window": WINDOW, "pump_helps": pump_helps})
    old_switch = sys.getswitchinterval()
    # switch threads every 10 us (default 5 ms): publishers and the pump interleave inside
    # their sends as often as a loaded machine makes them
    sys.setswitchinterval(1e-5)
    try:
        b = s.bridge
        rec = b.tx = _Recording(b.tx)
        ch = s.channel("cpu.in")
        outs = [[] for _ in range(PUBLISHERS)]
        errs: list = []
        for rnd in range(ROUNDS):
            # each round starts while the pump sleeps, so its first publishes are sent by
            # the publishers (an awake pump sends them itself), then they race the pump
            assert wait_until(lambda: b._asleep, timeout=30)
            threads = [threading.Thread(
                target=_publisher, name=f"publisher-{i}",
                args=(ch, (i + 1) * 100_000 + rnd * PER, PER, wait_until, outs[i], errs))
                for i in range(PUBLISHERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            assert not errs, errs
            n = sum(len(o) for o in outs)
            ok = wait_until(lambda: W.REC.back_n >= n, timeout=60,
                            step=lambda: s.run(timeout=0.5))
            want = sorted(v for o in outs for v in o)
            got = sorted(r[0] for r in W.REC.back)
            missing = sorted(set(want) - set(got))
            assert ok, (f"round {rnd}: {len(missing)} published message(s) never came back "
                        f"(first: {missing[:8]}); bridge "
                        f"{ {k: v for k, v in b.stats().items() if k != 'channels'} }")
        assert len(want) == PUBLISHERS * PER * ROUNDS
        assert got == want                       # each message echoed exactly once
        # on the wire: each message sent exactly once, each publisher's in its order
        assert sorted(rec.sent) == want
        for i, o in enumerate(outs):
            lo = (i + 1) * 100_000
            mine = [v for v in rec.sent if lo <= v < lo + ROUNDS * PER]
            assert mine == o, f"publisher {i}: sent out of its order or twice"
        assert s.run(timeout=60)
        _no_dead_letters(s)
        st = b.stats()
        c = st["channels"]["cpu.in"]
        assert c["in_flight"] == 0 and c["dead"] == 0 and c["pushed"] == len(want)
        assert st["channels"]["gpu.back"]["crossed"] == len(want)
        # the publishers sent some themselves (each round began while the pump slept)
        assert st["direct_sends"] > 0, st
        if not pump_helps:
            assert st["helped"] == 0       # the CPU kernel helps its hosts, not the pump
        assert s.kernel.rx_pending() == 0
    finally:
        sys.setswitchinterval(old_switch)
        s.halt()


def test_with_pump_helps_the_pump_runs_the_cpu_handler(wait_until):
    """One round trip at a time while the CPU workers are parked: the pump borrows a parked
    worker and runs BACK_SINK itself (the CPU kernel's ``hal.helped`` counts its steps; no
    other thread helps here: the test waits on the recorder, not on ``run()``)."""
    s = boot(device_process=False, host_helps=True, bridge={"pump_helps": True})
    try:
        hal = s.cpu.hal
        ch = s.channel("cpu.in")
        h0 = hal.helped
        for i in range(50):        # a worker is parked at nearly every try; one suffices
            assert wait_until(lambda: hal.parked == 2, timeout=30)
            assert ch.publish(meta0=i) == 0
            assert wait_until(lambda: W.REC.back_n == i + 1, timeout=30)
            if hal.helped > h0:
                break
        assert hal.helped > h0 and s.stats()["bridge"]["helped"] > 0
        assert sorted(r[0] for r in W.REC.back) == list(range(W.REC.back_n))
        assert s.run(timeout=60)
        _no_dead_letters(s)
    finally:
        s.halt()


def test_a_lone_gpu_to_cpu_message_is_emitted_as_plain_ints_and_accounted(wait_until):
    """The pump emits a one-record GPU -> CPU delivery (a round trip's) through
    ``Channel.emit_one``, not the NumPy path: each message still arrives once, in order,
    nothing dead-lettered. (emit_one's full and closed answers: tests/core/
    test_one_record_emit.py; the pump's handling of them is the same for both paths.)"""
    s = boot(device_process=False)
    try:
        back = s.channel("gpu.back")
        calls = {"one": 0, "array_of_1": 0}
        real_one, real_emit = back.emit_one, back.emit

        def one(*a, **k):
            calls["one"] += 1
            return real_one(*a, **k)

        def emit(recs, *a, **k):
            if len(recs) == 1:
                calls["array_of_1"] += 1
            return real_emit(recs, *a, **k)
        back.emit_one, back.emit = one, emit
        ch = s.channel("cpu.in")
        for v in range(40):                      # one in flight: one-record deliveries
            assert ch.publish(meta0=v) == 0
            assert wait_until(lambda: W.REC.back_n == v + 1, timeout=60)
        assert [r[0] for r in W.REC.back] == list(range(40))
        assert calls["one"] >= 40 and calls["array_of_1"] == 0
        _no_dead_letters(s)
    finally:
        s.halt()
