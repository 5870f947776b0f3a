"""Prometheus exposition of a running system: a custom collector that reads the counters at
scrape time (nothing is copied in between), rendered by ``prometheus_client.generate_latest``.

Needs ``prometheus_client`` (imported lazily; the rest of the control plane works without it).
"""
from __future__ import annotations

import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class GgmkCollector:
    """``source()`` returns ``{"stats", "kernels", "uptime_s", "dual"}`` (see ControlServer)."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        snap = self.source()
        s = snap["stats"]
        cs = s["cpu"] if snap["dual"] else s
        yield GaugeMetricFamily("ggmk_up", "1 while the system runs", value=1)
        yield GaugeMetricFamily("ggmk_uptime_seconds", "Seconds since boot",
                                value=snap["uptime_s"])
        k = GaugeMetricFamily("ggmk_kernel_tick", "Current tick per kernel", labels=["kernel"])
        d = CounterMetricFamily("ggmk_kernel_tasks_done", "Tasks finished OK per kernel",
                                labels=["kernel"])
        e = CounterMetricFamily("ggmk_kernel_errors", "Failed tasks per kernel",
                                labels=["kernel"])
        q = GaugeMetricFamily("ggmk_kernel_queued", "Accepted, unfinished tasks per kernel",
                              labels=["kernel"])
        for kern in snap["kernels"]:
            k.add_metric([kern["name"]], kern.get("tick") or 0)
            d.add_metric([kern["name"]], kern.get("tasks_done") or 0)
            e.add_metric([kern["name"]], kern.get("errors") or 0)
            q.add_metric([kern["name"]], kern.get("queued") or 0)
        yield from (k, d, e, q)
        wt = CounterMetricFamily("ggmk_worker_tasks", "Tasks run per CPU worker",
                                 labels=["worker"])
        wb = CounterMetricFamily("ggmk_worker_batches", "Batches run per CPU worker",
                                 labels=["worker"])
        wp = CounterMetricFamily("ggmk_worker_parks", "Parks per CPU worker", labels=["worker"])
        for w in cs.get("workers", []):
            wt.add_metric([str(w["id"])], w["tasks"])
            wb.add_metric([str(w["id"])], w["batches"])
            wp.add_metric([str(w["id"])], w["parks"])
        yield from (wt, wb, wp)
        tt = CounterMetricFamily("ggmk_type_tasks", "Per-type task counters (CPU kernel)",
                                 labels=["type", "counter"])
        for name, counters in cs.get("types", {}).items():
            for c, v in counters.items():
                tt.add_metric([name, c], v)
        yield tt
        ce = CounterMetricFamily("ggmk_channel_emitted", "Messages accepted per channel",
                                 labels=["channel"])
        cd = CounterMetricFamily("ggmk_channel_dropped", "Messages dropped per channel",
                                 labels=["channel"])
        cq = GaugeMetricFamily("ggmk_channel_depth", "Messages queued per channel",
                               labels=["channel"])
        for name, c in (cs.get("channels") or {}).items():
            if _num(c.get("emitted")):
                ce.add_metric([name], c["emitted"])
            if _num(c.get("dropped")):
                cd.add_metric([name], c["dropped"])
            if _num(c.get("depth")):
                cq.add_metric([name], c["depth"])
        yield from (ce, cd, cq)
        arena = (cs.get("arena") or {}).get("total", {})
        ab = GaugeMetricFamily("ggmk_arena_bytes", "Arena bytes", labels=["kind"])
        for kind in ("total_bytes", "used_bytes", "high_watermark"):
            if _num(arena.get(kind)):
                ab.add_metric([kind], arena[kind])
        yield ab
        yield CounterMetricFamily("ggmk_handler_exceptions", "Handler exceptions",
                                  value=cs.get("exceptions", 0))
        tr = CounterMetricFamily("ggmk_trace_events", "Trace events by fate", labels=["fate"])
        for fate, v in ((cs.get("trace") or {}).get("total") or {}).items():
            tr.add_metric([fate], v)
        yield tr
        if snap["dual"]:
            gpu = s.get("gpu") or {}
            g = gpu.get("global", {})
            # (cumulative over device resets: DualSystem.gpu_metrics; high watermarks the
            # largest seen)
            gm = GaugeMetricFamily("ggmk_gpu_metric", "GPU kernel global metrics (published; "
                                   "counters summed over device resets)", labels=["name"])
            for name, v in g.items():
                if _num(v):
                    gm.add_metric([_NAME_RE.sub("_", name)], v)
            yield gm
            if _num(gpu.get("kernel_resets")):
                yield CounterMetricFamily("ggmk_gpu_kernel_resets",
                                          "GPU kernels replaced by a device reset",
                                          value=gpu["kernel_resets"])
            b = s.get("bridge") or {}
            bm = GaugeMetricFamily("ggmk_bridge_metric", "Bridge counters", labels=["name"])
            for name, v in b.items():
                if _num(v):
                    bm.add_metric([_NAME_RE.sub("_", name)], v)
            yield bm


def make_registry(source) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GgmkCollector(source))
    return reg
