"""Tenant scheduling benchmark (issue 6): an interactive tenant against a batch flood, under the
EEVDF+BORE tenant policy and under plain weighted round robin, in one run. Prints one JSON line.

    .venv/bin/python bench/tenants.py [--seconds 0.5] [--rounds 12] [--batch-us 250]
                                      [--max-batch 1] [--workers 2] [--work native|wallspin]

Workload (real threads HAL, equal weights):

* tenant 0, *interactive*: the host submits one 20 µs task every 1 ms; its latency is measured
  from the submit (stamped in ``meta1``) to the start of its handler, so it includes the wait for
  a worker to finish what it is running, not only the time in the ready queue.
* tenant 1, *batch*: a backlog of ``--batch-us`` tasks that never drains; its throughput is the
  number of batch tasks finished per second.

Handlers do real CPU work (``--work native``, the default): a loop compiled with Numba that runs
without the GIL, as native handler code would, calibrated at start so that a task takes its
nominal duration on an idle core. So two workers really run in parallel, and the CPU time the
kernel bills each tenant (the worker thread's CPU clock) is the work done, whatever the load.
``--work wallspin`` is the earlier model: spin on the HAL clock for the duration with
``time.sleep(0)`` on every turn. Its CPU time is mostly GIL hand-offs (~20% of the wall time on
a 2-core box), so under CPU billing it under-states the work and both policies see tenants
running 5x more tasks per slice or quantum than nominal.

Policies are compared on the same machine in alternating rounds (EEVDF, RR, RR, EEVDF, ...) of
``--seconds`` each, so a change in background load hits both alike; samples are pooled per policy.
Short rounds (0.5 s x 12 by default) interleave finely: on a shared box the load comes in bursts
of seconds, and with 2 s rounds one policy's rounds could catch a burst the other's missed (the
batch throughput ratio of single 2 s round pairs ranged 0.67-2.9 under a load of 3).
Both run with their defaults (EEVDF slice 3 ms and min slice 100 µs, i.e. a wake lag of -50 µs;
RR quantum 3 ms; all in handler CPU time at weight 1024). The headline figures pool each
policy's samples; ``p99_improvement_by_round`` and its median pair adjacent rounds.
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


def wallspin(ns: int) -> None:
    """Spin ``ns`` on the threads HAL's clock, dropping the GIL on every turn."""
    clock = time.perf_counter_ns
    end = clock() + ns
    while clock() < end:
        time.sleep(0)


class NativeWork:
    """``ns`` of CPU work in a Numba loop that releases the GIL (an xorshift chain the compiler
    cannot shorten), at a rate calibrated once on this machine."""

    def __init__(self) -> None:
        import numba

        @numba.njit(nogil=True, cache=False)
        def spin(n, x):
            x |= 1
            for _ in range(n):
                x ^= (x << 13) & 0xFFFFFFFFFFFF
                x ^= x >> 7
                x ^= (x << 17) & 0xFFFFFFFFFFFF
            return x

        spin(10, 1)                                   # compile
        n = 200_000
        best = min(self._time(spin, n) for _ in range(30))   # the least-disturbed run
        self.spin = spin
        self.per_ns = n / best
        self.sink = 0

    @staticmethod
    def _time(spin, n: int) -> int:
        t = time.perf_counter_ns()
        spin(n, 7)
        return max(time.perf_counter_ns() - t, 1)

    def __call__(self, ns: int) -> None:
        self.sink ^= self.spin(int(ns * self.per_ns), ns)


def make_module(lat: list, done: list, work) -> Module:
    m = Module("tenantbench")

    @m.handler("INTERACTIVE", batch=True)
    def interactive(ctx, batch):
        now = ctx.system.clock()
        lat.extend((now - batch.meta1.astype(np.int64)).tolist())
        work(INTERACTIVE_US * 1000 * len(batch))

    @m.handler("BATCH", batch=True)
    def batch_work(ctx, batch):
        work(int(batch.meta0.sum()) * 1000)
        with lock:
            done[0] += len(batch)

    lock = threading.Lock()
    return m


