"""Chrome trace-event JSON (opens in Perfetto / chrome://tracing) from ``ggmk trace`` events.

One process (the CPU kernel), one track (thread) per worker plus one for the host; each task
becomes a complete slice ("X") from its TASK_START to its TASK_END on the worker that ran it
(tasks of one batch with the same type and times are one slice with ``n`` in its args);
everything else (drops, full channels, failures, retries, yields, parks) is an instant event
("i") on the worker's track. Counter tracks ("C", sampled by the server every 50 ms): the CPU
kernel's queue depth, and for a dual system a second process, the GPU kernel and the bridge,
with the GPU kernel's queue depth and each bridge channel's crossed and in-flight messages.
Bridge crossings (each batch transfer the bridge made, as it made it): a slice on the CPU
kernel's "bridge" track and one on the GPU process's "host.rx" (CPU -> GPU) or "host.tx"
(GPU -> CPU) track, joined by a flow arrow in the direction the records went.
GPU kernel (``trace["gpu_events"]``, drained from the GPU kernel's trace ring, each record
saying which worker, a block, recorded it): one track per GPU worker in the GPU process; a
task slice ("X", named by type, ``n`` = tasks in args) for each homogeneous batch a worker ran
(TASK_START / TASK_END with ``n`` > 0; compiled into the GPU kernel by ``ggmk boot
--trace-tasks``, or for the types of a module at trace level ``all``); every other GPU event
(failures and drops with their code, full channels, retries, yields, parks, wakes) an instant
event on its worker's track. Watchdog events (recorded on the CPU kernel's host track) are
also drawn on the GPU process, process-wide.
Timestamps are microseconds from the first event.
"""
from __future__ import annotations

from ggmk.events import SAMPLED_BIT, EventType
from ggmk.task import code_name

GPU_TID0 = 16           # the GPU process's worker tracks: tid GPU_TID0 + worker (1, 2: host rings)


def _ev_name(code: int) -> str:
    try:
        return EventType(code).name
    except ValueError:
        return f"EVENT_{code}"


def to_chrome(trace: dict) -> dict:
    """``trace``: the ``trace`` command's result (events ``[worker, ts, event, tenant, type,
    arg0, arg1]``, ``types`` {id: name}, ``workers``, ``nworkers``)."""
    events = trace.get("events", [])
    types = {int(k): v for k, v in (trace.get("types") or {}).items()}
    nworkers = int(trace.get("nworkers", 0))
    nrings = int(trace.get("workers", nworkers + 1))
    pid = int(trace.get("pid", 1))
    counters = trace.get("counters") or []
    crossings = trace.get("crossings") or []
    gpu_events = trace.get("gpu_events") or []
    t0 = min(min((e[1] for e in events), default=1 << 64),
             min((c[0] for c in counters), default=1 << 64),
             min((c[0] for c in crossings), default=1 << 64),
             min((e[1] for e in gpu_events), default=1 << 64))
    t0 = 0 if t0 == 1 << 64 else t0
    out = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
            "args": {"name": f"ggmk CPU kernel ({trace.get('app') or 'app'})"}}]
    for w in range(nrings):
        label = f"worker {w}" if w < nworkers else "host"
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": w,
                    "args": {"name": label}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": w,
                    "args": {"sort_index": w}})
    open_: dict = {}
    slices: dict = {}
    for w, ts, ev, tenant, ttype, a0, a1 in events:
        code = ev & (SAMPLED_BIT - 1)
        if code == EventType.TASK_START:
            open_[(w, ttype, a0)] = ts
            continue
        if code == EventType.TASK_END:
            start = open_.pop((w, ttype, a0), None)
            if start is not None:
                key = (w, ttype, start, ts)
                n = slices.get(key)
                slices[key] = (n or 0) + 1
            continue
        if code in (EventType.TASK_YIELD, EventType.TASK_RETRY, EventType.TASK_FAIL):
            open_.pop((w, ttype, a0), None)
        out.append({"ph": "i", "s": "t", "name": _ev_name(code), "cat": "ggmk",
                    "pid": pid, "tid": w, "ts": (ts - t0) / 1000.0,
                    "args": {"type": types.get(ttype, ttype), "tenant": tenant,
                             "arg0": a0, "arg1": a1, "sampled": bool(ev & SAMPLED_BIT)}})
    for (w, ttype, start, end), n in slices.items():
        out.append({"ph": "X", "name": types.get(ttype, f"TYPE_{ttype}"), "cat": "task",
                    "pid": pid, "tid": w, "ts": (start - t0) / 1000.0,
                    "dur": max(0, end - start) / 1000.0, "args": {"n": n}})
    gpu_side = any(c[1] != "cpu" for c in counters) or crossings or gpu_events or \
        trace.get("gpu_nworkers")
    if gpu_side:
        out.append({"ph": "M", "name": "process_name", "pid": pid + 1, "tid": 0,
                    "args": {"name": f"ggmk GPU kernel ({trace.get('target') or 'device'}) "
                                     "+ bridge"}})
        out.extend(_gpu(trace, gpu_events, types, pid + 1, t0))
        for w, ts, ev, tenant, ttype, a0, a1 in events:
            if ev & (SAMPLED_BIT - 1) == EventType.WATCHDOG:   # the watchdog watches the GPU
                out.append({"ph": "i", "s": "p", "name": "WATCHDOG " + _WD.get(a0, str(a0)),
                            "cat": "watchdog", "pid": pid + 1, "tid": 0,
                            "ts": (ts - t0) / 1000.0, "args": {"missed": a1}})
    out.extend(_crossings(crossings, pid, nrings, t0))
    for ts, kernel, name, value in counters:
        out.append({"ph": "C", "name": f"{kernel} {name}", "cat": "counter",
                    "pid": pid if kernel == "cpu" else pid + 1, "tid": 0,
                    "ts": (ts - t0) / 1000.0, "args": {"value": value}})
    body = [e for e in out if e["ph"] != "M"]
    body.sort(key=lambda e: e["ts"])
    return {"traceEvents": [e for e in out if e["ph"] == "M"] + body,
            "displayTimeUnit": "ns",
            "otherData": {"source": "ggmk trace", "events": len(events),
                          "dropped": trace.get("dropped", 0), "cut": trace.get("cut", 0),
                          "gpu_events": len(gpu_events),
                          "gpu_dropped": trace.get("gpu_dropped", 0),
                          "gpu_lost": trace.get("gpu_lost", 0),
                          "gpu_cut": trace.get("gpu_cut", 0),
                          "gpu_trace_tasks": bool(trace.get("gpu_trace_tasks", False))}}


