"""The control server's observation side: the trace collector thread (each worker's trace
ring, the GPU kernel's trace, counters and bridge crossings into bounded buffers; warning and
error events into log lines) and the commands that read it (``trace``, ``top``): a mixin of
:class:`ggmk.control.server.ControlServer`.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque

import numpy as np

import ggmk
from ggmk.control import protocol as P
from ggmk.control import views
from ggmk.control.commands import STREAMED
from ggmk.control.protocol import TRACE_CAPACITY, ControlError

COLLECT_INTERVAL = 0.05             # seconds between trace collections


class _TraceFollower:
    """A ``ggmk trace -f`` client's queue of trace chunks (lists of (worker, events)): the
    newest ``capacity`` chunks; what falls off the old end (a client that reads slower than
    the trace grows) is counted, in events, and told to the client (``{"dropped": n}``)."""

    def __init__(self, capacity: int = 1024):
        self.q: deque = deque()
        self.capacity = capacity
        self.dropped = 0
        self.lock = threading.Lock()

    def push(self, chunk: list) -> None:
        with self.lock:
            if len(self.q) >= self.capacity:
                self.dropped += sum(len(part) for _, part in self.q.popleft())
            self.q.append(chunk)

    def take(self) -> tuple[list, int]:
        """Everything queued (flattened) and the events dropped since the last take."""
        with self.lock:
            out = [x for chunk in self.q for x in chunk]
            self.q.clear()
            lost, self.dropped = self.dropped, 0
        return out, lost



def _device_clock_offset(target: str) -> int:
    """Nanoseconds to add to a GPU kernel trace timestamp to put it on the trace's clock
    (``time.perf_counter_ns``, CLOCK_MONOTONIC). ``cpu`` and ``sim`` read CLOCK_MONOTONIC
    themselves (same machine, also from a device process): 0. ``cuda`` reads ``%globaltimer``,
    nanoseconds since the Unix epoch: the offset between the wall clock and the monotonic
    clock, taken now (good to the timer's microsecond resolution)."""
    if target != "cuda":
        return 0
    return time.perf_counter_ns() - time.time_ns()


class Observe:
    """Trace collection and the commands that read it (mixed into ``ControlServer``)."""

    def _collect_loop(self) -> None:
        while not self._stop.wait(COLLECT_INTERVAL):
            try:
                self._collect_trace()
                self._sample_counters()
            except Exception:   # noqa: BLE001
                self.log.add("error", "trace", traceback.format_exc())

    def _sample_counters(self) -> None:
        """Queue depths of both kernels and the bridge's per-channel counters, on the trace's
        clock (perf_counter_ns), for the Perfetto counter tracks: a few counter reads per
        collection, nothing on the kernels' hot path."""
        if self.state != "running":
            return
        ts = time.perf_counter_ns()
        rows = [(ts, "cpu", "queued", int(self.cpu.sched.outstanding))]
        if self.dual:
            gm = views.gpu_metrics(self) or {}
            # (the live kernel's own counters: the cumulative ones keep what a reset-away kernel
            # never dispatched, which is not queued anywhere now)
            gl = gm.get("live_global", gm.get("global", {}))
            rows.append((ts, "gpu", "queued",
                         max(0, gl.get("enqueued", 0) - gl.get("dispatched", 0))))
            b = views.bridge_summary(self) or {}
            for name, c in (b.get("channels") or {}).items():
                rows.append((ts, "bridge", f"{name} crossed", c.get("pushed", c.get("crossed", 0))))
                rows.append((ts, "bridge", f"{name} in flight",
                             c.get("in_flight", c.get("waiting_for_room", 0))))
        new = []
        b = getattr(self.system, "bridge", None) if self.dual else None
        if b is not None and getattr(b, "crossings", None):
            new = [c for c in list(b.crossings) if c[0] > self._crossed_upto]
            if new:
                self._crossed_upto = new[-1][0]
        with self._trace_lock:
            self._counters.extend(rows)
            self._crossings.extend(new)

    def _collect_trace(self) -> None:
        """Copy each worker's new trace events (reads the tracer's per-worker rings: the drain
        API merges workers, and ``ggmk trace`` needs one track per worker)."""
        if not self.trace_enabled:
            return
        tr = self.tracer
        new = []
        with self._trace_lock:
            with tr._drain_lock:
                for w, ring in enumerate(tr._rings):
                    part = ring.read(None)
                    if part is not None and len(part):
                        new.append((w, part))
            for w, part in new:
                self._trace_chunks.append((w, part))
                self._trace_n += len(part)
            while self._trace_n > TRACE_CAPACITY and len(self._trace_chunks) > 1:
                _, old = self._trace_chunks.popleft()
                self._trace_n -= len(old)
                self._trace_dropped += len(old)
            gpu = self._drain_gpu()
            subs = list(self._trace_subs)
        if gpu is not None:
            for q in subs:
                q.push([("gpu", gpu)])
            self._log_events([(None, gpu)], "GPU ")
        if not new:
            return
        for q in subs:
            q.push(new)
        self._log_events(new)

    def _drain_gpu(self):
        """The GPU kernel's new trace records (``DeviceKernel.drain_trace``: each says which
        worker recorded it), their timestamps moved to the trace's clock, kept like the CPU
        kernel's (bounded, oldest dropped). Called with ``_trace_lock`` held. The kernel is
        looked up each time: a watchdog reset replaces it (what the old one had not handed
        over is lost with it)."""
        k = getattr(self.system, "kernel", None) if self.dual else None
        if k is None or not hasattr(k, "drain_trace"):
            return None
        try:
            part = k.drain_trace()
        except Exception:   # noqa: BLE001 - not started / gone: nothing to take
            return None
        if not len(part):
            return None
        off = _device_clock_offset(getattr(k, "target_name", ""))
        if off:
            part["ts"] = (part["ts"].astype(np.int64) + off).astype(np.uint64)
        self._gpu_chunks.append(part)
        self._gpu_n += len(part)
        while self._gpu_n > TRACE_CAPACITY and len(self._gpu_chunks) > 1:
            old = self._gpu_chunks.popleft()
            self._gpu_n -= len(old)
            self._gpu_dropped += len(old)
        return part

    def _log_events(self, new, kernel: str = "") -> None:
        from ggmk.events import EVENT_LEVEL, SAMPLED_BIT, EventType, Level
        agg: dict = {}
        for w, part in new:
            ev = part["event"] & (SAMPLED_BIT - 1)
            for code in np.unique(ev):
                try:
                    e = EventType(int(code))
                except ValueError:
                    continue
                if EVENT_LEVEL.get(e, Level.ALL) > Level.WARN:
                    continue
                sel = part[ev == code]
                for t in np.unique(sel["task_type"]):
                    k = (e, int(t))
                    agg[k] = agg.get(k, 0) + int((sel["task_type"] == t).sum())
        for (e, t), n in sorted(agg.items()):
            lvl = "error" if EVENT_LEVEL.get(e) == Level.ERROR else "warn"
            self.log.add(lvl, "trace", f"{kernel}{e.name} {self.cpu.type_name(t)}: {n} "
                         "event(s)")

    def _check_exceptions(self) -> None:
        exc = list(getattr(self.cpu, "exceptions", ()))
        ids = {id(x) for x in exc}
        for x in exc:
            if id(x) not in self._seen_exc:
                mod, h, r, tb = (list(x) + [None] * 4)[:4]
                self.log.add("error", f"{mod}.{h}", f"handler raised {r}\n{tb or ''}".rstrip())
        self._seen_exc = ids

    def _type_names(self) -> dict:
        return {int(i.id): i.name for i in self.cpu.types}

    def _events_json(self, chunks, max_events: int) -> tuple[list, int]:
        rows = []
        for w, part in chunks:
            for r in part.tolist():
                rows.append([w, *r])
        rows.sort(key=lambda r: r[1])
        cut = max(0, len(rows) - max_events)
        return rows[cut:], cut

    @staticmethod
    def _gpu_rows(parts, max_events: int, t_from=None) -> tuple[list, int]:
        """GPU trace rows ``[worker, ts, event, tenant, type, arg0, arg1, n]`` (n: the task
        count of a task slice's start/end), oldest first, the newest ``max_events``."""
        rows = []
        for part in parts:
            if t_from is not None:
                part = part[part["ts"] >= t_from]
            for ts, ev, ten, ty, a0, a1, w, n in part.tolist():
                rows.append([w, ts, ev, ten, ty, a0, a1, n])
        rows.sort(key=lambda r: r[1])
        cut = max(0, len(rows) - max_events)
        return rows[cut:], cut

    def _gpu_meta(self) -> dict:
        k = getattr(self.system, "kernel", None) if self.dual else None
        if k is None:
            return {}
        cfg = getattr(k, "config", None)
        handlers = {str(int(h.type)): f"{h.module.name}.{h.name}"
                    for h in getattr(k, "handlers", ())}
        return {"gpu_nworkers": int(getattr(cfg, "blocks", 0) or 0),
                "gpu_handlers": handlers,
                "gpu_host_threads": int(getattr(cfg, "host_threads", 0) or 0),
                "gpu_trace_tasks": bool(getattr(cfg, "trace_tasks", False)),
                "gpu_lost": int(getattr(k, "trace_lost", 0))}

    def cmd_trace(self, conn, rid, args):
        level = self._arg(args, "level", str, None)
        seconds = self._arg(args, "seconds", float, 0.0, lo=0.0, hi=3600.0)
        follow = self._arg(args, "follow", bool, False)
        max_events = self._arg(args, "max_events", int, 200_000, lo=1, hi=TRACE_CAPACITY)
        module = self._arg(args, "module", str, None)
        tname = self._arg(args, "type", str, None)
        sample = self._arg(args, "sample", int, 1, lo=1, hi=1_000_000)
        keep = self._trace_types(module, tname)
        if not self.trace_enabled:
            why = ("deterministic mode (the trace feeds the trace hash)"
                   if getattr(self.cpu, "deterministic", False) else "tracing is off")
            raise ControlError("unsupported", f"no trace to show: {why}")
        gpu_levels = None
        if level is not None:
            # a GPU module's level is the GPU kernel's (set at run time, at most the module's
            # build level: DualSystem.set_gpu_trace_level); no --module: both kernels
            on_gpu = module is not None and not isinstance(self._find_module(module),
                                                           ggmk.Module)
            try:
                if self.dual and (module is None or on_gpu):
                    got = self.system.set_gpu_trace_level(module, level)   # may refuse: first
                    gpu_levels = {m: lv.name.lower() for m, lv in got.items()}
                if module is None:
                    self.tracer.set_default_level(level)
                elif not on_gpu:
                    self.tracer.set_level(module, level)
            except Exception as e:   # noqa: BLE001
                raise ControlError("bad_args", str(e)) from None
            gpu_note = ""
            if gpu_levels and module is None:
                gpu_note = ("; GPU kernel: " + ", ".join(f"{m} {v}" for m, v in
                                                         gpu_levels.items())
                            + (" (a GPU module's build level is the most it gets at run time)"
                               if any(v != level for v in gpu_levels.values()) else ""))
            elif gpu_levels:
                gpu_note = " (GPU kernel)"
            self.log.add("info", "control", f"trace level set to {level}"
                         + (f" for module {module}" if module else "") + gpu_note)

        streams: dict = {}      # each worker's sampling position, carried across a follow's reads

        def view(chunks):
            return views.sample_events(views.filter_events(chunks, keep), sample, streams)
        meta = {"workers": self.tracer.nworkers, "nworkers": self.cpu.nworkers,
                "types": self._type_names(), "pid": os.getpid(), "app": self.app,
                **self._gpu_meta()}
        if self.dual:
            try:             # the GPU kernel's run-time levels now (all of them)
                meta["gpu_levels"] = {m: v["level"] for m, v in
                                      self.system.gpu_trace_levels().items()}
            except Exception:   # noqa: BLE001 - halted / being reset: what was just set
                if gpu_levels is not None:
                    meta["gpu_levels"] = gpu_levels
        if follow:
            q = _TraceFollower()
            with self._trace_lock:
                self._trace_subs.append(q)
            try:
                if not self._send(conn, P.stream(rid, {"meta": meta})):
                    return STREAMED
                while not self._stop.is_set():
                    if self._client_gone(conn, 0.1, rid):
                        return STREAMED
                    chunks, lost = q.take()
                    # the oldest chunks fell off while the client was slow: say how many
                    # events (before --module/--type/--sample filtering) it will not see
                    if lost and not self._send(conn, P.stream(rid, {"dropped": lost})):
                        return STREAMED
                    chunks = view(chunks)
                    gpu = [p for w, p in chunks if w == "gpu"]
                    chunks = [(w, p) for w, p in chunks if w != "gpu"]
                    if chunks:
                        rows, _ = self._events_json(chunks, max_events)
                        if not self._send(conn, P.stream(rid, {"events": rows})):
                            return STREAMED
                    if gpu:
                        rows, _ = self._gpu_rows(gpu, max_events)
                        if not self._send(conn, P.stream(rid, {"gpu_events": rows})):
                            return STREAMED
                self._send(conn, P.end(rid))
                return STREAMED
            finally:
                with self._trace_lock:
                    self._trace_subs.remove(q)
        t_from = None
        if seconds:
            with self._trace_lock:
                mark = self._trace_n + self._trace_dropped
            t_from = time.perf_counter_ns()          # the trace's clock: counters from here
            self._stop.wait(seconds)
        self._collect_trace()
        with self._trace_lock:
            chunks = list(self._trace_chunks)
            dropped = self._trace_dropped
            gpu = list(self._gpu_chunks)
            gpu_dropped = self._gpu_dropped
        if seconds:
            # only what arrived during the capture window
            skip = mark - dropped
            kept = []
            for w, part in chunks:
                if skip >= len(part):
                    skip -= len(part)
                    continue
                kept.append((w, part[max(0, skip):]))
                skip = 0
            chunks = kept
        rows, cut = self._events_json(view(chunks), max_events)
        gpu_rows, gpu_cut = self._gpu_rows([p for _, p in view([("gpu", p) for p in gpu])],
                                           max_events, t_from)
        with self._trace_lock:
            counters = list(self._counters)
            crossings = list(self._crossings)
        if t_from is None:
            t_from = rows[0][1] if rows else 0
        counters = [list(c) for c in counters if c[0] >= t_from]
        crossings = [list(c) for c in crossings if c[0] >= t_from]
        gpu_part = {"gpu_events": gpu_rows, "gpu_cut": gpu_cut,
                    "gpu_dropped": gpu_dropped} if self.dual else {}
        return {**meta, **self._gpu_meta(), "events": rows, "cut": cut, "dropped": dropped,
                **gpu_part, "tracer": self.tracer.stats()["total"], "counters": counters,
                "crossings": crossings,
                "target": getattr(self.system, "target", None) if self.dual else None}

    def _trace_types(self, module, tname):
        """The task types ``ggmk trace --module/--type`` keep (None: all)."""
        keep = None
        if module is not None:
            m = self._find_module(module)
            keep = set()
            for h in getattr(m, "handlers", []):
                try:
                    keep.add(int(self.cpu.type_id(h.type)))
                except (KeyError, ValueError, TypeError):
                    pass
        if tname is not None:
            tid = self._known_type(tname)
            keep = {tid} if keep is None else keep & {tid}
        return keep

    def _known_type(self, tname: str) -> int:
        """The id of a type the system knows, by name or id (``emit``, ``trace --type``); an
        unknown one is an error. (``System.type_id`` registers an unknown *id* as TYPE_<id>:
        a refused ``ggmk emit 4242`` added that type to the running system for good.)"""
        cpu = self.cpu
        try:
            if tname.isdigit():
                tid = int(tname)
                if tid not in cpu.types:
                    raise KeyError(f"unknown type id {tid}; known: "
                                   f"{sorted(i.id for i in cpu.types)[:20]}")
                return tid
            return int(cpu.type_id(tname))
        except (KeyError, ValueError, TypeError) as e:
            raise ControlError("unknown_type", str(e).strip("'\"")) from None

    # -- top -----------------------------------------------------------------------------------
    def _frame(self) -> dict:
        """One ``top`` frame: kernels, bridge and channels fresh from the counters; workers,
        types, scheduler and arena from the shared full stats (at most FULL_STATS_MAX_AGE
        old), so any number of watchers costs the system one stats build per interval."""
        summ = self._summary()
        s = self._stats_cached()
        cs = self._cpu_stats(s)
        chans = sorted(self._chans(), key=lambda c: (c.get("kernel") == "cpu",
                                                     -(c.get("emitted") or 0)))
        arena = cs.get("arena", {}).get("total", {})
        types = sorted(cs.get("types", {}).items(), key=lambda kv: -kv[1].get("ok", 0))[:12]
        return {"t": time.monotonic(), "ps": {"state": self.state, "pid": os.getpid(),
                                              "app": self.app, "device": self.device,
                                              "uptime_s": time.monotonic() - self.m0},
                "kernels": summ["kernels"], "workers": cs.get("workers", []),
                "sched": {k: cs.get("sched", {}).get(k) for k in
                          ("outstanding", "ready_depth", "ready_high_watermark")},
                "arena": {k: arena.get(k) for k in ("total_bytes", "used_bytes",
                                                     "high_watermark", "fails")},
                "channels": chans[:14],
                "types": [{"type": n, **v} for n, v in types],
                "modules": [{"name": m.name, "kernel": "cpu" if isinstance(m, ggmk.Module)
                             else "gpu", "handlers": len(getattr(m, "handlers", []))}
                            for m in self.modules],
                "bridge": summ["bridge"]}

    def cmd_top(self, conn, rid, args):
        interval = self._arg(args, "interval", float, 1.0, lo=0.05, hi=60.0)
        once = self._arg(args, "once", bool, False)
        if once:
            return self._frame()
        while not self._stop.is_set():
            try:
                frame = self._frame()
            except ControlError:
                break
            if not self._send(conn, P.stream(rid, frame)):
                return STREAMED
            if self._client_gone(conn, interval, rid):
                return STREAMED
        self._send(conn, P.end(rid))
        return STREAMED
