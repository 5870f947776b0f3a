"""GPU kernel tracing in a dual system (SPEC §7): run-time trace levels per GPU module
(``DualSystem.set_gpu_trace_level``, ``DeviceKernel.set_trace_level``, ``ggmk trace
--level``), the strip switch reaching the GPU kernel (``boot(trace=False)``,
``GGMK_TRACE=0``), and the ``trace_events`` metric counting every record (park / wake too).

Two GPU kernels are compiled (traced and stripped), both cached after the first run."""
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

import ggmk
import ggmk.dual
import ggmk.device as gd
from ggmk import task as T
from ggmk.device import api as g
from ggmk.events import EventType, Level

ROOT = Path(__file__).resolve().parents[2]

OBS, QUIET = 7101, 7102
obs = gd.Module("obs_gpu", trace_level="all")
quiet = gd.Module("obs_quiet", trace_level="warn")
host = ggmk.Module("obs_host")


@obs.handler(OBS)
def obs_work(ctx, task):
    """meta0 != 0: fail with code -meta0 (a TASK_FAIL event, arg0 = the code)."""
    if g.meta0(task) != 0:
        return -g.meta0(task)
    return 0


@quiet.handler(QUIET)
def quiet_work(ctx, task):
    if g.meta0(task) != 0:
        return -g.meta0(task)
    return 0


def _boot(**kw):
    return ggmk.dual.boot([host, obs, quiet], device="cpu", workers=1, **kw)


def _done(s, t):
    m = s.kernel.metrics()["types"][t]
    return m["ok"] + m["fail"]


class Drain:
    """Every GPU trace record drained so far, in ring order."""

    def __init__(self, s):
        self.s = s
        self.parts = []

    def __call__(self):
        p = self.s.kernel.drain_trace()
        if len(p):
            self.parts.append(p)
        return self.all()

    def all(self):
        return np.concatenate(self.parts) if self.parts else \
            np.zeros(0, gd.layout.DEVICE_TRACE_DTYPE)


def _code(rec_code: int) -> int:
    return rec_code & 0xFFFFFFFF


def _run(s, wait_until, t, n, *, fail_code, tenant, flags=0):
    """Push n tasks of type t (every other one fails with fail_code), wait until all ran."""
    before = _done(s, t)
    meta0 = np.where(np.arange(n) % 2 == 1, fail_code, 0)
    s.push_device(T.make(n, type=t, meta0=meta0, tenant=tenant, flags=flags))
    assert wait_until(lambda: _done(s, t) == before + n, 60)


def test_trace_events_metric_counts_park_and_wake(wait_until):
    """The published ``trace_events`` equals what the ring held (drained + lost) once the
    workers are parked, WORKER_PARK / WORKER_WAKE records included (a module at level
    ``all`` compiles them in)."""
    s = _boot(device_process=False)
    try:
        d = Drain(s)
        for k in range(3):                       # work, park, wake: several times
            parks = s.kernel.metrics()["global"]["parks"]
            _run(s, wait_until, OBS, 40, fail_code=3, tenant=1)
            assert wait_until(lambda: s.kernel.metrics()["global"]["parks"] > parks, 30)

        def settled():
            ev = d()
            n = s.kernel.metrics()["global"]["trace_events"]
            return n == len(ev) + s.kernel.trace_lost
        ok = wait_until(settled, 30)
        ev = d.all()
        codes = ev["event"] & 0x7FFF
        pw = int(((codes == EventType.WORKER_PARK) | (codes == EventType.WORKER_WAKE)).sum())
        assert pw > 0
        assert ok, (s.kernel.metrics()["global"]["trace_events"], len(ev), pw,
                    s.kernel.trace_lost)
    finally:
        s.halt()


