"""One set of modules for the bridge's tests and benchmark (one compiled GPU kernel, reused):
scaffolding, kept out of the installed package (imported as ``tests.bridge.bridge_workloads``).

Types (ids fixed so the kernel cache key is stable):

* GPU -> CPU, lossless p2p ``gpu.out`` (READING): GPU handler GEN (meta0 = first value,
  meta1 = count) emits meta0, meta0+1, ... with ``wait_at`` on CHAN_FULL; CPU batch handler
  SINK records (channel seq, value).
* GPU -> CPU, lossy p2p ``gpu.lossy`` (LREADING): GPU handler GEN_LOSSY emits without waiting;
  CPU handler LSINK records.
* CPU -> GPU ``cpu.in`` (WORK), produced by CPU handler FEED (or the host's ``publish``),
  consumed by GPU handler ECHO, which emits on GPU -> CPU ``gpu.back`` (BACK) the same words
  (meta1 = byte sum of the payload, if any) and hands the payload on; CPU handler BACK_SINK
  records (meta0, meta1, payload check).
"""
from __future__ import annotations

import threading

import numpy as np

import ggmk
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.typereg import TypeRegistry

TYPES = {"READING": 101, "LREADING": 102, "WORK": 103, "BACK": 104, "GEN": 110,
         "GEN_LOSSY": 111, "ECHO": 112, "SINK": 120, "LSINK": 121, "BACK_SINK": 122,
         "FEED": 123}
GPU_OUT_CAPACITY = 64


def registry() -> TypeRegistry:
    reg = TypeRegistry()
    for name, tid in TYPES.items():
        reg.register(name, id=tid)
    return reg


# ---------------------------------------------------------------------------- the GPU side
gpu = gd.Module("gen")
OUT = gpu.channel("gpu.out", message="READING", mode="p2p", guarantee="lossless",
                  capacity=GPU_OUT_CAPACITY)
LOSSY = gpu.channel("gpu.lossy", message="LREADING", mode="p2p", guarantee="lossy",
                    capacity=GPU_OUT_CAPACITY)
BACK = gpu.channel("gpu.back", message="BACK", mode="p2p", guarantee="lossless", capacity=256)


@gpu.handler("GEN")
def gen(ctx, task):
    i = g.meta0(task)
    end = g.meta1(task)
    while i < end:
        if g.emit_chan(ctx, OUT, i, 0) == -100:
            return g.wait_at(task, i)
        i += 1
    return 0


@gpu.handler("GEN_LOSSY")
def gen_lossy(ctx, task):
    i = g.meta0(task)
    end = g.meta1(task)
    while i < end:
        g.emit_chan(ctx, LOSSY, i, 0)
        i += 1
    return 0


@gpu.handler("ECHO", consumes="cpu.in", message="WORK")
def echo(ctx, task):
    ptr = g.payload_ptr(task)
    n = g.payload_len(task)
    s = 0
    if ptr != 0:
        off = g.offset(ctx, ptr)
        if off < 0:
            return -2            # not a device arena address: fail (sys.error, code -2)
        for k in range(n):
            s += g.load_u8(ctx, ptr + k)
        g.retain(ctx, ptr, 1)    # our delivery's reference is released when we return
        r = g.emit_chan_full(ctx, BACK, g.meta0(task), s, ptr, n, -1)
        if r == -100:
            g.release(ctx, ptr)
            return WAIT
        return 0
    if g.emit_chan(ctx, BACK, g.meta0(task), g.meta1(task)) == -100:
        return WAIT
    return 0