_WD = {1: "warn", 2: "reset"}


def _gpu(trace: dict, gpu_events, types: dict, gpid: int, t0: int) -> list:
    """The GPU process's worker tracks: task slices and instant events (module docstring).
    A slice needs both ends in the window: a START whose END is not (yet) in the trace, or an
    END whose START was cut off, draws nothing. A per-task TASK_END (``n`` = 0, recorded for
    a module at trace level ``all``) is a marker inside the slice of its batch: not drawn."""
    nworkers = int(trace.get("gpu_nworkers") or 0)
    seen = {e[0] for e in gpu_events}
    nthreads = int(trace.get("gpu_host_threads") or 0)
    out = []
    for w in sorted(set(range(nworkers)) | seen):
        label = f"GPU worker {w}" + (f" (host thread {w % nthreads})"
                                     if nthreads and trace.get("target") == "cpu" else "")
        out.append({"ph": "M", "name": "thread_name", "pid": gpid, "tid": GPU_TID0 + w,
                    "args": {"name": label}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": gpid, "tid": GPU_TID0 + w,
                    "args": {"sort_index": w}})
    handlers = {int(k): v for k, v in (trace.get("gpu_handlers") or {}).items()}
    names = {**{t: h for t, h in handlers.items()}, **types}   # a type's name, else handler's
    open_: dict = {}
    for w, ts, ev, tenant, ttype, a0, a1, n in gpu_events:
        code = ev & (SAMPLED_BIT - 1)
        tid = GPU_TID0 + w
        if code == EventType.TASK_START and n > 0:
            open_[(w, ttype)] = ts
            continue
        if code == EventType.TASK_END:
            if n > 0:
                start = open_.pop((w, ttype), None)
                if start is not None and start <= ts:
                    out.append({"ph": "X", "name": names.get(ttype, f"TYPE_{ttype}"),
                                "cat": "gpu_task", "pid": gpid, "tid": tid,
                                "ts": (start - t0) / 1000.0, "dur": (ts - start) / 1000.0,
                                "args": {"n": n, "type": ttype,
                                         "handler": handlers.get(ttype, "?")}})
            continue
        args = {"type": names.get(ttype, ttype), "tenant": tenant, "arg0": a0, "arg1": a1}
        if code == EventType.TASK_FAIL:
            args["code"] = code_name(a0 - (1 << 32) if a0 >= 1 << 31 else a0)
        out.append({"ph": "i", "s": "t", "name": _ev_name(code), "cat": "gpu", "pid": gpid,
                    "tid": tid, "ts": (ts - t0) / 1000.0, "args": args})
    return out


def _crossings(crossings, pid: int, bridge_tid: int, t0: int) -> list:
    """Slices and flow arrows for the bridge's batch transfers (see the module docstring)."""
    if not crossings:
        return []
    gpu = pid + 1
    rx, tx = 1, 2                     # the GPU process's host ring tracks
    out = [{"ph": "M", "name": "thread_name", "pid": pid, "tid": bridge_tid,
            "args": {"name": "bridge"}},
           {"ph": "M", "name": "thread_name", "pid": gpu, "tid": rx,
            "args": {"name": "host.rx (CPU -> GPU)"}},
           {"ph": "M", "name": "thread_name", "pid": gpu, "tid": tx,
            "args": {"name": "host.tx (GPU -> CPU)"}},
           {"ph": "M", "name": "thread_sort_index", "pid": gpu, "tid": rx,
            "args": {"sort_index": 1 << 20}},      # after the GPU worker tracks
           {"ph": "M", "name": "thread_sort_index", "pid": gpu, "tid": tx,
            "args": {"sort_index": (1 << 20) + 1}}]
    for i, (ts, direction, n) in enumerate(crossings):
        t = (ts - t0) / 1000.0
        out_ = direction == "out"
        src = (pid, bridge_tid) if out_ else (gpu, tx)
        dst = (gpu, rx) if out_ else (pid, bridge_tid)
        name = f"{n} records " + ("CPU -> GPU" if out_ else "GPU -> CPU")
        # a 1 us slice at each end (the flow binds to them), the arrow from sender to receiver
        for (p, tid), ph in ((src, "s"), (dst, "f")):
            out.append({"ph": "X", "name": name, "cat": "bridge", "pid": p, "tid": tid,
                        "ts": t, "dur": 1.0, "args": {"records": n}})
            ev = {"ph": ph, "name": "crossing", "cat": "bridge", "id": i, "pid": p,
                  "tid": tid, "ts": t}
            if ph == "f":
                ev["bp"] = "e"
            out.append(ev)
    return out
