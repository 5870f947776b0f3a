"""CPU kernel dispatch benchmark: batch and per-task handler throughput, follow-on chains and
single-task round-trip latency on the ``threads`` HAL, with same-run peers (an asyncio.Queue
producer/consumer, ThreadPoolExecutor(2) submit+result, a plain ``dict[type](task)`` loop).
Prints one JSON line.

    .venv/bin/python bench/cpu_dispatch.py [--reps 3] [--max-batch 4096] [--no-trace]

Throughput figures are the best of ``--reps`` runs, for the kernel and the peers alike (the
machine is shared, so the best run is the least disturbed one). Every kernel case boots a fresh
``ggmk.boot([...], workers=2, hal="threads")`` and counts from the first submit until the system
is idle again (the host blocks in ``system.run()``, the kernel's own wait: woken by the worker
that finishes the last task, with a backstop re-check; ``--poll`` restores the old harness, a
host polling ``system.idle()`` with 0.2 ms sleeps: each poll takes the GIL from a worker).

The headline ratios pair figures measured side by side: the per-task chain and asyncio, and the
three round trips (kernel, ThreadPoolExecutor, wake-up floor), run alternately ``--rounds``
times, so a burst of load from other processes hits both sides of a ratio. On a shared machine
the wall-clock ratio still swings with the load; ``chain_per_task_cpu_vs_asyncio`` divides
tasks per CPU-second (``time.process_time``, all threads of the process) instead, which the
other processes disturb far less.

Cases:
  (a) batch      trivial ``batch=True`` handler, fed with ``submit_batch`` of 64 Ki records
  (b) per_task   trivial per-task handler, fed the same way
  (c) chain      handlers that emit their own follow-on until ``meta0`` reaches ``--chain-len``,
                 over ``--lanes`` independent lanes: batch form (``ctx.emit_batch``, the headline
                 ``chain_tasks_per_s``) and per-task form (``ctx.emit``); plus one lane of the
                 per-task form (a strictly sequential emit -> dispatch loop, ``--lane-len`` hops)
  (d) latency    submit one task, wait until its handler has run: ``system.submit_and_run``
                 on a default boot, where the waiting host runs the handler itself while a
                 worker is idle (caller runs: no wake-up; the headline ``latency_*``); the same
                 with ``host_helps=False`` (a worker is woken, then the host: two wake-ups,
                 ``latency_nohelp_*``); and ``submit_batch`` + the handler setting the host's
                 own ``threading.Event`` (``latency_event_*``: what a host that does not wait
                 in ggmk gets); a fourth form spins on a counter with ``time.sleep(0)``
  (e) wake-up floor  two threads handing one token back and forth through the primitive the
                 threads HAL parks on (a ``threading.Lock`` used as a binary semaphore): one
                 round trip = two OS wake-ups, the least a submit -> worker -> waiting host
                 round trip can cost (``wakeup_floor_us``, p50 of the round trip)

Targets (ratios of figures measured in the same run): per-task >= 5x asyncio's msgs/s, per-task
chain (1024 lanes) >= 2x asyncio, one-lane chain >= 1x asyncio, round trip p50 <= 30 us (or
<= 1.5x the wake-up floor where that floor is above 30 us) and no worse than the
ThreadPoolExecutor's, p99 <= 10x p50.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import ggmk
from ggmk import task as T

CHUNK = 1 << 16


POLL = False                 # --poll: the host polls with sleeps instead of system.run()


def wait_idle(system, timeout: float = 120.0) -> None:
    if not POLL:
        if not system.run(timeout=timeout):
            raise RuntimeError(f"kernel not idle after {timeout}s: {system.sched.stats()}")
        return
    end = time.monotonic() + timeout
    while not system.idle():
        if time.monotonic() > end:
            raise RuntimeError(f"kernel not idle after {timeout}s: {system.sched.stats()}")
        time.sleep(0.0002)


def pct(samples, q) -> float:
    return float(np.percentile(np.asarray(samples), q))


# -- kernel cases ---------------------------------------------------------------------------------

def kernel_feed(batch_handler: bool, n: int, reps: int, boot_kw: dict) -> float:
    """(a)/(b): n trivial tasks submitted in 64 Ki-record batches; tasks/s (best of reps)."""
    m = ggmk.Module("bench_feed")
    if batch_handler:
        @m.handler("FEED", batch=True)
        def feed(ctx, batch):
            return None
    else:
        @m.handler("FEED")
        def feed(ctx):
            return None
    best = 0.0
    with ggmk.boot([m], workers=2, **boot_kw) as system:
        tid = system.type_id("FEED")
        proto = T.make(CHUNK, type=tid)
        chunks = max(1, n // CHUNK)
        system.submit_batch(proto.copy())            # warm-up: ring growth, first dispatch
        wait_idle(system)
        for _ in range(reps):
            bufs = [proto.copy() for _ in range(chunks)]   # the enqueue core may rewrite seq
            t0 = time.perf_counter()
            for b in bufs:
                system.submit_batch(b)
            wait_idle(system)
            best = max(best, chunks * CHUNK / (time.perf_counter() - t0))
        assert system.stats()["types"]["FEED"]["ok"] == (reps * chunks + 1) * CHUNK
    return best


def kernel_chain(batch_form: bool, lanes: int, length: int, reps: int, boot_kw: dict,
                 cpu: list | None = None) -> float:
    """(c): ``lanes`` lanes each run ``length`` tasks, every task emitting the next; tasks/s.
    ``cpu``: a list that gets the best tasks per CPU-second (process time, all threads)."""
    m = ggmk.Module("bench_chain")
    if batch_form:
        @m.handler("CHAIN", batch=True)
        def chain(ctx, batch):
            m0 = batch.meta0
            nxt = m0[m0 < length]
            if len(nxt):
                ctx.emit_batch("CHAIN", meta0=nxt + 1)
    else:
        @m.handler("CHAIN")
        def chain(ctx):
            m0 = ctx.task.meta0
            if m0 < length:
                ctx.emit("CHAIN", meta0=m0 + 1)
    best = best_cpu = 0.0
    with ggmk.boot([m], workers=2, **boot_kw) as system:
        tid = system.type_id("CHAIN")
        for rep in range(reps + 1):                  # rep 0 is warm-up
            seeds = T.make(lanes, type=tid, meta0=1)
            c0 = time.process_time()
            t0 = time.perf_counter()
            system.submit_batch(seeds)
            wait_idle(system)
            dt = time.perf_counter() - t0
            dc = time.process_time() - c0
            if rep:
                best = max(best, lanes * length / dt)
                best_cpu = max(best_cpu, lanes * length / max(dc, 1e-9))
    if cpu is not None:
        cpu.append(best_cpu)
        ok = system.stats()["types"]["CHAIN"]["ok"]
        assert ok == (reps + 1) * lanes * length, (ok, lanes, length)
    return best


def kernel_latency(n: int, warmup: int, mode: str, boot_kw: dict,
                   wakes: list | None = None) -> list[float]:
    """(d): n round trips (us): submit one task, wait until its handler ran. ``wakes``: a list
    that gets (worker wake-ups, worker parks) per round trip, counted by the threads HAL."""
    m = ggmk.Module("bench_latency")
    done = threading.Event()
    count = [0]

    @m.handler("PING")
    def ping(ctx):
        count[0] += 1
        done.set()

    out = []
    with ggmk.boot([m], workers=2, **boot_kw) as system:
        tid = system.type_id("PING")
        rec = T.make(1, type=tid)
        bufs = [rec.copy() for _ in range(n + warmup)]
        clock = time.perf_counter_ns
        hal = system.hal
        w0, p0 = hal.wakes, hal.parks
        for b in bufs:
            if mode == "run":                        # submit_and_run (with host_helps the
                target = count[0] + 1                # host runs the handler itself)
                t0 = clock()
                if not system.submit_and_run(tid, timeout=10) or count[0] < target:
                    raise RuntimeError("PING handler did not run within 10 s")
            elif mode == "event":
                done.clear()
                t0 = clock()
                system.submit_batch(b)
                if not done.wait(10):
                    raise RuntimeError("PING handler did not run within 10 s")
            else:
                target = count[0] + 1
                t0 = clock()
                system.submit_batch(b)
                while count[0] < target:
                    time.sleep(0)                    # spin, but let the workers have the GIL
            out.append((clock() - t0) / 1e3)
        if wakes is not None:
            wakes.append(((hal.wakes - w0) / len(bufs), (hal.parks - p0) / len(bufs)))
        wait_idle(system)
    return out[warmup:]


# -- peers ----------------------------------------------------------------------------------------

def peer_asyncio(n: int, reps: int, cpu: list | None = None) -> float:
    """asyncio.Queue(maxsize=1024) producer -> consumer calling a trivial handler; msgs/s.
    ``cpu``: a list that gets the best msgs per CPU-second."""
    def handler(x):
        return None

    async def run() -> float:
        q: asyncio.Queue = asyncio.Queue(maxsize=1024)

        async def producer():
            for i in range(n):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while True:
                x = await q.get()
                if x is None:
                    return
                handler(x)

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(producer(), consumer())
        return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)

    runs = [asyncio.run(run()) for _ in range(reps)]
    if cpu is not None:
        cpu.append(max(c for _, c in runs))
    return max(w for w, _ in runs)


def peer_threadpool(n: int, reps: int) -> float:
    """ThreadPoolExecutor(2): submit n trivial calls, then collect every result; tasks/s."""
    def handler(x):
        return x

    best = 0.0
    with ThreadPoolExecutor(2) as ex:
        ex.submit(handler, 0).result()
        for _ in range(reps):
            t0 = time.perf_counter()
            futs = [ex.submit(handler, i) for i in range(n)]
            for f in futs:
                f.result()
            best = max(best, n / (time.perf_counter() - t0))
    return best


def peer_threadpool_latency(n: int, warmup: int) -> list[float]:
    """ThreadPoolExecutor(2): one submit(...).result() round trip at a time (us)."""
    def handler(x):
        return x

    out = []
    with ThreadPoolExecutor(2) as ex:
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            ex.submit(handler, i).result()
            out.append((time.perf_counter_ns() - t0) / 1e3)
    return out[warmup:]


def wakeup_floor(n: int, warmup: int) -> list[float]:
    """(e): round trips (us) of a token handed to a second thread and back through two
    ``threading.Lock`` semaphores (what the threads HAL parks a worker on): two wake-ups."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    stop = [False]

    def peer():
        while True:
            ping.acquire()
            if stop[0]:
                return
            pong.release()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n + warmup):
        t0 = clock()
        ping.release()
        pong.acquire()
        out.append((clock() - t0) / 1e3)
    stop[0] = True
    ping.release()
    t.join()
    return out[warmup:]


