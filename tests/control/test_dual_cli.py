"""Both kernels from the command line: ``ggmk boot examples/dual_app.py --device cpu`` (the GPU
kernel on its cpu target; its build is cached by source hash, a cold one takes ~20 s), work
sent across the bridge both ways with payloads, and every listing showing the GPU kernel and
the bridge, through the real executable and socket; halt leaves nothing behind."""
import json
import os
import subprocess

import pytest
from conftest import GGMK, ROOT, Ggmk

from ggmk.cli.control_cmds import EXIT_ERROR

DUAL_APP = str(ROOT / "examples" / "dual_app.py")
N = 3000


@pytest.fixture(scope="module")
def dual():
    short = f"/tmp/ggd-{os.getpid()}"          # sun_path is 108 bytes
    os.makedirs(short, mode=0o700, exist_ok=True)
    g = Ggmk(short)
    r = g("boot", DUAL_APP, "--device", "cpu", "--boot-timeout", "600", timeout=700)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "building the GPU kernel, cached after the first run" in r.stderr
    yield g
    g.stop()
    subprocess.run(["rm", "-rf", short])


def _bridge(g):
    return g.json("ps")["bridge"]["channels"]


def test_dual_listings_show_both_kernels_and_the_bridge(dual, wait_until):
    g = dual
    # one typed payload from the shell, then a CPU handler publishes N more across the bridge
    r = g("emit", "SAMPLE", "--chan", "scale.in", "--payload",
          '{"x": 2.5, "n": 7, "tag": "0a0b0c0d"}')
    assert r.returncode == 0 and "accepted 1 of 1 SAMPLE on scale.in" in r.stdout, r.stdout
    assert g("emit", "BURST", "--meta0", "0", "--meta1", str(N)).returncode == 0
    total = N + 1
    assert wait_until(lambda: _bridge(g)["scale.out"]["crossed"] == total, 120)
    assert wait_until(lambda: g.json("ps")["kernels"][0]["queued"] == 0, 60)
    ps = g.json("ps")
    cpu, gpu = ps["kernels"]
    assert (cpu["name"], gpu["name"]) == ("cpu", "gpu")
    assert gpu["state"] == "running" and gpu["target"] == "cpu" and gpu["workers"] >= 1
    # accounting: every message crossed both ways and was handled once, none failed or lost
    assert gpu["tasks_done"] == total and gpu["errors"] == 0
    assert cpu["errors"] == 0 and cpu["dropped"] == 0
    b = ps["bridge"]
    assert b["payload_copies"] == 2 * total and b["dead_lettered"] == 0
    assert b["channels"]["scale.in"]["pushed"] == total
    assert b["channels"]["scale.in"]["done_on_device"] == total
    assert b["channels"]["scale.in"]["in_flight"] == 0
    assert b["transfers"] < b["records"]                       # batched
    stats = g.json("stats")
    assert stats["cpu"]["types"]["COLLECT"]["ok"] == total
    assert stats["cpu"]["sys_error"]["pushed"] == 0 and stats["cpu"]["sys_dropped"]["pushed"] == 0
    assert stats["gpu"]["global"]["errors"] == 0 and stats["bridge"]["dead_lettered"] == 0
    # text forms
    out = g("ps").stdout
    assert "gpu" in out and "scale.in" in out and "cpu->gpu" in out and "gpu->cpu" in out
    kerns = {k["name"]: k for k in g.json("kern", "ls")}
    assert set(kerns) == {"cpu", "gpu"} and kerns["gpu"]["tasks_done"] == total
    chans = {c["name"]: c for c in g.json("chan", "ls")}
    assert chans["scale.in"]["kernel"] == "cpu->gpu" and chans["scale.in"]["crossed"] == total
    assert chans["scale.out"]["kernel"] == "gpu->cpu" and chans["scale.out"]["crossed"] == total
    assert chans["sys.error"]["kernel"] == "cpu"
    ins = g.json("chan", "inspect", "scale.in")
    assert ins["bridge"]["direction"] == "cpu->gpu" and ins["gpu"]["delivered"] == total
    top = g("top", "--once").stdout
    for word in ("kernels", "gpu", "bridge", "scale.in", "cpu->gpu", "COLLECT"):
        assert word in top, word
    info = g.json("kern", "info")
    assert info["gpu"]["gpu_drv"]["target"] == "cpu"
    assert [s["step"] for s in info["gpu"]["boot"]] == ["check", "cpu_kernel", "gpu_drv",
                                                        "gpu_kernel", "wiring", "ready"]
    names = {h["module"] + "." + h["name"] for h in info["gpu"]["build"]["handlers"]}
    assert "gpu_scale.scale" in names and len(info["gpu"]["build"]["key"]) >= 16
    assert "gpu_drv" in g("kern", "info").stdout
    # Prometheus: per-kernel rows for both, bridge counters
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(g("stats", "--prometheus").stdout)}
    done = {s.labels["kernel"]: s.value for s in fams["ggmk_kernel_tasks_done"].samples
            if s.name.endswith("_total")}
    assert done["gpu"] == total
    assert {s.labels["name"] for s in fams["ggmk_bridge_metric"].samples} >= {"transfers",
                                                                              "records"}
    # a GPU module cannot be reset from here: a clear error and exit code 1
    r = g("mod", "reset", "gpu_scale")
    assert r.returncode == EXIT_ERROR and "GPU kernel" in r.stderr


