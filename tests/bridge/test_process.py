"""The device process (ggmk.bridge.process): the GPU kernel in a spawn child over shared memory.

Child killed with SIGKILL mid-traffic (detected, nothing lost, recovered by a reset), a failed
boot in the child reported with its traceback, modules that cannot reach the child named, and
nothing left behind (process, shared memory) after halt, a failed boot, or the parent's death.
"""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ggmk.dual
import ggmk.device as gd
from ggmk import task as T
from ggmk.bridge import process as P
from ggmk.errors import BootError, KernelStopped
from tests.bridge import watchdog_workloads as WW

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Publisher:
    """Publishes meta0 = 0, 1, 2... on wd.in from a thread; remembers what was accepted."""

    def __init__(self, s):
        self.ch = s.channel("wd.in")
        self.accepted = []
        self.refused = {}
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        v = 0
        while not self.stop.is_set():
            r = self.ch.publish(meta0=v)
            if r == 0:
                self.accepted.append(v)
                v += 1
            else:
                self.refused[r] = self.refused.get(r, 0) + 1
                self.stop.wait(0.001)

    def halt(self):
        self.stop.set()
        self.th.join(10)


def _accounted(s, accepted):
    err, codes = s.dead_letters("sys.error")
    drop, dcodes = s.dead_letters("sys.dropped")
    mine = err["type"] == WW.TYPES["WD_WORK"]
    seen = set(WW.STATE.back) | set(err["meta0"][mine].tolist()) | set(drop["meta0"].tolist())
    return [v for v in accepted if v not in seen], set(codes[mine].tolist()), dcodes


def test_sigkill_mid_traffic_is_detected_and_a_reset_recovers(wait_until):
    s = WW.boot()
    pub = Publisher(s)
    try:
        assert wait_until(lambda: len(WW.STATE.back) > 100, timeout=60)
        pid = s.process.pid
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not s.process.alive(), timeout=30)
        assert not s.kernel.alive()                      # detected, not hung
        with pytest.raises(KernelStopped):
            s.transport.send(T.make(1, type=WW.TYPES["WD_LOCAL"]))
        with pytest.raises(KernelStopped, match="device process is gone"):
            s.push_device(T.make(1, type=WW.TYPES["WD_LOCAL"]))
        acct = s.reset_device("killed by the test")     # what the watchdog does on a death
        assert s.process.pid != pid and s.process.alive()
        n0 = len(pub.accepted)
        assert wait_until(lambda: len(pub.accepted) > n0 + 200, timeout=60)   # flows again
        pub.halt()
        assert s.run(timeout=60)
        missing, codes, dcodes = _accounted(s, pub.accepted)
        assert not missing, f"{len(missing)} accepted and unaccounted: {missing[:20]}"
        assert codes <= {T.BRIDGE_RESET, T.BRIDGE_DEVICE_STOPPED}
        assert all(c != 0 for c in dcodes.tolist())
        assert len(WW.STATE.back) == len(set(WW.STATE.back))      # no duplicate delivery
        assert s.stats()["device_process"]["resets"] == 1
        assert acct["lost"] == s.resets["lost_in_reset"]
    finally:
        pub.halt()
        s.halt()


def test_the_watchdog_resets_a_dead_device_process(wait_until):
    s = WW.boot(watchdog={"interval_s": 0.05, "warn_after": 200, "reset_after": 400})
    try:
        pid = s.process.pid
        os.kill(pid, signal.SIGKILL)
        wd = s.watchdog
        assert wait_until(lambda: wd.c["resets"] >= 1 and not s.resetting(), timeout=120)
        assert wd.c["deaths"] >= 1 and "died" in wd.last_reset_reason
        assert wd.c["warnings"] == 0                    # a death is not a missed heartbeat
        ch = s.channel("wd.in")
        for v in range(50):
            assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=30)
        assert s.run(timeout=60)
        assert sorted(WW.STATE.back) == list(range(50))
    finally:
        s.halt()


@pytest.fixture
def shm_made(monkeypatch):
    """The names of the shared-memory segments the boot creates (to check none is left)."""
    made = []
    real = P._shm_create

    def spy(n):
        name, seg = real(n)
        made.append(name)
        return name, seg
    monkeypatch.setattr(P, "_shm_create", spy)
    return made


