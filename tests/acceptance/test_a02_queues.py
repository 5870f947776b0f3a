"""SPEC §14.2: the ready queue is correct under many producers and consumers; local queues are
correct under channel-driven enqueue plus worker dequeue."""
import threading

import numpy as np
import pytest

from ggmk import OK
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.sched import Route


def _collector(types, batch=True):
    m = Module("sink")
    got = []
    lock = threading.Lock()
    for t in types:
        @m.handler(t, batch=True)
        def h(ctx, b):
            with lock:
                got.append(b.records[["type", "meta0", "meta1"]].copy())
    return m, got


def test_many_producers_many_workers_every_task_once(hal):
    m, got = _collector(["A", "B", "C"])
    P, N = 4, 5000
    with boot([m], workers=3, hal=hal, seed=7) as s:
        def produce(p):
            for i in range(0, N, 250):
                s.submit(["A", "B", "C"][p % 3], meta0=np.arange(i, i + 250), meta1=p)

        if hal == "threads":
            ts = [threading.Thread(target=produce, args=(p,)) for p in range(P)]
            for t in ts: t.start()
            for t in ts: t.join()
        else:
            for p in range(P):
                produce(p)
        assert s.run(timeout=30)
        allrec = np.concatenate(got)
        assert len(allrec) == P * N
        for p in range(P):
            mine = np.sort(allrec["meta0"][allrec["meta1"] == p])
            assert np.array_equal(mine, np.arange(N))


@pytest.mark.parametrize("seed", range(200))
def test_local_queue_channel_driven_enqueue_sim_seeds(seed):
    """Handlers emit into their local queue while deliveries arrive: nothing lost or duplicated."""
    m = Module("fan")
    seen = []

    @m.handler("SPLIT")
    def split(ctx):
        k = ctx.task.meta0
        if k > 1:
            ctx.emit("SPLIT", meta0=k // 2, meta1=ctx.task.meta1 * 2)
            ctx.emit("SPLIT", meta0=k - k // 2, meta1=ctx.task.meta1 * 2 + 1)
        else:
            seen.append(ctx.task.meta1)
        return OK

    with boot([m], workers=3, hal="sim", seed=seed) as s:
        s.submit("SPLIT", meta0=40, meta1=1)
        # a "channel" delivering straight into the ready queue while workers run
        s.sched.enqueue(T.make(1, type=s.type_id("SPLIT"), meta0=24, meta1=1000), Route.CHANNEL)
        assert s.run(timeout=10), f"seed {seed} did not finish"
    assert len(seen) == 64 and len(set(seen)) == 64, f"seed {seed}"
