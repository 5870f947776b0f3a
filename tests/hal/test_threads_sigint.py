"""Ctrl-C while the main thread helps (caller runs): the signal waits for the step it lands in,
not for the whole ``run()`` / ``halt()`` wait (it was held until every task had run)."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

# the main thread helps only while a worker is parked (timing): `make test` runs this file
# after the parallel pass, alone
pytestmark = pytest.mark.serial

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np
    import ggmk
    m = ggmk.Module("slow")
    said = []
    @m.handler("SLOW_TASK")
    def slow(ctx):
        if not said and threading.current_thread() is threading.main_thread():
            said.append(1)            # the main thread runs a step: Ctrl-C comes now
            print("running", flush=True)
        time.sleep(0.02)              # 2000 of these: ~15 s of work on 3 threads
    s = ggmk.boot([m], workers=2, max_batch=4)      # a step: at most 4 tasks, ~80 ms
    s.submit("SLOW_TASK", meta0=np.arange(2000))
    where = sys.argv[1]
    sent = 2000
    t0 = time.monotonic()
    try:
        if where == "run":
            # the main thread helps only when a worker is parked: a run whose workers never
            # parked (a loaded machine) is repeated until the main thread ran a step
            for _ in range(5):
                t0 = time.monotonic()
                s.run(timeout=60)
                if said:
                    break
                s.submit("SLOW_TASK", meta0=np.arange(2000))
                sent += 2000
        else:
            s.halt(timeout=60)
        print(json.dumps({"kbi": False}), flush=True)
    except KeyboardInterrupt:
        took = time.monotonic() - t0
        s.halt(timeout=0)
        # the workers' last steps (a few tasks each) finish after the halt's report: wait
        t_end = time.monotonic() + 30
        while True:
            ok = s.stats()["types"]["SLOW_TASK"]["ok"]
            err = len(s.dead_letters("sys.error")[0])
            if ok + err == sent or time.monotonic() > t_end:
                break
            time.sleep(0.01)
        print(json.dumps({"kbi": True, "took": took, "ok": ok, "on_error": err, "sent": sent}), flush=True)
""")


def _interrupt(where):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    p = subprocess.Popen([sys.executable, "-c", CHILD, where], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "running"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_ctrl_c_during_run_is_raised_after_the_step_not_the_whole_run():
    r = _interrupt("run")
    assert r["kbi"]
    assert r["took"] < 8, r          # the whole run takes ~15 s; a step ~20 ms
    # nothing accepted is lost: finished, or dead-lettered by the halt
    assert r["ok"] + r["on_error"] == r["sent"], r


def test_ctrl_c_during_halt_drain_is_raised_after_the_step():
    r = _interrupt("halt")
    assert r["kbi"]
    assert r["took"] < 8, r
    assert r["ok"] + r["on_error"] == 2000, r
