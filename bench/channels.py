"""Channel throughput, with the same-run asyncio peer. Prints one JSON line.

* ``p2p_batch_msgs_per_s``: a handler emits 8192-record batches (``ctx.emit_batch``) on a
  lossless p2p channel; a batch handler consumes them. End to end: emit, ring, drain, ready
  queue, dispatch, until idle. ``p2p_batch_emit_only_msgs_per_s``: the emit call alone (host
  batch emit into a ring that is large enough).
* ``p2p_msgs_per_s``: a handler emits one message per call of ``send = ctx.emitter(out)``
  (the per-message hot path); a batch handler consumes them. End to end. ``p2p_msgs_per_s_1w``:
  the same on one worker (like the single-threaded peer; two Python workers pay GIL hand-offs).
  ``p2p_ctx_emit_msgs_per_s``: the same with ``ctx.emit(out, i)`` per message.
* ``fanout3_msgs_per_s``: batch emit on a lossless fan-out channel to 3 batch subscribers,
  counting messages emitted (each delivered 3 times); ``fanout3_lost`` must be 0.
* ``asyncio_msgs_per_s``: one ``asyncio.Queue`` (maxsize 1024) producer/consumer pair.

Usage: ``python bench/channels.py [--n 2000000] [--workers 2] [--rounds 3]`` (medians over the
rounds; the asyncio ratio is taken per round, the peer running right after ours).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from ggmk import task as T  # noqa: E402
from ggmk.core.kernel import boot  # noqa: E402
from ggmk.core.module import Module  # noqa: E402

BATCH = 8192
CAPACITY = 1 << 18


def asyncio_peer(n: int) -> float:
    async def main():
        q: asyncio.Queue = asyncio.Queue(maxsize=1024)

        async def prod():
            for i in range(n):
                await q.put(i)

        async def cons():
            for _ in range(n):
                await q.get()

        t = time.perf_counter()
        await asyncio.gather(prod(), cons())
        return time.perf_counter() - t

    return n / asyncio.run(main())


def _waves(s, n: int, per_task: int = BATCH, capacity: int = CAPACITY) -> float:
    """Submit the producer tasks in waves that fit the channel (a producer that met CHAN_FULL
    yields, and yields are capped by max_yields), waiting for idle between waves."""
    t = time.perf_counter()
    left = n // per_task
    while left:
        w = min(capacity // per_task, left)
        s.submit("GEN", meta1=np.full(w, per_task if per_task == BATCH else 0, dtype=np.uint64))
        left -= w
        assert s.run(timeout=600)
    dt = time.perf_counter() - t
    assert not len(s.dead_letters("sys.error")[0])
    return dt


def p2p_batch(n: int, workers: int, hal: str = "threads") -> float:
    got = [0]
    p = Module("src")
    out = p.produces("bench.p2p", "MSG", capacity=CAPACITY)

    @p.handler("GEN")
    def gen(ctx):
        k = ctx.task.meta1
        acc = ctx.emit_batch(out, meta0=np.arange(k, dtype=np.uint64))
        if acc < k:                      # lossless backpressure: come back for the rest
            ctx.task.meta1 = k - acc
            return ctx.yield_()
        return T.OK

    c = Module("sink")

    @c.handler("MSG", batch=True, consumes="bench.p2p", max_batch=BATCH)
    def sink(ctx, batch):
        got[0] += len(batch)

    with boot([p, c], workers=workers, max_batch=BATCH, hal=hal) as s:
        dt = _waves(s, n)
    assert got[0] == n // BATCH * BATCH, got
    return got[0] / dt


def p2p_emit_only(n: int) -> float:
    with boot([], hal="sim") as s:
        ch = s.open("bench.raw", "MSG", capacity=1 << 17)
        sub = ch.subscribe()
        recs = [T.make(BATCH, type=s.type_id("MSG"), meta0=np.arange(BATCH)) for _ in range(8)]
        done = 0
        t = time.perf_counter()
        while done < n:
            for r in recs:
                done += ch.emit(r)
            sub.ring.head = sub.ring.tail            # discard what the 8 emits wrote (O(1))
        return done / (time.perf_counter() - t)


def p2p_per_message(n: int, workers: int, lean: bool = False) -> float:
    got = [0]
    per_task = 1000
    p = Module("src")
    out = p.produces("bench.one", "MSG", capacity=1 << 15)

    @p.handler("GEN")
    def gen(ctx):
        i = ctx.task.meta1                   # resume point after backpressure
        if lean:
            send = ctx.emitter(out)
            while i < per_task:
                if send(i):
                    ctx.task.meta1 = i
                    return ctx.yield_()
                i += 1
            return T.OK
        emit = ctx.emit
        while i < per_task:
            if emit(out, i):
                ctx.task.meta1 = i
                return ctx.yield_()
            i += 1
        return T.OK

    c = Module("sink")

    @c.handler("MSG", batch=True, consumes="bench.one")
    def sink(ctx, batch):
        got[0] += len(batch)

    with boot([p, c], workers=workers, max_batch=1024) as s:
        dt = _waves(s, n, per_task, 1 << 15)
    assert got[0] == n // per_task * per_task, got
    return got[0] / dt


def fanout3(n: int, workers: int) -> tuple[float, int]:
    got = {t: 0 for t in ("SUB_A", "SUB_B", "SUB_C")}
    c = Module("subs")
    for t in got:
        @c.handler(t, batch=True, consumes="bench.fan", message="MSG", name=t.lower(),
                   max_batch=BATCH)
        def f(ctx, batch, t=t):
            got[t] += len(batch)

    p = Module("src")
    out = p.produces("bench.fan", "MSG", mode="fanout", capacity=CAPACITY)

    @p.handler("GEN")
    def gen(ctx):
        k = ctx.task.meta1
        acc = ctx.emit_batch(out, meta0=np.arange(k, dtype=np.uint64))
        if acc < k:
            ctx.task.meta1 = k - acc
            return ctx.yield_()
        return T.OK

    with boot([p, c], workers=workers, max_batch=BATCH) as s:
        dt = _waves(s, n)
        dropped = len(s.dead_letters("sys.dropped")[0])
    sent = n // BATCH * BATCH
    lost = sum(sent - v for v in got.values()) + dropped
    return sent / dt, lost


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of every measurement; medians are reported, and the asyncio "
                         "ratio per round (each round runs both back to back: the shared "
                         "machine's load moves between rounds more than within one)")
    a = ap.parse_args()
    n, w = a.n, a.workers
    m = min(n, 500_000)
    rows = []
    for _ in range(a.rounds):
        f, lost = fanout3(n, w)
        rows.append({
            "p2p_batch_msgs_per_s": p2p_batch(n, w),
            "p2p_batch_emit_only_msgs_per_s": p2p_emit_only(n),
            "p2p_msgs_per_s": p2p_per_message(m, w, lean=True),
            "asyncio_msgs_per_s": asyncio_peer(m),
            "p2p_msgs_per_s_1w": p2p_per_message(m, 1, lean=True),
            "p2p_ctx_emit_msgs_per_s": p2p_per_message(m, w),
            "fanout3_msgs_per_s": f,
            "fanout3_lost": lost,
        })
    res = {"n": n, "workers": w, "rounds": a.rounds, "cpus": os.cpu_count(),
           "loadavg": round(os.getloadavg()[0], 2)}
    for k in rows[0]:
        res[k] = round(float(np.median([r[k] for r in rows])))
    res["fanout3_lost"] = sum(r["fanout3_lost"] for r in rows)
    ratios = [r["p2p_msgs_per_s"] / r["asyncio_msgs_per_s"] for r in rows]
    res["p2p_vs_asyncio"] = round(float(np.median(ratios)), 2)
    res["p2p_vs_asyncio_rounds"] = [round(x, 2) for x in ratios]
    # one worker, like the single-threaded peer: no GIL hand-offs between two Python workers
    r1 = [r["p2p_msgs_per_s_1w"] / r["asyncio_msgs_per_s"] for r in rows]
    res["p2p_vs_asyncio_1w"] = round(float(np.median(r1)), 2)
    res["p2p_vs_asyncio_1w_rounds"] = [round(x, 2) for x in r1]
    res["p2p_batch_rounds"] = [round(r["p2p_batch_msgs_per_s"]) for r in rows]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