def test_gpu_module_level_set_at_run_time(wait_until):
    """Levels set while the GPU kernel runs (in a device process: the parent writes the
    level words in the shared pages) take effect: ``off`` records nothing of the module's
    tasks, ``error`` only their failures; a level above the module's build level is
    refused for a named module and capped for all modules; the level table is re-applied
    to the kernel a reset boots."""
    s = _boot(device_process=True)
    try:
        assert s.process is not None
        lv = s.gpu_trace_levels()
        assert lv["obs_gpu"] == {"level": "all", "build": "all"}
        assert lv["obs_quiet"] == {"level": "warn", "build": "warn"}
        d = Drain(s)
        _run(s, wait_until, OBS, 40, fail_code=11, tenant=1)
        assert s.set_gpu_trace_level("obs_gpu", "off") == {"obs_gpu": Level.OFF}
        assert s.gpu_trace_levels()["obs_gpu"] == {"level": "off", "build": "all"}
        _run(s, wait_until, OBS, 40, fail_code=12, tenant=2)
        assert s.set_gpu_trace_level("obs_gpu", "error") == {"obs_gpu": Level.ERROR}
        _run(s, wait_until, OBS, 40, fail_code=13, tenant=3)

        def tenant3_fails():
            ev = d()
            return int(((ev["tenant"] == 3) & ((ev["event"] & 0x7FFF) == EventType.TASK_FAIL))
                       .sum()) == 20
        assert wait_until(tenant3_fails, 30)
        ev = d.all()
        code = ev["event"] & 0x7FFF
        t1 = ev[ev["tenant"] == 1]
        assert (t1["event"] == EventType.TASK_END).any() and \
            (t1["event"] == EventType.TASK_FAIL).sum() == 20
        assert (ev["tenant"] == 2).sum() == 0                 # level off: nothing at all
        t3 = code[ev["tenant"] == 3]
        assert (t3 == EventType.TASK_FAIL).all()              # level error: failures only
        assert set(ev["arg0"][(code == EventType.TASK_FAIL) & (ev["tenant"] == 3)]
                   .tolist()) == {_code(-13)}
        # the build level is the ceiling: refused for a module named, capped for all
        with pytest.raises(ValueError, match="obs_quiet.*built at trace level warn"):
            s.set_gpu_trace_level("obs_quiet", "all")
        assert s.gpu_trace_levels()["obs_quiet"]["level"] == "warn"
        with pytest.raises(ValueError, match="no GPU module 'nope'"):
            s.set_gpu_trace_level("nope", "off")
        with pytest.raises(ValueError, match="trace level"):
            s.set_gpu_trace_level("obs_gpu", "loud")
        got = s.set_gpu_trace_level(None, "info")
        assert got["obs_gpu"] == Level.INFO and got["obs_quiet"] == Level.WARN
        s.set_gpu_trace_level("obs_quiet", "off")
        # a reset boots a new kernel: the levels set are set on it too
        s.reset_device("test")
        lv = s.gpu_trace_levels()
        assert lv["obs_gpu"]["level"] == "info" and lv["obs_quiet"]["level"] == "off"
        d2 = Drain(s)
        _run(s, wait_until, QUIET, 20, fail_code=14, tenant=4)
        _run(s, wait_until, OBS, 20, fail_code=15, tenant=5)
        assert wait_until(lambda: (d2()["tenant"] == 5).sum() == 10, 30)
        assert (d2.all()["tenant"] == 4).sum() == 0           # obs_quiet is off
    finally:
        s.halt()


def _server(s):
    from ggmk.control.paths import StatePaths
    from ggmk.control.server import ControlServer
    srv = ControlServer(s, StatePaths.resolve(tempfile.mkdtemp(prefix="ggobs-", dir="/tmp")),
                        modules=[host, obs, quiet], app="obs")
    srv._driver = threading.current_thread()
    return srv


