"""`make demo`'s shell tour, run the way a user runs it (``python -m ggmk.demo.tour``: what the
Makefile's ``demo`` target runs after the in-process workload): both kernels booted with the
real ``ggmk`` executable (``--device auto``: the GPU kernel's cpu target here), work across the
bridge both ways with payloads, per-kernel and per-bridge-channel output, a Perfetto trace, a
clean halt, nothing left running.

The GPU kernel's build is cached by source hash (~/.cache/ggmk): the first test pays a cold
build once per source change (~20 s), which is the dual demo running in CI once; the
cold-cache form with an empty cache directory is marked slow (GGMK_LONG=1)."""
import json
import os
import re
import subprocess
import sys

import pytest

LONG = os.environ.get("GGMK_LONG") == "1"


def _run(env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ggmk.demo.tour"], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _check(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "trace level set to all (it stays set)" in out
    for step in ("$ ggmk boot", "--device auto", "building the GPU kernel, cached after the "
                 "first run", "$ ggmk emit SAMPLE --chan scale.in", "$ ggmk emit BURST",
                 "$ ggmk ps", "$ ggmk kern info", "$ ggmk chan ls", "$ ggmk top --seconds",
                 "$ ggmk halt", "halted: drained True", "Perfetto trace:"):
        assert step in out, step
    # what it did, per kernel and per bridge channel: every message crossed both ways
    m = re.search(r"GPU kernel \((\w+) target\): ([\d,]+) tasks done, 0 failed", out)
    assert m and m.group(1) in ("cpu", "cuda")
    assert int(m.group(2).replace(",", "")) == 20_001
    for name, d in (("scale.in", "cpu->gpu"), ("scale.out", "gpu->cpu")):
        assert f"bridge channel {name} ({d}, " in out
        assert re.search(rf"bridge channel {re.escape(name)} .*: 20,001 messages crossed, "
                         r"0 dead-lettered", out), name
    assert "40,002 payload copies" in out
    assert "bridge_halted 0, device_unfinished 0" in out
    trace = re.search(r"Perfetto trace: (\S+)", out).group(1)
    with open(trace) as f:
        doc = json.load(f)
    evs = doc["traceEvents"]
    assert any(e.get("ph") == "X" for e in evs)                      # task slices
    # counter tracks: the GPU kernel and the bridge as a second process
    procs = {e["args"]["name"] for e in evs if e.get("name") == "process_name"}
    assert any("GPU kernel" in p and "bridge" in p for p in procs), procs
    counters = {e["name"] for e in evs if e.get("ph") == "C"}
    assert {"cpu queued", "gpu queued", "bridge scale.in crossed"} <= counters, counters
    # nothing left running: the tour's state dir has no socket and its server is gone
    state = os.path.dirname(trace)
    assert not os.path.exists(os.path.join(state, "control.sock"))
    assert not os.path.exists(os.path.join(state, "ggmk.pid"))
    return out


def test_the_dual_tour_boots_both_kernels_crosses_the_bridge_traces_and_halts():
    _check(_run())


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="cold GPU kernel build (~20 s): set GGMK_LONG=1")
def test_the_dual_tour_from_a_cold_kernel_cache(tmp_path):
    env = {**os.environ, "GGMK_CACHE_DIR": str(tmp_path / "cache")}
    out = _check(_run(env=env, timeout=900))
    assert os.listdir(tmp_path / "cache")                       # it built and cached the kernel
    assert re.search(r"booted both kernels in [\d.]+ s", out)
