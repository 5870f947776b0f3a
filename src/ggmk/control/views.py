"""What ``ps``, ``kern``, ``chan`` and ``top`` show, computed from a running system.

Two costs, kept apart on purpose: :func:`summary` reads a handful of counters (per-kernel rows
and the bridge's totals: what ``ps``, ``kern ls`` and every ``top`` frame need) and never calls
``System.stats()``, which builds the full per-type/histogram dict; the full stats are only
built for ``ggmk stats`` and, at most every ``FULL_STATS_MAX_AGE`` seconds, shared by all
``top`` clients (see ``ControlServer._stats_cached``). Watching a system must not slow it.
"""
from __future__ import annotations

import secrets

import numpy as np

from ggmk.core.metrics import TypeCounter
from ggmk.core.trace import _Sampler
from ggmk.events import SAMPLED_BIT

_OK, _FAIL, _DROPPED = int(TypeCounter.OK), int(TypeCounter.FAIL), int(TypeCounter.DROPPED)


def _type_sums(cpu) -> tuple[int, int, int]:
    """(ok, fail, dropped) over all types, summed over the workers' metric shards."""
    ok = fail = dropped = 0
    for s in cpu.metrics._shards:
        t = s.types
        ok += int(t[_OK].sum())
        fail += int(t[_FAIL].sum())
        dropped += int(t[_DROPPED].sum())
    return ok, fail, dropped


def gpu_user_types(modules, type_id) -> list[int]:
    """Type ids of the GPU modules' handlers (the bridge's own service handlers excluded);
    ``type_id`` resolves a declared type (a name or an id)."""
    import ggmk.device as gd
    out = []
    for m in modules:
        if isinstance(m, gd.Module):
            for h in m.handlers:
                try:
                    out.append(int(type_id(h.type)))
                except (KeyError, ValueError, TypeError):
                    pass
    return out


def cpu_row(srv) -> dict:
    cpu = srv.cpu
    ok, fail, dropped = _type_sums(cpu)
    return {"name": "cpu", "state": srv.state, "workers": cpu.nworkers,
            "hal": type(cpu.hal).__name__, "deterministic": bool(cpu.deterministic),
            "tick": int(cpu.tick), "tasks_done": ok, "errors": fail, "dropped": dropped,
            "exceptions": cpu.exceptions_total, "queued": int(cpu.sched.outstanding),
            "tasks_by_worker": [w.tasks for w in cpu.workers]}


def gpu_row(srv, gm: dict | None) -> dict:
    """The GPU kernel's row from its published metrics (``DeviceKernel.metrics()``)."""
    sys_ = srv.system
    kern = getattr(sys_, "kernel", None)
    alive = kern is not None and kern.alive() and srv.state == "running"
    gl = (gm or {}).get("global", {})
    # gauges (its loop count, tasks queued) are the live kernel's own; the counters are
    # cumulative over resets when ``gm`` is (``DualSystem.gpu_metrics``)
    live = (gm or {}).get("live_global", gl)
    types = (gm or {}).get("types", {})
    user = set(srv.gpu_types)
    done = sum(v.get("ok", 0) for t, v in types.items() if int(t) in user)
    fail = sum(v.get("fail", 0) for t, v in types.items() if int(t) in user)
    return {"name": "gpu", "state": srv.state if alive else "stopped",
            "target": getattr(sys_, "target", None), "workers": (gm or {}).get("workers"),
            "tick": live.get("loops", 0), "tasks_done": done, "errors": fail,
            "dropped": gl.get("dropped", 0) + gl.get("chan_dropped", 0),
            "dispatched": gl.get("dispatched", 0),
            "queued": max(0, live.get("enqueued", 0) - live.get("dispatched", 0)),
            "resets": (gm or {}).get("kernel_resets", 0)}


def gpu_metrics(srv) -> dict | None:
    """The GPU kernel's metrics: counters cumulative over device resets where the system
    keeps them (``DualSystem.gpu_metrics``), else the kernel's own."""
    cum = getattr(srv.system, "gpu_metrics", None)
    if callable(cum):
        return cum()
    kern = getattr(srv.system, "kernel", None)
    if kern is None:
        return None
    try:
        if kern.alive():
            return kern.metrics()
    except Exception:   # noqa: BLE001 - a stopping kernel: show the last known
        pass
    return getattr(srv.system, "_last_gpu", None)


