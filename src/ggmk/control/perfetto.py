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
Timestamps are microseconds from the first event.
"""
from __future__ import annotations

from ggmk.events import SAMPLED_BIT, EventType


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
    t0 = min(min((e[1] for e in events), default=1 << 64),
             min((c[0] for c in counters), default=1 << 64),
             min((c[0] for c in crossings), default=1 << 64))
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
    if any(c[1] != "cpu" for c in counters) or crossings:
        out.append({"ph": "M", "name": "process_name", "pid": pid + 1, "tid": 0,
                    "args": {"name": f"ggmk GPU kernel ({trace.get('target') or 'device'}) "
                                     "+ bridge"}})
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
                          "dropped": trace.get("dropped", 0), "cut": trace.get("cut", 0)}}


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
            "args": {"name": "host.tx (GPU -> CPU)"}}]
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
