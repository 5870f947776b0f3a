"""SPEC §14 item 20: a deterministic simulation whose CPU-produced tick events cross the bridge.

Each CPU tick's deterministic ``TICK`` messages (channel ``sim.tick``, CPU -> GPU) are computed
on the GPU kernel, whose ``TOCK`` results (``sim.tock``, GPU -> CPU) feed the CPU's next tick.
The bridge moves deterministic channels at tick fences (``ggmk.bridge.fences``): the GPU
kernel never starts tick T before the CPU kernel acknowledged tick T-1 (checked on the fence
log), and three runs give the same trace hash on the cpu target.
"""
import numpy as np
import pytest

import ggmk
import ggmk.device as gd
import ggmk.dual
from ggmk.bridge.fences import FenceError, Fences
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.typereg import TypeRegistry

TYPES = {"SIM_TICK": 301, "SIM_TOCK": 302, "SIM_GPU": 303, "SIM_CPU": 304}
TICKS = 6
PARTICLES = 24
M = 0xFFFFFFFFFFFFFFFF


def registry() -> TypeRegistry:
    reg = TypeRegistry()
    for name, tid in TYPES.items():
        reg.register(name, id=tid, deterministic=True)
    return reg


gpu = gd.Module("simgpu")
TOCK = gpu.channel("sim.tock", message="SIM_TOCK", mode="p2p", guarantee="lossless",
                   capacity=256)


@gpu.handler("SIM_GPU", consumes="sim.tick", message="SIM_TICK", deterministic=True)
def sim_gpu(ctx, task):
    x = g.meta0(task)
    x = x ^ (x >> 29)
    x = x * 0xBF58476D1CE4E5B9 + 7
    if g.emit_chan(ctx, TOCK, x, g.meta1(task)) == -100:
        return WAIT
    return 0


def _cpu_module(seen):
    cpu = ggmk.Module("simcpu")
    tick_out = cpu.produces("sim.tick", "SIM_TICK", mode="p2p", guarantee="lossless",
                            capacity=4096)

    @cpu.handler("SIM_CPU", consumes="sim.tock", message="SIM_TOCK", deterministic=True)
    def sim_cpu(ctx):
        t = ctx.task
        tick = int(t.meta1)
        seen.append((tick, int(t.meta0)))
        if tick + 1 < TICKS:
            nxt = (int(t.meta0) * 6364136223846793005 + 1442695040888963407) & M
            assert ctx.emit(tick_out, meta0=nxt, meta1=tick + 1) == ggmk.OK
            if nxt % 5 == 0:                 # a particle splits now and then
                assert ctx.emit(tick_out, meta0=nxt >> 3, meta1=tick + 1) == ggmk.OK
        return ggmk.OK

    @cpu.handler("SIM_TICK0", deterministic=True)
    def seed(ctx):
        assert ctx.emit(tick_out, meta0=int(ctx.task.meta0), meta1=0) == ggmk.OK
        return ggmk.OK

    return cpu


def _run(workers=2, seed=20):
    seen = []
    reg = registry()
    reg.register("SIM_TICK0", id=305, deterministic=True)
    s = ggmk.dual.boot([_cpu_module(seen), gpu], device="cpu", types=reg, workers=workers,
                       deterministic=True)
    try:
        assert s.bridge.by_name["sim.tick"].det and s.bridge.by_name["sim.tock"].det
        rng = np.random.default_rng(seed)
        s.submit("SIM_TICK0", meta0=rng.integers(1, 2**62, PARTICLES, dtype=np.uint64),
                 deterministic=True)
        assert s.run(timeout=120)
        h = s.trace_hash()
        log = list(s.fences.log)
        st = s.stats()["bridge"]
    finally:
        s.halt()
    return h, log, sorted(seen), st


def _check_fences(log):
    acked = -1
    starts = []
    for ev in log:
        if ev["event"] == "cpu_ack":
            acked = max(acked, ev["tick"])
        elif ev["event"] == "gpu_start":
            assert ev["tick"] >= 1 and acked >= ev["tick"] - 1, (ev, log)
            # and the GPU kernel had finished every earlier tick's ingress task
            assert ev["device_done"] == ev["pushed"], ev
            starts.append(ev["tick"])
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    return starts


@pytest.fixture(scope="module")
def runs():
    return [_run(workers=w) for w in (2, 2, 1)]


def test_gpu_never_starts_a_tick_before_the_cpu_ack(runs):
    for h, log, seen, st in runs:
        starts = _check_fences(log)
        assert len(starts) == TICKS, starts      # one GPU tick per simulation step
        ticks = [t for t, _ in seen]
        assert set(ticks) == set(range(TICKS))
        assert ticks.count(0) == PARTICLES
        assert st["channels"]["sim.tick"]["deterministic"]
        # every GPU tick's output reached the CPU only after the GPU acknowledged it
        ev = [(e["event"], e["tick"]) for e in log]
        for t in starts:
            assert ev.index(("gpu_start", t)) < ev.index(("gpu_ack", t))


def test_identical_trace_hashes_across_runs(runs):
    hashes = {h for h, _, _, _ in runs}
    assert len(hashes) == 1, hashes
    assert len({tuple(seen) for _, _, seen, _ in runs}) == 1


def test_different_input_gives_a_different_hash(runs):
    assert _run(seed=21)[0] != runs[0][0]


def test_fence_refuses_an_early_start():
    f = Fences()
    f.cpu_ack(0)
    f.gpu_start(1)
    with pytest.raises(FenceError):
        f.gpu_start(3)
