"""Bridge benchmark: one JSON line.

bridge_tasks_per_s: CPU module -> GPU module -> CPU module over two bridge channels (cpu.in,
gpu.back), inline tasks; bridge_payload_4k_per_s: the same with 4 KB payloads, counting only
those delivered intact (payload_4k_ok of payload_4k_sent; payload_4k_alloc_fail: refused by a
full arena, on sys.error with ALLOC_FAIL: accounted for, not lost, and not counted as done);
bridge_tasks_per_s_sized (cpu_us_per_task_sized, ratio_vs_pipe_sized): the same pipeline
sized for throughput (the device's gpu.back holding 4096 messages, bridge={"batch": 4096,
"window": 4096}, boot max_batch=4096: CPU handler batches of up to 4096);
cpu_us_per_task: CPU time (both processes) per task of the bridge_tasks_per_s run (less
sensitive to the machine's load than throughput), and cpu_us_per_task_by_thread: the same
split by where it ran (the bridge pump thread, the CPU kernel's workers, the other host
threads: publisher and main; the device process); transfers_per_task; GPU -> CPU throughput
at batch sizes 8/64/512; round trip p50/p99 (one message CPU -> GPU -> CPU, the host waiting
on an Event the CPU handler sets) and roundtrip_stages_p50_us (the time from the publish call
to: its transfer to the device, the publish call's return, the transfer back, the CPU handler,
the publisher woken), back to back or ``--rt-gap-ms`` apart (a sporadic request, every
thread asleep when it comes), and roundtrip_device_cpu_share (the device process's CPU over
that loop, in cores: what an idle GPU kernel between sporadic requests costs); peers in the
same run: multiprocessing.Queue (one record per message) and a multiprocessing pipe with
64-record numpy batches (send_bytes).

    .venv/bin/python bench/bridge.py [--n 200000] [--mode process|inproc] [--device cpu|cuda|...]
                                     [--rt-gap-ms 0]

``--device``: the GPU kernel's target (default ``cpu``; ``auto`` = ``cuda`` where a GPU is
present). On ``cuda`` the same run also measures ``peer_cuda_copy_tasks_per_s``: the loop a
Python user would write without ggmk, each 64-record batch sent with numba-cuda's
``to_device`` and read back with ``copy_to_host`` on its own stream (transfers only, no
kernel), and ``ratio_vs_cuda_copy``.

``--mode process`` (default, as ``ggmk.dual.boot``): the GPU kernel in a device process, the
bridge's host side in shared memory; ``inproc``: the GPU kernel in this process
(``device_process=False``).
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.bridge.dualkit import boot, gen, publish_all  # noqa: E402
from tests.bridge import bridge_workloads as W  # noqa: E402
from ggmk.task import ALLOC_FAIL, TASK_DTYPE  # noqa: E402


def _echo_q(qin, qout):
    while True:
        x = qin.get()
        if x is None:
            break
        qout.put(x)


def _echo_pipe(conn):
    while True:
        b = conn.recv_bytes()
        if not b:
            break
        conn.send_bytes(b)


def peer_queue(n):
    qin, qout = mp.Queue(), mp.Queue()
    p = mp.Process(target=_echo_q, args=(qin, qout))
    p.start()
    rec = np.zeros(1, TASK_DTYPE).tobytes()
    t0 = time.perf_counter()
    sent = got = 0
    while got < n:
        while sent < n and sent - got < 1024:
            qin.put(rec)
            sent += 1
        qout.get()
        got += 1
    dt = time.perf_counter() - t0
    qin.put(None)
    p.join()
    return n / dt


def peer_pipe(n):
    a, b = mp.Pipe()
    p = mp.Process(target=_echo_pipe, args=(b,))
    p.start()
    batch = np.zeros(64, TASK_DTYPE)
    t0 = time.perf_counter()
    sent = got = 0
    while got < n:
        while sent < n and sent - got < 64 * 16:
            a.send_bytes(batch.tobytes())
            sent += 64
        got += len(np.frombuffer(a.recv_bytes(), TASK_DTYPE))
    dt = time.perf_counter() - t0
    a.send_bytes(b"")
    p.join()
    return got / dt


def peer_cuda_copy(n, batch=64):
    """The same records carried to a GPU and back the naive way: per 64-record batch one
    ``cuda.to_device`` and one ``copy_to_host`` (a non-blocking stream of this process's own
    context; the ggmk system is halted by then), synchronized per batch as a round trip is."""
    from numba import cuda
    from ggmk.device.targets.cuda import make_stream
    owner, stream = make_stream()            # (owner: keep the cuda.core stream alive)
    raw = np.zeros(batch, TASK_DTYPE).view(np.uint8)
    back = np.empty_like(raw)
    cuda.to_device(raw, stream=stream).copy_to_host(back, stream=stream)   # warm-up
    stream.synchronize()
    got = 0
    t0 = time.perf_counter()
    while got < n:
        cuda.to_device(raw, stream=stream).copy_to_host(back, stream=stream)
        stream.synchronize()
        got += batch
    rate = got / (time.perf_counter() - t0)
    owner.close()
    return rate


def _cpu_s(s) -> float:
    """CPU seconds used so far by this process and the device process (if any): a figure the
    machine's load disturbs far less than wall-clock throughput."""
    t = time.process_time()
    proc = getattr(s, "process", None)
    pid = getattr(proc, "pid", None)
    if pid:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return t


