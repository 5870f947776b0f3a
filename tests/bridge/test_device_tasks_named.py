"""The GPU kernel's own pending events at halt are named on sys.error with their type and meta
words (an armed device timer's TIMER_TICK, the device reduce's REDUCE_CHECK), as the CPU
versions name theirs, not as TYPE_0 records with meta 0 (bridge.device_tasks.pending_events)."""
import threading

import ggmk
import ggmk.dual
from ggmk import task as T
from ggmk.modules import reduce, registry, timer
from tests.bridge.test_halt_handback import _app


def test_pending_device_events_named_at_halt():
    got, lock = [], threading.Lock()
    mods = [_app(got, lock), timer.device_module(channels=True),
            reduce.device_module(n=3, timeout=10**6, channels=True)]
    with ggmk.dual.boot(mods, device="cpu", workers=2, device_process=False,
                        types=registry("timer", "reduce")) as s:
        s.channel("timer.set").publish(meta0=4, meta1=timer.arg(delay=10**6))
        s.channel("reduce.in").publish(meta0=9, meta1=[1], count=1)
        assert s.run(timeout=120)                # (the armed tick leaves the kernel idle)
        with lock:
            assert got == [4]                     # the timer is armed
        rep = s.halt(timeout=1)
        recs, codes = s.dead_letters("sys.error")
        named = sorted((s.cpu.type_name(int(t)), int(a), int(c))
                       for t, a, c in zip(recs["type"], recs["meta0"], codes))
    assert ("TIMER_TICK", 4, T.HALTED) in named, named
    assert ("REDUCE_CHECK", 9, T.HALTED) in named, named
    assert not any(n.startswith("TYPE_0") for n, _, _ in named), named
    tids = {s.cpu.type_name(int(t)) for t in rep["device_tasks"]}
    assert tids == {"TIMER_TICK", "REDUCE_CHECK"}, rep["device_tasks"]
    assert rep["device_halted"] == 2, rep
