"""Dual-kernel boot: the CPU kernel and the GPU kernel as one system, joined by the bridge.

Example::

    import ggmk, ggmk.dual
    import ggmk.device as gd
    from ggmk.device import api as g

    gpu = gd.Module("phys")
    OUT = gpu.channel("phys.out", message="PHYS_DONE", guarantee="lossless")

    @gpu.handler("PHYS_STEP", consumes="phys.in")           # fed by a CPU module
    def step(ctx, task):
        if g.emit_chan(ctx, OUT, g.meta0(task) + 1, 0) == -100:
            return g.wait_at(task, g.meta0(task))
        return 0

    cpu = ggmk.Module("host")
    IN = cpu.produces("phys.in", "PHYS_STEP")

    @cpu.handler("PHYS_DONE", consumes="phys.out", batch=True)
    def done(ctx, batch): ...

    with ggmk.dual.boot([cpu, gpu], device="cpu", workers=2) as s:   # ggmk.boot(..., device=)
        s.channel("phys.in").publish(meta0=41)
        s.run()
        print(s.stats()["bridge"]["records"])

Boot order (``boot_log``): the cross-kernel declarations are checked first (nothing boots when
they conflict), then the CPU kernel, ``gpu_drv`` (finds the device), the GPU kernel (the
user's device modules plus the bridge's own device module), the channel wiring across kernels
(the bridge), and "system ready" (a boot event and a log line on the ``ggmk`` logger).

``device=None`` boots the CPU kernel alone and returns a plain ``System``.

The device process (``ggmk.bridge.process``): with ``device_process=True`` (and by default,
``None``, whenever the device modules can be sent to a child process: handlers defined at
module level of an importable module, not ``__main__``) the GPU kernel runs in a ``spawn``
child whose mapped words and arena are shared memory the bridge reads and writes directly;
``device_process=False`` keeps it in this process. Only a device process can be reset:
``reset_device(reason)`` kills it and boots a fresh one (kernel from the disk cache) while
the CPU kernel keeps running; ``watchdog={...}`` (``ggmk.modules.watchdog``) does that when the
GPU kernel's workers stop beating or the process dies. What was inside the old kernel is on
``sys.error`` with ``BRIDGE_RESET`` (or redelivered, see ``Bridge.reset_device``)::

    s = ggmk.dual.boot([cpu, gpu], device="cpu", workers=2,
                       watchdog={"interval_s": 0.1, "warn_after": 2, "reset_after": 5})
    print(s.stats()["watchdog"]["resets"], s.stats()["device_process"]["pid"])
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge import device_tasks
from ggmk.bridge.fences import Fences
from ggmk.bridge.gpu_drv import open_driver
from ggmk.bridge.plan import device_spec, ingress_room, plan as plan_bridge
from ggmk.bridge.options import check_options as check_bridge_options
from ggmk.bridge.pump import Bridge, BridgeError
from ggmk.bridge.process import ProcessTransport
from ggmk.bridge.transport import InProcessTransport
from ggmk.core.det import check_flag, check_int
from ggmk.core.halt import _UNHALTED, halt_once, signal_in_kernel, warn_unhalted
from ggmk.core.kernel import System
from ggmk.device.targets import NAMES as TARGETS
from ggmk.core.module import Module as CpuModule
from ggmk.errors import BootError, DeviceError, KernelStopped
from ggmk.typereg import TypeRegistry

log = logging.getLogger("ggmk")

BRIDGE_OPTS = ("batch", "flush_us", "window", "max_retries", "retry_backoff_us", "pump_helps",
               "arena_reserve")
# how long reset_device waits for the old GPU kernel to stop before it kills it: a live kernel
# stops within a few loops; a hung one is not worth waiting for
STOP_GRACE_S = 0.25


def _split(modules):
    import ggmk.device as gd
    cpu, gpu = [], []
    for m in modules:
        if isinstance(m, CpuModule):
            cpu.append(m)
        elif isinstance(m, gd.Module):
            gpu.append(m)
        else:
            raise BootError(f"boot: {m!r} is neither a ggmk.Module (CPU) nor a "
                            "ggmk.device.Module (GPU)")
        if m.name == "bridge":
            raise BootError("boot: the module name 'bridge' is reserved for the bridge")
    return cpu, gpu


def _register_names(reg: TypeRegistry, cpu, gpu) -> None:
    """The modules' manifest types first (a standard module's ``.toml`` ids, merged as the CPU
    kernel merges them), then the remaining type names get ids on first sight, the same on
    both kernels (a given ``types=`` too: the CPU-only boot registers unknown names as well).
    ``reg`` is changed in place: the boot passes its own copy of the caller's registry."""
    for m in cpu + gpu:
        if getattr(m, "manifest", None) is not None and len(m.manifest.types):
            reg.merge(m.manifest.types)
    names = []
    for m in cpu:
        names += [h.type for h in m.handlers] + [d.type for d in m.channels]
    for m in gpu:
        names += [h.type for h in m.handlers] + [h.message for h in m.handlers]
        names += [getattr(d, "message", None) for d in m.channels]
    for n in names:
        if isinstance(n, str) and n not in reg:
            reg.register(n)


def _can_send(gpu_mods) -> tuple[bool, str]:
    """Whether the device modules can reach a device process (pickle: handlers defined at
    module level of an importable module; a standard module as its factory call), and if
    not, why (for the boot log)."""
    import pickle
    from ggmk.bridge.process import sendable
    try:
        blob = pickle.dumps(sendable(gpu_mods))
    except Exception as e:   # noqa: BLE001 - any failure means "not by pickle"
        log.info("ggmk: the GPU kernel runs in this process: its modules cannot be sent to a "
                 "device process (%s: %s)", type(e).__name__, e)
        return False, f" (modules not sendable to a device process: {type(e).__name__})"
    if b"__main__" in blob:
        # a spawn child re-runs the main script to find them: a script without a
        # ``if __name__ == "__main__"`` guard would boot again in the child
        log.info("ggmk: the GPU kernel runs in this process: its handlers are defined in "
                 "__main__ (pass device_process=True from a guarded script)")
        return False, " (handlers defined in __main__)"
    return True, ""


