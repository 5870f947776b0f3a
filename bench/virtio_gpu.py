"""virtio-gpu display benchmark: control-command round trip and full-frame present rate against
QEMU's vhost-user-gpu, with a same-run baseline (bare cross-process ping-pong over a UNIX socket,
and the cost of the frame copies alone). Prints one JSON line.

    .venv/bin/python bench/virtio_gpu.py [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np

from ggmk.drivers.virtio.backend import BackendNotFound, find_backend
from ggmk.drivers.virtio.gpu import Rect
from ggmk.modules.display import DisplayModule


def percentile(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_roundtrip(disp: DisplayModule, n: int) -> list[float]:
    gpu = disp.gpu
    res = gpu.create_resource(16, 16)             # not on a scanout: a pure control command
    rect = Rect(0, 0, 1, 1)
    for _ in range(200):
        gpu.transfer_to_host_2d(res.id, rect)
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        gpu.transfer_to_host_2d(res.id, rect)
        out.append((time.perf_counter_ns() - t) / 1e3)
    gpu.destroy_resource(res)
    return out


def bench_fps(width: int, height: int, seconds: float) -> tuple[float, bool]:
    with DisplayModule.open([(width, height)]) as disp:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (height, width, 4), dtype=np.uint8) for _ in range(2)]
        disp.present(frames[0])
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            disp.present(frames[n & 1])
            n += 1
        dt = time.perf_counter() - t0
        received = disp.counters()["frames_received"][0]
        ok = received == n + 1 and disp.snapshot().tobytes() == frames[(n - 1) & 1].tobytes()
        return n / dt, ok


def baseline_pingpong(n: int) -> list[float]:
    """The floor for any cross-process request/response: 8 bytes there and back."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            while True:
                m = b.recv(8)
                if not m:
                    break
                b.sendall(m)
        finally:
            os._exit(0)
    b.close()
    out = []
    for i in range(n + 200):
        t = time.perf_counter_ns()
        a.sendall(b"12345678")
        a.recv(8)
        if i >= 200:
            out.append((time.perf_counter_ns() - t) / 1e3)
    a.close()
    os.waitpid(pid, 0)
    return out


def baseline_copy_fps(width: int, height: int, seconds: float) -> float:
    """Frame copies alone (into backing, and once more as the pixels land): the floor for fps."""
    src = np.random.default_rng(1).integers(0, 256, (height, width, 4), dtype=np.uint8)
    dst, dst2 = np.empty_like(src), np.empty_like(src)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        np.copyto(dst2, dst)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--samples", type=int, default=5000)
    args = ap.parse_args()
    try:
        backend = find_backend()
    except BackendNotFound as e:
        print(json.dumps({"bench": "virtio_gpu", "skipped": str(e)}))
        return 0
    with DisplayModule.open([(1280, 800)]) as disp:
        rt = bench_roundtrip(disp, args.samples)
    fps_1280, ok1 = bench_fps(1280, 800, args.seconds)
    fps_1920, ok2 = bench_fps(1920, 1080, args.seconds)
    base = baseline_pingpong(args.samples)
    print(json.dumps({
        "bench": "virtio_gpu",
        "backend": backend,
        "cmd_roundtrip_p50_us": round(percentile(rt, 0.5), 1),
        "cmd_roundtrip_p99_us": round(percentile(rt, 0.99), 1),
        "fps_1280x800": round(fps_1280, 1),
        "fps_1920x1080": round(fps_1920, 1),
        "pixels_verified": ok1 and ok2,
        "baseline_socket_pingpong_p50_us": round(percentile(base, 0.5), 1),
        "baseline_socket_pingpong_p99_us": round(percentile(base, 0.99), 1),
        "baseline_copy_only_fps_1280x800": round(baseline_copy_fps(1280, 800, args.seconds / 2), 1),
        "baseline_copy_only_fps_1920x1080": round(baseline_copy_fps(1920, 1080, args.seconds / 2), 1),
        "targets": {"cmd_roundtrip_p50_us": "<= 100", "fps_1280x800": ">= 100"},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
