"""Benchmark: the persistent device kernel (GGMK/gpu). Prints one JSON line.

    python bench/gpu_kernel.py [--target auto|cpu|cuda] [--seconds 3]

* device_chain_tasks_per_s: handlers emitting follow-on tasks on the device (4 types in a cycle,
  every task emits the next), counted from the kernel's own metrics.
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import ggmk.device as gd  # noqa: E402
from ggmk import task as taskmod  # noqa: E402
from ggmk.device import api as g  # noqa: E402
from ggmk.device.host import resolve_target  # noqa: E402
from ggmk.device.workloads import CHAIN_DONE, chain_module  # noqa: E402

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


def bench_chain(target, seconds, workers):
    k = gd.DeviceKernel([chain_module()], target=target, workers=workers)
    with k:
        n = 64 * k.config.blocks
        k.push_all(taskmod.make(n, type=1 + np.arange(n) % 4, meta0=10_000_000))
        time.sleep(0.2)                                       # warm
        run = lambda m: sum(v["run"] for v in m["types"].values())  # noqa: E731
        r0, t0 = run(k.metrics()), time.perf_counter()
        time.sleep(seconds)
        r1, t1 = run(k.metrics()), time.perf_counter()
    return (r1 - r0) / (t1 - t0)


def bench_fed_and_roundtrip(target, seconds, workers):
    k = gd.DeviceKernel([fed], target=target, workers=workers)
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
    a = ap.parse_args()
    target = resolve_target(a.target)
    res = {"bench": "gpu_kernel", "target": target, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    res["device_chain_tasks_per_s"] = round(bench_chain(target, a.seconds, a.workers))
    fed_rate, p50, p99 = bench_fed_and_roundtrip(target, a.seconds, a.workers)
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
