"""The watchdog (ggmk.modules.watchdog): thresholds on missed heartbeats, a dead device process,
a failed reset, and configuration errors named. One tick at a time (``check()``) over a
stand-in system whose heartbeats the test sets; the real kernel is acceptance 17's."""
import numpy as np
import pytest

import ggmk.dual
from ggmk.errors import BootError
from ggmk.modules import watchdog as W
from tests.bridge import watchdog_workloads as WW


class FakeProc:
    def __init__(self):
        self.up = True
        self.exit_info = None
        self.proc = None
        self._closed = False

    def alive(self):
        return self.up


class FakeKernel:
    def __init__(self, n=3):
        self.hb = np.zeros(n, np.int64)

    def heartbeats(self):
        return self.hb.copy()


class FakeSystem:
    """What the watchdog uses of a DualSystem."""

    def __init__(self, fail_reset=False):
        self.halted = False
        self.process = FakeProc()
        self.kernel = FakeKernel()
        self.cpu = None                     # no tracer: events are best effort
        self.reset_reasons = []
        self.fail_reset = fail_reset

    def reset_device(self, reason, hung=False):
        self.reset_reasons.append(reason)
        if self.fail_reset:
            raise BootError("no device today")
        self.process = FakeProc()
        self.kernel = FakeKernel()


def test_two_missed_warn_five_missed_reset():
    s = FakeSystem()
    wd = W.Watchdog(s, interval_s=0.01, warn_after=2, reset_after=5)
    assert wd.check() is None                       # the first tick takes the baseline
    s.kernel.hb[:] += 1
    assert wd.check() is None                       # every worker beat
    s.kernel.hb[[0, 2]] += 1                        # worker 1 stops beating
    assert wd.check() is None                       # 1 missed
    s.kernel.hb[[0, 2]] += 1
    assert wd.check() == "warn"                     # 2 missed: one warning
    assert wd.c["warnings"] == 1 and "worker 1 missed 2" in wd.last_warning
    s.kernel.hb[[0, 2]] += 1
    assert wd.check() is None                       # 3: no second warning
    s.kernel.hb[[0, 2]] += 1
    assert wd.check() is None                       # 4
    s.kernel.hb[[0, 2]] += 1
    assert wd.check() == "reset"                    # 5: reset
    assert wd.c["resets"] == 1 and len(s.reset_reasons) == 1
    assert "GPU worker 1 missed 5 heartbeats" in wd.last_reset_reason
    st = wd.stats()
    assert st["warnings"] == 1 and st["resets"] == 1 and st["reset_after"] == 5
    # after a reset the new kernel's heartbeats are the new baseline
    assert wd.check() is None
    s.kernel.hb[:] += 1
    assert wd.check() is None and wd.c["resets"] == 1


def test_a_worker_that_beats_again_clears_the_count():
    s = FakeSystem()
    wd = W.Watchdog(s, interval_s=0.01, warn_after=2, reset_after=3)
    wd.check()
    for _ in range(10):                             # 2 missed, then it beats: never 3
        wd.check()
        wd.check()
        s.kernel.hb[:] += 1
    assert wd.c["resets"] == 0 and wd.c["warnings"] >= 1


def test_a_dead_device_process_is_reset_at_once():
    s = FakeSystem()
    wd = W.Watchdog(s, interval_s=0.01)
    wd.check()
    s.process.up = False
    s.process.exit_info = "KeyboardInterrupt()"
    assert wd.check() == "reset"
    assert wd.c["deaths"] == 1 and "died" in s.reset_reasons[0]


def test_a_failed_reset_is_counted_and_tried_again():
    s = FakeSystem(fail_reset=True)
    wd = W.Watchdog(s, interval_s=0.01, warn_after=1, reset_after=2)
    wd.check()
    wd.check()
    assert wd.check() == "reset_failed"
    assert wd.c["failed_resets"] == 1 and wd.c["resets"] == 0
    assert wd.events[-1][1] == "reset_failed" and "no device today" in wd.events[-1][2]
    for _ in range(3):
        wd.check()
    assert wd.c["failed_resets"] == 2                 # again at the next threshold


@pytest.mark.parametrize("cfg, what", [
    ({"interval_s": 0}, r"interval_s=0 must be a number of seconds between 0.001 and 3600"),
    ({"interval_s": "fast"}, r"interval_s='fast'"),
    ({"warn_after": 0}, r"warn_after=0 must be an int >= 1"),
    ({"reset_after": 2.5}, r"reset_after=2.5 must be an int >= 1"),
    ({"warn_after": 5, "reset_after": 5}, r"warn_after=5 must be less than reset_after=5"),
    ({"intervall": 1}, r"unknown option\(s\) \['intervall'\]; allowed: "),
    ({"enabled": "yes"}, r"enabled='yes' must be True or False"),
    ("often", r"config 'often' must be True or a dict"),
])
def test_bad_config_is_named(cfg, what):
    with pytest.raises(BootError, match=what):
        W.config(cfg)
    with pytest.raises(BootError, match=what):      # before anything boots
        ggmk.dual.boot(WW.modules(), device="cpu", types=WW.registry(), device_process=True,
                       watchdog=cfg)


def test_the_watchdog_needs_a_device_process():
    with pytest.raises(BootError, match="watchdog= needs device_process=True"):
        ggmk.dual.boot(WW.modules(), device="cpu", types=WW.registry(), watchdog=True,
                       device_process=False)
    assert W.config(True) == W.DEFAULTS
