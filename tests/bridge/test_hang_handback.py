"""A GPU kernel that hangs (a device handler that never returns) is reset by the watchdog: its
device process is killed. Before that, the child (whose Python control loop still answers: the
``cpu`` target's kernel threads are nogil machine code) is asked for what a normal stop hands
back, read from the running kernel's memory: the pending events are named on sys.error with
their type and meta words (an armed device timer's TIMER_TICK, a device reduce's
REDUCE_CHECK), not as TYPE_0, and the device reduce's open group is REDUCE_MISSING on
sys.dropped. A child that does not answer in time (no time given, or stopped) is killed
unread: today's type-0 counts, said in the bridge's errors. Either way every accepted message
is delivered, on sys.error with BRIDGE_RESET or on sys.dropped, and the CPU kernel serves its
own work throughout (``bridge.process.DeviceProcess.kill``)."""
import os
import signal
import threading

import ggmk.dual
from ggmk import task as T
from ggmk.modules import reduce, registry, timer
from tests.bridge import watchdog_workloads as WW
from tests.bridge.test_halt_handback import _app

WD = {"interval_s": 0.1, "warn_after": 3, "reset_after": 20}   # 2 s: no false reset under load


def _boot():
    """Timer + reduce device modules beside the watchdog workload (wd.in: WD_ECHO hangs on
    meta1 == HANG), in the default device process; a device timer armed and a device reduce
    group open (1 of 3 partials)."""
    got, lock = [], threading.Lock()
    reg = registry("timer", "reduce")
    for name, tid in WW.TYPES.items():
        reg.register(name, id=tid)
    WW.STATE.clear()
    mods = [_app(got, lock), timer.device_module(channels=True),
            reduce.device_module(n=3, timeout=10**6, channels=True)] + WW.modules()
    # (the watchdog starts once this is set up: a reset under load during the setup would
    # name the timer and the group before the hang)
    s = ggmk.dual.boot(mods, device="cpu", workers=2, types=reg, watchdog=WD | {"enabled": False})
    try:
        WW.STATE.system = s
        assert s.process is not None              # the default: a device process
        s.channel("timer.set").publish(meta0=4, meta1=timer.arg(delay=10**6))
        s.channel("reduce.in").publish(meta0=9, meta1=[1], count=1)
        ch = s.channel("wd.in")
        for v in range(20):
            assert ch.publish(meta0=v) == 0
        assert s.run(timeout=120)                 # (the armed tick leaves the kernel idle)
        with lock:
            assert got == [4]                     # the timer is armed
        assert sorted(WW.STATE.back) == list(range(20))
    except BaseException:
        s.halt(timeout=1)
        raise
    s.watchdog.enabled = True
    s.watchdog.start()
    return s


def _reset_by_watchdog(s, wait_until, trigger):
    """``trigger()`` makes the GPU kernel stop beating; wait for the watchdog's reset while
    the CPU kernel is given its own work. Returns the values accepted on wd.in."""
    stop = threading.Event()

    def cpu_work():
        while not stop.is_set():
            s.submit("WD_LOCAL")
            stop.wait(0.005)
    th = threading.Thread(target=cpu_work, daemon=True)
    th.start()
    try:
        accepted = trigger()
        wd = s.watchdog
        assert wait_until(lambda: wd.c["resets"] >= 1 and not s.resetting(), timeout=120), \
            wd.stats()
    finally:
        stop.set()
        th.join(10)
    assert WW.STATE.local_during_reset > 0          # the CPU kernel served during the reset
    assert s.process.alive()
    assert s.watchdog.c["resets"] == 1, s.watchdog.events   # (no false reset before)
    return accepted


def _hang(s):
    ch = s.channel("wd.in")
    assert ch.publish(meta0=1000, meta1=WW.HANG) == 0
    for v in range(1001, 1011):
        assert ch.publish(meta0=v) == 0
    return [1000] + list(range(1001, 1011))