BRIDGE_TOTALS = ("transfers", "records", "payload_copies", "payload_bytes", "retries",
                 "failed_transfers", "dead_lettered", "alloc_fail", "errors", "paused")


def bridge_summary(srv) -> dict | None:
    b = getattr(srv.system, "bridge", None)
    if not srv.dual or b is None:
        return None
    st = b.stats()
    return {**{k: st.get(k) for k in BRIDGE_TOTALS}, "channels": st.get("channels", {})}


def summary(srv) -> dict:
    """Cheap: per-kernel rows and the bridge totals (no ``System.stats()``)."""
    kernels = [cpu_row(srv)]
    if srv.dual:
        kernels.append(gpu_row(srv, gpu_metrics(srv)))
    return {"kernels": kernels, "bridge": bridge_summary(srv)}


CHAN_KEYS = ("name", "type", "mode", "guarantee", "capacity", "depth", "high_watermark",
             "emitted", "dropped", "closed")


def channel_rows(srv, cpu_chans: dict, gm: dict | None, bridge: dict | None) -> list[dict]:
    """One row per channel: ``kernel`` is cpu, gpu, or the bridge direction (cpu->gpu,
    gpu->cpu) with the bridge's per-channel counters (crossed, in flight, dead)."""
    bch = (bridge or {}).get("channels", {})
    rows = []
    for c in cpu_chans.values():
        if not isinstance(c, dict):
            continue
        r = {k: c.get(k) for k in CHAN_KEYS}
        b = bch.get(c.get("name"))
        if b is None:
            r["kernel"] = "cpu"
        else:
            r["kernel"] = b.get("direction")
            r["crossed"] = b.get("pushed", b.get("crossed", 0))
            r["in_flight"] = b.get("in_flight", b.get("waiting_for_room", 0))
            r["bridge_dead"] = b.get("dead", 0)
        rows.append(r)
    for name, c in ((gm or {}).get("channels") or {}).items():
        if name in bch:
            continue            # shown once, as a bridge channel
        rows.append({"name": name, "kernel": "gpu", "type": srv.cpu.type_name(c.get("type", 0)),
                     "mode": c.get("mode"), "guarantee": c.get("guarantee"),
                     "capacity": c.get("capacity"), "depth": c.get("depth"),
                     "high_watermark": c.get("high_watermark"), "emitted": c.get("emitted"),
                     "dropped": c.get("dropped"), "closed": None})
    return rows


def sample_events(chunks, every: int, state: dict | None = None):
    """Keep 1 of ``every`` events of each worker (``ggmk trace --sample N``).

    ``chunks``: ``(worker, events)`` in the order each worker recorded them (the collector
    makes one chunk per worker every 50 ms, often of fewer than ``every`` events). Each
    worker's events are one stream across its chunks, sampled as the CPU tracer samples
    (``core.trace``): one kept at a random position in each block of ``every`` consecutive
    events, so it cannot alias with periodic patterns (START / END pairs), and each kept one
    is flagged ``SAMPLED_BIT``: ``scaled_counts(events, every)`` scales counts back (an event
    the tracer itself sampled at rate R then stands for R * ``every``). Sampling each chunk
    on its own kept every chunk's first event, far more than 1 in ``every``.

    ``state``: a dict to carry the streams' positions between calls that sample one stream
    piece by piece (a follower); without it each call starts its streams afresh, at random,
    so a piece shorter than ``every`` keeps an event with probability len / ``every``.
    Returns new arrays; the chunks given are not modified."""
    if every <= 1:
        return chunks
    samplers = {} if state is None else state
    out = []
    for w, part in chunks:
        sp = samplers.get(w)
        if sp is None:
            sp = samplers[w] = _Sampler(every, secrets.randbits(63),
                                        w if isinstance(w, int) and w >= 0 else 1 << 20)
        if not len(part):
            continue
        kept = part[sp.many(len(part))]            # (fancy indexing: a copy)
        if len(kept):
            kept["event"] |= SAMPLED_BIT
            out.append((w, kept))
    return out


def filter_events(chunks, type_ids: set | None):
    """Keep the events of task types ``type_ids`` (None: all)."""
    if type_ids is None:
        return chunks
    ids = np.fromiter(type_ids, dtype=np.uint32)
    out = []
    for w, part in chunks:
        sel = part[np.isin(part["task_type"], ids)]
        if len(sel):
            out.append((w, sel))
    return out
