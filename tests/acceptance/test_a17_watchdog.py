"""Acceptance 17 (SPEC §14): a simulated GPU hang (a device handler that never returns): the
watchdog warns, then resets and reboots the GPU kernel (a fresh device process); the CPU
kernel keeps running and serving its own work meanwhile; bridge channels refuse with
CHAN_CLOSED during the reset, reconnect by themselves and carry traffic again; every accepted
message is delivered, on sys.error with BRIDGE_RESET, or on sys.dropped with a reason.

On the ``cpu`` target (the kernel is Numba machine code on host threads: the stuck handler
cannot be interrupted, only its process killed)."""
import os
import threading

import pytest

from ggmk import task as T
from ggmk.bridge import BridgeError
from ggmk.bridge.process import shm_exists
from ggmk.modules.watchdog import RESET, WARN
from tests.bridge import watchdog_workloads as WW

WD = {"interval_s": 0.1, "warn_after": 3, "reset_after": 20}   # 2 s: no false reset under load


def _publish(s, values, accepted, wait_until):
    ch = s.channel("wd.in")
    for v in values:
        assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=60), f"publish {v}"
        accepted.append(v)


def test_hang_is_detected_reset_and_traffic_resumes(wait_until):
    s = WW.boot(watchdog=WD)
    trace = s.cpu.channel("sys.trace").subscribe(None, name="a17-trace")
    accepted: list = []
    closed_seen = []
    stop = threading.Event()
    try:
        # 1. healthy traffic crosses both ways
        _publish(s, range(200), accepted, wait_until)
        assert s.run(timeout=60)
        assert sorted(WW.STATE.back) == list(range(200))
        assert s.watchdog.c["resets"] == 0, "a false reset (a starved device worker)"
        pid0 = s.process.pid

        # 2. a handler that never returns, and traffic queued behind it
        ch = s.channel("wd.in")
        assert ch.publish(meta0=1000, meta1=WW.HANG) == 0
        accepted.append(1000)
        _publish(s, range(1001, 1031), accepted, wait_until)

        # the CPU kernel keeps serving its own work, and producers of the bridge channel see
        # CHAN_CLOSED while the GPU kernel is being reset
        def cpu_work():
            v = 10_000
            while not stop.is_set():
                s.submit("WD_LOCAL")
                if s.resetting():
                    v += 1
                    r = ch.publish(meta0=v)
                    if r == T.CHAN_CLOSED:
                        closed_seen.append(r)
                    elif r == 0:
                        accepted.append(v)           # the reset ended meanwhile: it counts
                    try:                             # (a type the CPU kernel handles)
                        s.push_device(T.make(1, type=WW.TYPES["WD_LOCAL"]))
                    except BridgeError as e:
                        closed_seen.append(str(e))
                stop.wait(0.005)

        th = threading.Thread(target=cpu_work, daemon=True)
        th.start()
        wd = s.watchdog
        assert wait_until(lambda: wd.c["warnings"] >= 1, timeout=30), wd.stats()
        assert wait_until(lambda: wd.c["resets"] >= 1 and not s.resetting(), timeout=120), \
            wd.stats()
        stop.set()
        th.join(10)
        assert s.process.pid != pid0 and s.process.alive()
        assert WW.STATE.local_during_reset > 0          # the CPU kernel served during it
        assert T.CHAN_CLOSED in closed_seen
        assert any(isinstance(x, str) and "reset" in x for x in closed_seen)

        # warnings and the reset on sys.trace, the trace and the stats
        tr = trace.take()
        kinds = tr["meta0"].tolist()
        assert WARN in kinds and RESET in kinds and kinds.index(WARN) < kinds.index(RESET)
        st = s.stats()
        assert st["watchdog"]["warnings"] >= 1 and st["watchdog"]["resets"] >= 1
        assert "missed" in st["watchdog"]["last_reset_reason"]
        assert st["device_process"]["resets"] >= 1 and st["device_process"]["alive"]

        # 3. the bridge channels reconnected by themselves: traffic crosses again
        _publish(s, range(2000, 2100), accepted, wait_until)
        assert s.run(timeout=60)
        assert set(range(2000, 2100)) <= set(WW.STATE.back)

        # 4. accounting: delivered, on sys.error with BRIDGE_RESET, or on sys.dropped
        err, codes = s.dead_letters("sys.error")
        drop, dcodes = s.dead_letters("sys.dropped")
        mine = err["type"] == WW.TYPES["WD_WORK"]
        reset_err = {int(m) for m, c in zip(err["meta0"][mine].tolist(), codes[mine].tolist())
                     if c == T.BRIDGE_RESET}
        delivered = WW.STATE.back
        assert len(delivered) == len(set(delivered))             # no duplicate delivery
        accounted = set(delivered) | set(err["meta0"][mine].tolist()) | \
            set(drop["meta0"].tolist())
        missing = [v for v in accepted if v not in accounted]
        assert not missing, f"accepted but unaccounted: {missing}"
        assert 1000 in reset_err                                 # the stuck message itself
        assert set(codes[mine].tolist()) <= {T.BRIDGE_RESET, T.BRIDGE_DEVICE_STOPPED}
        assert all(c != 0 for c in dcodes.tolist())              # dropped: with a reason
        assert s.resets["lost_in_reset"] == len(reset_err)
    finally:
        stop.set()
        segs = list(s.process.segments) if s.process else []
        pid = s.process.pid if s.process else None
        s.halt()
    assert pid is not None and not os.path.exists(f"/proc/{pid}")
    assert not any(shm_exists(x) for x in segs)


