"""The device echo (``echo.device_module``) answers to the CPU version's handler types: the
default instance handles ``ECHO``, an instance named ``fwd`` handles ``ECHO_FWD`` (its output
still ``ECHO``), so two named device echoes share one GPU kernel and an application sends
``ECHO_<NAME>`` to either version (``submit`` on the CPU kernel, ``push_device`` to the GPU
kernel) (before: every device echo handled ``ECHO``, and two of them could
not boot together: "type 17664: handled by both e1.forward and e2.forward").

The dual boot runs in a subprocess of this file (``python test_echo_device_instances.py
cpu|dev``), as the other device-module tests run theirs: one kernel build per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")


def run(which: str) -> dict:
    import ggmk
    import ggmk.dual
    from ggmk import task as T
    from ggmk.modules import echo, registry
    got, lock = [], threading.Lock()
    sink = ggmk.Module("sink")

    for ch in ("a.x", "b.x"):
        def h(ctx, batch, _ch=ch):
            with lock:
                got.extend((_ch, m0) for m0 in batch.meta0.tolist())
        sink.handler(f"SINK_{ch[0].upper()}", batch=True, consumes=ch, message="ECHO",
                     name=f"on_{ch[0]}")(h)
    if which == "cpu":
        fwd = [echo.module("a.x", name="e1"), echo.module("b.x", name="e2")]
    else:
        fwd = [echo.device_module("a.x", name="e1"), echo.device_module("b.x", name="e2")]
    out = {}
    with ggmk.dual.boot([sink] + fwd, device="cpu", workers=2, device_process=False,
                        types=registry("echo")) as s:
        for t, m0 in (("ECHO_E1", [1, 2, 3]), ("ECHO_E2", [4, 5])):
            if which == "cpu":
                s.submit(t, meta0=m0)
            else:                       # a GPU kernel's type: pushed to it by its id
                s.push_device(T.make(len(m0), type=s.cpu.type_id(t), meta0=m0))
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with lock:
                if len(got) >= 5:
                    break
            time.sleep(0.005)
        out["idle"] = s.run(timeout=60)
        r_, c_ = s.dead_letters("sys.error")
        out["errors"] = len(r_)
        out["codes"] = sorted(set((int(t), int(c)) for t, c in zip(r_["type"], c_)))
    with lock:
        out["got"] = sorted(got)
    return out


def _sub(which: str) -> dict:
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    p = subprocess.run([sys.executable, __file__, which], env=env, capture_output=True,
                       text=True, timeout=800)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_named_device_echoes_share_a_kernel_and_answer_as_cpu():
    pytest.importorskip("numba")
    cpu, dev = _sub("cpu"), _sub("dev")
    want = [["a.x", 1], ["a.x", 2], ["a.x", 3], ["b.x", 4], ["b.x", 5]]
    assert cpu["got"] == want and cpu["idle"] and cpu["errors"] == 0, cpu
    assert dev["got"] == want and dev["idle"] and dev["errors"] == 0, dev


def test_default_and_explicit_types_stay_as_before():
    pytest.importorskip("numba")
    from ggmk.modules import echo
    assert echo.device_module("a.x").handlers[0].type == echo.type_id()
    assert echo.device_module("a.x", name="fwd").handlers[0].type == "ECHO_FWD"
    assert echo.device_module("a.x", name="fwd", type=901).handlers[0].type == 901


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