def test_cmd_trace_sets_gpu_module_levels(wait_until):
    """``ggmk trace --module <GPU module> --level L`` sets the GPU kernel's level for that
    module (not only the CPU tracer's); ``--level L`` alone sets every GPU module's too (at
    most its build level, said in the reply and the log); a level above a GPU module's build
    level is refused with how to get it, and nothing changes."""
    from ggmk.control.server import ControlError
    s = _boot(device_process=False)
    try:
        srv = _server(s)
        r = srv.cmd_trace(None, 1, {"level": "off", "module": "obs_gpu"})
        assert r["gpu_levels"]["obs_gpu"] == "off"
        assert s.gpu_trace_levels()["obs_gpu"]["level"] == "off"
        srv._collect_trace()
        with srv._trace_lock:
            srv._gpu_chunks.clear()
        _run(s, wait_until, OBS, 40, fail_code=21, tenant=6)
        _run(s, wait_until, QUIET, 40, fail_code=22, tenant=7)

        def quiet_fails():
            srv._collect_trace()
            with srv._trace_lock:
                ev = np.concatenate(list(srv._gpu_chunks)) if srv._gpu_chunks else \
                    np.zeros(0, gd.layout.DEVICE_TRACE_DTYPE)
            quiet_fails.ev = ev
            return int((ev["tenant"] == 7).sum()) == 20
        assert wait_until(quiet_fails, 30)
        assert int((quiet_fails.ev["tenant"] == 6).sum()) == 0
        with pytest.raises(ControlError, match="built at trace level warn"):
            srv.cmd_trace(None, 2, {"level": "info", "module": "obs_quiet"})
        assert s.gpu_trace_levels()["obs_quiet"]["level"] == "warn"
        r = srv.cmd_trace(None, 3, {"level": "info"})
        assert r["gpu_levels"] == {"obs_gpu": "info", "obs_quiet": "warn", "bridge": "warn"}
        assert s.gpu_trace_levels()["obs_gpu"]["level"] == "info"
        assert any("obs_quiet warn" in ln["msg"] and "build level" in ln["msg"]
                   for ln in srv.log.tail(5))
        r = srv.cmd_trace(None, 4, {"level": "error"})
        assert set(r["gpu_levels"].values()) == {"error"}
        assert s.cpu.tracer.level_of(0) == Level.ERROR
    finally:
        s.halt()


def _assert_nothing_traced(s, wait_until):
    emit = T.FLAG_EMIT_TRACE
    for t in (OBS, QUIET):
        _run(s, wait_until, t, 40, fail_code=5, tenant=1, flags=emit)
    parks = s.kernel.metrics()["global"]["parks"]
    _run(s, wait_until, OBS, 10, fail_code=6, tenant=1)
    assert wait_until(lambda: s.kernel.metrics()["global"]["parks"] > parks, 30)
    assert len(s.kernel.drain_trace()) == 0
    assert s.gpu_metrics()["global"]["trace_events"] == 0
    assert s.kernel.config.trace is False
    assert s.set_gpu_trace_level(None, "all") == {"obs_gpu": Level.OFF,
                                                  "obs_quiet": Level.OFF,
                                                  "bridge": Level.OFF}


def test_trace_off_strips_the_gpu_kernel_too(wait_until):
    """``boot(trace=False)``: the GPU kernel is built without tracing (its failures, tasks
    flagged emit-trace, parks: no record, ``trace_events`` stays 0)."""
    s = _boot(device_process=True, trace=False)
    try:
        assert not s.cpu.tracer.enabled
        _assert_nothing_traced(s, wait_until)
    finally:
        s.halt()


SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import test_obs_gpu_trace as M
from ggmk.device import layout
s = M._boot(device_process=False)
try:
    assert not s.cpu.tracer.enabled
    M._assert_nothing_traced(s, M._wait)
finally:
    s.halt()
print("STRIPPED-OK")
"""


def _wait(pred, timeout=10.0):
    import time
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            return False
        time.sleep(0.001)
    return True


def test_ggmk_trace_env_strips_the_gpu_kernel_too():
    """``GGMK_TRACE=0`` in the environment strips the GPU kernel of a dual system as well."""
    env = dict(os.environ, GGMK_TRACE="0", PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-c",
                        SCRIPT.format(here=str(Path(__file__).resolve().parent))],
                       env=env, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0 and "STRIPPED-OK" in r.stdout, r.stdout + r.stderr
