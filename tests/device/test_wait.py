"""The documented device pattern for "channel full -> come back later and resume where you
stopped" (``g.wait_at``, the WAIT return code): waiting is not counted as a yield, so 100
producers on a small lossless channel all finish, and every message arrives exactly once and
in order per producer. The test runs the example of ``ggmk.device.module``'s docstring as
written, only its channel capacity made small."""
import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.device import layout
import workloads as W
from ggmk.device.host import SYS_ERROR, error_code
from ggmk.errors import BootError
from ggmk.task import MAX_YIELDS, OK, YIELD


def _check(r, producers, per, capacity):
    assert r["bad"] == 0, f"sys.error/dropped codes {r['codes']}"
    assert r["max_yields"] == 0
    assert r["n"] == producers * per and r["capacity"] == capacity
    seq, val = r["seq"], r["value"]
    # exactly once: channel sequence numbers 1..N, values exactly the ones sent
    assert sorted(seq) == list(range(1, producers * per + 1))
    assert sorted(val) == sorted(p * 1000 + i for p in range(producers) for i in range(per))
    # in order per producer: by channel sequence, each producer's values are 0, 1, 2, ...
    by_seq = sorted(zip(seq, val))
    for p in range(producers):
        assert [v for _, v in by_seq if v // 1000 == p] == [p * 1000 + i for i in range(per)]
    t = r["types"]["20"]
    assert t["ok"] == producers and t["yield"] == 0
    assert t["wait"] > 0 and r["chan_full"] + r["waits_skipped"] == t["wait"]   # full, often


def test_docstring_example_uses_wait_at():
    src = W.doc_channel_example()
    assert "g.wait_at(task, i)" in src and "yield_at" not in src


def test_docstring_wait_pattern_cpu_100_producers():
    _check(W.run("wait_doc", "cpu", producers=100, per=50, capacity=8), 100, 50, 8)


def test_docstring_wait_pattern_sim():
    _check(W.run("wait_doc", "sim", producers=8, per=12, capacity=8, workers=2, threads=32,
                 batch=32), 8, 12, 8)


@pytest.mark.cuda
def test_docstring_wait_pattern_cuda():
    _check(W.run("wait_doc", "cuda", producers=100, per=50, capacity=8), 100, 50, 8)


# ---- WAIT is not YIELD: a task that waits more than max_yields times still finishes, one
# that yields as often is stopped by the circuit breaker

wy = gd.Module("waityield")


@wy.handler(230, max_yields=3)
def waits(ctx, task):
    n = g.meta0(task)
    if n < 10:
        return g.wait_at(task, n + 1)
    g.emit_host(ctx, 231, n, g.yield_count(task))
    return OK


@wy.handler(232, max_yields=3)
def yields(ctx, task):
    n = g.meta0(task)
    if n < 10:
        return g.yield_at(task, n + 1)
    g.emit_host(ctx, 233, n, g.yield_count(task))
    return OK


def test_wait_is_not_counted_as_a_yield():
    assert gd.WAIT == layout.WAIT == 3 and gd.WAIT not in (OK, YIELD)
    with gd.DeviceKernel([wy], target="cpu", workers=1) as k:
        k.push(taskmod.make(1, type=230))
        k.push(taskmod.make(1, type=232))
        out = k.pull_until(2, timeout=60)
        k.stop()
        m = k.metrics()
    done = out[out["type"] == 231]
    assert done["meta0"].tolist() == [10] and done["meta1"].tolist() == [0]   # 0 yields
    dead = out[out["type"] == 232]
    assert dead["channel"].tolist() == [SYS_ERROR] and error_code(dead).tolist() == [MAX_YIELDS]
    assert m["types"][230]["wait"] == 10 and m["types"][230]["yield"] == 0
    assert m["types"][232]["yield"] == 4


# ---- tasks behind one that waited on a full channel wait without running

sk = gd.Module("waitskip")
SKIP_CH = sk.channel("skip.ch", message=241, mode="p2p", guarantee="lossless", capacity=8)


@sk.handler(240)
def one_message(ctx, task):
    g.metric_add(ctx, 0, 1)                  # (counts the runs)
    if g.emit_chan(ctx, SKIP_CH, g.meta0(task), 0) == -100:
        return gd.WAIT
    return OK


@sk.handler(241, consumes="skip.ch", message=241)
def skip_sink(ctx, task):
    g.emit_host(ctx, 242, g.meta0(task), g.seq(task))
    return OK


def test_tasks_behind_a_wait_on_a_full_channel_are_not_run_again_and_again():
    """600 producers of one message each into a capacity-8 channel: each producer runs about
    about once per message, not once per wake-up each (before: every waiting task re-ran
    whenever a credit came back: 44,728 runs for the 600 messages; now ~750). Every message
    arrives exactly once."""
    n = 600
    with gd.DeviceKernel([sk], target="cpu", workers=1, batch=1024) as k:
        k.push(taskmod.make(n, type=240, meta0=np.arange(n, dtype=np.uint64)))
        out = k.pull_until(n, timeout=60)
        k.stop()
        m = k.metrics()
    got = out[out["type"] == 242]
    assert sorted(got["meta0"].tolist()) == list(range(n))
    assert sorted(got["meta1"].tolist()) == list(range(1, n + 1))   # channel seq: once each
    runs = m["user"][0]
    t = m["types"][240]
    skipped = m["global"]["waits_skipped"]
    assert skipped > 0 and t["ok"] == n
    assert t["run"] == runs + skipped     # "run" counts dispatches: the skipped ones too
    assert t["wait"] == m["global"]["chan_full"] + m["global"]["waits_skipped"]
    assert runs <= 3 * n, f"{runs} producer runs for {n} messages"


# ---- a handler declared waits_together: after one WAIT the rest of the batch waits unrun

wt = gd.Module("waitstogether")
OPEN_WORD = 7


@wt.handler(250, waits_together=True)
def until_open(ctx, task):
    g.metric_add(ctx, 1, 1)                  # (counts the runs)
    if g.user_get(ctx, OPEN_WORD) == 0:
        return gd.WAIT                       # every task waits for the same word
    g.emit_host(ctx, 252, g.meta0(task), 0)
    return OK


@wt.handler(251)
def open_gate(ctx, task):
    g.user_set(ctx, OPEN_WORD, 1)
    g.wake_waiters(ctx)
    return OK


def m_runs(k) -> int:
    return k.metrics()["user"][1]


def test_a_waits_together_handler_runs_one_task_per_wake_up_while_blocked(wait_until):
    """600 tasks wait for one shared word while the device runs 3,000 worker iterations
    (their wait queue opens now and then, for a wait nothing announces): one task runs at
    each opening, not all 600 (without waits_together: 10,200 runs in one run, 616 with)."""
    n = 600
    with gd.DeviceKernel([wt], target="cpu", workers=1, batch=1024) as k:
        k.push(taskmod.make(n, type=250, meta0=np.arange(n, dtype=np.uint64)))
        hb0 = int(k.heartbeats().sum())
        assert wait_until(lambda: int(k.heartbeats().sum()) >= hb0 + 3000, 120), \
            "the device did not run 3,000 iterations"
        assert m_runs(k) < n, "the waiting tasks ran as a batch"   # still blocked here
        k.push(taskmod.make(1, type=251))
        out = k.pull_until(n, timeout=60)
        k.stop()
        m = k.metrics()
    assert sorted(out[out["type"] == 252]["meta0"].tolist()) == list(range(n))
    runs = m["user"][1]
    assert m["types"][250]["ok"] == n and m["global"]["waits_skipped"] > 0
    assert runs < 2 * n, f"{runs} runs for {n} tasks"


def test_waits_together_is_for_scalar_handlers():
    m = gd.Module("wtbad")
    with pytest.raises(BootError, match="waits_together is for scalar handlers only"):
        m.handler(253, granularity="warp", waits_together=True)


def test_waiting_tasks_beyond_the_wait_queues_wait_a_tick_not_a_loop(wait_until):
    """More tasks waiting than the wait queues hold (``local_cap`` each): the rest wait for the
    next tick on the event queue. Before, they went back to the local queue and ran again on
    every loop: 48 tasks waiting behind a consumer that never finishes ran ~16,000 times a
    tick (16 M a second) against ~33 now. Counted per tick of the kernel's clock."""
    m = gd.Module("overflowing")
    out = m.channel("ovf.out", message=0x7101, mode="p2p", guarantee="lossless", capacity=8)

    @m.handler(0x7100)
    def produce(ctx, task):
        if g.emit_chan(ctx, out, g.meta0(task), 0) != 0:
            return g.wait_at(task, g.meta0(task))
        return OK

    @m.handler(0x7102, consumes="ovf.out", message=0x7101)
    def never_done(ctx, task):                 # the consumer never finishes a message
        return g.wait_at(task, g.meta0(task))

    n = 64                                     # 8 fit the channel, 56 wait: > local_cap 32
    with gd.DeviceKernel([m], target="cpu", workers=1, batch=32, local_cap=32,
                         bucket_cap=64) as k:
        k.push_all(taskmod.make(n, type=0x7100, meta0=np.arange(n)))
        runs = lambda: k.metrics()["types"][0x7100]["run"]       # noqa: E731
        assert wait_until(lambda: runs() >= 2 * n, 300)          # all pushed, waiting
        r0, t0 = runs(), k.tick()
        assert wait_until(lambda: k.tick() >= t0 + 200, 300)
        per_tick = (runs() - r0) / (k.tick() - t0)
    assert per_tick < 1000, f"{per_tick:.0f} runs of waiting producers a tick"
