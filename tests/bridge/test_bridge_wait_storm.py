"""Issue 12, the WAIT storm: a device task that returns WAIT (a GPU producer on a full bridge
channel, a bridge egress task without credit) is not re-run on every worker iteration while
the CPU consumer is stuck. It waits on its worker's wait queue until something that can
unblock it happened (a channel credit came back, a CREDIT record from the host), so a
stalled consumer does not make the device burn a core (on 2 cores it starved the host: 40x
slower). The test counts WAIT outcomes, not time: while the consumer is stuck the device runs
a fixed number of worker iterations; before the fix every iteration re-ran every waiting task
(up to ~65 here), so the WAIT count grew with the iterations, not with the messages."""
import numpy as np
import pytest

from ggmk import task as T

from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import assert_sink_exact, boot, gen, publish_all, wait_for

N = 5000
STALL_LOOPS = 20_000        # worker iterations (all blocks) the device runs while stuck


@pytest.fixture(scope="module")
def system():
    s = boot()
    yield s
    s.halt()


def _waits(s) -> int:
    return sum(int(t.get("wait", 0)) for t in s.kernel.metrics()["types"].values())


def test_waiting_tasks_do_not_spin_while_the_cpu_consumer_is_stuck(system):
    s = system
    W.REC.clear()
    W.REC.gate.clear()                       # the CPU consumer is stuck
    waits0 = _waits(s)
    gen(s, "GEN", N)
    wait_for(lambda: s.kernel.metrics()["channels"]["gpu.out"]["full"] > 0, 120,
             "the GPU producer to get CHAN_FULL from the bridge channel")
    hb0 = int(s.kernel.heartbeats().sum())
    wait_for(lambda: int(s.kernel.heartbeats().sum()) >= hb0 + STALL_LOOPS, 300,
             f"the device to run {STALL_LOOPS} more worker iterations")
    assert len(W.REC.sink_val) == 0          # still stuck: nothing reached the CPU handler
    W.REC.gate.set()
    assert s.run(timeout=300)
    # every message exactly once, in channel-sequence order, nothing dead-lettered
    assert_sink_exact(s, N)
    m = s.kernel.metrics()["types"]
    assert m[W.TYPES["GEN"]]["ok"] == 1 and m[W.TYPES["GEN"]]["wait"] > 0   # it did wait
    waits = _waits(s) - waits0
    # bounded by the messages, not by how long the consumer was stuck (before the fix: more
    # than 15 WAITs per round of the workers: 84568 in one run)
    assert 0 < waits < 3 * N, f"{waits} WAIT outcomes for {N} messages"


def test_a_window_larger_than_the_device_channel_sends_no_more_than_it_holds():
    """``bridge={"window": 8192}`` on a CPU -> GPU channel whose device side holds 4096: at
    most 4096 ingress tasks are sent ahead (before: 8192, and the ones the device channel
    could not take waited there, re-run at each wake-up). Every message arrives once.

    How often ingress tasks run is not asserted: they also wait, legitimately, while the
    device channel is full because its consumer waits for the CPU's ``BACK`` sink, so the count
    follows how fast the host drains (30,000 messages: 1.0-1.05 runs a message on an idle
    2-core machine, up to 5.6 with a CPU hog beside it; 3.3-7.4 idle without the clamp). The
    throughput it costs is measured by ``bench/bridge.py``."""
    from ggmk.bridge import device_side as ds
    n = 30_000
    s = boot(bridge={"window": 8192})
    try:
        st = s.stats()["bridge"]["channels"]["cpu.in"]
        cap = s.kernel.metrics()["channels"]["cpu.in"]["capacity"]
        assert cap == 4096 and st["window"] == cap
        publish_all(s, "cpu.in", n)
        assert s.run(timeout=300)
        assert sorted(b[0] for b in W.REC.back) == list(range(n))
        rx = s.kernel.metrics()["types"][ds.RX(s.bridge.by_name["cpu.in"].k)]
        assert rx["ok"] == n
    finally:
        s.halt()


