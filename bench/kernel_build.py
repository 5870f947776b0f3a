"""Benchmark: a cold GPU-kernel build on the ``cpu`` target. Prints one JSON line::

    .venv/bin/python bench/kernel_build.py [--rounds 2]

What a module author waits for after changing a device handler, and what the test suite pays
per new module set: ``DeviceKernel.start()`` of the standard kv module plus a small custom
module, from an empty kernel cache (a fresh ``GGMK_CACHE_DIR``, in a subprocess), for

* ``ggmk``: the target as it is (kernel helpers compiled once per argument type);
* ``numba_default``: the same kernel with the helpers compiled the way ``numba.njit`` does by
  default, once per distinct constant argument (the peer: what a plain Numba port gets).

Alternating rounds (medians), so a change in the machine's load hits both; ``specializations``
counts the compiled versions of the kernel's helpers and handlers; ``build_speedup`` is
numba_default / ggmk.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, sys, time
import numba
from ggmk.device.targets import cpu
if sys.argv[1] == "numba_default":
    cpu.device_fn = lambda fn, inline=False: numba.njit(
        fn, **(dict(inline="always") if inline else {}), **cpu._DEV_OPTS)
    cpu.handler_fn = lambda fn, noinline=False: numba.njit(fn, **cpu._DEV_OPTS)
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.modules import kv
m = gd.Module("bench_build")

@m.handler(40)
def step(ctx, task):
    if g.meta1(task) > 0:
        g.emit(ctx, 40, g.meta0(task) + 1, g.meta1(task) - 1)
    else:
        g.emit_host(ctx, 41, g.meta0(task), 0)
    return 0

k = gd.DeviceKernel([kv.device_module(capacity=1024), m], target="cpu")
t0 = time.perf_counter()
k.start()
dt = time.perf_counter() - t0
n = 0
seen = set()
for mm in [m for name, m in sys.modules.items() if name.startswith("ggmk_kernel_cpu_")]:
    for v in vars(mm).values():
        if isinstance(v, numba.core.dispatcher.Dispatcher) and id(v) not in seen:
            seen.add(id(v))
            n += len(v.overloads)
k.stop()
print(json.dumps({"s": dt, "specializations": n}))
'''


def one(variant: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ggmk-bench-build-") as d:
        env = dict(os.environ, GGMK_CACHE_DIR=d, NUMBA_CACHE_DIR=os.path.join(d, "numba"),
                   PYTHONPATH=os.path.join(ROOT, "src"))
        r = subprocess.run([sys.executable, "-c", CHILD, variant], env=env, capture_output=True,
                           text=True, timeout=1800)
        if r.returncode:
            raise SystemExit(f"{variant}: build failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    res = {"ggmk": [], "numba_default": []}
    for _ in range(a.rounds):
        for v in res:
            res[v].append(one(v))
    out = {"bench": "kernel_build", "target": "cpu", "loadavg_1m": round(os.getloadavg()[0], 2)}
    for v, rs in res.items():
        out[f"{v}_cold_build_s"] = round(float(np.median([r["s"] for r in rs])), 1)
        out[f"{v}_specializations"] = rs[0]["specializations"]
    out["build_speedup"] = round(out["numba_default_cold_build_s"] / out["ggmk_cold_build_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
