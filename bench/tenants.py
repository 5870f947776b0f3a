"""Tenant scheduling benchmark (issue 6): an interactive tenant against a batch flood, under the
EEVDF+BORE tenant policy and under plain weighted round robin, in one run. Prints one JSON line.

    .venv/bin/python bench/tenants.py [--seconds 2] [--rounds 3] [--batch-us 250]
                                      [--max-batch 1] [--workers 2]

Workload (real threads HAL, equal weights):

* tenant 0, *interactive*: the host submits one 20 µs task every 1 ms; its latency is measured
  from the submit (stamped in ``meta1``) to the start of its handler, so it includes the wait for
  a worker to finish what it is running, not only the time in the ready queue.
* tenant 1, *batch*: a backlog of ``--batch-us`` tasks that never drains; its throughput is the
  number of batch tasks finished per second.

Handlers do real timed work: busy for their duration on the HAL clock, with ``time.sleep(0)`` on
every turn so the GIL is dropped as native work would, and two workers run in parallel.

Policies are compared on the same machine in alternating rounds (EEVDF, RR, EEVDF, RR, ...) of
``--seconds`` each, so a change in background load hits both alike; samples are pooled per policy.
Both run with their defaults (EEVDF slice 3 ms, RR quantum 3 ms of handler time at weight 1024).
The tenant-level preemption point is a batch: ``--max-batch`` (default 1 task = 250 µs) sets how
long a worker is committed to the flood before the policy gets to choose again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.tenants import make_policy

INTERACTIVE, BATCH = 0, 1
INTERACTIVE_US = 20
PERIOD_NS = 1_000_000


def _busy(clock, ns: int) -> None:
    end = clock() + ns
    while clock() < end:
        time.sleep(0)


def make_module(lat: list, done: list) -> Module:
    m = Module("tenantbench")

    @m.handler("INTERACTIVE", batch=True)
    def interactive(ctx, batch):
        clock = ctx.system.clock
        now = clock()
        lat.extend((now - batch.meta1.astype(np.int64)).tolist())
        _busy(clock, INTERACTIVE_US * 1000 * len(batch))

    @m.handler("BATCH", batch=True)
    def batch_work(ctx, batch):
        _busy(ctx.system.clock, int(batch.meta0.sum()) * 1000)
        with lock:
            done[0] += len(batch)

    lock = threading.Lock()
    return m


def one_round(policy: str, seconds: float, batch_us: int, max_batch: int, workers: int) -> dict:
    lat: list[int] = []
    done = [0]
    with boot([make_module(lat, done)], workers=workers, max_batch=max_batch,
              policy=make_policy(policy), tenants={INTERACTIVE: 0, BATCH: 0}) as s:
        n = int(seconds * workers * 1e6 / batch_us * 1.5) + 1000
        s.submit_batch(T.make(n, type=s.type_id("BATCH"), meta0=batch_us, tenant=BATCH))
        tid = s.type_id("INTERACTIVE")
        clock = s.clock
        t0 = clock()
        end = t0 + int(seconds * 1e9)
        nxt = t0 + PERIOD_NS
        sent = 0
        while True:
            now = clock()
            if now >= end:
                break
            if now < nxt:
                rem = nxt - now
                if rem > 200_000:
                    time.sleep((rem - 150_000) / 1e9)   # coarse sleep, then a short spin
                continue
            rec = T.make(1, type=tid, tenant=INTERACTIVE, meta0=INTERACTIVE_US, meta1=clock())
            s.submit_batch(rec)
            sent += 1
            nxt = max(nxt + PERIOD_NS, clock())       # a late host does not send a burst
        elapsed = clock() - t0
        finished = done[0]
        st = s.stats()["tenants"]
        # let the last interactive tasks finish (the flood is still queued; stop after them)
        s.hal.wait(lambda: len(lat) >= sent, timeout=5)
    if st[BATCH]["state"] != "active":
        raise RuntimeError(f"{policy}: the batch backlog ran dry; raise its size")
    return {"lat": lat, "sent": sent, "batch_done": finished, "elapsed_ns": elapsed,
            "queue_p99_ns": st[INTERACTIVE]["latency_p99_ns"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per policy, alternating")
    ap.add_argument("--batch-us", type=int, default=250, help="duration of one batch task")
    ap.add_argument("--max-batch", type=int, default=1, help="tasks per popped batch")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.rounds < 1 or a.batch_us < 1 or a.max_batch < 1 or a.workers < 1:
        ap.error("--seconds, --rounds, --batch-us, --max-batch and --workers must be positive")
    runs = {"eevdf": [], "rr": []}
    for _ in range(a.rounds):
        for pol in ("eevdf", "rr"):
            runs[pol].append(one_round(pol, a.seconds, a.batch_us, a.max_batch, a.workers))

    def pooled(pol):
        rs = runs[pol]
        lat = np.array([x for r in rs for x in r["lat"]], dtype=np.float64) / 1e3
        tput = sum(r["batch_done"] for r in rs) / (sum(r["elapsed_ns"] for r in rs) / 1e9)
        return lat, tput, rs

    ev_lat, ev_tput, ev_runs = pooled("eevdf")
    rr_lat, rr_tput, rr_runs = pooled("rr")
    out = {
        "bench": "tenants",
        "interactive_p50_us": round(float(np.percentile(ev_lat, 50)), 1),
        "interactive_p99_us": round(float(np.percentile(ev_lat, 99)), 1),
        "rr_interactive_p50_us": round(float(np.percentile(rr_lat, 50)), 1),
        "rr_interactive_p99_us": round(float(np.percentile(rr_lat, 99)), 1),
        "p99_improvement": round(float(np.percentile(rr_lat, 99) / np.percentile(ev_lat, 99)), 2),
        "batch_throughput_ratio": round(ev_tput / rr_tput, 3),
        "batch_tasks_per_s": round(ev_tput),
        "rr_batch_tasks_per_s": round(rr_tput),
        "interactive_tasks": [int(len(ev_lat)), int(len(rr_lat))],
        "interactive_queue_p99_us": round(max(r["queue_p99_ns"] for r in ev_runs) / 1e3, 1),
        "rr_interactive_queue_p99_us": round(max(r["queue_p99_ns"] for r in rr_runs) / 1e3, 1),
        "batch_us": a.batch_us, "max_batch": a.max_batch, "workers": a.workers,
        "seconds": a.seconds, "rounds": a.rounds, "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