def test_default_credit_windows_follow_the_device_channels():
    """No window given: a CPU -> GPU channel gets 1024 credits (at most what its device side
    holds), a GPU -> CPU channel 1024 or its device side's capacity if larger (fewer credits than that
    left egress tasks waiting on the device, woken at each credit). A given window is kept (CPU -> GPU: at most the device side); a bad one is a
    boot error naming the option."""
    import ggmk.dual
    from ggmk.errors import BootError
    s = boot(sized=True)
    try:
        ch = s.stats()["bridge"]["channels"]
        assert ch["cpu.in"]["window"] == 1024 and ch["gpu.back"]["window"] == 4096
        assert ch["gpu.out"]["window"] == 1024
        publish_all(s, "cpu.in", 20_000)
        assert s.run(timeout=300)
        assert sorted(b[0] for b in W.REC.back) == list(range(20_000))
        # three device tasks a message (ingress, ECHO, egress), few waits (with 1024 credits
        # for gpu.back: ~100 K in one run, 40 K of them skipped unrun)
        assert s.kernel.metrics()["global"]["dispatched"] < 4 * 20_000
    finally:
        s.halt()
    s = boot(bridge={"window": 8})
    try:
        ch = s.stats()["bridge"]["channels"]
        assert ch["cpu.in"]["window"] == 8 and ch["gpu.back"]["window"] == 8
    finally:
        s.halt()
    for bad in (0, -1, 2.5, "8", True):
        with pytest.raises(BootError, match=r"window must be None or an int 1\.\.2147483647 "
                                            r"\(credits per bridge channel\), got "):
            ggmk.dual.boot(W.modules(), device="cpu", types=W.registry(),
                           bridge={"window": bad})


def test_a_gpu_to_cpu_channel_keeps_its_declared_device_capacity():
    """A GPU module's channel of 8192: the bridge plans with 8192 (it clamped to 4096 without
    saying so, and the credits followed the clamp), and its default credits are 8192."""
    import ggmk
    import ggmk.device as gd
    from ggmk.bridge.plan import credit_window, plan
    g = gd.Module("big")
    g.channel("big.out", message="READING", mode="p2p", guarantee="lossless", capacity=8192)
    c = ggmk.Module("bigsink")

    @c.handler("SINK", consumes="big.out", message="READING", batch=True)
    def _sink(ctx, batch):
        pass

    bc, = plan([c], [g], W.registry(), types_given=True)
    assert bc.direction == "g2c" and bc.capacity == 8192
    assert credit_window(bc) == 8192 and credit_window(bc, 16) == 16


def test_a_worker_whose_only_work_is_waiting_tasks_naps(system):
    """While the CPU consumer is stuck, a device worker whose only work is tasks waiting for it
    counts each all-WAIT pass over them as an idle round, so it parks once and naps (before:
    each pass reset its idle count, so it parked and woke again and again: 132 parks and
    135,000 loops in 3 s against 5 and 16,000, and 12% of a core against 2%, with 20 waiting
    generators). Counted in parks over a number of loops, not in time."""
    s = system
    W.REC.clear()
    W.REC.gate.clear()                       # the CPU consumer is stuck
    gens = 20
    first = np.arange(gens, dtype=np.uint64) * 1000
    s.push_device(T.make(gens, type=W.TYPES["GEN"], meta0=first, meta1=first + 1000))
    wait_for(lambda: s.kernel.metrics()["channels"]["gpu.out"]["full"] > 0, 120,
             "the GPU producers to get CHAN_FULL from the bridge channel")
    parks0 = s.kernel.metrics()["global"]["parks"]
    hb0 = int(s.kernel.heartbeats().sum())
    wait_for(lambda: int(s.kernel.heartbeats().sum()) >= hb0 + STALL_LOOPS, 300,
             f"the device to run {STALL_LOOPS} more worker iterations")
    parks = s.kernel.metrics()["global"]["parks"] - parks0
    assert len(W.REC.sink_val) == 0          # still stuck
    W.REC.gate.set()
    assert s.run(timeout=300)
    assert sorted(W.REC.sink_val) == sorted(range(gens * 1000))
    assert parks <= 2 * s.kernel.config.blocks, f"{parks} parks in {STALL_LOOPS} loops"
