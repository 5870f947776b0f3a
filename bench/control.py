"""Control-plane benchmark: boots examples/demo_app.py with ``ggmk boot`` (a real detached
process), then over the real socket measures the emit and ps round trips, and the task rate
while a ``top`` client and a 1 Hz Prometheus scrape watch vs. unwatched (same run). Prints one
JSON line::

    .venv/bin/python bench/control.py [--seconds 3] [--n 2000] [--rounds 3]

The rate is measured in alternating unwatched/watched rounds (medians), so a change in the
machine's load during the run hits both sides.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from ggmk.control.client import Client
from ggmk.control.paths import StatePaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGMK = os.path.join(os.path.dirname(sys.executable), "ggmk")


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) / 1e3, q))


def rate(c: Client, seconds: float) -> float:
    """Tasks/s with the queue kept non-empty by emitting in bursts."""
    def done():
        return c.call("ps")["kernels"][0]
    k0 = done()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if done()["queued"] < 4000:
            c.call("emit", {"type": "WORK", "count": 2000, "meta0": 100})
        else:
            time.sleep(0.005)     # the feeder itself must not be the load being measured
    k1 = done()
    return (k1["tasks_done"] - k0["tasks_done"]) / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7,
                    help="unwatched/watched pairs (medians; one 3 s round swings +-10%%)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ggb-", dir="/tmp")
    env = {**os.environ, "GGMK_STATE_DIR": d}
    r = subprocess.run([GGMK, "boot", os.path.join(ROOT, "examples", "demo_app.py")], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"boot failed: {r.stderr}")
    paths = StatePaths.resolve(d)
    try:
        with Client(paths) as c:
            emit_ns = []
            for _ in range(a.n):
                t = time.perf_counter_ns()
                c.call("emit", {"type": "POINT", "payload": '{"x": 1, "n": 2, "tag": "00112233"}'})
                emit_ns.append(time.perf_counter_ns() - t)
            ps_ns = []
            for _ in range(max(100, a.n // 4)):
                t = time.perf_counter_ns()
                c.call("ps")
                ps_ns.append(time.perf_counter_ns() - t)
            # alternate unwatched / watched rounds so drift in the machine's load hits both
            unw, wat = [], []
            for _ in range(a.rounds):
                unw.append(rate(c, a.seconds))
                stop = threading.Event()

                def top_client():
                    with Client(paths, timeout=None) as t:
                        for _ in t.stream("top", {"interval": 1.0}):
                            if stop.is_set():
                                return

                def scraper():
                    with Client(paths) as s:
                        while not stop.wait(1.0):
                            s.call("stats", {"format": "prometheus"})

                ths = [threading.Thread(target=top_client, daemon=True),
                       threading.Thread(target=scraper, daemon=True)]
                for t in ths:
                    t.start()
                wat.append(rate(c, a.seconds))
                stop.set()
                for t in ths:
                    t.join(5)
            unwatched, watched = float(np.median(unw)), float(np.median(wat))
        out = {"emit_roundtrip_p50_us": round(pct(emit_ns, 50), 1),
               "emit_roundtrip_p99_us": round(pct(emit_ns, 99), 1),
               "ps_p50_us": round(pct(ps_ns, 50), 1),
               "watched_rate_ratio": round(watched / unwatched, 3) if unwatched else None,
               "unwatched_tasks_per_s": round(unwatched), "watched_tasks_per_s": round(watched),
               "n": a.n, "seconds": a.seconds, "rounds": a.rounds,
               "load": os.getloadavg()[0],
               "rounds_unwatched": [round(x) for x in unw], "rounds_watched": [round(x) for x in wat]}
        print(json.dumps(out))
    finally:
        subprocess.run([GGMK, "halt", "--timeout", "1"], env=env, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
