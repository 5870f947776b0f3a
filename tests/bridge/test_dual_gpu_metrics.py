"""DualSystem.gpu_metrics (stats()["gpu"], the ps rows) never goes back: not while a reset
runs, and not while the device process is dead and not yet replaced (the live kernel cannot
be read: its last read counters stand in until the reset folds its final ones in)."""
import os
import signal
import threading
from types import SimpleNamespace

from ggmk.control import views
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, publish_all, wait_for


def _sample(s, srv) -> dict:
    g = s.stats()["gpu"] or {}
    rows = {r["name"]: r for r in views.summary(srv)["kernels"]}
    return {"dispatched": g["global"]["dispatched"], "echo_ok": g["types"][W.TYPES["ECHO"]]["ok"],
            "ps.tasks_done": rows["gpu"]["tasks_done"]}


def test_gpu_totals_never_go_back_during_a_reset_or_a_dead_device_process():
    s = boot(device_process=True)
    srv = SimpleNamespace(system=s, cpu=s.cpu, state="running", dual=True,
                          gpu_types=views.gpu_user_types([W.gpu], s.cpu.type_id))
    samples, lock, stop = [], threading.Lock(), threading.Event()
    errors = []

    def poll():
        while not stop.is_set():
            try:
                x = _sample(s, srv)
            except Exception as e:   # noqa: BLE001 - reported by the test
                errors.append(repr(e))
                return
            with lock:
                samples.append(x)

    th = threading.Thread(target=poll)
    try:
        publish_all(s, "cpu.in", 300)
        wait_for(lambda: W.REC.back_n == 300, what="300 replies")
        th.start()
        wait_for(lambda: len(samples) > 5, what="samples before the reset")
        s.reset_device("test")                              # sampled all along
        publish_all(s, "cpu.in", 100, first=300)
        wait_for(lambda: W.REC.back_n == 400, what="400 replies")
        stop.set()
        th.join(30)
        before = _sample(s, srv)
        # the device process dies: until a reset replaces it, its kernel cannot be read
        os.kill(s.process.pid, signal.SIGKILL)
        wait_for(lambda: not s.process.alive(), what="the device process gone")
        dead = _sample(s, srv)
        s.reset_device("killed")
        after = _sample(s, srv)
    finally:
        stop.set()
        s.halt()
    assert not th.is_alive() and errors == [], errors
    seq = samples + [before, dead, after]
    back = [(k, a[k], b[k]) for a, b in zip(seq, seq[1:]) for k in a if b[k] < a[k]]
    assert back == [], back[:10]
    assert before["echo_ok"] == 400 and dead == before, (before, dead)
    assert after["echo_ok"] >= 400
