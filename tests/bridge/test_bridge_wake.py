"""The bridge pump's wake-up (``ggmk.bridge.wake.PumpWake``): host wake-ups (an event) joined
with the device -> host bell of the ``cpu`` target (``HostBell``, a futex in the ctl words), so one
wait ends at once on either. What must hold: no wake-up is lost, whichever thread comes
first: a lost one leaves the waiter asleep for its whole (long) timeout, which the test's
deadline catches."""
import threading

import numpy as np

from ggmk.bridge.wake import PumpWake
from ggmk.device import layout
from ggmk.device.targets import cpu

ROUNDS = 300
SLEEP_S = 120.0          # a lost wake-up sleeps this long: far past the test's deadline


def test_no_wakeup_is_lost_between_host_wakers_and_the_device_bell(wait_until):
    ctl = np.zeros(layout.NCTL, np.int64)
    bell = cpu.host_bell(ctl)
    wake = PumpWake(lambda: bell)
    cond = threading.Condition()
    sent = {"host": 0, "dev": 0}
    taken = {"host": 0, "dev": 0}
    waits = [0]
    errors = []

    def producer(kind):
        # one item at a time, each after the previous one was taken: every item meets the
        # waiter somewhere else in its wait protocol
        try:
            for _ in range(ROUNDS):
                with cond:
                    sent[kind] += 1
                if kind == "host":
                    wake.set()                  # a CPU -> GPU message, push_device, stop...
                else:
                    bell.ring()                 # the device: a record published, the bell
                with cond:
                    cond.wait_for(lambda: taken[kind] == sent[kind], timeout=SLEEP_S)
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    def waiter():
        try:
            while taken["host"] < ROUNDS or taken["dev"] < ROUNDS:
                wake.clear()                    # before the look: a set during it is kept
                with cond:
                    moved = False
                    for kind in ("host", "dev"):
                        if taken[kind] < sent[kind]:
                            taken[kind] = sent[kind]
                            moved = True
                    if moved:
                        cond.notify_all()
                        continue
                waits[0] += 1
                wake.wait(SLEEP_S, lambda: taken["dev"] < sent["dev"])
                assert ctl[layout.C_HOST_WAIT] == 0      # raised only while it sleeps
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=waiter, daemon=True)] + \
        [threading.Thread(target=producer, args=(k,), daemon=True) for k in ("host", "dev")]
    for t in ts:
        t.start()
    assert wait_until(lambda: not any(t.is_alive() for t in ts), timeout=60), \
        f"a wake-up was lost: sent {sent}, taken {taken}"
    assert errors == []
    assert taken == {"host": ROUNDS, "dev": ROUNDS} and waits[0] > 0


def test_without_a_bell_it_is_the_plain_event():
    wake = PumpWake(lambda: None)
    assert not wake.wait(0.0, lambda: True)       # no bell: ready is not looked at
    wake.set()
    assert wake.is_set() and wake.wait(0.0, lambda: False)
    wake.clear()
    assert not wake.is_set()


def test_ring_changes_the_bell_atomically_and_wraps_at_32_bits():
    ctl = np.zeros(layout.NCTL, np.int64)
    bell = cpu.host_bell(ctl)
    ctl[layout.C_HOST_BELL] = 0xFFFFFFFF
    seen = bell.value()
    bell.ring()
    assert bell.value() == 0 and bell.value() != seen
    bell.wait(seen, SLEEP_S)                      # the value moved on: returns at once


def test_the_gpu_targets_ring_no_bell():
    from ggmk.device.targets import OPTIONAL, option
    from ggmk.device.targets import sim
    ctl = np.zeros(layout.NCTL, np.int64)
    assert option(sim, "host_bell")(ctl) is None
    assert OPTIONAL["host_bell"](ctl) is None and option(cpu, "host_bell")(ctl) is not None