def test_failed_boot_in_the_child_is_reported_with_its_traceback(shm_made):
    from tests.bridge import watchdog_broken
    before = {p.pid for p in __import__("multiprocessing").active_children()}
    with pytest.raises(BootError) as ei:
        ggmk.dual.boot([watchdog_broken.gpu], device="cpu", types=WW.registry(),
                       device_process=True, workers=2)
    msg = str(ei.value)
    assert "Traceback" in msg and "broken in the device process (on purpose)" in msg
    assert "device process" in msg and "'cpu'" in msg
    assert shm_made and not any(P.shm_exists(x) for x in shm_made)    # nothing left behind
    after = {p.pid for p in __import__("multiprocessing").active_children()}
    assert after <= before


def test_a_child_that_cannot_even_start_is_a_boot_error_and_leaves_nothing(monkeypatch,
                                                                          shm_made):
    """The spawn itself fails (e.g. a script without the ``if __name__ == "__main__"`` guard):
    the boot error names the cause, and the clean-up does not trip over the never-started
    process (it used to raise "can only join a started process" instead)."""
    import multiprocessing.context as mpc

    def refuse(self):
        raise RuntimeError("spawn refused (on purpose)")
    monkeypatch.setattr(mpc.SpawnProcess, "start", refuse)
    with pytest.raises(BootError, match=r"spawn refused.*__name__ == \"__main__\""):
        ggmk.dual.boot(WW.modules(), device="cpu", types=WW.registry(), device_process=True,
                       workers=2)
    assert shm_made and not any(P.shm_exists(x) for x in shm_made)


def test_a_script_without_the_main_guard_gets_the_hint(tmp_path):
    """A user's script that boots a device process at module level (no ``__main__`` guard):
    the child re-imports it and cannot boot; the parent's error says what to do."""
    script = tmp_path / "unguarded.py"
    script.write_text("import ggmk.dual\n"
                      "from tests.bridge import watchdog_workloads as WW\n"
                      "s = ggmk.dual.boot(WW.modules(), device='cpu', types=WW.registry(),\n"
                      "                   device_process=True, workers=2)\n"
                      "s.halt()\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode != 0
    assert 'if __name__ == "__main__":' in r.stderr, r.stderr[-3000:]
    assert "can only join a started process" not in r.stderr, r.stderr[-3000:]


def test_modules_that_cannot_reach_the_child_are_named():
    local = gd.Module("local_handlers")

    @local.handler("WD_ECHO")
    def inner(ctx, task):              # a closure-level handler: not picklable by reference
        return 0

    with pytest.raises(BootError, match=r"local_handlers.*cannot be sent to the child process"
                                        r".*module level"):
        ggmk.dual.boot([local], device="cpu", types=WW.registry(), device_process=True,
                       workers=2)
    with pytest.raises(BootError, match="device_process=1 must be True .* False .* or None"):
        ggmk.dual.boot([local], device="cpu", types=WW.registry(), device_process=1)


def test_halt_leaves_no_process_and_no_shared_memory(wait_until):
    s = WW.boot()
    ch = s.channel("wd.in")
    for v in range(100):
        assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=30)
    assert s.run(timeout=60)
    pid, segs = s.process.pid, list(s.process.segments)
    assert all(P.shm_exists(x) for x in segs)
    rep = s.halt()
    assert rep["drained"] and rep["device_unfinished"] == 0
    assert sorted(WW.STATE.back) == list(range(100))
    assert _gone(pid) and not any(P.shm_exists(x) for x in segs)