def test_reset_by_hand_is_refused_in_process():
    s = WW.boot(device_process=False)
    try:
        with pytest.raises(BridgeError, match="device_process=False"):
            s.reset_device("test")
        assert s.stats()["device_process"] is None and s.stats()["watchdog"] is None
    finally:
        s.halt()


_SIM_FLOW = r"""
import json, sys, threading
from ggmk import task as T
from tests.bridge import watchdog_workloads as WW

def main():
    s = WW.boot(device="sim", device_config={"workers": 2},
                watchdog={"interval_s": 0.2, "warn_after": 3, "reset_after": 8})
    ch = s.channel("wd.in")
    accepted, closed = [], 0
    def publish(v, hang=False):
        while True:
            r = ch.publish(meta0=v, meta1=WW.HANG if hang else 0)
            if r == 0:
                accepted.append(v)
                return
            threading.Event().wait(0.002)
    for v in range(20):
        publish(v)
    assert s.run(timeout=300)
    publish(100, hang=True)
    for v in range(101, 106):
        publish(v)
    wd = s.watchdog
    ev = threading.Event()
    v = 1000
    while wd.c["resets"] < 1 or s.resetting():
        s.submit("WD_LOCAL")
        if s.resetting():
            v += 1
            r = ch.publish(meta0=v)
            if r == T.CHAN_CLOSED:
                closed += 1
            elif r == 0:
                accepted.append(v)          # the reset ended meanwhile: it counts
        if ev.wait(0.01) or wd.c["ticks"] > 3000:
            break
    for v in range(200, 210):
        publish(v)
    assert s.run(timeout=300)
    err, codes = s.dead_letters("sys.error")
    out = dict(target=s.target, warnings=wd.c["warnings"], resets=wd.c["resets"],
               accepted=accepted, back=WW.STATE.back, err=err["meta0"].tolist(),
               codes=codes.tolist(), during=WW.STATE.local_during_reset, closed=closed)
    s.halt()
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def test_hang_reset_on_the_sim_target(tmp_path):
    """The same on the CUDA simulator (a fresh process with the target's PROCESS_ENV, as every
    sim test; the device processes inherit it): a stuck block stops beating, the others go on."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from ggmk.device.targets import sim
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "a17_sim.py"
    script.write_text(_SIM_FLOW)
    env = dict(os.environ, **sim.PROCESS_ENV,
               PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    r = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["target"] == "sim" and out["warnings"] >= 1 and out["resets"] >= 1
    assert out["during"] > 0 and out["closed"] > 0
    assert set(range(200, 210)) <= set(out["back"])            # traffic after the reset
    assert len(out["back"]) == len(set(out["back"]))
    assert 100 in out["err"] and set(out["codes"]) <= {T.BRIDGE_RESET}
    assert not [v for v in out["accepted"] if v not in set(out["back"]) | set(out["err"])]
