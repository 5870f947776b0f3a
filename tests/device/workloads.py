"""Reference device workloads: shared by the tests, the acceptance files and the benchmark
(test and benchmark scaffolding: not part of the installed package).

Importable as ``workloads`` with this directory (``tests/device``) on ``sys.path``: pytest puts
it there for the tests in it (and ``conftest.py`` here makes sure); a benchmark or a
subprocess adds it itself.

Each ``run_*`` function boots a :class:`DeviceKernel` on a target, drives it from the host and
returns a JSON-able summary. ``run(name, target, **kw)`` runs a target that needs a process of
its own (``Target.PROCESS_ENV``: ``sim``, whose CUDA simulator must be switched on before
``numba.cuda`` is first imported, which a test process that may also use ``cpu`` or ``cuda``
cannot promise) in a subprocess::

    PYTHONPATH=src:tests/device python -m workloads mixed --target sim --kw '{"n": 300}'
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
from ggmk.device.targets import get_target, option
from ggmk.task import OK

HERE = os.path.dirname(os.path.abspath(__file__))                    # tests/device
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")    # the package's source

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


def _type_name(t):
    return {WARP_T: "WARP_T", BLOCK_T: "BLOCK_T", SPAWN_T: "SPAWN_T"}.get(t, str(t))


def mixed_mismatch(itype, exp, otype, oval, first=8):
    """The (type, value) pairs expected but not received and received but not expected (as
    multisets; the first few of each, type names for the warp/block handlers), for a failure
    message that says which handler went wrong: {} when they match."""
    a = np.stack([itype, exp], 1)
    b = np.stack([otype, oval], 1)
    ua, ca = np.unique(a, axis=0, return_counts=True) if len(a) else (a, np.zeros(0, int))
    ub, cb = np.unique(b, axis=0, return_counts=True) if len(b) else (b, np.zeros(0, int))
    have = {(int(t), int(v)): int(c) for (t, v), c in zip(ub, cb)}
    want = {(int(t), int(v)): int(c) for (t, v), c in zip(ua, ca)}
    missing = [[_type_name(t), v] for (t, v), c in want.items() for _ in
               range(c - have.get((t, v), 0))]
    extra = [[_type_name(t), v] for (t, v), c in have.items() for _ in
             range(c - want.get((t, v), 0))]
    if not missing and not extra:
        return {}
    return {"missing": missing[:first], "n_missing": len(missing),
            "extra": extra[:first], "n_extra": len(extra)}


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
    res["mismatch"] = mixed_mismatch(itype, exp, otype, out["meta0"].astype(np.int64))
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
        # hot executions already done when the cold work arrives (published every few loops,
        # so a lower bound): on a busy host much of the flood may run before this thread wakes
        hot_at_push = k.metrics()["types"][HOT_T]["run"]
        k.push_all(taskmod.make(cold, type=COLD_T, meta0=np.arange(cold)))
        out = k.pull_until(hot + cold, timeout=600)
    m = k.metrics()
    cold_out = out[out["type"] == COLD_DONE]
    return {"total_hot": hot * (length + 1), "hot_at_push": int(hot_at_push),
            "cold_seen_at": sorted(int(x) for x in cold_out["meta1"]),
            "cold_received": int(len(cold_out)),
            "hot_received": int((out["type"] == HOT_DONE).sum()),
            "aging_picks": m["global"]["aging_picks"],
            "bucket_mixed": m["global"]["bucket_mixed"],
            "gather_bucket": m["global"]["gather_bucket"]}


# ------------------------------------------------------------------------------------------
# "channels": device channels (P2P, fan-out with payloads, lossless backpressure, lossy
# overflow, the priority-0 reserve, no subscriber, unknown id), several scenarios per boot

PROD = 40                              # the producer: meta1 = scenario << 32 | end
C_FAN = (43, 44, 45)                   # subscribers of t.fan; 43 also of the P2P channels
MSG_T = 30                             # the message type of every test channel
SC_FIFO, SC_FAN, SC_LL, SC_LOSSY, SC_PRIO, SC_MISC = range(6)
O_CHAN = 900                           # a subscriber answers type 900 + 10 * chan + k
O_LOSSY_REFUSED, O_PRIO, O_MISC = 990, 991, 992
CHAN_CAPS = {"t.p2p": 256, "t.fan": 64, "t.ll": 8, "t.lossy": 16, "t.prio": 20, "t.none": 8}


def channels_modules() -> list:
    """A producer module declaring six channels and a consumer module subscribing to them
    (four handlers in all: one compile stays short)."""
    from ggmk.device.module import chan
    from ggmk.task import CHAN_FULL, RETRY, YIELD
    src = Module("chsrc")
    P2P = src.channel("t.p2p", MSG_T, "p2p", "lossless", CHAN_CAPS["t.p2p"])
    FAN = src.channel("t.fan", MSG_T, "fanout", "lossless", CHAN_CAPS["t.fan"])
    LL = src.channel("t.ll", MSG_T, "p2p", "lossless", CHAN_CAPS["t.ll"])
    LOSSY = src.channel("t.lossy", MSG_T, "p2p", "lossy", CHAN_CAPS["t.lossy"])
    PRIO = src.channel("t.prio", MSG_T, "p2p", "lossless", CHAN_CAPS["t.prio"])
    src.channel("t.none", MSG_T, "fanout", "lossy", CHAN_CAPS["t.none"])
    NONE = chan("t.none")

    @src.handler(PROD, max_yields=65000)
    def produce(ctx, task):
        sc = g.meta1(task) >> 32
        end = g.meta1(task) & 0xFFFFFFFF
        i = g.meta0(task)
        if sc == SC_FIFO or sc == SC_LL:
            # emit i .. end-1 in order; on CHAN_FULL continue there later (lossless: nothing
            # refused is lost, the producer retries it)
            c = P2P
            if sc == SC_LL:
                c = LL
            while i < end:
                if g.emit_chan(ctx, c, i, 0) == CHAN_FULL:
                    g.metric_add(ctx, sc, 1)          # refusals the producer saw
                    return g.yield_at(task, i)
                i += 1
        elif sc == SC_FAN:
            while i < end:
                p = g.alloc(ctx, 8)
                if p == 0:
                    return g.yield_at(task, i)
                g.store_i64(ctx, p, i * 7 + 1)
                if g.emit_chan_full(ctx, FAN, i, 0, p, 8, -1) == CHAN_FULL:
                    g.release(ctx, p)                  # refused: still ours
                    return g.yield_at(task, i)
                i += 1
        elif sc == SC_LOSSY:
            bad = 0
            while i < end:
                if g.emit_chan(ctx, LOSSY, i, 0) != OK:
                    bad += 1                          # a lossy emit never refuses
                i += 1
            g.emit_host(ctx, O_LOSSY_REFUSED, bad, 0)
        elif sc == SC_PRIO:
            # the task has priority != 0: its messages stop at capacity - reserve; priority-0
            # messages may then use the reserve
            lo = 0
            while lo < 1000 and g.emit_chan(ctx, PRIO, lo, 0) == OK:
                lo += 1
            hi = 0
            while hi < 1000 and g.emit_chan_full(ctx, PRIO, 100 + hi, 0, 0, 0, 0) == OK:
                hi += 1
            g.emit_host(ctx, O_PRIO, lo, hi)
        else:
            r0 = g.emit_chan(ctx, NONE, 5, 0)         # no subscriber: OK, copy on sys.dropped
            r1 = g.emit_chan(ctx, 999, 6, 0)          # not a channel: CHAN_UNKNOWN, sys.error
            g.emit_host(ctx, O_MISC, r0, r1)
        return OK

    dst = Module("chdst")

    def consumer(t):
        def h(ctx, task):
            # answer: type 900 + 10 * channel + k; meta0 = channel seq; meta1 = message |
            # payload-ok << 32 | priority << 40
            if g.channel(task) == LL:           # a declaration compares as its id
                # some deliveries yield or retry once first: they keep their channel seq
                # and their credit until they finish
                v = g.meta0(task)
                if v % 5 == 1 and g.yield_count(task) == 0:
                    return YIELD
                if v % 5 == 2 and g.user_add(ctx, 2000 + (v & 1023), 1) == 0:
                    return RETRY
            ok = 1
            p = g.payload_ptr(task)
            if p != 0:
                rc = g.refcount(ctx, p)
                ok = 0
                if g.load_i64(ctx, p) == g.meta0(task) * 7 + 1 and g.payload_len(task) == 8 \
                        and 1 <= rc <= 3:
                    ok = 2
            g.emit_host(ctx, O_CHAN + 10 * g.channel(task) + t - C_FAN[0], g.seq(task),
                        g.meta0(task) | (ok << 32) | (g.priority(task) << 40))
            return OK
        h.__name__ = f"consume_{t}"
        return h
    dst.handler(C_FAN[0], consumes=("t.p2p", FAN, "t.ll", "t.lossy", "t.prio"),
                message=MSG_T)(consumer(C_FAN[0]))
    for t in C_FAN[1:]:
        dst.handler(t, consumes=FAN)(consumer(t))
    return [src, dst]


def _split(out):
    """(records for the host by type, dead letters as (type, code, seq, meta0) tuples)."""
    from ggmk.device.host import SYS_DROPPED
    dead = out[(out["channel"] == SYS_ERROR) | (out["channel"] == SYS_DROPPED)]
    live = out[(out["channel"] != SYS_ERROR) & (out["channel"] != SYS_DROPPED)]
    codes = error_code(dead).tolist()
    return live, [{"type": int(t), "code": int(c), "chan": "error" if ch == SYS_ERROR
                   else "dropped", "seq": int(s), "meta0": int(m)}
                  for t, c, ch, s, m in zip(dead["type"], codes, dead["channel"], dead["seq"],
                                            dead["meta0"])]


def run_channels(target="cpu", workers=2, n_fifo=60, n_multi=(4, 15), n_fan=20, n_ll=60,
                 n_lossy=50, **cfg):
    """Every channel scenario in one boot, one after the other; returns what each saw."""
    k = DeviceKernel(channels_modules(), target=target, workers=workers, **cfg)
    ids = k.channels
    res = {"channels": ids, "workers": k.config.blocks}

    def sub(live, name, j=0):
        sel = live[live["type"] == O_CHAN + 10 * ids[name] + j]
        m1 = sel["meta1"].astype(np.int64)
        return {"seq": sel["meta0"].astype(np.int64).tolist(),
                "value": (m1 & 0xFFFFFFFF).tolist(), "ok": ((m1 >> 32) & 0xFF).tolist(),
                "prio": (m1 >> 40).tolist()}

    def col(live, t, f):
        return live[live["type"] == t][f].astype(np.int64).tolist()

    def go(scenario, start, end, count, **kw):
        k.push_all(taskmod.make(len(np.atleast_1d(start)), type=PROD, meta0=start,
                                meta1=(scenario << 32) + np.asarray(end), **kw))
        return _split(k.pull_until(count, timeout=300))

    with k:
        # 1. one producer, in order
        live, dead = go(SC_FIFO, 0, n_fifo, n_fifo)
        res["fifo"] = sub(live, "t.p2p") | {"dead": dead}
        # 2. several producers at once (host arrivals go to the buckets: any worker)
        np_, per = n_multi
        live, dead = go(SC_FIFO, np.arange(np_) * 1000, np.arange(np_) * 1000 + per, np_ * per)
        res["multi"] = sub(live, "t.p2p") | {"dead": dead}
        # 3. fan-out to three subscribers with a shared payload
        live, dead = go(SC_FAN, 0, n_fan, 3 * n_fan)
        res["fan"] = {str(t): sub(live, "t.fan", j) for j, t in enumerate(C_FAN)}
        res["fan"]["dead"] = dead
        # 4. lossless backpressure: capacity 8, the producer retries what was refused
        live, dead = go(SC_LL, 0, n_ll, n_ll)
        res["lossless"] = sub(live, "t.ll") | {"dead": dead}
        # 5. lossy overflow: n_lossy messages from one handler call into capacity 16
        live, dead = go(SC_LOSSY, 0, n_lossy, n_lossy + 1)
        res["lossy"] = sub(live, "t.lossy") | {"dead": dead,
                                               "refused": col(live, O_LOSSY_REFUSED, "meta0")}
        # 6. priority-0 reserve: the producer runs at priority 2
        live, dead = go(SC_PRIO, 0, 0, 1 + CHAN_CAPS["t.prio"], priority=2)
        res["prio"] = sub(live, "t.prio") | {
            "dead": dead, "lo_hi": col(live, O_PRIO, "meta0") + col(live, O_PRIO, "meta1")}
        # 7. no subscriber, unknown id
        live, dead = go(SC_MISC, 0, 0, 3)
        res["misc"] = {"codes": col(live, O_MISC, "meta0") + col(live, O_MISC, "meta1"),
                       "dead": dead}
        # wait until every credit is back (the last subscribers may still be finishing)
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            if all(c["depth"] == 0 for c in k.metrics()["channels"].values()):
                break
            time.sleep(0.002)
    m = k.metrics()
    res["metrics"] = {"channels": m["channels"], "global": m["global"], "user": m["user"],
                      "per_type": {str(t): v for t, v in m["types"].items()}}
    return res


# ------------------------------------------------------------------------------------------
# "txfull": more records for the host than the device -> host ring and its spill area hold

TX_EMIT_T, TX_FAIL_T, TX_SPAWN_T, TX_OUT_T = 120, 121, 123, 122
TX_FAIL_CODE = -7


def txfull_module() -> Module:
    m = Module("txfull")

    @m.handler(TX_EMIT_T)
    def tx_emit(ctx, task):
        g.emit_host(ctx, TX_OUT_T, g.meta0(task), 0)
        return OK

    @m.handler(TX_FAIL_T)
    def tx_fail(ctx, task):
        return TX_FAIL_CODE                     # a dead letter for sys.error

    @m.handler(TX_SPAWN_T)
    def tx_spawn(ctx, task):
        # many host records from one task, the return codes ignored: none may be lost
        for i in range(g.meta0(task), g.meta1(task)):
            g.emit_host(ctx, TX_OUT_T, i, 0)
        return OK
    return m


def run_txfull(target="cpu", n=100_000, spawners=20, per_spawn=1000, tx_cap=64,
               tx_spill_cap=1024, hold=True, workers=2, timeout=600.0, **cfg):
    """``n`` records bound for the host (ids 0..n-1 in meta0): ``spawners x per_spawn`` emitted
    by spawner tasks in a loop, the rest one per host-pushed task, every other one of those a
    failure (sys.error). A thread pushes the inputs. ``hold``: the host does not pull until
    the device holds producers back (ring and spill area full), then pulls everything;
    otherwise it pulls from the start. Returns what arrived, counted by id."""
    import threading
    nsp = spawners * per_spawn
    if nsp > n:
        raise ValueError("spawners x per_spawn > n")
    ids = np.arange(nsp, n, dtype=np.int64)
    types = np.where(ids % 2 == 0, TX_EMIT_T, TX_FAIL_T)
    sp0 = np.arange(spawners, dtype=np.int64) * per_spawn
    recs = np.concatenate([taskmod.make(spawners, type=TX_SPAWN_T, meta0=sp0,
                                        meta1=sp0 + per_spawn),
                           taskmod.make(len(ids), type=types, meta0=ids)])
    k = DeviceKernel([txfull_module()], target=target, workers=workers, tx_cap=tx_cap,
                     tx_spill_cap=tx_spill_cap, **cfg)
    res = {"target": target, "n": n, "held_seen": 0}
    push_err = []

    def pusher():
        try:
            k.push_all(recs, timeout=timeout)
        except BaseException as e:       # reported below
            push_err.append(repr(e))
    with k:
        t = threading.Thread(target=pusher, daemon=True)
        t.start()
        if hold:
            # the host pulls nothing until the device says producers are held back
            t_end = time.monotonic() + timeout
            while k.tx_held() == 0:
                if time.monotonic() > t_end or not k.alive():
                    raise RuntimeError(f"txfull: no producer held back after {timeout} s")
                time.sleep(0.001)
            res["held_seen"] = k.tx_held()
        out = k.pull_until(n, timeout=timeout)
        t.join(timeout)
        extra = k.pull()                   # nothing more may come
    m = k.metrics()["global"]
    err = out["channel"] == SYS_ERROR
    ok_out = (out["type"] == TX_OUT_T) & ~err
    ok_err = err & (out["type"] == TX_FAIL_T) & (error_code(out) == TX_FAIL_CODE)
    counts = np.bincount(out["meta0"][ok_out | ok_err].astype(np.int64), minlength=n)
    want_err = np.zeros(n, bool)
    want_err[ids[types == TX_FAIL_T]] = True
    res.update(
        pulled=int(len(out)), extra=int(len(extra)), push_errors=push_err,
        bad_records=int((~(ok_out | ok_err)).sum()),
        missing=int((counts[:n] == 0).sum()), duplicates=int((counts[:n] > 1).sum()),
        errors_right=bool(np.array_equal(np.sort(out["meta0"][ok_err]),
                                         np.nonzero(want_err)[0])),
        tx_full=m["tx_full"], tx_held=m["tx_held"], tx_lost=m["tx_lost"],
        to_host=m["to_host"], errors=m["errors"])
    return res


# ------------------------------------------------------------------------------------------
# "wait_doc": the device-channel example of ggmk.device.module's docstring, run as written


def doc_channel_example(capacity=None) -> str:
    """The source of the device-channel example in ``ggmk.device.module``'s docstring (its
    channel capacity replaced by ``capacity`` when given)."""
    import re
    import textwrap
    from ggmk.device import module as modmod
    doc = modmod.__doc__
    start = doc.index('    src = gd.Module("src")')
    end = doc.index("Warp and block handlers")
    text = textwrap.dedent(doc[start:end])
    if capacity is not None:
        text, k = re.subn(r"capacity=\d+", f"capacity={capacity}", text)
        assert k == 1, "the docstring example declares one channel capacity"
    return text


def run_wait_doc(target="cpu", producers=100, per=50, capacity=8, workers=2,
                 timeout=300.0, **cfg):
    """``producers`` tasks of the docstring's producer (type 20), producer p sending
    p * 1000 + 0 .. per - 1 on a channel of ``capacity``; returns what the subscriber (type
    31: ``emit_host(99, seq, value)``) delivered and the per-type counters."""
    import ggmk.device as gd
    from ggmk.task import CHAN_FULL
    import sys
    import types as pytypes
    # a real (registered) module: Numba's on-disk cache of the kernel finds its handlers'
    # globals by module name when it loads them again
    mod = pytypes.ModuleType("ggmk_device_doc_example")
    sys.modules[mod.__name__] = mod
    ns = mod.__dict__
    ns.update(gd=gd, g=g, OK=OK, CHAN_FULL=CHAN_FULL)
    exec(compile(doc_channel_example(capacity), "<ggmk.device.module docstring>", "exec"), ns)
    base = np.arange(producers, dtype=np.int64) * 1000
    with DeviceKernel([ns["src"]], target=target, workers=workers, **cfg) as k:
        k.push_all(taskmod.make(producers, type=20, meta0=base, meta1=base + per),
                   timeout=timeout)
        out = k.pull_until(producers * per, timeout=timeout)
        k.stop()
        m = k.metrics()
    ok = (out["type"] == 99) & (out["channel"] != SYS_ERROR)
    return {"target": target, "n": int(len(out)), "bad": int((~ok).sum()),
            "codes": sorted(set(error_code(out[~ok]).tolist())),
            "seq": out["meta0"][ok].tolist(), "value": out["meta1"][ok].tolist(),
            "types": {str(t): v for t, v in m["types"].items()},
            "max_yields": m["global"]["max_yields"],
            "capacity": m["channels"]["phys.out"]["capacity"],
            "chan_full": m["channels"]["phys.out"]["full"],
            "waits_skipped": m["global"]["waits_skipped"]}


# ------------------------------------------------------------------------------------------

WORKLOADS = {"mixed": run_mixed, "spawn": run_spawn, "resident": run_resident,
             "aging": run_aging, "channels": run_channels, "txfull": run_txfull,
             "wait_doc": run_wait_doc}


def subprocess_env(extra=None) -> dict:
    """The environment of a subprocess that imports ``ggmk`` from this checkout and this
    module as ``workloads`` (plus ``extra``)."""
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, HERE, env.get("PYTHONPATH")) if p)
    return env


def run(name: str, target: str, timeout: float = 900, **kw) -> dict:
    """Run workload ``name`` on ``target``; a target that needs a process of its own
    (``PROCESS_ENV``: ``sim``, the simulator switched on) runs in a subprocess."""
    penv = option(get_target(target), "PROCESS_ENV")
    if not penv:
        return WORKLOADS[name](target=target, **kw)
    p = subprocess.run([sys.executable, "-m", "workloads", name, "--target", target,
                        "--kw", json.dumps(kw)], env=subprocess_env(penv),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{target} workload {name} failed (rc {p.returncode}):\n"
                           f"{p.stderr[-4000:]}")
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