def _thread_cpu_s() -> dict:
    """CPU seconds per thread of this process by role (the bridge pump, the CPU kernel's
    workers, the rest: the publisher and the waiting main thread), from
    /proc/self/task/<native id>/stat: which host thread a message's cost lands on (the host
    is one interpreter: its threads share one GIL)."""
    tck = os.sysconf("SC_CLK_TCK")
    out = {"pump": 0.0, "cpu_workers": 0.0, "other": 0.0}
    for th in threading.enumerate():
        try:
            with open(f"/proc/self/task/{th.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        role = "pump" if th.name.startswith("ggmk-bridge") else \
            "cpu_workers" if th.name.startswith("ggmk-worker") else "other"
        out[role] += (int(fields[11]) + int(fields[12])) / tck
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--mode", choices=("process", "inproc"), default="process")
    ap.add_argument("--device", default="cpu",
                    help="the GPU kernel's target: cpu (default), sim, cuda or auto")
    ap.add_argument("--pump-helps", "--host-helps", dest="host_helps", action="store_true",
                    help="bridge={'pump_helps': True} (the pump runs the CPU handler of a "
                         "GPU -> CPU message itself while a CPU worker is parked)")
    ap.add_argument("--no-direct", action="store_true",
                    help="the pump sends every CPU -> GPU message (no send from the "
                         "publishing thread)")
    ap.add_argument("--rt-gap-ms", type=float, default=0.0,
                    help="idle time between the round trips (ms; default 0: back to back): "
                         "a sporadic request finds every thread asleep")
    a = ap.parse_args()
    if not 0 <= a.rt_gap_ms < 1000:
        ap.error(f"--rt-gap-ms {a.rt_gap_ms}: allowed 0 <= ms < 1000")
    n = a.n
    dp = a.mode == "process"
    out = {"target": "cpu", "mode": a.mode, "loadavg_1m": round(os.getloadavg()[0], 2),
           "roundtrip_gap_ms": a.rt_gap_ms,
           "cpus": os.cpu_count(), "pump_helps_on": a.host_helps, "direct": not a.no_direct}

    def _boot(**kw):
        kw["bridge"] = {**kw.get("bridge", {}), "pump_helps": a.host_helps}
        s = boot(device_process=dp, device=a.device, **kw)
        if a.no_direct and hasattr(s.bridge, "direct"):
            s.bridge.direct = False
        return s

    s = _boot()
    try:
        out["target"] = s.target
        b0 = s.stats()["bridge"]
        c0 = _cpu_s(s)
        p0 = time.process_time()
        th0 = _thread_cpu_s()
        t0 = time.perf_counter()
        publish_all(s, "cpu.in", n, timeout=600)
        assert s.run(timeout=600)
        dt = time.perf_counter() - t0
        c1, p1, th1 = _cpu_s(s), time.process_time(), _thread_cpu_s()
        out["cpu_us_per_task"] = round((c1 - c0) / n * 1e6, 3)
        # where it goes (clock-tick resolution: meaningful for runs of a second or more)
        split = {k: round((th1[k] - th0[k]) / n * 1e6, 3) for k in th1}
        split["device_process"] = round(((c1 - c0) - (p1 - p0)) / n * 1e6, 3)
        out["cpu_us_per_task_by_thread"] = split
        assert W.REC.back_n == n
        b1 = s.stats()["bridge"]
        out["bridge_tasks_per_s"] = round(n / dt)
        out["transfers_per_task"] = round((b1["transfers"] - b0["transfers"]) / (2 * n), 4)
        W.REC.clear()
        data = bytes(4096)
        W.REC.expect_payload = data
        m = max(200, n // 100)
        s.cpu.dead_letters("sys.error")          # (empty: nothing failed so far)
        t0 = time.perf_counter()
        publish_all(s, "cpu.in", m, payload=data, timeout=600)
        assert s.run(timeout=600)
        dt = time.perf_counter() - t0
        ok = sum(1 for r in W.REC.back if r[2])
        _, codes = s.cpu.dead_letters("sys.error")
        codes = np.asarray(codes).astype(np.int64)
        # payloads/s counts the delivered, intact ones only; the ones a full arena refused
        # (ALLOC_FAIL on sys.error: accounted for, not lost) are counted apart
        out["bridge_payload_4k_per_s"] = round(ok / dt)
        out["payload_4k_sent"] = m
        out["payload_4k_ok"] = ok
        out["payload_4k_alloc_fail"] = int((codes == ALLOC_FAIL).sum())
        out["payload_4k_other_errors"] = int((codes != ALLOC_FAIL).sum())
        lat, stages = [], []
        ev = W.REC.back_event
        handled = [0]

        def handled_set(real=ev.set):           # the CPU handler saw the message
            handled[0] = time.perf_counter_ns()
            real()
        ev.set = handled_set
        crossings = s.bridge.crossings
        ch = s.channel("cpu.in")
        dev0, rt0 = _cpu_s(s) - time.process_time(), time.monotonic()
        try:
            for i in range(300):
                if a.rt_gap_ms:
                    time.sleep(a.rt_gap_ms / 1e3)
                W.REC.clear()
                handled[0] = 0
                t0 = time.perf_counter_ns()
                ch.publish(meta0=i)
                t1 = time.perf_counter_ns()
                # a blocking wait: a spinning waiter would take one of the (two) cores the
                # pump, the device thread and the workers share
                assert ev.wait(10), "no round trip within 10 s"
                t4 = time.perf_counter_ns()
                lat.append((t4 - t0) / 1e3)
                sent = next((c[0] for c in list(crossings) if c[0] >= t0 and c[1] == "out"), 0)
                got = next((c[0] for c in list(crossings) if c[0] >= t0 and c[1] == "in"), 0)
                if sent and got and handled[0]:
                    stages.append([(x - t0) / 1e3 for x in (sent, t1, got, handled[0], t4)])
        finally:
            del ev.set
        out["roundtrip_p50_us"] = round(float(np.percentile(lat, 50)), 1)
        out["roundtrip_p99_us"] = round(float(np.percentile(lat, 99)), 1)
        # what the round trips (and the idle gaps between them) cost the device process: the
        # share of one core its threads used over the loop
        out["roundtrip_device_cpu_share"] = round(
            (_cpu_s(s) - time.process_time() - dev0) / (time.monotonic() - rt0), 3)
        if stages:
            # where a round trip's time goes: p50 of the time from the publish call to each
            # point (the first transfer each way after it)
            p50 = np.percentile(np.array(stages), 50, axis=0)
            out["roundtrip_stages_p50_us"] = {
                k: round(float(v), 1) for k, v in zip(
                    ("sent_to_device", "publish_returned", "received_from_device",
                     "cpu_handler_ran", "publisher_woke"), p50)}
        bs_ = s.stats()["bridge"]
        out["direct_sends"] = bs_.get("direct_sends")
        out["pump_helps"] = bs_.get("helped")
    finally:
        s.halt()
    # sized for throughput: the same pipeline with the device's GPU -> CPU channel holding
    # 4096 messages, 4096-record transfers and credits, CPU handler batches of up to 4096
    s = _boot(sized=True, max_batch=4096, bridge={"batch": 4096, "window": 4096})
    try:
        publish_all(s, "cpu.in", 1000)
        assert s.run(timeout=600)
        W.REC.clear()
        c0, t0 = _cpu_s(s), time.perf_counter()
        publish_all(s, "cpu.in", n, timeout=600)
        assert s.run(timeout=600)
        dt = time.perf_counter() - t0
        assert W.REC.back_n == n
        out["bridge_tasks_per_s_sized"] = round(n / dt)
        out["cpu_us_per_task_sized"] = round((_cpu_s(s) - c0) / n * 1e6, 3)
    finally:
        s.halt()
    for bs in (8, 64, 512):
        s = _boot(bridge={"batch": bs})
        try:
            t0 = time.perf_counter()
            gen(s, "GEN", n)
            assert s.run(timeout=600)
            out[f"gpu_to_cpu_tasks_per_s_batch_{bs}"] = round(n / (time.perf_counter() - t0))
        finally:
            s.halt()
    out["peer_mp_queue_tasks_per_s"] = round(peer_queue(min(n, 50_000)))
    out["peer_pipe_batched_tasks_per_s"] = round(peer_pipe(n))
    out["ratio_vs_pipe"] = round(out["bridge_tasks_per_s"] / out["peer_pipe_batched_tasks_per_s"], 3)
    out["ratio_vs_pipe_sized"] = round(out["bridge_tasks_per_s_sized"] /
                                       out["peer_pipe_batched_tasks_per_s"], 3)
    if out["target"] == "cuda":
        out["peer_cuda_copy_tasks_per_s"] = round(peer_cuda_copy(min(n, 200_000)))
        out["ratio_vs_cuda_copy"] = round(out["bridge_tasks_per_s"] /
                                          out["peer_cuda_copy_tasks_per_s"], 3)
    out["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