def peer_dict_dispatch(n: int, reps: int) -> float:
    """The floor: ``handlers[type](task)`` over a list of (type, task) tuples; dispatches/s."""
    def h_a(task):
        return None

    def h_b(task):
        return None

    handlers = {1: h_a, 2: h_b}
    tasks = [(1 + (i & 1), (i, 0, 0)) for i in range(n)]
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        for typ, task in tasks:
            handlers[typ](task)
        best = max(best, n / (time.perf_counter() - t0))
    return best


# -- main -----------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=4096,
                    help="boot(max_batch=...) for the throughput cases (kernel default: 256)")
    ap.add_argument("--batch-tasks", type=int, default=4 << 20)
    ap.add_argument("--per-task-tasks", type=int, default=1 << 19)
    ap.add_argument("--lanes", type=int, default=4096)
    ap.add_argument("--chain-len", type=int, default=100)
    ap.add_argument("--pt-lanes", type=int, default=1024, help="lanes of the per-task chain")
    ap.add_argument("--lane-len", type=int, default=20000, help="hops of the one-lane chain")
    ap.add_argument("--latency-n", type=int, default=3000)
    ap.add_argument("--no-trace", action="store_true", help="boot(trace=False) (default: on)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate rounds of the paired cases (chain vs asyncio, round trips)")
    ap.add_argument("--poll", action="store_true",
                    help="the host polls system.idle() with 0.2 ms sleeps (the old harness)")
    a = ap.parse_args(argv)
    global POLL
    POLL = a.poll

    trace = False if a.no_trace else None
    tp = {"max_batch": a.max_batch, "trace": trace}
    t_start = time.perf_counter()
    r: dict = {"bench": "cpu_dispatch", "python": platform.python_version(),
               "numpy": np.__version__, "cpus": os.cpu_count(),
               "loadavg_start": round(os.getloadavg()[0], 2), "max_batch": a.max_batch,
               "trace": not a.no_trace, "reps": a.reps, "rounds": a.rounds,
               "host_wait": "poll" if a.poll else "run"}

    r["batch_tasks_per_s"] = kernel_feed(True, a.batch_tasks, a.reps, tp)
    r["batch_tasks_per_s_max_batch_256"] = kernel_feed(True, a.batch_tasks // 2, a.reps,
                                                       {"max_batch": 256, "trace": trace})
    r["per_task_tasks_per_s"] = kernel_feed(False, a.per_task_tasks, a.reps, tp)
    r["chain_tasks_per_s"] = kernel_chain(True, a.lanes, a.chain_len, a.reps, tp)
    r["chain_lanes"], r["chain_len"] = a.lanes, a.chain_len
    # paired cases, alternated (see the module docstring): best throughput of each side,
    # round-trip percentiles over every round's samples
    pt, pt_cpu, one, aio, aio_cpu = [], [], [], [], []
    lat, tpl, wf, wk, lat_nohelp, lat_event = [], [], [], [], [], []
    per_round = max(1, a.latency_n // a.rounds)
    for _ in range(a.rounds):
        pt.append(kernel_chain(False, a.pt_lanes, a.chain_len, a.reps, tp, pt_cpu))
        one.append(kernel_chain(False, 1, a.lane_len, a.reps, {"trace": trace}))
        aio.append(peer_asyncio(1 << 19, a.reps, aio_cpu))
        lat += kernel_latency(per_round, 300, "run", {"trace": trace})
        lat_nohelp += kernel_latency(per_round, 300, "run", {"trace": trace, "host_helps": False})
        lat_event += kernel_latency(per_round, 300, "event", {"trace": trace}, wk)
        tpl += peer_threadpool_latency(per_round, 300)
        wf += wakeup_floor(per_round, 300)
    r["chain_per_task_tasks_per_s"] = max(pt)
    r["chain_per_task_lanes"] = a.pt_lanes
    r["chain_single_lane_tasks_per_s"] = max(one)
    r["chain_single_lane_len"] = a.lane_len
    r["chain_per_task_cpu_tasks_per_s"] = max(pt_cpu)
    r["latency_p50_us"], r["latency_p99_us"] = pct(lat, 50), pct(lat, 99)
    r["latency_worker_wakeups_per_rt"] = max(w for w, _ in wk)
    r["latency_worker_parks_per_rt"] = max(p for _, p in wk)
    r["latency_nohelp_p50_us"] = pct(lat_nohelp, 50)
    r["latency_nohelp_p99_us"] = pct(lat_nohelp, 99)
    r["latency_event_p50_us"], r["latency_event_p99_us"] = pct(lat_event, 50), pct(lat_event, 99)
    lat_spin = kernel_latency(a.latency_n, 300, "spin", {"trace": trace})
    r["latency_spin_p50_us"], r["latency_spin_p99_us"] = pct(lat_spin, 50), pct(lat_spin, 99)

    r["asyncio_msgs_per_s"] = max(aio)
    r["asyncio_cpu_msgs_per_s"] = max(aio_cpu)
    r["threadpool_tasks_per_s"] = peer_threadpool(1 << 17, a.reps)
    r["threadpool_latency_p50_us"], r["threadpool_latency_p99_us"] = pct(tpl, 50), pct(tpl, 99)
    r["dict_dispatch_per_s"] = peer_dict_dispatch(1 << 21, a.reps)
    r["wakeup_floor_us"], r["wakeup_floor_p99_us"] = pct(wf, 50), pct(wf, 99)

    r["per_task_vs_asyncio"] = r["per_task_tasks_per_s"] / r["asyncio_msgs_per_s"]
    r["per_task_vs_threadpool"] = r["per_task_tasks_per_s"] / r["threadpool_tasks_per_s"]
    r["per_task_vs_dict"] = r["per_task_tasks_per_s"] / r["dict_dispatch_per_s"]
    r["batch_vs_dict"] = r["batch_tasks_per_s"] / r["dict_dispatch_per_s"]
    r["chain_vs_asyncio"] = r["chain_tasks_per_s"] / r["asyncio_msgs_per_s"]
    r["chain_per_task_vs_asyncio"] = r["chain_per_task_tasks_per_s"] / r["asyncio_msgs_per_s"]
    r["chain_per_task_cpu_vs_asyncio"] = (r["chain_per_task_cpu_tasks_per_s"]
                                          / r["asyncio_cpu_msgs_per_s"])
    r["chain_single_lane_vs_asyncio"] = (r["chain_single_lane_tasks_per_s"]
                                         / r["asyncio_msgs_per_s"])
    r["latency_p50_vs_threadpool"] = r["latency_p50_us"] / r["threadpool_latency_p50_us"]
    r["latency_p50_vs_wakeup_floor"] = r["latency_p50_us"] / r["wakeup_floor_us"]
    r["latency_nohelp_p50_vs_wakeup_floor"] = r["latency_nohelp_p50_us"] / r["wakeup_floor_us"]
    r["latency_event_p50_vs_wakeup_floor"] = r["latency_event_p50_us"] / r["wakeup_floor_us"]
    r["latency_p99_over_p50"] = r["latency_p99_us"] / r["latency_p50_us"]
    r["targets_met"] = {
        "batch_ge_25M": r["batch_tasks_per_s"] >= 25e6,
        "per_task_ge_5x_asyncio": r["per_task_vs_asyncio"] >= 5.0,
        "chain_ge_2M": r["chain_tasks_per_s"] >= 2e6,
        "chain_per_task_ge_2x_asyncio": r["chain_per_task_vs_asyncio"] >= 2.0,
        "chain_single_lane_ge_1x_asyncio": r["chain_single_lane_vs_asyncio"] >= 1.0,
        # 30 us, or within 1.5x of two bare wake-ups where those alone cost more than 30 us
        "latency_p50_le_30us": (r["latency_p50_us"] <= 30.0 if r["wakeup_floor_us"] <= 30.0
                                else r["latency_p50_vs_wakeup_floor"] <= 1.5),
        "latency_p50_le_threadpool": r["latency_p50_vs_threadpool"] <= 1.0,
        "latency_p99_le_10x_p50": r["latency_p99_over_p50"] <= 10.0,
    }
    r["loadavg_end"] = round(os.getloadavg()[0], 2)
    r["wall_s"] = time.perf_counter() - t_start
    for k, v in r.items():
        if isinstance(v, float):
            r[k] = round(v, 3) if abs(v) < 1000 else round(v)
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
