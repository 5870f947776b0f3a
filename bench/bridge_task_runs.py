"""Where the GPU kernel's work on a bridged message goes: ``bench/bridge.py``'s pipeline (CPU ->
GPU -> CPU over cpu.in and gpu.back), sized (as its ``_sized`` run) or with the workload's
defaults; per device task type, the runs, WAIT outcomes and OKs per message (RX: the bridge's
ingress, TX: the bridge's egress, the others by type id: 112 is the GPU module's echo), with
the throughput, as one JSON line.

    PYTHONPATH=src .venv/bin/python bench/bridge_task_runs.py [--n 300000] [--defaults]
"""
import argparse
import json
import sys
import time

sys.path.insert(0, ".")

from ggmk.bridge import device_side as ds  # noqa: E402
from tests.bridge import bridge_workloads as W  # noqa: E402
from tests.bridge.dualkit import boot, publish_all  # noqa: E402


def _name(t: int) -> str:
    if ds.is_bridge_type(t):
        if ds.BASE + 0x1000 <= t < ds.BASE + 0x2000:
            return "RX"
        if ds.BASE + 0x2000 <= t < ds.BASE + 0x3000:
            return "TX"
    return str(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--defaults", action="store_true", help="the workload's defaults, not sized")
    a = ap.parse_args()
    kw = {} if a.defaults else dict(sized=True, max_batch=4096,
                                    bridge={"batch": 4096, "window": 4096})
    s = boot(device_process=True, **kw)
    try:
        publish_all(s, "cpu.in", 1000)           # warm
        assert s.run(timeout=600)
        W.REC.clear()
        m0 = s.kernel.metrics()["types"]
        t0 = time.perf_counter()
        publish_all(s, "cpu.in", a.n, timeout=600)
        assert s.run(timeout=600)
        dt = time.perf_counter() - t0
        m1 = s.kernel.metrics()["types"]
        out = {"sized": not a.defaults, "tasks_per_s": round(a.n / dt)}
        for t, row in m1.items():
            d = {k: row[k] - m0.get(t, {}).get(k, 0) for k in ("run", "wait", "ok")}
            if d["run"] >= a.n // 100:
                out[_name(t)] = {k: round(v / a.n, 3) for k, v in d.items()}
        print(json.dumps(out), flush=True)
    finally:
        s.halt()


if __name__ == "__main__":
    main()