def one_round(policy: str, seconds: float, batch_us: int, max_batch: int, workers: int,
              work, policy_kw: dict | None = None) -> dict:
    lat: list[int] = []
    done = [0]
    with boot([make_module(lat, done, work)], workers=workers, max_batch=max_batch,
              policy=make_policy(policy, **(policy_kw or {})),
              tenants={INTERACTIVE: 0, BATCH: 0}) as s:
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
                # coarse sleep, then a short spin that still drops the GIL on every turn, so
                # the host does not hold up the workers' own Python (pop, dispatch, account)
                time.sleep((rem - 150_000) / 1e9 if rem > 200_000 else 0)
                continue
            rec = T.make(1, type=tid, tenant=INTERACTIVE, meta0=INTERACTIVE_US, meta1=clock())
            s.submit_batch(rec)
            sent += 1
            nxt += PERIOD_NS
            if nxt <= clock():
                # the host was held up a whole period: no catch-up burst (it would queue a
                # task behind another and time the wait for the first), start afresh
                nxt = clock() + PERIOD_NS
        elapsed = clock() - t0
        finished = done[0]
        st = s.stats()["tenants"]
        # let the last interactive tasks finish (the flood is still queued; stop after them)
        s.hal.wait(lambda: len(lat) >= sent, timeout=5)
    if st[BATCH]["state"] != "active":
        raise RuntimeError(f"{policy}: the batch backlog ran dry; raise its size")
    return {"lat": lat, "sent": sent, "batch_done": finished, "elapsed_ns": elapsed,
            "queue_p99_ns": st[INTERACTIVE]["latency_p99_ns"],
            "batch_billed_ns": st[BATCH]["handler_time_ns"], "batch_billed_tasks": st[BATCH]["tasks"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    ap.add_argument("--rounds", type=int, default=12, help="rounds per policy, alternating")
    ap.add_argument("--batch-us", type=int, default=250, help="duration of one batch task")
    ap.add_argument("--max-batch", type=int, default=1, help="tasks per popped batch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", choices=("native", "wallspin"), default="native",
                    help="what a handler does for its duration (see the module docstring)")
    ap.add_argument("--min-slice-us", type=float, default=None,
                    help="EEVDF min_slice_us (wake lag -min_slice/2); default: the policy's")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.rounds < 1 or a.batch_us < 1 or a.max_batch < 1 or a.workers < 1:
        ap.error("--seconds, --rounds, --batch-us, --max-batch and --workers must be positive")
    work = NativeWork() if a.work == "native" else wallspin
    runs = {"eevdf": [], "rr": []}
    for i in range(a.rounds):
        # ABBA order (EEVDF, RR, RR, EEVDF, ...): a drift in load within a pair of rounds
        # does not always favour the policy that runs first
        for pol in (("eevdf", "rr") if i % 2 == 0 else ("rr", "eevdf")):
            kw = ({"min_slice_us": a.min_slice_us}
                  if pol == "eevdf" and a.min_slice_us is not None else None)
            runs[pol].append(one_round(pol, a.seconds, a.batch_us, a.max_batch, a.workers,
                                       work, kw))

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
        # the same two figures per pair of adjacent rounds (EEVDF round i, RR round i): how
        # much of the spread is the machine's load from one 2 s window to the next
        "p99_improvement_by_round": [
            round(float(np.percentile(r["lat"], 99) / np.percentile(e["lat"], 99)), 2)
            for e, r in zip(ev_runs, rr_runs)],
        "p99_improvement_median_round": None,      # filled below
        "throughput_ratio_by_round": [
            round((e["batch_done"] / e["elapsed_ns"]) / (r["batch_done"] / r["elapsed_ns"]), 3)
            for e, r in zip(ev_runs, rr_runs)],
        "batch_tasks_per_s": round(ev_tput),
        "rr_batch_tasks_per_s": round(rr_tput),
        "interactive_tasks": [int(len(ev_lat)), int(len(rr_lat))],
        "interactive_queue_p99_us": round(max(r["queue_p99_ns"] for r in ev_runs) / 1e3, 1),
        "rr_interactive_queue_p99_us": round(max(r["queue_p99_ns"] for r in rr_runs) / 1e3, 1),
        # CPU time billed per batch task (both policies): the nominal --batch-us when the work
        # is native; far less with wallspin
        "batch_billed_us_per_task": round(
            sum(r["batch_billed_ns"] for r in ev_runs + rr_runs)
            / max(1, sum(r["batch_billed_tasks"] for r in ev_runs + rr_runs)) / 1e3, 1),
        "work": a.work,
        "eevdf_params": make_policy("eevdf", **({} if a.min_slice_us is None
                                                else {"min_slice_us": a.min_slice_us})).params,
        "batch_us": a.batch_us, "max_batch": a.max_batch, "workers": a.workers,
        "seconds": a.seconds, "rounds": a.rounds, "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    # a paired, stall-robust companion to the pooled figure: a few rounds that catch the OS
    # descheduling the process for ms set the pooled p99 of whichever policy they fall on
    out["p99_improvement_median_round"] = round(float(np.median(out["p99_improvement_by_round"])), 2)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