def test_alive_reads_a_flag_and_a_death_is_seen_at_once_and_is_final(monkeypatch, wait_until):
    """``DeviceProcess.alive`` (checked on every transfer) does no ``waitpid`` or pipe poll
    per call: a thread waiting on the child's sentinel flags its end. A SIGKILLed child is
    seen as gone, for good, and the transport refuses at once."""
    s = WW.boot()
    try:
        dp = s.process
        looks = [0]
        real = dp.proc.is_alive

        def counted():
            looks[0] += 1
            return real()
        monkeypatch.setattr(dp.proc, "is_alive", counted)
        assert all(dp.alive() for _ in range(1000)) and looks[0] == 0
        os.kill(dp.pid, signal.SIGKILL)
        assert wait_until(lambda: not dp.alive(), timeout=30)
        assert not dp.alive() and not s.kernel.alive()
        with pytest.raises(KernelStopped):
            s.transport.send(T.make(1, type=WW.TYPES["WD_LOCAL"]))
    finally:
        s.halt()

_ORPHAN = r"""
import json, os, signal, sys
from tests.bridge import watchdog_workloads as WW
if __name__ == "__main__":
    s = WW.boot()
    print(json.dumps({"pid": s.process.pid, "segs": s.process.segments}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)          # the parent dies without any cleanup
"""


def test_parent_death_leaves_no_orphan_process_or_shared_memory(tmp_path, wait_until):
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert wait_until(lambda: _gone(info["pid"]), timeout=30), "the device process outlived"
    assert wait_until(lambda: not any(P.shm_exists(x) for x in info["segs"]), timeout=30)


def test_halt_with_a_stuck_kernel_kills_it_and_names_what_was_inside(wait_until):
    s = WW.boot()                                   # no watchdog: halt finds it stuck
    ch = s.channel("wd.in")
    assert ch.publish(meta0=7, meta1=WW.HANG) == 0
    for v in range(8, 20):
        assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=30)
    assert wait_until(lambda: s.bridge.stats()["channels"]["wd.in"]["pushed"] == 13, timeout=30)
    pid, segs = s.process.pid, list(s.process.segments)
    rep = s.halt(timeout=0.5)
    assert rep["device_killed"]
    err, codes = s.dead_letters("sys.error")
    named = {int(m) for m, c in zip(err["meta0"].tolist(), codes.tolist()) if c == T.HALTED}
    assert named == set(range(7, 20)) - set(WW.STATE.back)        # nothing silently gone
    assert 7 in named and rep["device_halted"] == len(named)
    assert _gone(pid) and not any(P.shm_exists(x) for x in segs)


def test_the_default_is_a_device_process_when_the_modules_can_reach_one():
    s = WW.boot(device_process=None)
    try:
        assert s.process is not None and isinstance(s.transport, P.ProcessTransport)
        assert "in device process" in dict((a, c) for a, _, c in s.boot_log)["gpu_kernel"]
    finally:
        s.halt()
    local = gd.Module("local_default")

    @local.handler("WD_ECHO")
    def inner(ctx, task):
        return 0
    # (the choice, without compiling a kernel for this module: boot asks exactly this)
    ok, why = ggmk.dual._can_send([local])
    assert not ok and "modules not sendable to a device process" in why
    assert ggmk.dual._can_send(WW.modules()[1:]) == (True, "")
    # a standard module's device version (closures: pickle cannot send them) travels as its
    # factory call, so it too gets a device process (and the watchdog) by default
    from ggmk.modules import kv
    assert ggmk.dual._can_send([kv.device_module(capacity=64)]) == (True, "")


def test_a_failed_reboot_keeps_channels_closed_until_a_later_reset_succeeds(monkeypatch):
    s = WW.boot()
    try:
        real = s._boot_process
        calls = []

        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise BootError("gpu_drv: no device right now (test)")
            return real()
        monkeypatch.setattr(s, "_boot_process", flaky)
        with pytest.raises(BootError, match="no device right now"):
            s.reset_device("first")
        ch = s.channel("wd.in")
        assert s.resetting() and ch.publish(meta0=1) == T.CHAN_CLOSED
        assert s.stats()["device_process"]["last_error"].startswith("BootError")
        s.reset_device("second")                    # e.g. the watchdog, next threshold
        assert not s.resetting() and s.process.alive() and len(calls) == 2
        for v in range(10):
            assert ch.publish(meta0=v) == 0
        assert s.run(timeout=60)
        assert sorted(WW.STATE.back) == list(range(10))
        assert s.stats()["device_process"]["resets"] == 2
    finally:
        s.halt()