def _accounted(s, accepted, stuck=1000):
    """Every accepted wd.in value delivered once or on sys.error with BRIDGE_RESET; every
    BRIDGE_RESET record counted once in the reset's accounting. Returns sys.error's
    (type name, meta0, meta1) with BRIDGE_RESET and sys.dropped's (type name, meta0, code)."""
    err, codes = s.dead_letters("sys.error")
    drop, dcodes = s.dead_letters("sys.dropped")
    reset = codes == T.BRIDGE_RESET
    named = sorted((s.cpu.type_name(int(t)), int(a), int(b))
                   for t, a, b in zip(err["type"][reset], err["meta0"][reset],
                                      err["meta1"][reset]))
    work = [a for n, a, _ in named if n == "WD_WORK"]
    back = WW.STATE.back
    assert len(back) == len(set(back))                     # no duplicate delivery
    assert not set(back) & set(work)                       # none both delivered and lost
    assert set(accepted) <= set(back) | set(work), set(accepted) - set(back) - set(work)
    assert stuck is None or stuck in work                  # the stuck message itself
    assert s.resets["lost_in_reset"] == int(reset.sum()), (s.resets, named)
    assert all(c != 0 for c in dcodes.tolist())            # dropped: with a reason
    dropped = sorted((s.cpu.type_name(int(t)), int(a), int(c))
                     for t, a, c in zip(drop["type"], drop["meta0"], dcodes))
    return named, dropped


def test_hung_kernel_hands_back_named_events_and_held_state(wait_until):
    s = _boot()
    try:
        pid0 = s.process.pid
        accepted = _reset_by_watchdog(s, wait_until, lambda: _hang(s))
        assert s.process.pid != pid0
        assert "missed" in s.watchdog.last_reset_reason
        named, dropped = _accounted(s, accepted)
        assert ("TIMER_TICK", 4, 1) in named, named         # meta1: the timer's round
        assert ("REDUCE_CHECK", 9, 1) in named, named       # meta1: the group's round
        assert not any(n.startswith("TYPE_0") for n, *_ in named), named
        assert dropped.count(("REDUCE_MISSING", 9, T.BRIDGE_RESET)) == 1, dropped
        assert not any("handing back" in e or "killed, not stopped" in e
                       for e in s.bridge.errors), s.bridge.errors
        # the new kernel serves wd.in again
        ch = s.channel("wd.in")
        for v in range(2000, 2010):
            assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=60)
        assert s.run(timeout=60)
        assert set(range(2000, 2010)) <= set(WW.STATE.back)
    finally:
        s.halt(timeout=1)


def _fallback_ok(s, accepted, why):
    named, dropped = _accounted(s, accepted)
    # counted, not named: one type-0 record per pending event (the timer's and the reduce's)
    assert [n for n in named if n[0] == "TYPE_0"] == [("TYPE_0", 0, 0)] * 2, named
    assert not any(n[0] in ("TIMER_TICK", "REDUCE_CHECK") for n in named), named
    assert not any(n == "REDUCE_MISSING" for n, *_ in dropped), dropped
    assert any("killed without handing back" in e and why in e for e in s.bridge.errors), \
        s.bridge.errors
    assert any("'reduce'" in e and "killed" in e for e in s.bridge.errors), s.bridge.errors


def test_no_time_to_hand_back_counts_type_0(wait_until):
    s = _boot()
    try:
        s.process.handback_s = 0
        accepted = _reset_by_watchdog(s, wait_until, lambda: _hang(s))
        _fallback_ok(s, accepted, "handback_s=0")
    finally:
        s.halt(timeout=1)


def test_unresponsive_child_is_killed_unread(wait_until):
    """A stopped device process (SIGSTOP: its kernel and control loop frozen) misses its
    heartbeats, is asked, does not answer within the bound, and is killed."""
    s = _boot()
    try:
        pid = s.process.pid

        def freeze():
            os.kill(pid, signal.SIGSTOP)
            return []
        accepted = _reset_by_watchdog(s, wait_until, freeze)
        assert s.process.pid != pid and not os.path.exists(f"/proc/{pid}")
        named, dropped = _accounted(s, list(range(20)), stuck=None)
        assert [n for n in named if n[0] == "TYPE_0"] == [("TYPE_0", 0, 0)] * 2, named
        assert any("killed without handing back" in e and "no answer within" in e
                   for e in s.bridge.errors), s.bridge.errors
        assert accepted == []
    finally:
        s.halt(timeout=1)
