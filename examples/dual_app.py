"""A dual-kernel example app for ``ggmk boot --device auto|cpu|sim|cuda`` (the app convention:
``app()`` returns (modules, options)). A pipeline that crosses the bridge both ways with
payloads::

    ggmk boot examples/dual_app.py --device auto     # the cpu target here, cuda on a GPU
    ggmk emit SAMPLE --chan scale.in --payload '{"x": 1.5, "n": 3, "tag": "cafe0001"}' --count 100
    ggmk emit BURST --meta0 0 --meta1 5000            # a CPU handler feeds 5000 SAMPLEs
    ggmk ps; ggmk kern ls; ggmk chan ls; ggmk top --once
    ggmk halt

* CPU -> GPU, lossless bridge channel ``scale.in`` (SAMPLE, a 16-byte payload): published by
  ``ggmk emit SAMPLE --chan scale.in --payload JSON`` (as above; SAMPLE has no CPU handler, so
  it goes on the channel) or by the CPU handler BURST;
* the GPU handler SCALE (module ``gpu_scale``) consumes it, sums the payload's bytes into meta1
  and hands the payload on, on the GPU -> CPU lossless bridge channel ``scale.out`` (SCALED);
* the CPU batch handler COLLECT (module ``collect``) checks that every payload came back intact
  (same bytes, a valid CPU-arena address) and counts them in ``RESULTS``.

Type ids are fixed in ``TYPES`` so the compiled GPU kernel (cached by source hash in
~/.cache/ggmk) is reused from run to run.
"""
import threading

import numpy as np

import ggmk
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device.layout import WAIT

TYPES = """
[types.SAMPLE]
id = 140
doc = "CPU -> GPU on scale.in: a sample with a payload"
payload = { x = "f64", n = "u32", tag = "bytes[4]" }

[types.SCALED]
id = 141
doc = "GPU -> CPU on scale.in's way back (scale.out): meta1 = byte sum of the payload"
payload = { x = "f64", n = "u32", tag = "bytes[4]" }

[types.BURST]
id = 142
doc = "CPU: publish SAMPLEs meta0 .. meta1-1 on scale.in (waits while the bridge is full)"

[types.COLLECT]
id = 143
doc = "CPU: the handler id of the scale.out consumer"
"""

# ------------------------------------------------------------------------------ the GPU side
gpu = gd.Module("gpu_scale", version="0.1.0")
TO_CPU = gpu.channel("scale.out", message="SCALED", mode="p2p", guarantee="lossless",
                     capacity=256)


@gpu.handler("SAMPLE", consumes="scale.in", message="SAMPLE")
def scale(ctx, task):
    ptr = g.payload_ptr(task)
    n = g.payload_len(task)
    if ptr == 0:
        if g.emit_chan(ctx, TO_CPU, g.meta0(task), 0) == -100:
            return WAIT
        return 0
    if g.offset(ctx, ptr) < 0:
        return -2                 # not a GPU-arena address: fail (sys.error)
    s = 0
    for k in range(n):
        s += g.load_u8(ctx, ptr + k)
    g.retain(ctx, ptr, 1)         # our delivery's reference is released when we return
    if g.emit_chan_full(ctx, TO_CPU, g.meta0(task), s, ptr, n, -1) == -100:
        g.release(ctx, ptr)
        return WAIT
    return 0


# ------------------------------------------------------------------------------ the CPU side
class Results:
    """What COLLECT saw (the app's own accounting, printed by ``make demo``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = 0
        self.with_payload = 0
        self.bad = 0


RESULTS = Results()
host = ggmk.Module("feeder", version="0.1.0")
TO_GPU = host.produces("scale.in", "SAMPLE", mode="p2p", guarantee="lossless")
_SAMPLE = np.zeros(1, dtype=[("x", "<f8"), ("n", "<u4"), ("tag", "S4")])


@host.handler("BURST")
def burst(ctx):
    """meta0 = first, meta1 = end: publish SAMPLE (x = i, n = i, tag 'ggmk') on scale.in."""
    t = ctx.task
    i = t.meta0
    while i < t.meta1:
        _SAMPLE["x"], _SAMPLE["n"], _SAMPLE["tag"] = float(i), i & 0xFFFFFFFF, b"ggmk"
        if ctx.emit(TO_GPU, meta0=i, payload=_SAMPLE.tobytes()):
            return ctx.wait_(phase=i)
        i += 1
    return ggmk.OK


collect = ggmk.Module("collect", version="0.1.0")


@collect.handler("COLLECT", consumes="scale.out", message="SCALED", batch=True)
def on_scaled(ctx, batch):
    r = batch.records
    bad = 0
    with_payload = 0
    for p, n, s in zip(r["payload_ptr"].tolist(), r["payload_len"].tolist(),
                       r["meta1"].tolist()):
        if n:
            with_payload += 1
            data = np.asarray(ctx.arena.view(p, n), dtype=np.uint8)
            bad += int(p == 0 or int(data.sum()) != s)
    with RESULTS.lock:
        RESULTS.received += len(r)
        RESULTS.with_payload += with_payload
        RESULTS.bad += bad


def app():
    return [host, collect, gpu], {"types": ggmk.load_types(TYPES), "workers": 2}
