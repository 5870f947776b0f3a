"""The control server's commands on the system's state (``ping``, ``ps``, ``stats``, ``emit``,
``chan``, ``mod``, ``kern``, ``kv``, ``log``): a mixin of :class:`ggmk.control.server.ControlServer`
(its state, its ``_arg`` checks, its driver queue). Each ``cmd_NAME(conn, rid, args)`` returns
the answer's result, or ``STREAMED`` when it sent its answer itself (a stream).
"""
from __future__ import annotations

import os
import time

import ggmk
from ggmk import sdk
from ggmk.control import protocol as P
from ggmk.control import views
from ggmk.control.protocol import ControlError
from ggmk.errors import KernelStopped

LOG_CAPACITY = 10_000               # log lines kept
KV_PUT_TIMEOUT = 10.0               # seconds `kv put` waits for the module to apply the put
FULL_STATS_MAX_AGE = 0.5            # seconds a full System.stats() is shared by watchers
REQUIRED = object()                 # _arg's default for an argument a command cannot go without
STREAMED = object()                 # a command's result: it sent its answer itself (a stream)


class Commands:
    """The commands on the system's state (mixed into ``ControlServer``)."""

    def cmd_ping(self, conn, rid, args):
        return {"protocol": P.PROTOCOL_VERSION, "version": ggmk.__version__,
                "pid": os.getpid(), "state": self.state, "socket": str(self.paths.sock),
                "metrics_port": self.metrics_port}

    def _stats(self) -> dict:
        return self.system.stats()

    def _cpu_stats(self, s) -> dict:
        return s["cpu"] if self.dual else s

    def _stats_cached(self, max_age: float = FULL_STATS_MAX_AGE) -> dict:
        """The full stats, rebuilt at most every ``max_age`` s however many clients watch."""
        with self._full_lock:
            t, st = self._full
            if st is None or time.monotonic() - t > max_age:
                st = self.call(self._stats)
                self._full = (time.monotonic(), st)
            return st

    def _summary(self) -> dict:
        """Per-kernel rows and bridge totals from counters (cheap; read on the connection's
        thread: whole-word reads of counters the workers keep writing)."""
        if self.state != "running":
            return {"kernels": [], "bridge": None}
        return views.summary(self)

    def _ps(self) -> dict:
        return {"state": self.state, "pid": os.getpid(), "app": self.app,
                "device": self.device, "uptime_s": time.monotonic() - self.m0,
                "started": self.t0, "socket": str(self.paths.sock),
                "clients": self._nclients, "metrics_port": self.metrics_port,
                **self._summary()}

    def cmd_ps(self, conn, rid, args):
        return self._ps()

    def cmd_stats(self, conn, rid, args):
        fmt = self._arg(args, "format", str, "json")
        if fmt == "json":
            return self.call(self._stats)
        if fmt == "prometheus":
            if self._prom is None:
                try:
                    from ggmk.control.prom import make_registry
                    self._prom = make_registry(self._prom_source)
                except ImportError as e:
                    raise ControlError("unsupported", "Prometheus output needs "
                                       f"prometheus_client in the system's environment: {e}")
            from prometheus_client import generate_latest
            return {"text": generate_latest(self._prom).decode()}
        raise ControlError("bad_args", f"format {fmt!r}: allowed json, prometheus")

    def _prom_source(self) -> dict:
        """What the Prometheus collector reads at scrape time."""
        return {"stats": self.call(self._stats), "kernels": self._summary()["kernels"],
                "uptime_s": time.monotonic() - self.m0, "dual": self.dual}

    def _emit(self, tname, payload_json, chan, count, meta0, meta1):
        self._check_live()
        cpu = self.cpu
        tid = self._known_type(tname)
        info = cpu.types.info(tid)
        if chan is None and cpu.handler_of[tid] is None:
            # submitted anyway, every task would land on sys.error (UNKNOWN_TYPE)
            chans = [c["name"] for c in self._chans()
                     if c.get("type") == info.name and c.get("kernel") != "gpu"]
            hint = (f"; it is carried by channel {', '.join(chans)}: pass --chan "
                    f"{chans[0]}" if chans else "")
            raise ControlError("no_handler", f"no CPU handler takes {info.name}: submitted, "
                               f"each task would go to sys.error (UNKNOWN_TYPE){hint}")
        payload = None
        if payload_json is not None:
            try:
                payload = info.encode_json(payload_json)
            except Exception as e:   # noqa: BLE001 - PayloadError names the field
                raise ControlError("payload", str(e)) from None
        elif info.fields:
            raise ControlError("payload", f"{info.name} has payload fields "
                               f"{[f.name for f in info.fields]}; pass --payload JSON")
        out = {"accepted": 0, "count": count, "type": info.name, "type_id": tid}
        if chan is not None:
            if chan.startswith("sys."):
                # the system's own untyped channels (sys.error, sys.dropped): what lands there
                # is the kernel's accounting, not something to publish
                raise ControlError("bad_args", f"--chan {chan!r}: the sys.* channels carry the "
                                   "system's own dead letters and cannot be published to; "
                                   "allowed: a module's channel (`ggmk chan ls`)")
            try:
                ch = self.system.channel(chan)
            except Exception as e:   # noqa: BLE001
                raise ControlError("unknown_channel", f"no channel {chan!r}: {e}") from None
            if ch.type_id and ch.type_id != tid:
                raise ControlError("bad_args", f"channel {chan!r} carries "
                                   f"{cpu.type_name(ch.type_id)}, not {info.name}")
            out["channel"] = chan
            # with count given, publish returns how many were accepted (a prefix); it stores
            # the payload once and shares it (retained) among the messages
            try:
                accepted = int(ch.publish(meta0=meta0, meta1=meta1, payload=payload,
                                          count=count, type=tid))
            except ggmk.errors.AllocError:
                out["refused"] = "ALLOC_FAIL"
                return out
            out["accepted"] = accepted
            if accepted < count:       # the rest was refused, nothing of it kept: try again
                out["refused"] = "CHAN_CLOSED" if getattr(ch, "closed", False) else "CHAN_FULL"
            return out
        if payload is None:
            out["accepted"] = int(self.system.submit(tid, meta0, meta1, count=count))
            return out
        # one copy of the payload in the arena, shared by the count tasks (retained count - 1
        # times, as Channel.publish does): fast, and all or nothing when the arena is full
        arena = cpu.arena
        try:
            ptr, plen = cpu.store_payload(tid, payload)
        except ggmk.errors.AllocError:
            out["refused"] = "ALLOC_FAIL"
            return out
        if count > 1:
            arena.retain(ptr, count - 1)
        try:
            recs = ggmk.task.make(count, type=tid, payload_ptr=ptr, payload_len=plen,
                                  meta0=meta0, meta1=meta1)
        except BaseException:
            arena.release(ptr, count)
            raise
        # (what the scheduler does not accept goes to sys.error with a reason, payload and all)
        out["accepted"] = int(self.system.submit_batch(recs))
        return out

    def cmd_emit(self, conn, rid, args):
        tname = self._arg(args, "type", str)
        if not tname:
            raise ControlError("bad_args", "emit needs 'type'")
        payload = args.get("payload")
        if payload is not None and not isinstance(payload, str):
            raise ControlError("bad_args", "'payload' must be the JSON text of an object")
        count = self._arg(args, "count", int, 1, lo=1, hi=1_000_000)
        meta0 = self._arg(args, "meta0", int, 0, lo=0, hi=2**64 - 1)
        meta1 = self._arg(args, "meta1", int, 0, lo=0, hi=2**64 - 1)
        chan = self._arg(args, "chan", str, None)
        return self.call(self._emit, tname, payload, chan, count, meta0, meta1)

    def _chans(self) -> list:
        if self.state != "running":
            return []
        chs = getattr(self.cpu, "channels", None)
        cpu = {} if chs is None else chs.stats()
        return views.channel_rows(self, cpu, views.gpu_metrics(self) if self.dual else None,
                                  views.bridge_summary(self))

    def cmd_chan_ls(self, conn, rid, args):
        return {"channels": self._chans()}

    def cmd_chan_inspect(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        rows = self._chans()
        for c in rows:
            if c.get("name") == name:
                out = dict(c)
                chs = getattr(self.cpu, "channels", None)
                full = (chs.stats() if chs is not None else {}).get(name)
                if isinstance(full, dict):
                    out.update(full)
                b = (views.bridge_summary(self) or {}).get("channels", {}).get(name)
                if b is not None:
                    out["bridge"] = b
                if self.dual:
                    g = ((views.gpu_metrics(self) or {}).get("channels") or {}).get(name)
                    if g is not None:
                        out["gpu"] = g
                return out
        raise ControlError("unknown_channel", f"no channel {name!r}; known: "
                           f"{[c.get('name') for c in rows]}")

    def _module_row(self, m) -> dict:
        kernel = "cpu" if isinstance(m, ggmk.Module) else "gpu"
        handlers = []
        for h in getattr(m, "handlers", []):
            handlers.append({"type": str(getattr(h, "type", "?")),
                             "name": getattr(h, "name", None),
                             "batch": bool(getattr(h, "batch", False)),
                             "deterministic": bool(getattr(h, "deterministic", False))})
        chans = []
        for d in getattr(m, "channels", []):
            chans.append({"name": getattr(d, "name", "?"),
                          "direction": getattr(d, "direction", "?"),
                          "type": str(getattr(d, "type", "?")),
                          "mode": getattr(d, "mode", None),
                          "guarantee": getattr(d, "guarantee", None)})
        if kernel == "gpu":
            # a GPU module declares what it consumes on its handlers only
            seen = {(c["name"], c["direction"]) for c in chans}
            for h in getattr(m, "handlers", []):
                cons = getattr(h, "consumes", None) or ()
                for name in (cons,) if isinstance(cons, str) else cons:
                    if (name, "consume") not in seen:
                        seen.add((name, "consume"))
                        chans.append({"name": name, "direction": "consume",
                                      "type": str(getattr(h, "message", None) or h.type),
                                      "mode": None, "guarantee": None})
        return {"name": m.name, "version": getattr(m, "version", None), "kernel": kernel,
                "handlers": handlers, "channels": chans}

    def cmd_mod_ls(self, conn, rid, args):
        return {"modules": [self._module_row(m) for m in self.modules]}

    def cmd_mod_info(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        for m in self.modules:
            if m.name == name:
                row = self._module_row(m)
                if row["kernel"] == "gpu":
                    # the GPU kernel's own counters, keyed by type id (the CPU kernel's
                    # stats never see a GPU handler run)
                    gtypes = (views.gpu_metrics(self) or {}).get("types", {})
                    for h in row["handlers"]:
                        try:
                            tid = self.cpu.type_id(h["type"])
                        except (KeyError, ValueError, TypeError):
                            tid = None
                        h["counters"] = gtypes.get(str(tid), gtypes.get(tid, {}))
                    return row
                types = self._cpu_stats(self._stats_cached()).get("types", {})
                for h in row["handlers"]:
                    h["counters"] = types.get(h["type"], {})
                return row
        raise ControlError("unknown_module", f"no module {name!r}; known: "
                           f"{[m.name for m in self.modules]}")

    def cmd_kern_ls(self, conn, rid, args):
        return {"kernels": self._summary()["kernels"]}

    def _find_module(self, name):
        for m in self.modules:
            if m.name == name:
                return m
        raise ControlError("unknown_module", f"no module {name!r}; known: "
                           f"{[m.name for m in self.modules]}")

    def cmd_mod_reset(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        self._check_live()
        m = self._find_module(name)
        if not isinstance(m, ggmk.Module):
            raise ControlError("unsupported", f"module {name!r} runs on the GPU kernel: a GPU "
                               "module is reset with its kernel (the watchdog resets and "
                               "reboots the GPU kernel); `ggmk mod reset` resets CPU modules")
        rep = self.call(self.cpu.reset_module, name)
        self.log.add("info", "control", f"module {name} reset: poison cleared on "
                     f"{rep['cleared'] or 'no type'}; init {'re-run' if rep['init'] else 'none'}")
        return rep

    def _kern_info(self) -> dict:
        cpu = self.cpu
        ks = {k["name"]: k for k in self._summary()["kernels"]}
        info = {"cpu": {**ks.get("cpu", {}), "nworkers": cpu.nworkers,
                        "modules": [m.name for m in self.modules if isinstance(m, ggmk.Module)],
                        "options": {k: v for k, v in self.options.items()
                                    if isinstance(v, (int, float, str, bool, type(None)))}}}
        if self.dual:
            sys_ = self.system
            kern = sys_.kernel
            built = getattr(kern, "built", None)
            cfg = getattr(kern, "config", None)
            info["gpu"] = {
                **ks.get("gpu", {}),
                "modules": [m.name for m in self.modules if not isinstance(m, ggmk.Module)],
                "boot": [{"step": a, "t_s": round(t, 4), "detail": d}
                         for a, t, d in sys_.boot_log],
                "gpu_drv": sys_.device_info,
                "build": None if built is None else {
                    "key": built.key, "path": str(built.path), "target": sys_.target,
                    "handlers": [{"module": h.module.name, "name": h.name, "type": int(h.type),
                                  "granularity": getattr(h, "granularity", None)}
                                 for h in built.handlers],
                    "noinline": list(built.noinline),
                    "channels": [c.name for c in built.chans],
                    "blocks": getattr(cfg, "blocks", None),
                    "threads": getattr(cfg, "threads", None)},
                "report": self._build_report}
        return info

    def cmd_kern_info(self, conn, rid, args):
        self._check_live()
        want = self._arg(args, "report", bool, False)
        whole = self._arg(args, "kernel", bool, False)
        if whole and not want:
            raise ControlError("bad_args", "kernel: the whole persistent kernel is part of the "
                               "build report; ask for it with report (`ggmk kern info "
                               "--report --kernel`)")
        if want and not self.dual:
            raise ControlError("unsupported", "--report: this system has no GPU kernel (booted "
                               f"with --device {self.device}): there is no ptxas report to "
                               "build; boot with --device auto|cpu|sim|cuda, or use `ggmk "
                               "build APP`")
        have = self._build_report
        if want and (have is None or whole and "error" not in have and not have.get("kernel")):
            # the ptxas report of the running GPU kernel: compiled on this connection's thread
            # (it touches no kernel state), once per system: its handlers, and the whole
            # persistent kernel when asked (minutes more: a report with it serves both)
            from ggmk.control import buildinfo
            try:
                self._build_report = buildinfo.report(self.modules, self._types_opts(),
                                                      whole_kernel=whole)
            except Exception as e:   # noqa: BLE001 - no toolchain: say so, do not fail kern info
                self._build_report = {"error": f"{type(e).__name__}: {e}"}
        return self._kern_info()

    def _types_opts(self) -> dict:
        return {"types": self.cpu.types}

    # -- kv ------------------------------------------------------------------------------------
    def _kv(self, name):
        from ggmk.modules.kv import _KV
        found = [m for m in self.modules if isinstance(getattr(m, "kv", None), _KV)]
        if not found:
            raise ControlError("unsupported", "this system has no kv module "
                               "(ggmk.modules.kv.module())")
        if name is None:
            if len(found) > 1:
                raise ControlError("bad_args", f"{len(found)} kv modules: pass --name (one of "
                                   f"{[m.name for m in found]})")
            return found[0]
        for m in found:
            if m.name == name:
                return m
        raise ControlError("unknown_module", f"no kv module {name!r}; known: "
                           f"{[m.name for m in found]}")

    @staticmethod
    def _kv_value(v):
        if isinstance(v, int):
            return {"value": v}
        b = bytes(v)
        try:
            return {"value": b.decode("utf-8"), "bytes": len(b)}
        except UnicodeDecodeError:
            return {"value_hex": b.hex(), "bytes": len(b)}

    def cmd_kv(self, conn, rid, args):
        op = self._arg(args, "op", str)
        m = self._kv(self._arg(args, "name", str, None))
        st = m.kv
        if op == "ls":
            limit = self._arg(args, "limit", int, 1000, lo=1, hi=1_000_000)
            with st.table.lock:
                items = sorted(st.table.items())
            return {"module": m.name, "size": len(items), "capacity": st.table.capacity,
                    "items": [{"key": k, **self._kv_value(v)} for k, v in items[:limit]],
                    "stats": st.stats()}
        key = self._arg(args, "key", int, None, lo=0, hi=2**64 - 1)
        if key is None:
            raise ControlError("bad_args", f"kv {op} needs 'key' (an integer 0..2**64-1)")
        if op == "get":
            with st.table.lock:
                v = st.table.get(key)
            if v is None:
                return {"module": m.name, "key": key, "found": False}
            return {"module": m.name, "key": key, "found": True, **self._kv_value(v)}
        if op != "put":
            raise ControlError("bad_args", f"kv op {op!r}: allowed get, put, ls")
        self._check_live()
        value = args.get("value")
        text = args.get("text")
        if (value is None) == (text is None):
            raise ControlError("bad_args", "kv put needs exactly one of 'value' (an integer) "
                               "and 'text' (a string stored as bytes)")
        if value is not None:
            value = self._arg(args, "value", int, lo=0, hi=2**64 - 1)
        else:
            value = self._arg(args, "text", str)
        return self._kv_put(m, key, value)

    def _kv_put(self, m, key, value):
        """Put through the module's own ``NAME.put`` channel as an ``sdk.KV`` client does: the
        module's answer on ``NAME.resp``, matched to this put by its tag, says whether it was
        stored. (Watching the table for the value mistook an int put into a table of byte
        values for "not stored", and could not tell a full table from another put of the
        key.)"""
        st = m.kv
        if isinstance(value, str):
            value = value.encode()
            if len(value) > st.value_size:
                raise ControlError("bad_args", f"text of {len(value)} bytes; kv {m.name!r} "
                                   f"keeps values of at most {st.value_size} bytes")
        elif st.inline and value > st.vmax:
            raise ControlError("bad_args", f"value {value} does not fit kv {m.name!r}'s "
                               f"{st.value_size}-byte values (at most {st.vmax})")
        with self._kv_lock:
            client = self._kv_clients.get(m.name)
            if client is None:
                client = self._kv_clients[m.name] = sdk.KV(self.system, m.name,
                                                           timeout=KV_PUT_TIMEOUT)
        try:
            client.put(key, value)
            status = "ok"
        except sdk.KV.KVError as e:
            status = f"not stored ({str(e).rsplit(': ', 1)[-1].lower().replace('_', ' ')})"
        except TimeoutError:
            status = f"not stored within {KV_PUT_TIMEOUT:g}s (no answer from {m.name}.resp)"
        except KernelStopped:
            raise ControlError("halted", "the system halted") from None
        return {"module": m.name, "key": key, "stored": status == "ok", "status": status,
                "stats": st.stats()}

    def cmd_log(self, conn, rid, args):
        n = self._arg(args, "lines", int, 50, lo=0, hi=LOG_CAPACITY)
        follow = self._arg(args, "follow", bool, False)
        lines = self.log.tail(n)
        if not follow:
            return {"lines": lines}
        seq = lines[-1]["seq"] if lines else self.log.seq
        if lines and not self._send(conn, P.stream(rid, {"lines": lines})):
            return STREAMED
        while not self._stop.is_set():
            with self.log.cond:
                if self.log.seq == seq:
                    self.log.cond.wait(0.25)
            new = self.log.since(seq)
            if new:
                seq = new[-1]["seq"]
                if not self._send(conn, P.stream(rid, {"lines": new})):
                    return STREAMED
            if self._client_gone(conn, 0, rid):
                return STREAMED
        self._send(conn, P.end(rid))
        return STREAMED

    # -- tracing -------------------------------------------------------------------------------
