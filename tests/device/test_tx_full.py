"""Records for the host are never lost when the device -> host ring is full (``g.emit_host``
results and sys.error dead letters alike): they wait in the ring's spill area in device
memory, and while that is full too their producers are held back until the host pulls.

A tiny tx ring (``tx_cap``) and spill area (``tx_spill_cap``); 100K records (CI size) on
``cpu``, a few hundred on ``sim``; counted by id (meta0): every one exactly once."""
import time

import pytest

import ggmk.device as gd
from ggmk import task as taskmod
import workloads as W
from ggmk.task import CHAN_FULL

CPU = dict(n=100_000, spawners=20, per_spawn=1000, tx_cap=64, tx_spill_cap=1024,
           workers=2, timeout=600)
SIM = dict(n=600, spawners=2, per_spawn=100, tx_cap=8, tx_spill_cap=16, workers=2,
           threads=32, batch=32, timeout=300)


def _check(r, n, held):
    assert r["push_errors"] == []
    assert r["pulled"] == n and r["extra"] == 0 and r["bad_records"] == 0
    assert r["missing"] == 0 and r["duplicates"] == 0      # every id exactly once
    assert r["errors_right"]                               # the failures came as sys.error
    assert r["tx_lost"] == 0 and r["to_host"] == n
    assert r["tx_full"] > 0                 # the ring was full: records did use the spill
    if held:
        assert r["held_seen"] > 0 and r["tx_held"] > 0     # ... and producers were held back


@pytest.mark.parametrize("hold", [True, False], ids=["host-not-pulling", "host-pulling"])
def test_tx_full_cpu_loses_nothing(hold):
    _check(W.run("txfull", "cpu", hold=hold, **CPU), CPU["n"], hold)


@pytest.mark.parametrize("hold", [True, False], ids=["host-not-pulling", "host-pulling"])
def test_tx_full_sim_loses_nothing(hold):
    _check(W.run("txfull", "sim", hold=hold, **SIM), SIM["n"], hold)


@pytest.mark.cuda
def test_tx_full_cuda_loses_nothing():
    _check(W.run("txfull", "cuda", hold=True, **dict(CPU, workers=4)), CPU["n"], True)


def test_stop_while_held_back_returns_and_counts_what_was_given_up():
    """A producer held back (ring and spill full) must not keep the kernel from stopping: it
    gives its record up when the stop flag rises, and ``tx_lost`` says so."""
    k = gd.DeviceKernel([W.txfull_module()], target="cpu", workers=1, tx_cap=8,
                        tx_spill_cap=8)
    k.start()
    k.push(taskmod.make(1, type=W.TX_SPAWN_T, meta0=0, meta1=100))
    t_end = time.monotonic() + 120
    while k.tx_held() == 0:
        assert time.monotonic() < t_end, "no producer held back"
        time.sleep(0.001)
    k.stop(timeout=60)
    m = k.metrics()["global"]
    assert not k.alive()
    assert m["tx_lost"] >= 1 and m["tx_held"] >= 1
    # what was not given up was on the ring or in the spill area: it all comes back, in
    # order (the ring's 8, then the spill area's 8), and with what was given up it is all
    out = _pull_all(k)
    assert out["meta0"].tolist() == list(range(16))
    assert len(out) + m["tx_lost"] == 100 and m["to_host"] == len(out)
    assert CHAN_FULL < 0


def _pull_all(k):
    parts = []
    while k.tx_ready():
        parts.append(k.pull())
    return taskmod.concat(parts)


def test_stop_delivers_what_the_spill_area_still_holds(wait_until):
    """Records accepted into the spill area (emit_host returned OK) while the host did not
    pull are moved out of device memory when the kernel stops: pull returns them after the
    ring's, in order, none lost and tx_lost 0."""
    k = gd.DeviceKernel([W.txfull_module()], target="cpu", workers=1, tx_cap=8,
                        tx_spill_cap=8)                 # the kernel of the test above
    k.start()
    k.push(taskmod.make(1, type=W.TX_SPAWN_T, meta0=0, meta1=13))
    # (its counters are published once the worker is idle)
    assert wait_until(lambda: k.metrics()["types"][W.TX_SPAWN_T]["ok"] == 1, 120)
    k.stop(timeout=60)
    m = k.metrics()["global"]
    assert m["to_host"] == 13 and m["tx_full"] == 5 and m["tx_lost"] == 0
    assert k.pull(3)["meta0"].tolist() == [0, 1, 2]
    assert _pull_all(k)["meta0"].tolist() == list(range(3, 13))
    assert not k.tx_ready() and len(k.pull()) == 0
