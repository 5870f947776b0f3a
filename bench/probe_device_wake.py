"""The GPU kernel alone (``cpu`` target, in this process): one task pushed, its reply pulled,
after an idle gap of 0, 0.3 and 2 ms: how much of a round trip is the device waking up. A
diagnostic, not a benchmark (no peer). ``--host-naps``: the host sleeps 10 us between pulls
instead of spinning (a spinning host is a third runnable thread beside the kernel's two on a
2-core machine).

    .venv/bin/python bench/probe_device_wake.py [--n 300] [--host-naps]
                                               [--config '{"workers": 1, "idle_spin": 64}']
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import ggmk.device as gd  # noqa: E402
from ggmk import task as T  # noqa: E402
from ggmk.device import api as g  # noqa: E402

probe = gd.Module("probe")


@probe.handler(300)
def echo(ctx, task):
    g.emit_host(ctx, 301, g.meta0(task), 0)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--host-naps", action="store_true")
    ap.add_argument("--config", default="{}")
    a = ap.parse_args()
    cfg = json.loads(a.config)
    k = gd.DeviceKernel([probe], target="cpu", **cfg).start()
    out = {"config": cfg, "host_naps": a.host_naps,
           "loadavg_1m": round(os.getloadavg()[0], 2), "latency_us": {}}
    try:
        for gap in (0.0, 0.0003, 0.002):
            lat = []
            for i in range(a.n):
                if gap:
                    time.sleep(gap)
                rec = T.make(1, type=300, meta0=i)
                t0 = time.perf_counter_ns()
                k.push(rec)
                while not len(k.pull()):
                    if a.host_naps:
                        time.sleep(10e-6)
                lat.append((time.perf_counter_ns() - t0) / 1e3)
            out["latency_us"][f"gap_{gap * 1e3:g}ms"] = [
                round(float(x), 1) for x in np.percentile(lat, (50, 10, 90))]
    finally:
        k.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
