"""Reference device workloads: shared by the tests, the acceptance files and the benchmark.

Each ``run_*`` function boots a :class:`DeviceKernel` on a target, drives it from the host and
returns a JSON-able summary. ``run(name, target, **kw)`` runs ``sim`` in a subprocess (the CUDA
simulator must be switched on before ``numba.cuda`` is first imported, which a test process
that may also use ``cpu`` or ``cuda`` cannot promise)::

    python -m ggmk.device.workloads mixed --target sim --kw '{"n": 300}'
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.device.host import DeviceKernel, SYS_ERROR, error_code
from ggmk.device.module import Module, func
from ggmk.task import OK

# ------------------------------------------------------------------------------------------
# "mixed": ten scalar handlers, one warp handler, one block handler, one spawner

SCALAR_TYPES = tuple(range(100, 110))
WARP_T, BLOCK_T, SPAWN_T = 110, 111, 50
OUT_BASE = 1000                       # a handler for type t answers the host with 1000 + t
MULT = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31)


@func
def ctx_word(ctx, task, own_type):
    """Pack what a handler sees of its context, for the host to check."""
    ok = 1
    if g.task_type(task) != own_type:
        ok = 0
    if g.worker_id(ctx) < 0 or g.tick(ctx) < 0:
        ok = 0
    pos = g.user_add(ctx, 0, 1)        # global execution order
    return (ok | (g.worker_id(ctx) << 1) | (g.tenant(task) << 8) | (g.priority(task) << 24)
            | (pos << 32))


def _scalar(k):
    t = SCALAR_TYPES[k]
    mult = MULT[k]

    def h(ctx, task):
        g.emit_host(ctx, OUT_BASE + t, g.meta0(task) * mult + t, ctx_word(ctx, task, t))
        return OK
    h.__name__ = f"scalar_{t}"
    return h


def mixed_module() -> Module:
    m = Module("mixed")
    for k in range(len(SCALAR_TYPES)):
        m.handler(SCALAR_TYPES[k])(_scalar(k))

    @m.handler(WARP_T, granularity="warp", shared_bytes=32 * 8, phases=2)
    def warp_sum(ctx, task, lane, nlanes, smem, phase):
        if phase == 0:
            smem[lane] = g.meta0(task) + lane
            return OK
        if lane == 0:
            s = 0
            for i in range(nlanes):
                s += smem[i]
            g.emit_host(ctx, OUT_BASE + WARP_T, s, ctx_word(ctx, task, WARP_T))
        return OK

    @m.handler(BLOCK_T, granularity="block", shared_bytes=1024 * 8, phases=2)
    def block_sum(ctx, task, lane, nlanes, smem, phase):
        if phase == 0:
            smem[lane] = g.meta0(task) * (lane + 1)
            return OK
        if lane == 0:
            s = 0
            for i in range(nlanes):
                s += smem[i]
            # the sum proves every lane of the block ran phase 0 before lane 0 ran phase 1
            g.emit_host(ctx, OUT_BASE + BLOCK_T, s, ctx_word(ctx, task, BLOCK_T))
        return OK

    @m.handler(SPAWN_T)
    def spawn(ctx, task):
        # meta0 children of cycling types, emitted from one task: they land in this worker's
        # local queue together, so the next batch is mixed and must be grouped by type
        n = g.meta0(task)
        for i in range(n):
            t = SCALAR_TYPES[i % 10]
            if i % 12 == 10:
                t = WARP_T
            elif i % 12 == 11:
                t = BLOCK_T
            g.emit(ctx, t, i, 0)
        return OK
    return m


def expected_mixed(types, meta0, nlanes):
    """What the host should get back for inputs (types, meta0)."""
    out = np.zeros(len(types), np.int64)
    for k, t in enumerate(SCALAR_TYPES):
        sel = types == t
        out[sel] = meta0[sel] * MULT[k] + t
    sel = types == WARP_T
    out[sel] = meta0[sel] * 32 + sum(range(32))
    sel = types == BLOCK_T
    out[sel] = meta0[sel] * (nlanes * (nlanes + 1) // 2)
    return out


def all_mixed_types():
    return np.array(SCALAR_TYPES + (WARP_T, BLOCK_T), np.int64)


def run_mixed(target="cpu", n=2000, seed=1, workers=2, threads=None, batch=None, **cfg):
    """n tasks of random types among 12 handlers (10 scalar, warp, block) pushed at a high rate;
    returns per-type counts/checksums and the checks' outcome."""
    rng = np.random.default_rng(seed)
    types = rng.choice(all_mixed_types(), n)
    meta0 = rng.integers(0, 1 << 20, n)
    tenant = rng.integers(0, 1000, n)
    prio = rng.integers(0, 4, n)
    recs = taskmod.make(n, type=types, meta0=meta0, tenant=tenant, priority=prio,
                        meta1=np.arange(n))
    kw = dict(cfg)
    if batch:
        kw["batch"] = batch
    k = DeviceKernel([mixed_module()], target=target, workers=workers, threads=threads, **kw)
    with k:
        t0 = time.monotonic()
        k.push_all(recs, timeout=120)
        out = k.pull_until(n, timeout=300)
        dt = time.monotonic() - t0
    m = k.metrics()
    return summarize_mixed(recs, out, k.config.threads, k.config.blocks) | {
        "seconds": dt, "metrics": m["global"], "per_type": {str(t): v for t, v in
                                                             m["types"].items()}}


