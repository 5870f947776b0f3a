"""The device kernel's retry limit and backoff (``DeviceConfig.max_retries``; kernel_src's
RETRY path). ``max_retries`` was never checked: "8", 2.5 or 70000 were compiled in (above
65535 the u16 retry counter wraps before it can pass the limit). And the backoff
``1 << (n - 1)`` overflowed its int64 from the 64th retry (1 << 63 is negative: due at once;
past that x86 masks the shift, 1, 2, 4 ... ticks again instead of the cap of 64, and a GPU
shifts to 0: no backoff at all).

The validation tests compile nothing; the others compile two kernels on the ``cpu`` target."""
import time

import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.core.faults import backoff_ticks
from ggmk.device import api as g
from ggmk.device.host import SYS_ERROR, error_code
from ggmk.device.layout import DeviceConfig
from ggmk.errors import BootError
from ggmk.task import RETRY, RETRY_EXHAUSTED

SPIN, SEEN = 240, 241
TOP = 0xFFFF

mod = gd.Module("retries")


@mod.handler(SPIN)
def always_retry(ctx, task):
    """RETRY every time; each run reports (its retry counter, the tick) to the host (with
    meta0 = 1 only the first run and the last 16: the 65535 case sends fewer records)."""
    n = (task[3] >> 48) & 0xFFFF          # _pad: the runtime's retry counter
    if g.meta0(task) == 0 or n == 0 or n >= 0xFFF0:
        g.emit_host(ctx, SEEN, n, g.tick(ctx))
    return RETRY


# -- validation (no compile) ---------------------------------------------------------------------
BAD = ["8", None, -1, 2.5, True, False, 0x10000, 1 << 20, float("nan"), np.float64(3.0)]


@pytest.mark.parametrize("bad", BAD)
def test_bad_max_retries_fail_validate_by_name(bad):
    with pytest.raises(BootError) as e:
        DeviceConfig(max_retries=bad).validate()
    assert f"max_retries={bad!r}: allowed an int 0..65535" in str(e.value)


@pytest.mark.parametrize("bad", [0x10000, -1, "8"])
def test_bad_max_retries_refused_before_any_compile(bad):
    with pytest.raises(BootError, match="max_retries"):
        gd.DeviceKernel([mod], target="cpu", workers=2, max_retries=bad)


@pytest.mark.parametrize("ok", [0, 1, 8, TOP, np.int64(3), np.uint16(TOP)])
def test_good_max_retries_pass_and_are_plain_ints(ok):
    cfg = DeviceConfig(max_retries=ok).validate()
    assert cfg.max_retries == int(ok) and type(cfg.max_retries) is int


# -- the kernel (cpu target) ---------------------------------------------------------------------
def _run(max_retries: int, meta0: int, expect: int, timeout: float, **config):
    """One SPIN task on a fresh kernel: (counter, tick) of each reported run, sys.error."""
    with gd.DeviceKernel([mod], target="cpu", workers=2, max_retries=max_retries,
                         **config) as k:
        assert k.push(taskmod.make(1, type=SPIN, meta0=meta0, meta1=5)) == 1
        out = k.pull_until(expect, timeout=timeout)
        time.sleep(0.2)                     # nothing more comes: no further run
        assert len(k.pull(1 << 10)) == 0
    seen = out[out["channel"] != SYS_ERROR]
    err = out[out["channel"] == SYS_ERROR]
    assert (seen["type"] == SEEN).all()
    return seen["meta0"].tolist(), seen["meta1"].tolist(), err


def test_always_retry_runs_max_retries_plus_one_times_with_a_capped_backoff():
    """70 retries (past the 64th, where the shift overflowed): 71 runs, the counter 0..70,
    each retry at least backoff_ticks(n) ticks after the run before (1, 2, 4 .. 64, 64 ..),
    then RETRY_EXHAUSTED on sys.error."""
    limit = 70
    counters, ticks, err = _run(limit, 0, limit + 2, 60, tick_ns=50_000)
    assert counters == list(range(limit + 1))
    gaps = np.diff(ticks).tolist()
    want = [backoff_ticks(n) for n in range(1, limit + 1)]
    assert want[-6:] == [64] * 6
    short = [(n, gap, w) for n, (gap, w) in enumerate(zip(gaps, want), 1) if gap < w]
    assert short == [], "(retry, ticks waited, backoff) that came early"
    assert len(err) == 1 and error_code(err).tolist() == [RETRY_EXHAUSTED]
    assert err["type"].tolist() == [SPIN] and err["meta1"].tolist() == [5]


def test_max_retries_65535_exhausts_after_the_65535th_retry():
    """At the counter's top: 65535 retries run (the counter reaches 65535, never wraps), then
    RETRY_EXHAUSTED. A 1 ns tick keeps the 64-tick backoffs short."""
    counters, _, err = _run(TOP, 1, 16 + 1 + 1, 240, tick_ns=1)
    assert counters == [0] + list(range(0xFFF0, TOP + 1))
    assert len(err) == 1 and error_code(err).tolist() == [RETRY_EXHAUSTED]
