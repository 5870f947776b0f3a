"""Where a CPU -> GPU -> CPU round trip's time goes, finer than bench/bridge.py's
``roundtrip_stages_p50_us``: a diagnostic, not a benchmark (no peer; timings are a VM's).

One message at a time on the bridge workload of tests/bridge (cpu.in -> ECHO on the GPU kernel's
``cpu`` target in a device process -> gpu.back -> the CPU handler, which sets an Event the
publisher waits on), ``--n`` round trips ``--gap-ms`` apart. Timestamps are taken by wrapping
a few internals (the bridge's send / receive / delivery, the CPU HAL's wake, a worker's step,
the handler, the Event's set): each stage's p50 / p10 / p90 in us from the publish call.

    .venv/bin/python bench/probe_roundtrip.py [--n 400] [--gap-ms 0.3]
                                              [--device-config '{"idle_spin": 20000}']
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, ROOT)

STAGES = ("send", "publish_returned", "received", "worker_woken", "delivered", "worker_step",
          "handler", "event_set", "publisher_woke")
marks: list = []


def _mark(name):
    marks.append((time.perf_counter_ns(), name))


def _wrap(cls, meth, name, *, after=False):
    f = getattr(cls, meth)

    def w(*a, **k):
        if not after:
            _mark(name)
        r = f(*a, **k)
        if after and r:                   # (a receive or delivery that moved something)
            _mark(name)
        return r
    setattr(cls, meth, w)


# each stage's first mark after the mark of the stage it follows (the publish call's return and
# the worker's wake-up are side branches: the device works meanwhile; the wake-up comes inside
# the delivery)
AFTER = {"send": "publish", "publish_returned": "publish", "received": "send",
         "worker_woken": "received", "delivered": "received", "worker_step": "worker_woken",
         "handler": "received", "event_set": "handler", "publisher_woke": "event_set"}


def _stages(ms):
    got = {"publish": ms[0][0]}
    for n in STAGES:
        t0 = got.get(AFTER[n])
        if t0 is None:
            continue
        ts = [t for t, m in ms if m == n and t >= t0]
        if ts:
            got[n] = ts[0]
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--gap-ms", type=float, default=0.3)
    ap.add_argument("--device-config", default="{}")
    a = ap.parse_args()
    if a.n < 10 or not 0 <= a.gap_ms < 1000:
        ap.error(f"--n {a.n} / --gap-ms {a.gap_ms}: allowed n >= 10, 0 <= ms < 1000")
    from ggmk.bridge import pump
    from ggmk.core import worker
    from ggmk.hal import threads
    from tests.bridge import bridge_workloads as W
    from tests.bridge.dualkit import boot
    _wrap(pump.Bridge, "_send", "send")
    _wrap(pump.Bridge, "_receive", "received", after=True)
    _wrap(pump.Bridge, "_deliver_out", "delivered", after=True)
    _wrap(threads.ThreadsHal, "wake", "worker_woken")
    _wrap(worker.Worker, "step", "worker_step")
    s = boot(device_process=True, device_config=json.loads(a.device_config))
    rows = []
    try:
        gate_wait, ev = W.REC.back_gate.wait, W.REC.back_event
        real_set = ev.set
        W.REC.back_gate.wait = lambda *x: (_mark("handler"), gate_wait(*x))[1]
        ev.set = lambda: (_mark("event_set"), real_set())[1]
        ch = s.channel("cpu.in")
        for i in range(a.n):
            if a.gap_ms:
                time.sleep(a.gap_ms / 1e3)
            W.REC.clear()
            del marks[:]
            _mark("publish")
            ch.publish(meta0=i)
            _mark("publish_returned")
            assert ev.wait(10), "no round trip within 10 s"
            _mark("publisher_woke")
            ms = list(marks)
            t0 = ms[0][0]
            got = _stages(ms)
            rows.append({k: (v - t0) / 1e3 for k, v in got.items()})
    finally:
        del W.REC.back_gate.wait, ev.set
        s.halt()
    out = {"n": a.n, "gap_ms": a.gap_ms, "device_config": json.loads(a.device_config),
           "loadavg_1m": round(os.getloadavg()[0], 2), "stages_us": {}}
    for k in STAGES:
        v = [r[k] for r in rows if k in r]
        if v:
            out["stages_us"][k] = [round(float(x), 1) for x in np.percentile(v, (50, 10, 90))]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