def summarize_mixed(recs, out, nlanes, workers):
    """Match outputs to inputs (by type and the value each handler computes) and check them."""
    n = len(recs)
    res = {"n": n, "received": int(len(out))}
    itype = recs["type"].astype(np.int64)
    exp = expected_mixed(itype, recs["meta0"].astype(np.int64), nlanes)
    otype = out["type"].astype(np.int64) - OUT_BASE
    # multiset comparison per type: (type, value) pairs must match exactly
    a = np.sort(itype * (1 << 40) + exp)
    b = np.sort(otype * (1 << 40) + out["meta0"].astype(np.int64))
    res["right_handler_and_value"] = bool(len(a) == len(b) and np.array_equal(a, b))
    cw = out["meta1"].astype(np.int64)
    ok = cw & 1
    worker = (cw >> 1) & 0x7F
    res["context_ok"] = bool(np.all(ok == 1) and np.all(worker < workers))
    # tenant/priority travel in the header: compare multisets per type
    tp_in = np.sort(itype * (1 << 30) + recs["tenant"].astype(np.int64) * 4
                    + (recs["flags"].astype(np.int64) & 3))
    tp_out = np.sort(otype * (1 << 30) + ((cw >> 8) & 0xFFFF) * 4 + ((cw >> 24) & 3))
    res["tenant_priority_ok"] = bool(np.array_equal(tp_in, tp_out))
    counts, sums = {}, {}
    for t in np.unique(otype):
        sel = otype == t
        counts[str(int(t))] = int(sel.sum())
        sums[str(int(t))] = int(out["meta0"][sel].astype(np.int64).sum())
    res["counts"] = counts
    res["checksums"] = sums
    res["errors"] = int((out["channel"] == SYS_ERROR).sum())
    return res


def run_spawn(target="cpu", children=240, workers=1, **cfg):
    """One task spawns ``children`` tasks of 12 mixed types into its local queue; returns the
    execution order (by type) as seen by the handlers."""
    k = DeviceKernel([mixed_module()], target=target, workers=workers, **cfg)
    with k:
        k.push_all(taskmod.make(1, type=SPAWN_T, meta0=children))
        out = k.pull_until(children, timeout=300)
    m = k.metrics()
    cw = out["meta1"].astype(np.int64)
    order = np.argsort(cw >> 32, kind="stable")
    types = (out["type"].astype(np.int64) - OUT_BASE)[order]
    meta0 = out["meta0"].astype(np.int64)
    child_types = []
    for i in range(children):
        t = SCALAR_TYPES[i % 10]
        if i % 12 == 10:
            t = WARP_T
        elif i % 12 == 11:
            t = BLOCK_T
        child_types.append(t)
    child_types = np.array(child_types, np.int64)
    exp = expected_mixed(child_types, np.arange(children), k.config.threads)
    a = np.sort(child_types * (1 << 40) + exp)
    b = np.sort((out["type"].astype(np.int64) - OUT_BASE) * (1 << 40) + meta0)
    return {"order": types.tolist(), "values_ok": bool(np.array_equal(a, b)),
            "batch": k.config.batch, "metrics": m["global"]}


# ------------------------------------------------------------------------------------------
# "chain": handlers emitting follow-on tasks on the device (the resident-load workload)

CHAIN_TYPES = (1, 2, 3, 4)
CHAIN_DONE = 9


def chain_module(ntypes=4) -> Module:
    m = Module("chain")
    for t in CHAIN_TYPES[:ntypes]:
        nxt = CHAIN_TYPES[t % ntypes]

        def make(t=t, nxt=nxt):
            def h(ctx, task):
                left = g.meta0(task)
                if left > 0:
                    g.emit(ctx, nxt, left - 1, g.meta1(task) + t)
                else:
                    g.emit_host(ctx, CHAIN_DONE, g.meta1(task), t)
                return OK
            h.__name__ = f"chain_{t}"
            return h
        m.handler(t)(make())
    return m


def chain_expected(start_type, length, meta1=0):
    """meta1 after ``length`` hops starting at ``start_type`` (4-type cycle)."""
    s, t = meta1, start_type
    for _ in range(length):
        s += t
        t = CHAIN_TYPES[t % 4]
    return s


