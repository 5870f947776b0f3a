"""Benchmark: the persistent device kernel (GGMK/gpu). Prints one JSON line.

    python bench/gpu_kernel.py [--target auto|cpu|cuda] [--seconds 3] [--workers N]
                               [--host-threads N]

* device_chain_tasks_per_s: handlers emitting follow-on tasks on the device (4 types in a cycle,
  every task emits the next), counted from the kernel's own metrics; chain_tasks_per_gather:
  the mean batch a worker dispatched; on cpu chain_tasks_per_cpu_s: the same count per second
  of CPU time the kernel's host threads got (what a shared machine's load does not change).
* host_fed_tasks_per_s: batches of records pushed by the host through the rx ring to a handler
  that does nothing but count.
* roundtrip_p50_us / p99_us: one task host -> device -> host (push, handler emits to the host,
  pull), one at a time.
* on cuda, the same-run baseline launch_per_batch_tasks_per_s: one ordinary kernel launch per
  batch of 1024 tasks running the same handler arithmetic.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(_REPO, "src"))
sys.path.insert(0, os.path.join(_REPO, "tests", "device"))    # workloads.py: the test workloads

import ggmk.device as gd  # noqa: E402
from ggmk import task as taskmod  # noqa: E402
from ggmk.device import api as g  # noqa: E402
from ggmk.device.targets import get_target  # noqa: E402
from workloads import chain_module  # noqa: E402

SINK, ECHO, ECHO_BACK = 40, 41, 42

fed = gd.Module("fed")


@fed.handler(SINK)
def sink(ctx, task):
    g.metric_add(ctx, 0, 1)
    return 0


@fed.handler(ECHO)
def echo(ctx, task):
    g.emit_host(ctx, ECHO_BACK, g.meta0(task), 0)
    return 0


def wait_metric(k, fn, target, timeout):
    t_end = time.monotonic() + timeout
    while fn(k.metrics()) < target:
        if time.monotonic() > t_end:
            raise RuntimeError(f"timed out at {fn(k.metrics())}/{target}")
        time.sleep(0.0005)


def _thread_cpu_s(k) -> float:
    """CPU seconds the kernel's host threads have run (cpu target, Linux); 0 elsewhere."""
    tot = 0.0
    for tid in getattr(k._launch, "native_ids", ()):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        tot += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return tot


def bench_chain(target, seconds, workers, **cfg):
    k = gd.DeviceKernel([chain_module()], target=target, workers=workers, **cfg)
    with k:
        n = 64 * k.config.blocks
        k.push_all(taskmod.make(n, type=1 + np.arange(n) % 4, meta0=10_000_000))
        time.sleep(0.2)                                       # warm
        run = lambda m: sum(v["run"] for v in m["types"].values())  # noqa: E731
        m0, c0, t0 = k.metrics(), _thread_cpu_s(k), time.perf_counter()
        time.sleep(seconds)
        m1, c1, t1 = k.metrics(), _thread_cpu_s(k), time.perf_counter()
    tasks = run(m1) - run(m0)
    gathers = sum(m1["global"][g] - m0["global"][g]
                  for g in ("gather_local", "gather_bucket", "gather_overflow"))
    out = {"device_chain_tasks_per_s": round(tasks / (t1 - t0)),
           "chain_tasks_per_gather": round(tasks / max(gathers, 1), 1)}
    if c1 > c0:
        out["chain_tasks_per_cpu_s"] = round(tasks / (c1 - c0))
        out["chain_kernel_cpus"] = round((c1 - c0) / (t1 - t0), 2)
    return out


def bench_fed_and_roundtrip(target, seconds, workers, **cfg):
    k = gd.DeviceKernel([fed], target=target, workers=workers, **cfg)
    with k:
        batch = taskmod.make(1024, type=SINK)
        pushed = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            got = k.push(batch)
            pushed += got
            if got == 0:
                time.sleep(0)
        wait_metric(k, lambda m: m["user"][0], pushed, 120)
        fed_rate = pushed / (time.perf_counter() - t0)
        lat = []
        one = taskmod.make(1, type=ECHO)
        for i in range(300):
            t = time.perf_counter()
            k.push(one)
            while not len(k.pull(1)):
                pass
            lat.append((time.perf_counter() - t) * 1e6)
    lat = np.array(lat[20:])
    return fed_rate, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def bench_launch_per_batch(seconds):
    """cuda only: one ordinary launch per 1024-task batch, same arithmetic as the chain."""
    from numba import cuda

    @cuda.jit
    def step(recs, out):
        i = cuda.grid(1)
        if i < recs.shape[0]:
            out[i] = recs[i, 5] + (recs[i, 0] & 0xFFFFFFFF)

    recs = cuda.to_device(taskmod.make(1024, type=1).view(np.int64).reshape(1024, 6))
    out = cuda.device_array(1024, np.int64)
    step[4, 256](recs, out)
    cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step[4, 256](recs, out)
        cuda.synchronize()
        n += 1024
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="auto")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--host-threads", type=int, default=None,
                    help="cpu target: host threads running the worker blocks (default: the "
                         "target's, 2 on a machine with 2+ cores)")
    a = ap.parse_args()
    target = get_target(a.target).NAME
    cfg = {} if a.host_threads is None else {"host_threads": a.host_threads}
    res = {"bench": "gpu_kernel", "target": target, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    probe = gd.DeviceKernel([chain_module()], target=target, workers=a.workers, **cfg)
    res["workers"] = probe.config.blocks
    if "host_threads" in get_target(target).DEFAULTS:     # a target with host threads
        res["host_threads"] = probe.config.host_threads
    res.update(bench_chain(target, a.seconds, a.workers, **cfg))
    fed_rate, p50, p99 = bench_fed_and_roundtrip(target, a.seconds, a.workers, **cfg)
    res["host_fed_tasks_per_s"] = round(fed_rate)
    res["roundtrip_p50_us"] = round(p50, 1)
    res["roundtrip_p99_us"] = round(p99, 1)
    if target == "cuda":
        base = bench_launch_per_batch(a.seconds)
        res["launch_per_batch_tasks_per_s"] = round(base)
        res["host_fed_over_launch_per_batch"] = round(fed_rate / base, 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
