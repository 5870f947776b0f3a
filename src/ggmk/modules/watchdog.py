"""The watchdog: watches the GPU kernel's per-worker heartbeats and resets a stuck kernel.

Every ``interval_s`` (a watchdog tick) it reads the heartbeats the GPU kernel's workers publish
in host-mapped memory (a per-worker loop counter, ``DeviceKernel.heartbeats``). A worker whose
counter did not move since the previous tick *missed* a heartbeat:

* ``warn_after`` missed in a row (default 2): a warning: an ``EventType.WATCHDOG`` event on the
  CPU kernel's trace (arg0 = 1 warn, arg1 = missed), a ``SYS_TRACE`` message on ``sys.trace``
  when something subscribes to it (meta0 = 1 warn / 2 reset, meta1 = missed << 16 | worker)
  and a warning on the ``ggmk`` logger;
* ``reset_after`` missed in a row (default 5): a reset: the device process is killed and a
  fresh one booted (the kernel comes from the disk cache), the bridge re-wired
  (``DualSystem.reset_device``), while the CPU kernel keeps running and serving its own work.
  During the reset CPU -> GPU bridge channels refuse with CHAN_CLOSED; afterwards they carry
  traffic again by themselves. Messages that were inside the old GPU kernel are on
  ``sys.error`` with ``BRIDGE_RESET`` or redelivered (see ``Bridge.reset_device``).

A device process that died (crashed, killed) is reset at the next tick (``reason``: "device
process died"). A failed reboot leaves the old process dead and the bridge paused; it is
retried ``reset_after`` ticks later, then after twice as many, ... (at most 64 x), until one
boots.

Why a host thread, not a CPU-kernel handler: a reset takes as long as a process start and a
kernel load from the disk cache (seconds); a handler doing it would hold a CPU worker that long.

Counters (``stats()``, also in ``DualSystem.stats()["watchdog"]``): ticks, warnings, resets,
failed_resets, last_reset_reason, last_warning, missed (per worker, now).

Example::

    import ggmk
    with ggmk.boot(modules, device="cpu", device_process=True,
                   watchdog={"interval_s": 0.05, "warn_after": 2, "reset_after": 5}) as s:
        ...
        print(s.stats()["watchdog"]["resets"])
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ggmk.errors import BootError
from ggmk.events import EventType

log = logging.getLogger("ggmk")

DEFAULTS = {"interval_s": 0.1, "warn_after": 2, "reset_after": 5, "enabled": True}
WARN, RESET = 1, 2


def config(cfg) -> dict:
    """The watchdog configuration from ``cfg`` (True, a dict of :data:`DEFAULTS` keys); a bad
    key or value is a BootError naming it, its value and what is allowed."""
    if cfg is True:
        cfg = {}
    if not isinstance(cfg, dict):
        raise BootError(f"watchdog: config {cfg!r} must be True or a dict with keys "
                        f"{sorted(DEFAULTS)}")
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        # (sorted by repr: an int among the names failed to sort, a TypeError)
        raise BootError(f"watchdog: unknown option(s) {sorted(unknown, key=repr)}; allowed: "
                        f"{sorted(DEFAULTS)}")
    out = dict(DEFAULTS) | cfg
    iv = out["interval_s"]
    if isinstance(iv, bool) or not isinstance(iv, (int, float)) or not 0.001 <= iv <= 3600:
        raise BootError(f"watchdog: interval_s={iv!r} must be a number of seconds between "
                        "0.001 and 3600")
    for k in ("warn_after", "reset_after"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BootError(f"watchdog: {k}={v!r} must be an int >= 1 (missed heartbeats)")
    if out["warn_after"] >= out["reset_after"]:
        raise BootError(f"watchdog: warn_after={out['warn_after']} must be less than "
                        f"reset_after={out['reset_after']} (a warning comes before a reset)")
    if not isinstance(out["enabled"], bool):
        raise BootError(f"watchdog: enabled={out['enabled']!r} must be True or False")
    out["interval_s"] = float(iv)
    return out


class Watchdog:
    """Watches ``system`` (a ``DualSystem`` with a device process). Use ``check()`` to run one
    tick by hand (tests), or ``start()`` for the ``ggmk-watchdog`` thread."""

    def __init__(self, system, *, interval_s: float = 0.1, warn_after: int = 2,
                 reset_after: int = 5, enabled: bool = True):
        cfg = config({"interval_s": interval_s, "warn_after": warn_after,
                      "reset_after": reset_after, "enabled": enabled})
        self.sys = system
        self.interval_s = cfg["interval_s"]
        self.warn_after = cfg["warn_after"]
        self.reset_after = cfg["reset_after"]
        self.enabled = cfg["enabled"]
        self._last = None
        self._missed = None
        self._warned = False
        self._stop = threading.Event()
        self._thread = None
        self.c = dict(ticks=0, warnings=0, resets=0, failed_resets=0, deaths=0)
        self._fails_in_row = 0
        self._retry_tick = 0             # after a failed reboot: no retry before this tick
        self.last_reset_reason = None
        self.last_warning = None
        self.events: list = []          # (monotonic time, "warn" | "reset" | "reset_failed", text)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None and self.enabled:
            self._thread = threading.Thread(target=self._loop, name="ggmk-watchdog",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(30)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as e:   # noqa: BLE001 - keep watching; report it
                log.error("ggmk: watchdog tick failed: %r", e)

    # -- one tick -----------------------------------------------------------------------------
    def check(self) -> str | None:
        """One watchdog tick: returns None, "warn" or "reset"."""
        s = self.sys
        if s.halted or self._stop.is_set() and threading.current_thread() is self._thread:
            return None
        self.c["ticks"] += 1
        proc = s.process
        if proc is None:
            return None
        if getattr(s, "reset_in_progress", lambda: False)():
            self._last, self._missed, self._warned = None, None, False
            return None                      # a reset by hand is under way: new baseline after
        if not proc.alive():
            if self.c["ticks"] < self._retry_tick:
                return None                  # a failed reboot: the next try is not due yet
            self.c["deaths"] += 1
            code = proc.proc.exitcode if proc.proc is not None and not proc._closed else None
            return self._reset(f"device process died (exit code {code}, "
                               f"{proc.exit_info or 'no report'})")
        try:
            hb = s.kernel.heartbeats()
        except Exception as e:   # noqa: BLE001 - the view is being swapped
            log.debug("watchdog: heartbeats unavailable: %r", e)
            return None
        if self._last is None or len(self._last) != len(hb):
            self._last = hb
            self._missed = np.zeros(len(hb), np.int64)
            return None
        same = hb == self._last
        self._missed = np.where(same, self._missed + 1, 0)
        self._last = hb
        worst = int(self._missed.argmax())
        m = int(self._missed[worst])
        if m >= self.reset_after:
            return self._reset(f"GPU worker {worst} missed {m} heartbeats "
                               f"({m * self.interval_s:.3f} s at {self.interval_s} s per tick)")
        if m >= self.warn_after:
            if not self._warned:
                self._warned = True
                self._warn(worst, m)
                return "warn"
            return None
        if m == 0 and not same.any():
            self._warned = False
        return None

    def _event(self, kind: int, worker: int, missed: int) -> None:
        cpu = self.sys.cpu
        try:
            # the host ring (index nworkers) is shared: the tracer serializes its writers
            cpu.tracer.emit(cpu.nworkers, EventType.WATCHDOG, 0, 0, arg0=kind, arg1=missed,
                            force=True)
        except Exception:   # noqa: BLE001 - tracing is best effort
            pass
        try:
            ch = cpu.channel("sys.trace")
            if ch.subs:
                ch.publish(meta0=kind, meta1=(missed << 16) | worker)
        except Exception:   # noqa: BLE001
            pass

    def _warn(self, worker: int, missed: int) -> None:
        self.c["warnings"] += 1
        self.last_warning = (f"GPU worker {worker} missed {missed} heartbeats "
                             f"(interval {self.interval_s} s; reset at {self.reset_after})")
        self.events.append((time.monotonic(), "warn", self.last_warning))
        log.warning("ggmk: watchdog: %s", self.last_warning)
        self._event(WARN, worker, missed)

    def _reset(self, reason: str) -> str:
        self._event(RESET, int(self._missed.argmax()) if self._missed is not None else 0,
                    int(self._missed.max()) if self._missed is not None else 0)
        log.error("ggmk: watchdog: resetting the GPU kernel: %s", reason)
        self.events.append((time.monotonic(), "reset", reason))
        try:
            self.sys.reset_device(reason, hung=True)     # (no stop first: see reset_device)
        except Exception as e:   # noqa: BLE001 - try again at the next threshold
            self.c["failed_resets"] += 1
            self.events.append((time.monotonic(), "reset_failed", f"{type(e).__name__}: {e}"))
            log.error("ggmk: watchdog: reset failed: %s", e)
            self._last, self._missed, self._warned = None, None, False
            self._fails_in_row += 1
            self._retry_tick = self.c["ticks"] + \
                self.reset_after * min(1 << (self._fails_in_row - 1), 64)
            return "reset_failed"
        self._fails_in_row = 0
        self.c["resets"] += 1
        self.last_reset_reason = reason
        self._last, self._missed, self._warned = None, None, False
        return "reset"

    def stats(self) -> dict:
        return dict(self.c, interval_s=self.interval_s, warn_after=self.warn_after,
                    reset_after=self.reset_after, last_reset_reason=self.last_reset_reason,
                    last_warning=self.last_warning,
                    missed=None if self._missed is None else self._missed.tolist())


__all__ = ["Watchdog", "config", "DEFAULTS"]