# ---------------------------------------------------------------------------- the CPU side
class Recorder:
    """What the CPU handlers saw; ``gate`` (set by default) holds SINK back while cleared."""

    def __init__(self):
        self.lock = threading.RLock()     # (re-entered: callers read .back under it)
        self.sink_seq: list = []
        self.sink_val: list = []
        self.lsink_val: list = []
        self._back: list = []         # chunks: (meta0, meta1, payload ok, address ok, ptr)
        self.back_n = 0
        self.back_event = threading.Event()   # set whenever BACK_SINK recorded something
        self.gate = threading.Event()
        self.gate.set()
        self.back_gate = threading.Event()    # BACK_SINK's (cleared: gpu.back backs up)
        self.back_gate.set()
        self.expect_payload = None    # bytes expected on BACK_SINK payloads

    def clear(self):
        with self.lock:
            self.sink_seq, self.sink_val, self.lsink_val, self._back = [], [], [], []
            self.back_n = 0
            self.back_event.clear()

    @property
    def back(self) -> list:
        """One (meta0, meta1, payload ok, address ok, payload_ptr) tuple per BACK_SINK message,
        in arrival order (built on demand: the handler keeps columns, so the benchmark's CPU
        side costs a few array copies per batch, not a tuple per message)."""
        with self.lock:
            chunks = list(self._back)
        out = []
        for m0, m1, ok, addr, ptr in chunks:
            out.extend(zip(m0.tolist(), m1.tolist(), ok.tolist(), addr.tolist(), ptr.tolist()))
        return out


REC = Recorder()
cpu = ggmk.Module("sink")
IN = cpu.produces("cpu.in", "WORK", mode="p2p", guarantee="lossless")


@cpu.handler("SINK", consumes="gpu.out", message="READING", batch=True)
def sink(ctx, batch):
    REC.gate.wait(60)
    with REC.lock:
        REC.sink_seq.extend(batch.seq.tolist())
        REC.sink_val.extend(batch.meta0.tolist())


@cpu.handler("LSINK", consumes="gpu.lossy", message="LREADING", batch=True)
def lsink(ctx, batch):
    REC.gate.wait(60)
    with REC.lock:
        REC.lsink_val.extend(batch.meta0.tolist())


@cpu.handler("BACK_SINK", consumes="gpu.back", message="BACK", batch=True)
def back_sink(ctx, batch):
    """A batch handler (the bridge benchmark measures the bridge, not a per-task handler):
    one (meta0, meta1, payload ok, address ok, payload_ptr) row per message."""
    REC.back_gate.wait(60)
    r = batch.records
    n = len(r)
    plen = r["payload_len"]
    ptrs = r["payload_ptr"].copy()
    if not plen.any():
        ok = np.ones(n, bool)
        addr = ok
    else:
        exp = REC.expect_payload
        arena = ctx.arena
        ok = np.ones(n, bool)
        for i in np.flatnonzero(plen).tolist():
            p, m = int(ptrs[i]), int(plen[i])
            ok[i] = exp is not None and p != 0 and \
                bytes(np.asarray(arena.view(p, m), dtype=np.uint8)) == exp
        addr = (ptrs != 0) | (plen == 0)
    with REC.lock:
        REC._back.append((r["meta0"].copy(), r["meta1"].copy(), ok, addr, ptrs))
        REC.back_n += n
    REC.back_event.set()


@cpu.handler("BACK_SINK_FAST", batch=True)
def _unused(ctx, batch):      # (keeps handler ids stable; never subscribed)
    pass


@cpu.handler("FEED")
def feed(ctx):
    """meta0 = first value, meta1 = count: emit WORK messages on cpu.in (waits when full)."""
    send = ctx.emitter(IN)
    t = ctx.task
    i = t.meta0
    while i < t.meta1:
        if send(i):
            return ctx.wait_(phase=i)
        i += 1
    return ggmk.OK


def modules():
    return [cpu, gpu]


# the same GPU module with its GPU -> CPU channel sized for throughput (bench/bridge.py's
# sized run: a device channel that holds as many messages as the bridge sends ahead)
gpu_sized = gd.Module("gen")
gpu_sized.channel("gpu.out", message="READING", mode="p2p", guarantee="lossless",
                  capacity=GPU_OUT_CAPACITY)
gpu_sized.channel("gpu.lossy", message="LREADING", mode="p2p", guarantee="lossy",
                  capacity=GPU_OUT_CAPACITY)
gpu_sized.channel("gpu.back", message="BACK", mode="p2p", guarantee="lossless", capacity=4096)
for _h in gpu.handlers:
    gpu_sized.handler(_h.type, name=_h.name, consumes=_h.consumes or None,
                      message=_h.message)(_h.fn)


def sized_modules():
    return [cpu, gpu_sized]