class DualSystem:
    """A CPU kernel and a GPU kernel joined by the bridge. Create with :func:`boot`."""

    #: seconds halt gives the GPU kernel to stop: a healthy one stops in milliseconds, one
    #: that does not is stuck (a handler that never returns); it is then accounted for as it
    #: is (its device process killed; in this process its threads are left behind)
    STOP_S = 3.0

    def __init__(self, modules, *, device: str = "auto", types=None, bridge: dict | None = None,
                 device_config: dict | None = None, transport_wrap=None,
                 device_process: bool | None = None, watchdog=None, **cpu_kw):
        t0 = time.monotonic()
        if device_process is not None and not isinstance(device_process, bool):
            raise BootError(f"boot: device_process={device_process!r} must be True (the GPU "
                            "kernel in a child process that can be reset), False (in this "
                            "process) or None (a child process when the device modules can "
                            "be sent to one)")
        if transport_wrap is not None and not callable(transport_wrap):
            # (called only once the GPU kernel ran: a raw "'int' object is not callable")
            raise BootError(f"boot: transport_wrap={transport_wrap!r:.80}: allowed None or a "
                            "callable taking the bridge's transport and returning the one to "
                            "use")
        if not isinstance(device, str) or device not in ("auto",) + TARGETS:
            raise BootError(f"boot: device={device!r:.80}: allowed 'auto', "
                            + ", ".join(repr(t) for t in TARGETS)
                            + " or None (the CPU kernel alone)")
        dcfg = _device_config(device_config)
        self._process_note = ""
        self.process = None
        self.watchdog = None
        self.resets = dict(resets=0, last_reason=None, last_error=None, lost_in_reset=0,
                           redelivered=0, gpu_to_cpu_gaps=0, reset_s=0.0)
        self._reset_lock = threading.Lock()
        self._gpu_lock = threading.Lock()    # gpu_metrics' live read vs a reset's fold
        self._resetting = False             # inside reset_device (a failed one ends it too)
        self._halt_lock = threading.RLock()
        wd_cfg = None
        if watchdog is not None and watchdog is not False:
            from ggmk.modules import watchdog as wdmod
            wd_cfg = wdmod.config(watchdog)          # bad config: named before anything boots
            if device_process is None:
                device_process = True                # the watchdog resets a device process
            if not device_process:
                raise BootError("boot: watchdog= needs device_process=True (a stuck GPU kernel "
                                "can only be reset when it runs in a child process)")
        self.boot_log: list[tuple[str, float, str]] = []
        cpu_mods, gpu_mods = _split(modules)
        if device_process is None:
            device_process, self._process_note = _can_send(gpu_mods)
        self.device_process = device_process
        types_given = types is not None
        if types_given and not isinstance(types, TypeRegistry):
            raise BootError(f"types={types!r:.80}: allowed a TypeRegistry (ggmk.load_types) "
                            f"or None")
        # a copy: the names registered here must not land in the caller's registry (booted
        # again, its auto ids clashed with a manifest's); System copies it once more
        reg = types.copy() if types_given else TypeRegistry()
        _register_names(reg, cpu_mods, gpu_mods)
        bopts = _options("bridge", bridge)
        unknown = set(bopts) - set(BRIDGE_OPTS)
        if unknown:
            raise BootError(f"boot: unknown bridge options {sorted(unknown)}; known: "
                            f"{list(BRIDGE_OPTS)}")
        try:
            check_bridge_options(bopts)
        except ValueError as e:
            raise BootError(f"boot: {e}") from None
        self.deterministic = bool(cpu_kw.get("deterministic", False))
        # 0. the declarations of both kernels, checked together before anything boots
        self.plan = plan_bridge(cpu_mods, gpu_mods, reg, types_given=types_given)
        self._step("check", t0, f"{len(self.plan)} bridge channel(s)")
        # a CPU-side producer declaration for every GPU -> CPU channel (mode, guarantee), and
        # the CPU channel of a CPU -> GPU one no CPU module declares (the host publishes on it)
        extra = []
        decl = [b for b in self.plan if b.direction == "g2c" or b.host]
        if decl:
            bm = CpuModule("bridge", version="0.1.0")
            for b in decl:
                opts = {"capacity": max(4096, b.capacity)} if b.direction == "g2c" else {}
                bm.produces(b.name, b.type_id, mode=b.mode, guarantee=b.guarantee, **opts)
            extra.append(bm)
        # 1. the CPU kernel
        self.cpu = System(cpu_mods + extra, types=reg, **cpu_kw)
        self._step("cpu_kernel", t0, f"{len(cpu_mods)} module(s), {self.cpu.nworkers} worker(s)")
        self.halted = False
        self.halt_report = None
        self.kernel = None
        self.bridge = None
        try:
            # 2. gpu_drv: find the device
            self.driver = open_driver(device)
            self.device_info = self.driver.describe()
            self._step("gpu_drv", t0, f"target {self.driver.target}: "
                       f"{[d.get('name') for d in self.device_info.get('devices', [])]}")
            # 3. the GPU kernel (user modules + the bridge's device module)
            inbound, outbound = device_spec(self.plan, bopts.get("window"))
            if not self.cpu.tracer.enabled:
                # tracing stripped (trace=False, GGMK_TRACE=0): from the GPU kernel too, at
                # build time (DeviceConfig.trace: no trace code compiled in)
                dcfg["trace"] = False
            self._dev_spec = dict(modules=list(gpu_mods), bridge=(inbound, outbound),
                                  types=reg, config=dcfg)
            # what push_device may send: a type some handler of either kernel takes
            self._device_types = {reg.id(h.type) if isinstance(h.type, str) else int(h.type)
                                  for m in gpu_mods for h in m.handlers}
            # what submit sends to the GPU kernel: a type no CPU handler takes
            self._gpu_only = frozenset(t for t in self._device_types
                                       if t >= len(self.cpu.handler_of)
                                       or self.cpu.handler_of[t] is None)
            if device_process:
                self.process = self._boot_process()
                self.kernel = self.process.kernel
                tr = ProcessTransport(self.process)
            else:
                dmods = list(gpu_mods) + [ds.build_module(inbound, outbound)]
                self.kernel = self.driver.launch(dmods, types=reg, **dcfg)
                tr = InProcessTransport(self.kernel)
            self.target = self.kernel.target_name
            self._step("gpu_kernel", t0, f"{len(gpu_mods)} module(s) on {self.target}"
                       + (f" in device process {self.process.pid}" if self.process else
                          f" in this process{self._process_note}"))
            # 4. channel wiring across kernels
            self.transport_base = tr
            self.transport = transport_wrap(tr) if transport_wrap is not None else tr
            self.bridge = Bridge(self.cpu, self.transport, self.plan,
                                 deterministic=self.deterministic,
                                 ingress_room=ingress_room(self.kernel.config), **bopts)
            self._step("wiring", t0, ", ".join(b.describe() for b in self.plan) or "none")
            if wd_cfg is not None:
                from ggmk.modules import watchdog as wdmod
                self.watchdog = wdmod.Watchdog(self, **wd_cfg)
        except BaseException:
            self._abort()
            raise
        self.fences = Fences()
        self._hook_det_boundary()
        if self.watchdog is not None:
            self.watchdog.start()
        self._step("ready", t0, f"system ready: CPU kernel + GPU kernel ({self.target}), "
                   f"{len(self.plan)} bridge channel(s)")
        # dropped without halt (collected, or alive at exit): a ResourceWarning naming what
        # keeps running (see warn_unhalted for why it does not halt); it covers the CPU
        # kernel's own warning at exit. The callback must not hold self.
        running = (f"its CPU kernel's {self.cpu.nworkers} worker thread(s), the bridge thread"
                   + ("" if self.process is None else
                      f", the device process (pid {self.process.pid})")
                   + ("" if self.watchdog is None else ", the watchdog thread"))
        self._unhalted = weakref.finalize(
            self, warn_unhalted, f"ggmk DualSystem at {id(self):#x} (GPU kernel on "
                                 f"{self.target})", running, os.getpid())
        _UNHALTED.discard(self.cpu)
        log.info("ggmk: system ready (CPU kernel, GPU kernel on %s, %d bridge channel(s))",
                 self.target, len(self.plan))

    def _fenced(self) -> bool:
        """Determinism mode with deterministic bridge channels: they move at tick fences."""
        return self.deterministic and self.bridge is not None and (
            any(st.det for st in self.bridge.ins) or
            any(st.det for st in self.bridge.outs.values()))

    def _hook_det_boundary(self) -> None:
        """At each CPU tick boundary (after the CPU channels delivered the tick) the bridge
        takes what deterministic CPU -> GPU channels hold, for the next fence
        (``Bridge.det_hold_inbound``): a producer that found such a channel full gets in on a
        later CPU tick instead of waiting for a fence that only comes once the CPU is idle."""
        det = getattr(self.cpu, "det", None)
        if det is None or not any(st.det for st in self.bridge.ins):
            return
        inner = det.on_boundary
        hold = self.bridge.det_hold_inbound

        def on_boundary(tick):
            if inner is not None:
                inner(tick)
            hold()
        det.on_boundary = on_boundary

    def _step(self, what, t0, detail) -> None:
        self.boot_log.append((what, time.monotonic() - t0, detail))

    def _boot_process(self):
        """A fresh device process running the GPU kernel (the kernel from the disk cache)."""
        from ggmk.bridge.process import DeviceProcess
        sp = self._dev_spec
        try:
            return DeviceProcess(sp["modules"], target=self.driver.target, types=sp["types"],
                                 bridge=sp["bridge"], config=sp["config"]).start()
        except DeviceError as e:
            raise BootError(f"gpu_drv: cannot launch the GPU kernel on "
                            f"{self.driver.target!r} in a device process: {e}") from e

    def _abort(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.bridge is not None:
            self.bridge.stop()
        if self.kernel is not None:
            try:
                self.kernel.stop(timeout=self.STOP_S)     # (not stop()'s 60 s for a hung one)
            except Exception:   # noqa: BLE001 - already failing
                pass
        if self.process is not None:
            self.process.kill()
        self.cpu.halt(timeout=0)

    # -- the host API -----------------------------------------------------------------------------
    def _check(self) -> None:
        if self.halted:
            raise KernelStopped("the system is halted; boot a new one")

    def submit(self, type, meta0=0, meta1=0, **kw) -> int:
        """Submit tasks of ``type`` (``System.submit``'s arguments); returns how many were
        accepted. A type only a GPU handler takes goes to the GPU kernel (``push_device``):
        this is one system, and a user submitting a type expects its handler to run wherever
        it is (the CPU kernel alone had no handler: UNKNOWN_TYPE on sys.error). Accounting as
        ``push_device``: the count that fitted on the host -> device ring (a full ring takes
        fewer, nothing of the rest is queued or dead-lettered: submit it again); ``payload=``
        and ``due=`` cannot travel that way (ValueError, nothing submitted)."""
        self._check()
        if self._gpu_only:
            tid = self.cpu.type_id(type, where="submit")
            if tid in self._gpu_only:
                return self._submit_device(tid, meta0, meta1, **kw)
        return self.cpu.submit(type, meta0, meta1, **kw)

    def _submit_device(self, tid: int, meta0, meta1, *, payload=None, priority: int = 0,
                       tenant: int = 0, deterministic: bool = False, trace: bool = False,
                       due: int | None = None, count: int | None = None) -> int:
        for name, v in (("payload", payload), ("due", due)):
            if v is not None:
                raise ValueError(f"submit: {name}={v!r:.40}: type {tid} "
                                 f"({self.cpu.types.name(tid)}) is taken only by a GPU handler "
                                 f"and goes to the GPU kernel (push_device), which takes no "
                                 f"{name} from the host; allowed None")
        flags = (T.FLAG_DETERMINISTIC if check_flag("deterministic", deterministic) else 0) | \
            (T.FLAG_EMIT_TRACE if check_flag("trace", trace) else 0)
        n = T.check_count(count, meta0, meta1)
        return self.push_device(T.make(n, type=tid, flags=flags, priority=priority,
                                       tenant=tenant, meta0=meta0, meta1=meta1))

    def submit_batch(self, recs, **kw) -> int:
        """``System.submit_batch``; records of a type only a GPU handler takes are refused
        (ValueError, nothing submitted): ``push_device(records)`` sends them (a batch is not
        split between the kernels behind the caller's back)."""
        self._check()
        if self._gpu_only and isinstance(recs, np.ndarray) and recs.dtype == T.TASK_DTYPE:
            gpu = np.isin(recs["type"], list(self._gpu_only))
            if gpu.any():
                t = int(recs["type"][gpu][0])
                raise ValueError(f"submit_batch: type {t} ({self.cpu.types.name(t)}) is taken "
                                 f"only by a GPU handler: push_device(records) sends it to the "
                                 f"GPU kernel; nothing was submitted")
        return self.cpu.submit_batch(recs, **kw)

    def channel(self, name):
        """The CPU kernel's end of channel ``name`` (bridge channels included)."""
        return self.cpu.channel(name)

    def dead_letters(self, which: str = "sys.error"):
        if not self.halted:
            self.bridge.step(force_flush=True)
        return self.cpu.dead_letters(which)

    def device_records(self) -> np.ndarray:
        """Records the GPU kernel sent to the host that no bridge channel or CPU handler took
        (``g.emit_host`` to a type with no CPU handler)."""
        parts = []
        with self.bridge.lock:
            while self.bridge.device_out:
                parts.append(self.bridge.device_out.popleft())
        return T.concat(parts) if parts else T.empty(0)

    def push_device(self, records) -> int:
        """Push task records straight to the GPU kernel (host -> device ring); returns how many
        fitted (the ring is bounded: push the rest again). Safe from any thread while the
        bridge pump sends on the same ring (``DeviceKernel.push`` is one critical section)."""
        self._check()
        self._check_push_types(records)
        if self.bridge.paused is not None:
            raise BridgeError(f"push_device: the GPU kernel is paused or being reset "
                              f"({self.bridge.paused}); nothing was pushed, push again after "
                              "it is back")
        if not self.kernel.alive():
            raise KernelStopped(f"push_device: the GPU kernel ({self.target}) is not running"
                                + (" (its device process is gone: reset_device() or the "
                                   "watchdog boots a new one)" if self.process else ""))
        n = self.kernel.push(records)
        self.bridge.poke(expect_output=True)
        return n

    def _check_push_types(self, records) -> None:
        """ValueError, nothing pushed, for a record type that would only get lost or do harm on
        the GPU kernel: one no handler of either kernel takes (it would end up in
        ``device_records()`` unnoticed) or one of the bridge's own (a host that pushed the
        bridge's CREDIT would change its credit counters)."""
        if not isinstance(records, np.ndarray) or records.dtype != T.TASK_DTYPE:
            return                        # (DeviceKernel.push names that problem)
        cpu = self.cpu.handler_of
        for t in np.unique(records["type"]).tolist():
            if ds.is_bridge_type(t):
                raise ValueError(f"push_device: type {t:#x} is reserved for the bridge's own "
                                 f"records ({ds.BASE:#x}..{ds.BASE + 0x3FFF:#x}); nothing was "
                                 "pushed")
            if t not in self._device_types and not (t < len(cpu) and cpu[t] is not None):
                known = self.cpu.types.name(t) if t in self.cpu.types else "not registered"
                raise ValueError(f"push_device: no handler of either kernel takes type {t} "
                                 f"({known}); nothing was pushed")

    def pause_device(self, reason: str) -> None:
        """Hold every bridge transfer (the GPU kernel is being reset): nothing is sent or
        lost meanwhile; ``push_device`` raises. ``resume_device`` goes on."""
        self.bridge.paused = reason

    def resume_device(self) -> None:
        self.bridge.paused = None
        self.bridge.poke()

    # -- GPU trace levels ---------------------------------------------------------------------
    _gpu_levels: dict = {}              # what set_gpu_trace_level set, in order (for resets)

    def set_gpu_trace_level(self, module: str | None, level) -> dict:
        """Set the GPU kernel's run-time trace level of device module ``module`` (None:
        every device module, the bridge's included) while it runs
        (``DeviceKernel.set_trace_level``: a module's build level is the ceiling; above it
        for a module named is a ValueError). Kept and set again on the kernel a reset boots.
        Returns {module: level now in force}."""
        self._check()
        with self._reset_lock:           # not while a reset swaps the kernel
            out = self.kernel.set_trace_level(module, level)
            levels = {} if module is None else dict(self._gpu_levels)
            levels.pop(module, None)
            levels[module] = level
            self._gpu_levels = levels
        return out

    def gpu_trace_levels(self) -> dict:
        """{module: {"level": run-time, "build": build level}} of the GPU kernel."""
        self._check()
        return self.kernel.trace_levels()

    def _apply_gpu_levels(self) -> None:
        for module, level in self._gpu_levels.items():
            self.kernel.set_trace_level(module, level)

    # -- reset (the watchdog) -----------------------------------------------------------------
    def resetting(self) -> bool:
        """The GPU kernel is being reset: bridge channels refuse with CHAN_CLOSED (also after a
        reset whose reboot failed, until a later one boots)."""
        return self.bridge is not None and self.bridge.paused is not None and \
            str(self.bridge.paused).startswith("reset")

    def reset_in_progress(self) -> bool:
        """A ``reset_device`` call is running now (a failed one has ended: the watchdog's
        later tick tries again; ``resetting()`` stays true meanwhile)."""
        return self._resetting

    def reset_device(self, reason: str = "requested", *, graceful: bool = False,
                     hung: bool = False) -> dict:
        """Kill the device process and boot a fresh one (kernel from the disk cache), then
        re-wire the bridge; the CPU kernel keeps running throughout. During the reset the
        CPU -> GPU bridge channels refuse with CHAN_CLOSED and ``push_device`` raises.
        Messages inside the old GPU kernel are accounted (``Bridge.reset_device``): records
        it had not finished go to sys.error with BRIDGE_RESET; inline records the bridge had
        staged but not sent are sent to the new kernel. Returns the reset's accounting.

        The kernel is asked to stop first (its stop flag; ``graceful``: up to 2 s, otherwise
        ``STOP_GRACE_S``) and killed after: a kernel that still answers publishes its final
        counts when it stops, so the accounting is exact (no message both delivered and on
        sys.error, none missed). ``hung`` (the watchdog's reset: missed heartbeats, or the
        child died): not asked to stop; its device process is asked for what the kernel holds
        (pending events, user words: ``DeviceProcess.kill``, at most ``handback_s``), then
        killed, and accounted from the counts last published. Asking a hung kernel to stop
        made it worse: its live workers published final counts beside the
        stuck one's stale ones (3 messages counted twice in a run in 15 of
        ``test_bridge_reset_exact``)."""
        if not isinstance(reason, str):
            raise ValueError(f"reset_device: reason={reason!r}: allowed a string")
        for name, v in (("graceful", graceful), ("hung", hung)):
            if not isinstance(v, bool):     # ("no" was taken as True)
                raise ValueError(f"reset_device: {name}={v!r}: allowed True or False")
        self._check()
        if self.process is None:
            raise BridgeError("reset_device: the GPU kernel runs in this process "
                              "(device_process=False): only a device process can be reset")
        with self._reset_lock:
            self._resetting = True
            try:
                return self._reset_device(reason, graceful, hung)
            finally:
                self._resetting = False

    def _reset_device(self, reason: str, graceful: bool, hung: bool) -> dict:
        t0 = time.monotonic()
        b = self.bridge
        b.begin_reset(f"reset: {reason}")
        old = self.process
        if not hung:
            try:
                old.stop(2.0 if graceful else STOP_GRACE_S)
            except Exception:   # noqa: BLE001 - a stuck kernel: killed below
                pass
        self._fold_gpu_metrics(self.kernel)     # (after a stop: its final counts)
        old.kill()                          # a stuck kernel cannot stop: SIGKILL
        acct = b.reset_device(T.BRIDGE_RESET)
        acct["device_held"] = self._drop_held(self.kernel, T.BRIDGE_RESET)
        self.resets["resets"] += 1
        self.resets["last_reason"] = reason
        self.resets["lost_in_reset"] += acct["lost"]
        self.resets["redelivered"] += acct["redelivered"]
        self.resets["gpu_to_cpu_gaps"] += acct["gaps"]
        try:
            new = self._boot_process()
        except BaseException as e:
            self.resets["last_error"] = f"{type(e).__name__}: {e}"
            log.error("ggmk: GPU kernel reset (%s) failed to boot a new kernel: %s",
                      reason, e)
            raise
        self.process = new
        self.kernel = new.kernel
        self._apply_gpu_levels()
        self.transport_base.rewire(new)
        b.end_reset()
        self.resets["last_error"] = None
        self.resets["reset_s"] = time.monotonic() - t0
        log.warning("ggmk: GPU kernel reset (%s): device process %s -> %s in %.2f s; "
                    "%d record(s) on sys.error with BRIDGE_RESET, %d redelivered",
                    reason, getattr(old, "pid", None), new.pid, self.resets["reset_s"],
                    acct["lost"], acct["redelivered"])
        return acct

    # -- running ------------------------------------------------------------------------------
    def device_quiet(self) -> bool:
        """The GPU kernel has nothing queued or running (its published counters agree)."""
        if self.bridge.paused is not None:
            return False                 # being reset: not idle until it is back
        if not self.kernel.alive():
            return True
        if self.transport.rx_pending():
            return False
        try:
            if self.kernel.tx_ready():       # published for the host, not received yet
                return False
            if self.kernel.rx_unpublished() > 0:   # taken in, counters not published yet
                return False
        except KernelStopped:
            return True
        backlog = getattr(self.transport, "device_backlog", None)
        if backlog is not None:
            return backlog() == 0
        c = self.transport.type_counts()
        enq = sum(v["enqueued"] for v in c.values())
        run = sum(v["run"] for v in c.values())
        return enq == run

    def idle(self, *, fenced: bool = True) -> bool:
        """Nothing left anywhere: both kernels and the bridge (deterministic traffic waiting
        for a tick fence included; ``fenced=False``: not counted, the fence loop's own wait)."""
        b = self.bridge
        return (self.cpu.idle() and b.idle(fenced=fenced) and self.device_quiet()
                and b.idle(refresh=False, fenced=fenced) and self.cpu.idle())

    def run(self, seconds: float | None = None, *, until_idle: bool = True,
            timeout: float | None = 60.0) -> bool:
        """Let both kernels and the bridge work; with ``until_idle`` return True once nothing
        is left anywhere (False after ``timeout``). In determinism mode deterministic bridge
        channels move at tick fences (see ggmk.bridge.fences)."""
        self._check()
        _check_timeout("run", timeout, none_ok=True)
        if seconds is not None:
            _check_timeout("run", seconds, none_ok=False, name="seconds")
        if seconds is not None and not until_idle:
            self.cpu.run(seconds, until_idle=False)
            return self.idle()
        limit = timeout if seconds is None else seconds
        deadline = time.monotonic() + (limit if limit is not None else 1e9)
        if self._fenced():
            return self._run_lockstep(deadline)
        return self._wait_idle(deadline)

    def _wait_idle(self, deadline, *, fenced: bool = True) -> bool:
        quiet = 0
        while time.monotonic() < deadline:
            self.cpu.run(until_idle=True, timeout=max(0.0, min(0.05, deadline - time.monotonic())))
            self.bridge.poke()
            if self.idle(fenced=fenced):
                quiet += 1
                if quiet >= 2:
                    return True
            else:
                quiet = 0
            time.sleep(0.0005)
        return False

    def _run_lockstep(self, deadline) -> bool:
        """Tick fences: run the CPU kernel until idle (its tick boundaries hold what its
        deterministic tasks emitted into deterministic bridge channels), acknowledge, then
        give the GPU kernel that epoch's input, wait for it, and deliver its deterministic
        output in canonical order. GPU output on a deterministic GPU -> CPU channel that
        answers no CPU input (a task given with ``push_device``) closes an epoch of its own.
        True once nothing is left anywhere."""
        b, f = self.bridge, self.fences
        while time.monotonic() < deadline:
            if not self.cpu.run(until_idle=True, timeout=max(0.0, deadline - time.monotonic())):
                return False
            tick = f.epoch
            f.cpu_ack(tick)                    # the CPU's tick-`tick` tasks are delivered
            ins = b.det_take_inbound()
            if not ins:
                # nothing for the GPU kernel: let the rest settle (plain channels, tasks given
                # with push_device), then deliver any deterministic GPU output it left
                if not self._wait_idle(min(deadline, time.monotonic() + 0.2), fenced=False):
                    continue
                if not any(st.det and st.fence_buf for st in b.outs.values()):
                    if not b.det_pending() and self.idle():
                        return True
                    continue
            f.gpu_start(tick + 1, device_done=sum(st.done for st in b.ins),
                        pushed=sum(st.pushed for st in b.ins))
            for st, recs in ins:
                f.fold(tick + 1, "in", st.bc.name, recs,
                       digests=b.det_digests(recs, device=False))
            if ins:
                b.det_push(ins)
                b.det_pump_inbound()
                if not self._wait_idle(deadline, fenced=False):
                    return False
            f.gpu_ack(tick + 1)
            for st, recs, dig in b.det_take_outbound():
                f.fold(tick + 1, "out", st.bc.name, recs, digests=dig)
                b.det_deliver(st, recs)
            f.epoch = tick + 1
        return False

    def trace_hash(self) -> str:
        """The CPU kernel's trace hash folded with the bridge's fence hash."""
        h = hashlib.sha256()
        h.update(self.cpu.trace_hash().encode())
        h.update(self.fences.hexdigest().encode())
        return h.hexdigest()

    # -- the GPU kernel's counters across resets -------------------------------------------------
    _gpu_base = None                   # the dead kernels' counters, added up (_merge_gpu)
    _gpu_folded = None                 # the last kernel added there (not read again)
    _last_gpu = None                   # the last metrics read or kept (halt, a reset) ...
    _last_gpu_kernel = None            # ... and whose they are

    def _fold_gpu_metrics(self, kernel) -> None:
        """A reset is about to kill ``kernel``: add its last published counters to the base,
        so ``gpu_metrics()`` (stats()["gpu"], the control plane) never goes back."""
        with self._gpu_lock:
            if kernel is None or kernel is self._gpu_folded:
                return
            try:
                m = kernel.metrics()
            except Exception:   # noqa: BLE001 - unreadable: what was kept of it
                m = self._last_gpu if self._last_gpu_kernel is kernel else None
            self._gpu_folded = kernel
            self._last_gpu, self._last_gpu_kernel = m, kernel    # (the dead kernel's own)
            if m is not None:
                self._gpu_base = _merge_gpu(self._gpu_base, m)

    def gpu_metrics(self, *, cumulative: bool = True) -> dict | None:
        """The GPU kernel's published metrics (``DeviceKernel.metrics()``; after halt its
        final ones). ``cumulative`` (default): counters summed over every GPU kernel this
        system ran (a reset boots a new one that counts from 0): the dead kernels' final
        counters plus the live one's, so they never go back; high watermarks are the largest
        seen; gauges (channel depths) the live kernel's. Adds ``kernel_resets`` (how many
        kernels were replaced) and ``live_global`` (the live kernel's own global counters:
        what its queue depth and loop count are computed from)."""
        # (under the lock: a fold between the live read and the sum would count a kernel
        # twice, and the next read would go back)
        with self._gpu_lock:
            k = self.kernel
            live = None
            if k is not None and k is not self._gpu_folded:
                try:
                    live = k.metrics() if k.alive() else None
                except Exception:   # noqa: BLE001 - a stopping kernel: the last kept
                    live = None
                if live is not None:
                    # kept: while a reset or a dead process leaves it unreadable, its last
                    # counters stand in (the totals never go back)
                    self._last_gpu, self._last_gpu_kernel = live, k
                elif self._last_gpu_kernel is k:
                    live = self._last_gpu
            base = self._gpu_base
        if not cumulative:
            return live
        if base is None and live is None:
            return None
        out = _merge_gpu(base, live) if base is not None and live is not None else \
            _merge_gpu(None, live if live is not None else base)
        out["kernel_resets"] = self.resets["resets"]
        out["live_global"] = dict((live or {}).get("global", {}))
        return out

    def stats(self) -> dict:
        gpu = self.gpu_metrics()
        wd = self.watchdog.stats() if self.watchdog is not None else None
        return {"cpu": self.cpu.stats(), "gpu": gpu,
                "bridge": self.bridge.stats() if self.bridge is not None else None,
                "device_process": None if self.process is None else {
                    "pid": self.process.pid, "alive": self.process.alive(), **self.resets},
                "watchdog": wd,
                "target": self.target, "device": self.device_info,
                "boot": [s[0] for s in self.boot_log]}

    # -- shutdown -------------------------------------------------------------------------------
    def halt(self, timeout: float = 5.0) -> dict:
        """Stop the GPU kernel, then the CPU kernel, losing nothing accepted: wait up to
        ``timeout`` for everything to finish; then stop the bridge pump and the GPU kernel,
        take what the GPU kernel still sent, put what the bridge still holds on sys.error
        (HALTED) and halt the CPU kernel (see ``System.halt``). Returns the CPU kernel's
        accounting plus ``bridge_halted``, ``device_unfinished`` (ingress tasks the GPU
        kernel had not finished when it stopped), ``device_halted`` (the messages and tasks
        inside the stopped GPU kernel, each named on sys.error with HALTED) and
        ``device_tasks`` (of those, the GPU kernel's own tasks per type: see
        ``Bridge._lost_tasks_on_device``) and ``device_held`` (state the GPU kernel's modules
        held in its user words, on sys.dropped with CHAN_CLOSED: see :meth:`_drop_held`). A
        second call, from any thread, waits for the first and returns its accounting.

        From a signal handler, as ``System.halt``: one that interrupted the main thread inside
        ggmk's code (the CPU kernel's, the bridge's, this object's) is deferred to a thread of
        its own and returns None at once (``halted`` turns True once that halt has drained,
        as at once); ``halt()`` called again outside the handler returns its report."""
        _check_timeout("halt", timeout, none_ok=False)
        if signal_in_kernel():      # (first: on_worker_thread takes a lock the signal may hold)
            return halt_once(self, False, lambda: self._halt(timeout), defer=True)
        return halt_once(self, self.cpu.on_worker_thread(), lambda: self._halt(timeout))

    def _halt(self, timeout: float) -> dict:
        unhalted = getattr(self, "_unhalted", None)   # (set once the boot completed)
        if unhalted is not None:
            unhalted.detach()
        t_end = time.monotonic() + max(timeout, 0)
        if self.watchdog is not None:
            self.watchdog.stop()
        # (deterministic bridge channels move at tick fences only: halt runs them too)
        drained = timeout > 0 and (self._run_lockstep(t_end) if self._fenced()
                                   else self._wait_idle(t_end))
        self.halted = True
        b = self.bridge
        b.stop()
        self._keep_gpu_metrics()            # (the running kernel's, if it never stops)
        err = None
        if self.process is not None:
            with self._reset_lock:             # a reset in progress finishes first
                rep_dev = self._halt_process(b)
        else:
            try:
                self.kernel.stop(timeout=self.STOP_S)     # (not stop()'s 60 s for a hung one)
                self._keep_gpu_metrics()
            except Exception as e:   # noqa: BLE001 - report it after the CPU halted
                err = e
            # what the stopped kernel still held, accounted as for a device process: what it
            # published is delivered, what it had not finished is named on sys.error
            with b.lock:
                b._refresh_done(force=True)
            unfinished = sum(max(0, st.inflight()) for st in b.ins)
            acct = b.reset_device(T.HALTED, reset=False)
            rep_dev = {"unfinished": unfinished, "named": acct["lost"],
                       "tasks": acct["device_tasks"]}
        held = self._drop_held(self.kernel, T.CHAN_CLOSED)
        unfinished = rep_dev["unfinished"]
        left = b.drain_leftovers(T.HALTED)
        rep = dict(self.cpu.halt(timeout=max(0.0, t_end - time.monotonic())))
        rep["drained"] = bool(drained) and rep.get("drained", True)
        rep["bridge_halted"] = left
        rep["device_unfinished"] = unfinished
        rep["device_halted"] = rep_dev["named"]
        rep["device_tasks"] = rep_dev["tasks"]
        rep["device_held"] = held
        if self.process is not None:
            rep["device_killed"] = rep_dev["killed"]
        self.halt_report = rep
        try:
            self.driver.close()
        finally:
            if err is not None:
                raise err
        return rep

    def _keep_gpu_metrics(self) -> None:
        """Keep the GPU kernel's metrics for stats() after halt: a stopped kernel's are final
        (it publishes them on its way out)."""
        if self.kernel is self._gpu_folded:
            return                          # (a reset whose reboot failed: counted already)
        with self._gpu_lock:
            try:
                self._last_gpu, self._last_gpu_kernel = self.kernel.metrics(), self.kernel
            except Exception:   # noqa: BLE001 - unreadable: keep what was kept
                pass

    _held_named = None                 # weakref: the GPU kernel whose held state was named

    def _drop_held(self, kernel, code: int) -> int:
        """State the stopped GPU kernel's modules held in its user words (a device reduce's
        open groups: partials folded there, no task left to name them) goes to sys.dropped
        with ``code`` (CHAN_CLOSED at halt, as the CPU modules' halt reports theirs;
        BRIDGE_RESET at a reset): a device module may define a host-side hook
        ``m.halt_records(words) -> records`` (``words``: the kernel's user words, read-only,
        read after it stopped: in a device process handed back with its stop reply). A kernel
        killed instead (hung) cannot be read: said in the bridge's errors. Once per kernel
        (a halt after a failed reset finds the same one). Returns how many records."""
        mods = [m for m in self._dev_spec["modules"]
                if callable(getattr(m, "halt_records", None))]
        if not mods or kernel is None or \
                (self._held_named is not None and self._held_named() is kernel):
            return 0
        self._held_named = weakref.ref(kernel)
        names = [m.name for m in mods]
        try:
            words = device_tasks.user_words(kernel)
        except Exception as e:   # noqa: BLE001 - its pages may be unreadable: say so
            words = None
            self.bridge.errors.append(f"reading the GPU kernel's user words: {e!r}")
        if words is None:
            self.bridge.errors.append(f"device modules {names}: the state they held in the GPU "
                                      "kernel's user words is not named (the kernel was "
                                      "killed, not stopped)")
            return 0
        words.setflags(write=False)
        n = 0
        for m in mods:
            try:
                recs = m.halt_records(words)
                if recs is None:
                    continue
                # (checked here: bad records raised out of halt before the CPU kernel halted,
                # and out of a reset after the old kernel was killed, before the new booted)
                if not isinstance(recs, np.ndarray) or recs.dtype != T.TASK_DTYPE or \
                        recs.ndim != 1:
                    raise TypeError(f"returned {type(recs).__name__} "
                                    f"{getattr(recs, 'dtype', '')}: allowed None or a 1-d "
                                    f"array of task records (ggmk.task.make)")
                if not len(recs):
                    continue
                recs = T.copy(recs)
                recs["payload_ptr"] = 0      # (the device arena's: not the CPU's to release)
                recs["payload_len"] = 0
            except Exception as e:   # noqa: BLE001 - a user's hook: reported, halt goes on
                self.bridge.errors.append(f"device module {m.name!r}: halt_records: {e!r}")
                continue
            n += self.cpu.dead_letter(recs, code, which="sys.dropped")
        return n

    def _halt_process(self, b) -> dict:
        """Stop the device process (a kernel that does not stop within a few seconds is stuck:
        the process is killed), then account for what was inside it exactly as a reset does,
        with HALTED: named records on sys.error, nothing silently gone."""
        killed = False
        try:
            self.kernel.stop(timeout=self.STOP_S)
            self._keep_gpu_metrics()
        except Exception as e:   # noqa: BLE001 - stuck or dead: killed below
            killed = True
            log.warning("ggmk: halt: the GPU kernel did not stop (%s); its device process is "
                        "killed", e)
        self.process.kill()                    # reaped, shared pages unlinked
        with b.lock:                           # its last published counts: final if it stopped
            b._refresh_done(force=True)
        unfinished = sum(max(0, st.inflight()) for st in b.ins)
        acct = b.reset_device(T.HALTED, reset=False)
        for ch in b._suspended:                # a failed reset left them refusing: the CPU
            ch.resume()                        # kernel's halt closes (and drains) them
        b._suspended = []
        return {"killed": killed, "unfinished": unfinished, "named": acct["lost"],
                "tasks": acct["device_tasks"]}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.halt(timeout=0 if exc_type is not None else 5.0)


def _merge_gpu(a: dict | None, b: dict) -> dict:
    """GPU kernel metrics ``a`` (None: nothing yet) followed by ``b`` (a later kernel's):
    counters added, high watermarks the larger, everything else (gauges such as channel
    depths, static fields) ``b``'s. A new dict; neither argument is changed."""
    from ggmk.device import layout
    hwm = set(layout.HWM_METRICS) | {"high_watermark"}
    a = a or {}

    def add(x: dict, y: dict, counters) -> dict:
        out = dict(y)
        for key, v in x.items():
            if key not in counters or isinstance(v, bool) or not isinstance(v, (int, float)):
                out.setdefault(key, v)
                continue
            w = y.get(key, 0)
            out[key] = max(v, w) if key in hwm else v + w
        return out

    gcount = set(layout.METRIC_NAMES) | {"enqueued"}
    out = {k: v for k, v in b.items()}
    out["global"] = add(a.get("global", {}), b.get("global", {}), gcount)
    types = {t: dict(v) for t, v in b.get("types", {}).items()}
    for t, v in a.get("types", {}).items():
        types[t] = add(v, types.get(t, {}), set(layout.PER_TYPE_NAMES))
    out["types"] = types
    ua, ub = list(a.get("user") or []), list(b.get("user") or [])
    n = max(len(ua), len(ub))
    out["user"] = [(ua[i] if i < len(ua) else 0) + (ub[i] if i < len(ub) else 0)
                   for i in range(n)]
    chans = {}
    for name, cb in (b.get("channels") or {}).items():
        ca = (a.get("channels") or {}).get(name)
        if ca is None:
            chans[name] = cb
            continue
        c = add(ca, cb, set(layout.PER_CHAN_NAMES))
        sa, sb = ca.get("subs") or [], cb.get("subs") or []
        c["subs"] = [add(sa[i], x, set(layout.PER_SUB_NAMES)) if i < len(sa) else x
                     for i, x in enumerate(sb)]
        chans[name] = c
    for name, ca in (a.get("channels") or {}).items():
        chans.setdefault(name, ca)
    out["channels"] = chans
    return out


def _options(name: str, value) -> dict:
    """``bridge=`` / ``device_config=``: None or a dict of options (a BootError otherwise)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BootError(f"boot: {name}={value!r}: allowed None or a dict of options "
                        f"(e.g. {name}={{...}})")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        # (named here: sorting mixed names for the unknown-option message raised a TypeError)
        raise BootError(f"boot: {name}={{...}}: option names must be strings, got {bad[0]!r}")
    return dict(value)


def _device_config(value) -> dict:
    """``device_config=``: names and value types checked before anything boots (the GPU
    kernel checked them only after the CPU kernel booted, and ``blocks="2"`` was a raw
    TypeError there); the ranges stay the GPU kernel's (``DeviceConfig.validate``, after the
    target's own rules: cuda's ``blocks=0`` is one per SM)."""
    from ggmk.device.layout import DeviceConfig
    dcfg = _options("device_config", value)
    fields = DeviceConfig.__dataclass_fields__
    known = sorted(fields) + ["threads", "workers"]       # (DeviceKernel's own keywords)
    unknown = sorted(set(dcfg) - set(known))
    if unknown:
        raise BootError(f"boot: unknown device_config options {unknown}; known: {known}")
    for k, v in dcfg.items():
        name = f"boot: device_config={{...}}: {k}"
        if k in fields and isinstance(fields[k].default, bool):
            check_flag(name, v, err=BootError)
        else:
            check_int(name, v, 0, err=BootError)
    return dcfg


def _check_timeout(what: str, value, *, none_ok: bool, name: str = "timeout") -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        allowed = "None or " if none_ok else ""
        raise ValueError(f"{what}: {name}={value!r}: allowed {allowed}a number of seconds >= 0")


def boot(modules, *, device: str | None = "auto", **kw):
    """Boot ``modules`` (CPU ``ggmk.Module`` and GPU ``ggmk.device.Module`` in one list).
    ``device``: "auto" (cuda if usable, else the cpu target), "cpu", "sim", "cuda", or None
    (the CPU kernel alone: a plain ``System``; GPU modules are then an error)."""
    if device is None:
        _, gpu = _split(modules)
        if gpu:
            raise BootError(f"boot(device=None) boots the CPU kernel alone, but GPU modules were "
                            f"given: {[m.name for m in gpu]}; pass device='auto'")
        for k in ("bridge", "device_config", "transport_wrap", "device_process", "watchdog"):
            kw.pop(k, None)
        return System(modules, **kw)
    return DualSystem(modules, device=device, **kw)