def run_resident(target="cpu", seconds=30.0, workers=2, chain=200, per_push=64,
                 window=1.0, **cfg):
    """Continuous mixed chain load for ``seconds``: every ``window`` the heartbeats of all
    workers must have advanced. Returns the observations."""
    k = DeviceKernel([chain_module()], target=target, workers=workers, **cfg)
    pushed = done = 0
    bad_results = 0
    stalls = []
    windows = 0
    hb_prev = None
    k.start()
    try:
        t0 = time.monotonic()
        t_win = t0 + window
        rng = np.random.default_rng(7)
        while time.monotonic() - t0 < seconds:
            if pushed - done < 4 * per_push:
                st = rng.choice(np.array(CHAIN_TYPES), per_push)
                k.push_all(taskmod.make(per_push, type=st, meta0=chain - 1, meta1=0))
                pushed += per_push
            out = k.pull()
            if len(out):
                done += len(out)
                bad_results += int((out["type"] != CHAIN_DONE).sum())
            now = time.monotonic()
            if now >= t_win:
                hb = k.heartbeats()
                if hb_prev is not None:
                    windows += 1
                    stalled = np.nonzero(hb <= hb_prev)[0].tolist()
                    if stalled:
                        stalls.append({"t": round(now - t0, 3), "workers": stalled})
                hb_prev = hb
                t_win = now + window
            else:
                time.sleep(0.0005)
        out = k.pull_until(pushed - done, timeout=60)
        done += len(out)
        bad_results += int((out["type"] != CHAIN_DONE).sum())
        elapsed = time.monotonic() - t0
    finally:
        k.stop()
    m = k.metrics()
    return {"seconds": elapsed, "pushed": pushed, "done": done, "bad_results": bad_results,
            "windows": windows, "stalls": stalls, "alive_after_stop": k.alive(),
            "exited": int(k._h["ctl"][32]), "dispatched": m["global"]["dispatched"],
            "tasks_run": sum(v["run"] for v in m["types"].values()),
            "heartbeats": k.heartbeats().tolist()}


# ------------------------------------------------------------------------------------------
# "aging": a hot type that floods (each task re-emits itself) and a few cold tasks

HOT_T, COLD_T, HOT_DONE, COLD_DONE = 20, 30, 21, 31


def aging_module() -> Module:
    m = Module("aging")

    @m.handler(HOT_T)
    def hot(ctx, task):
        g.user_add(ctx, 1, 1)                           # hot executions so far
        left = g.meta0(task)
        if left > 0:
            g.emit(ctx, HOT_T, left - 1, 0)
        else:
            g.emit_host(ctx, HOT_DONE, 0, 0)
        return OK

    @m.handler(COLD_T)
    def cold(ctx, task):
        g.emit_host(ctx, COLD_DONE, g.meta0(task), g.user_get(ctx, 1))
        return OK
    return m


def run_aging(target="cpu", hot=512, length=400, cold=8, workers=2, aging_interval=64, **cfg):
    """Returns, for each cold task, how many hot executions had happened when it ran."""
    k = DeviceKernel([aging_module()], target=target, workers=workers,
                     aging_interval=aging_interval, **cfg)
    with k:
        # one push: hot first, so every worker's local queue fills with the hot flood
        k.push_all(taskmod.make(hot, type=HOT_T, meta0=length))
        # wait until the flood is self-sustaining in the local queues, then add cold work
        t_end = time.monotonic() + 60
        while k.metrics()["global"]["gather_local"] < 4 * workers:
            if time.monotonic() > t_end:
                break
            time.sleep(0.001)
        k.push_all(taskmod.make(cold, type=COLD_T, meta0=np.arange(cold)))
        out = k.pull_until(hot + cold, timeout=600)
    m = k.metrics()
    cold_out = out[out["type"] == COLD_DONE]
    return {"total_hot": hot * (length + 1), "cold_seen_at": sorted(
        int(x) for x in cold_out["meta1"]), "cold_received": int(len(cold_out)),
        "hot_received": int((out["type"] == HOT_DONE).sum()),
        "aging_picks": m["global"]["aging_picks"], "bucket_mixed": m["global"]["bucket_mixed"],
        "gather_bucket": m["global"]["gather_bucket"]}


# ------------------------------------------------------------------------------------------

WORKLOADS = {"mixed": run_mixed, "spawn": run_spawn, "resident": run_resident,
             "aging": run_aging}


def run(name: str, target: str, timeout: float = 900, **kw) -> dict:
    """Run workload ``name`` on ``target``; ``sim`` runs in a subprocess with the simulator
    switched on."""
    if target != "sim":
        return WORKLOADS[name](target=target, **kw)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "ggmk.device.workloads", name, "--target", "sim",
                        "--kw", json.dumps(kw)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"sim workload {name} failed (rc {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(WORKLOADS))
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--kw", default="{}", help="JSON keyword arguments")
    a = ap.parse_args(argv)
    print(json.dumps(WORKLOADS[a.name](target=a.target, **json.loads(a.kw))))


if __name__ == "__main__":
    main()
