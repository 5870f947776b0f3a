"""A GPU kernel in its device process (the default) hands back what it holds in device memory
when it stops normally (halt, a requested reset): the records on its event queue (an armed
device timer's TIMER_TICK, a device reduce's REDUCE_CHECK) are named on sys.error with their
type and meta words, as in-process, not as TYPE_0 records (bridge.process's stop reply ->
``kernel.held_events``); so does a kernel about to be killed because it hung, asked first."""
import threading

import ggmk
import ggmk.dual
from ggmk import task as T
from ggmk.modules import reduce, registry, std_module, timer


def _app(got, lock):
    app = std_module("app", "timer")
    app.produces("timer.set", "TIMER_SET")
    app.produces("timer.cancel", "TIMER_CANCEL")
    app.produces("reduce.in", "REDUCE_PART")

    def on(ctx, b):
        with lock:
            got.extend(b.records["meta0"].tolist())
    app.handler("APP_ACK", batch=True, consumes="timer.ack", message="TIMER_ACK",
                name="ack")(on)
    for ch, msg in (("timer.fire", "TIMER_FIRE"), ("reduce.out", "REDUCE_RESULT"),
                    ("reduce.missing", "REDUCE_MISSING")):
        app.handler(f"APP_{msg}", batch=True, consumes=ch, message=msg,
                    name=msg.lower())(lambda ctx, b: None)
    return app


def _boot():
    got, lock = [], threading.Lock()
    mods = [_app(got, lock), timer.device_module(channels=True),
            reduce.device_module(n=3, timeout=10**6, channels=True)]
    s = ggmk.dual.boot(mods, device="cpu", workers=2, types=registry("timer", "reduce"))
    assert s.process is not None                  # the default: a device process
    s.channel("timer.set").publish(meta0=4, meta1=timer.arg(delay=10**6))
    s.channel("reduce.in").publish(meta0=9, meta1=[1], count=1)
    assert s.run(timeout=120)                     # (the armed tick leaves the kernel idle)
    with lock:
        assert got == [4]                         # the timer is armed
    return s


def _named(s):
    recs, codes = s.dead_letters("sys.error")
    return sorted((s.cpu.type_name(int(t)), int(a), int(b), int(c))
                  for t, a, b, c in zip(recs["type"], recs["meta0"], recs["meta1"], codes))


def test_device_process_hands_back_pending_events_at_halt():
    s = _boot()
    rep = s.halt(timeout=1)
    named = _named(s)
    assert not rep["device_killed"]
    assert ("TIMER_TICK", 4, 1, T.HALTED) in named, named      # meta1: the timer's round
    assert ("REDUCE_CHECK", 9, 1, T.HALTED) in named, named    # meta1: the group's round
    assert not any(n.startswith("TYPE_0") for n, *_ in named), named
    tids = {s.cpu.type_name(int(t)) for t in rep["device_tasks"]}
    assert tids == {"TIMER_TICK", "REDUCE_CHECK"}, rep["device_tasks"]
    assert rep["device_halted"] == 2, rep


def test_requested_reset_hands_back_pending_events():
    s = _boot()
    try:
        acct = s.reset_device("requested")
        named = _named(s)
        assert ("TIMER_TICK", 4, 1, T.BRIDGE_RESET) in named, named
        assert ("REDUCE_CHECK", 9, 1, T.BRIDGE_RESET) in named, named
        assert not any(n.startswith("TYPE_0") for n, *_ in named), named
        assert acct["lost"] == 2, acct
    finally:
        s.halt(timeout=1)


def test_hung_reset_asks_before_it_kills():
    """A reset for a hung kernel (``hung``: killed without a stop) first asks its device
    process for what it holds, read while the kernel runs (``DeviceProcess.kill``): named as
    at a stop, the device reduce's open group on sys.dropped. A device process that does not
    answer in time is killed unread (type 0): tests/bridge/test_hang_handback.py."""
    s = _boot()
    try:
        acct = s.reset_device("hung", hung=True)
        named = _named(s)
        assert ("TIMER_TICK", 4, 1, T.BRIDGE_RESET) in named, named
        assert ("REDUCE_CHECK", 9, 1, T.BRIDGE_RESET) in named, named
        assert not any(n.startswith("TYPE_0") for n, *_ in named), named
        assert acct["lost"] == 2 and acct["device_held"] == 1, acct
    finally:
        s.halt(timeout=1)