def test_perfetto_trace_draws_bridge_crossings_as_flows(dual, wait_until, tmp_path):
    """`ggmk trace --perfetto` of a dual system: each batch the bridge moved during the window
    is a slice at both ends (the CPU kernel's bridge track, the GPU process's host.rx/host.tx
    track) joined by a flow arrow (s -> f, same id) in the direction the records went."""
    g = dual
    out = tmp_path / "dual.json"
    p = subprocess.Popen([GGMK, "trace", "--seconds", "1.5", "--perfetto", str(out)],
                         env=g.env, stdout=subprocess.PIPE, text=True)

    def fed_until_done():
        assert g("emit", "BURST", "--meta0", "0", "--meta1", "200").returncode == 0
        return p.poll() is not None
    assert wait_until(fed_until_done, 120)
    assert p.wait(60) == 0
    ev = json.loads(out.read_text())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "thread_name"}
    starts = {e["id"]: e for e in ev if e["ph"] == "s" and e["cat"] == "bridge"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f" and e["cat"] == "bridge"}
    assert starts and set(starts) == set(ends)
    dirs = set()
    for i, s_ in starts.items():
        f = ends[i]
        a, b = names[(s_["pid"], s_["tid"])], names[(f["pid"], f["tid"])]
        assert f["bp"] == "e" and f["ts"] >= s_["ts"]
        dirs.add((a, b))
        # the flow binds to a slice at each end
        for e in (s_, f):
            assert any(x["ph"] == "X" and x["cat"] == "bridge" and x["pid"] == e["pid"]
                       and x["tid"] == e["tid"] and x["ts"] <= e["ts"] <= x["ts"] + x["dur"]
                       for x in ev)
    assert dirs == {("bridge", "host.rx (CPU -> GPU)"), ("host.tx (GPU -> CPU)", "bridge")}


def _need_ptxas():
    from ggmk.device.build import ToolchainMissing, find_ptxas
    try:
        find_ptxas()
    except ToolchainMissing as e:
        pytest.skip(f"no ptxas here: {e}")


def test_build_report_of_the_running_gpu_kernel(dual):
    """``ggmk build`` without APP and ``ggmk kern info --report``: the ptxas report of the GPU
    kernel the system runs (its modules plus the bridge's), compiled once and kept; its
    handlers (the whole persistent kernel with --kernel: the long form below)."""
    _need_ptxas()
    g = dual
    r = g("build", "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    names = {h["module"] + "." + h["name"] for h in rep["handlers"]}
    assert "gpu_scale.scale" in names and any(n.startswith("bridge.") for n in names)
    assert all(h["registers"] > 0 for h in rep["handlers"]) and rep["kernel"] == {}
    info = g.json("kern", "info")                    # kept: no second compile
    assert info["gpu"]["report"]["handlers"] == rep["handlers"]
    r = g("kern", "info", "--kernel")
    assert r.returncode == 2 and "give --report too" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("GGMK_LONG") != "1",
                    reason="compiles the whole persistent kernel (~3 min): set GGMK_LONG=1")
def test_build_report_of_the_running_persistent_kernel(dual):
    """``--kernel``: the whole persistent kernel too, after a handlers-only report (which it
    replaces: one with the kernel serves both)."""
    _need_ptxas()
    g = dual
    r = g("build", "--kernel", "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["kernel"]["registers"] > 0
    assert g.json("kern", "info")["gpu"]["report"]["kernel"] == rep["kernel"]
    assert "(persistent kernel)" in g("kern", "info").stdout


# last: it halts the module's system
def test_dual_halt_stops_both_kernels_and_leaves_nothing(dual, wait_until):
    g = dual
    pid = g.pid()
    assert g("emit", "BURST", "--meta0", "0", "--meta1", "500").returncode == 0
    r = g("halt", "--json")
    assert r.returncode == 0, r.stderr
    acc = json.loads(r.stdout)
    # nothing accepted is lost: drained, or whatever was left is accounted for
    assert acc["bridge_halted"] == 0 and acc["device_unfinished"] == 0
    assert acc["outstanding"] == 0
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)
    assert not os.path.exists(g.sock) and g.pid() is None
    r = g("ps")
    assert r.returncode == 3 and "not running" in r.stderr
