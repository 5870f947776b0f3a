"""The ``sim`` target against the CUDA simulator's own races (each check widens a race window in
numba-cuda's simulator so that it is hit on every run, then checks the target is immune).

* Shared arrays: the simulator looks a ``cuda.shared.array`` up in a dict and stores a new one
  on a miss, with no lock. Two lanes missing together each made an array; the loser kept a
  private "shared" array for the whole run (the target caches it per lane), so its smem writes
  never reached lane 0: wrong warp/block sums in the "mixed" workload (test_a05_sim failed
  once that way in a loaded full-suite run).
* Atomics: the simulator takes one lock per kind of atomic, so an add and a CAS on one word
  (a channel credit: taken by CAS, given back by add) could interleave and lose an update.

Both run in a subprocess: the simulator must be on before ``numba.cuda`` is imported.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from ggmk.task import HANDLER_EXCEPTION

SRC = str(Path(__file__).resolve().parents[2] / "src")
HERE = str(Path(__file__).resolve().parent)           # workloads.py

SHARED_RACE = r'''
import json, time
from numba.cuda.simulator import kernelapi as KA

class SlowMiss(dict):
    """A lookup that misses takes 5 ms: every lane of the first call misses together."""
    def get(self, key, default=None):
        v = super().get(key, default)
        if v is None:
            time.sleep(0.005)
        return v

_init = KA.FakeCUDAShared.__init__
def __init__(self, *a, **k):
    _init(self, *a, **k)
    self._allocations = SlowMiss()
KA.FakeCUDAShared.__init__ = __init__

import workloads as W
r = W.run_mixed("sim", n=48, seed=3, workers=1, threads=32, batch=64)
print(json.dumps({k: r[k] for k in ("received", "right_handler_and_value", "mismatch",
                                    "counts")}))
'''

ATOMIC_RACE = r'''
import json, threading, time, types
from numba.cuda.simulator import kernelapi as KA
from ggmk.device.targets import sim

ns = sim.namespace()
# outside a launch the simulator's numba.cuda has no `atomic`: give it the simulator's own (what
# a launch swaps in), which the target must not rely on for atomicity across kinds
ns["cuda"] = types.SimpleNamespace(atomic=KA.FakeCUDAAtomic())
exec(sim.PRIM_SRC, ns)

class Slow:
    """One word whose reads take 1 ms: a read-modify-write not under the writers' common lock
    loses updates."""
    def __init__(self):
        self.v = 0
    def __getitem__(self, i):
        v = self.v
        time.sleep(0.001)
        return v
    def __setitem__(self, i, v):
        self.v = v

arr = Slow()
add, cas, bmax = ns["atomic_add"], ns["atomic_cas"], ns["atomic_max"]

def adder():
    for _ in range(25):
        add(arr, 0, 1)

def casser():
    for _ in range(25):
        while True:
            cur = arr[0]
            if cas(arr, 0, cur, cur + 1) == cur:
                break

ts = [threading.Thread(target=f) for f in (adder, adder, casser, casser)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps({"total": arr.v, "max_old": int(bmax(arr, 0, 10 ** 6)), "after": arr.v}))
'''


HANDLER_FAULTS = r'''
import json, time
import numpy as np
import ggmk.device as gd
from ggmk import task as T
from ggmk.device import api as g
from ggmk.device.host import SYS_ERROR, error_code

m = gd.Module("simfault")

@m.handler(30)
def raiser(ctx, task):
    if g.meta0(task) == 1:
        raise ValueError("handler raised")
    g.emit_host(ctx, 31, g.meta0(task), 0)
    return 0

@m.handler(32, granularity="block")
def block_raiser(ctx, task, lane, nlanes, smem, phase):
    if lane == g.meta1(task):
        raise ValueError("one lane raised")
    if lane == 0:
        g.emit_host(ctx, 33, g.meta0(task), 0)
    return 0

@m.handler(34)
def burst(ctx, task):
    for i in range(g.meta0(task)):
        g.emit_host(ctx, 35, i, 0)
    return 0

k = gd.DeviceKernel([m], target="sim", workers=1, threads=32, batch=32, bucket_cap=64,
                    local_cap=64, overflow_cap=64, event_inbox_cap=64, rx_cap=64, tx_cap=8,
                    tx_spill_cap=8, event_cap=256, trace_cap=256, arena_bytes=1 << 22)
k.start(timeout=300)
k.push(T.make(3, type=30, meta0=np.array([0, 1, 2])))
k.push(T.make(2, type=32, meta0=np.array([0, 1]), meta1=np.array([99, 5])))
out = k.pull_until(6, timeout=120)
alive = k.alive()
k.push(T.make(1, type=34, meta0=12))          # 8 on the ring, 4 in the spill area
t_end = time.monotonic() + 120                # (its counters are published once idle)
while k.metrics()["types"][34]["ok"] == 0 and time.monotonic() < t_end:
    time.sleep(0.01)
k.stop(timeout=120)
spill = []
while k.tx_ready():
    spill += k.pull()["meta0"].tolist()
err = out[out["channel"] == SYS_ERROR]
ok = out[out["channel"] != SYS_ERROR]
print(json.dumps({"alive": alive,
                  "err": sorted(zip(err["type"].tolist(), err["meta0"].tolist(),
                                    error_code(err).tolist())),
                  "ok": sorted(zip(ok["type"].tolist(), ok["meta0"].tolist())),
                  "spill": spill, "tx_lost": k.metrics()["global"]["tx_lost"]}))
'''


def test_sim_a_raising_handler_fails_its_task_and_the_kernel_stops():
    """On sim a raising lane left the others waiting at the next barrier: the kernel hung,
    even on stop. Its exception now fails the task (HANDLER_EXCEPTION) and the lanes go on;
    a block task fails whichever lane raised. Records in the spill area at stop come back."""
    r = _run(HANDLER_FAULTS)
    assert r["alive"]
    assert r["err"] == [[30, 1, HANDLER_EXCEPTION], [32, 1, HANDLER_EXCEPTION]]
    assert r["ok"] == [[31, 0], [31, 2], [33, 0], [33, 1]]
    assert r["spill"] == list(range(12)) and r["tx_lost"] == 0


def _run(code):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([SRC, HERE, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_sim_shared_arrays_are_one_per_block_when_lanes_allocate_at_once():
    r = _run(SHARED_RACE)
    assert r["received"] == 48
    assert r["right_handler_and_value"], r["mismatch"]
    assert r["mismatch"] == {}
    # the warp and block handlers (the ones that read other lanes' smem) did run
    assert r["counts"].get("110", 0) > 0 and r["counts"].get("111", 0) > 0


def test_sim_atomics_of_different_kinds_on_one_word_are_atomic_together():
    r = _run(ATOMIC_RACE)
    assert r["total"] == 100          # 50 adds and 50 CAS increments, none lost
    assert r["max_old"] == 100 and r["after"] == 10 ** 6
