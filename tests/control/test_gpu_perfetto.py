"""The GPU kernel in the Perfetto trace (issue 15): ``ggmk boot APP --device cpu
--trace-tasks`` builds the GPU kernel with task slices (one extra cached kernel build, ~20 s
cold: this file's module-scoped system is the only one that uses it), work crosses the bridge,
and ``ggmk trace --perfetto`` draws a "GPU kernel" process with one track per GPU worker,
task slices (begin <= end, on the worker that ran them, task counts adding up to the tasks
the GPU kernel ran) and instant events, valid trace-event JSON. The first tests check
``perfetto.to_chrome`` on hand-made GPU events (no system)."""
import json
import os
import signal
import subprocess
import threading

import pytest
from conftest import GGMK, ROOT, Ggmk

from ggmk.control.perfetto import GPU_TID0, to_chrome
from ggmk.events import EventType
from ggmk.task import CHAN_FULL, UNKNOWN_TYPE

DUAL_APP = str(ROOT / "examples" / "dual_app.py")
N = 2000
SAMPLE = 140                     # examples/dual_app.py's fixed type ids
PHASES = {"X", "i", "I", "C", "M", "s", "t", "f", "B", "E"}


def check_trace_event_format(doc: dict) -> list:
    """The Chrome trace-event format (the JSON object form) as Perfetto reads it: every event
    has ``ph``, ``pid``, ``tid``; all but metadata a numeric ``ts`` >= 0; "X" a ``dur`` >= 0;
    "i" a scope; "C" numeric args; flows an ``id``; metadata a name in args. Returns the
    events."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    json.loads(json.dumps(doc))                      # plain JSON types only
    for e in doc["traceEvents"]:
        assert e["ph"] in PHASES, e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str) and e["name"], e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index"), e
            assert "name" in e["args"] or "sort_index" in e["args"], e
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        if e["ph"] == "i":
            assert e["s"] in ("t", "p", "g"), e
        if e["ph"] == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values()), e
        if e["ph"] in ("s", "t", "f"):
            assert "id" in e, e
    return doc["traceEvents"]


def _gpu(ev, kind):
    return [e for e in ev if e["ph"] == kind and e.get("cat", "").startswith("gpu")]


# -------------------------------------------------------------------- to_chrome, by hand
def test_gpu_events_become_worker_tracks_slices_and_instants():
    S, E = int(EventType.TASK_START), int(EventType.TASK_END)
    u32 = (1 << 32) - 1
    trace = {
        "events": [[2, 900, int(EventType.WATCHDOG), 0, 0, 2, 5]],   # CPU host track
        "types": {"7": "STEP"}, "nworkers": 2, "workers": 3, "pid": 100,
        "target": "cpu", "gpu_nworkers": 3, "gpu_host_threads": 1,
        "gpu_handlers": {"7": "phys.step", "9": "bridge.rx"},
        "gpu_events": [
            [0, 1000, S, 0, 7, 4, 0, 4], [1, 1010, S, 0, 9, 2, 0, 2],
            [0, 1100, E, 0, 7, 0, 0, 0],                 # a per-task end: a marker, not drawn
            [0, 1500, E, 0, 7, 4, 0, 4], [1, 1600, E, 0, 9, 2, 0, 2],
            [1, 1700, E, 0, 9, 3, 0, 3],                 # its START was cut off: no slice
            [2, 1800, S, 0, 7, 1, 0, 1],                 # its END not yet drained: no slice
            [1, 1650, int(EventType.TASK_FAIL), 0, 7, UNKNOWN_TYPE & u32, 0, 0],
            [0, 1660, int(EventType.CHAN_DROP), 0, 7, 1, CHAN_FULL & u32, 0],
            [2, 1670, int(EventType.WORKER_PARK), 0, 0, 2, 0, 0],
        ],
    }
    ev = check_trace_event_format(to_chrome(trace))
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "thread_name"}
    procs = {e["pid"]: e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert "GPU kernel" in procs[101]
    gw = {tid - GPU_TID0 for (pid, tid) in names if pid == 101 and tid >= GPU_TID0}
    assert gw == {0, 1, 2}                                 # one track per GPU worker
    assert names[(101, GPU_TID0 + 1)].startswith("GPU worker 1")
    xs = sorted(((e["tid"] - GPU_TID0, e["name"], e["ts"], e["dur"], e["args"]["n"])
                 for e in _gpu(ev, "X")))
    # µs from the first event (the watchdog's, at 900 ns)
    assert xs == [(0, "STEP", pytest.approx(0.1), pytest.approx(0.5), 4),
                  (1, "bridge.rx", pytest.approx(0.11), pytest.approx(0.59), 2)]
    inst = {(e["tid"] - GPU_TID0, e["name"]): e["args"] for e in _gpu(ev, "i")}
    assert inst[(1, "TASK_FAIL")]["code"] == "UNKNOWN_TYPE"
    assert inst[(0, "CHAN_DROP")]["arg1"] == CHAN_FULL & u32
    assert (2, "WORKER_PARK") in inst and len(inst) == 3
    wd = [e for e in ev if e.get("cat") == "watchdog"]
    assert len(wd) == 1 and wd[0]["pid"] == 101 and wd[0]["s"] == "p"
    assert wd[0]["name"] == "WATCHDOG reset" and wd[0]["args"]["missed"] == 5
    assert to_chrome(trace)["otherData"]["gpu_events"] == len(trace["gpu_events"])


def test_a_cpu_only_trace_has_no_gpu_process():
    doc = to_chrome({"events": [[0, 10, int(EventType.TASK_START), 0, 5, 1, 0],
                                [0, 30, int(EventType.TASK_END), 0, 5, 1, 0]],
                     "types": {"5": "A"}, "nworkers": 1, "workers": 2, "pid": 7})
    ev = check_trace_event_format(doc)
    assert {e["pid"] for e in ev} == {7}
    assert [e["dur"] for e in ev if e["ph"] == "X"] == [0.02]


# -------------------------------------------------------------------- the real system
@pytest.fixture(scope="module")
def traced():
    short = f"/tmp/ggt-{os.getpid()}"          # sun_path is 108 bytes
    os.makedirs(short, mode=0o700, exist_ok=True)
    g = Ggmk(short)
    r = g("boot", DUAL_APP, "--device", "cpu", "--trace-tasks", "--boot-timeout", "600",
          timeout=700)
    assert r.returncode == 0, r.stdout + r.stderr
    yield g
    g.stop()
    subprocess.run(["rm", "-rf", short])


def test_trace_tasks_needs_a_gpu_kernel(g):
    r = g("boot", DUAL_APP, "--trace-tasks")
    assert r.returncode == 2 and "'--trace-tasks'" in r.stderr and "--device" in r.stderr
    assert g.pid() is None


def test_perfetto_has_a_track_per_gpu_worker_and_task_slices(traced, wait_until, tmp_path):
    g = traced
    assert g("emit", "BURST", "--meta0", "0", "--meta1", str(N)).returncode == 0

    def sample(key):
        return g.json("stats")["gpu"]["types"].get(str(SAMPLE), {}).get(key, 0)

    def sliced():
        """SAMPLE tasks in the task slices recorded so far (START rows: n in the last column)"""
        return sum(r[7] for r in g.json("trace")["gpu_events"]
                   if r[2] == EventType.TASK_START and r[4] == SAMPLE)
    assert wait_until(lambda: g.json("ps")["bridge"]["channels"]["scale.out"]["crossed"] == N,
                      120)
    assert wait_until(lambda: sample("ok") == N, 60)
    # a SAMPLE that found scale.out full waits and runs again: runs = N + waits; the GPU
    # workers publish their counters when they park, the trace is drained every 50 ms. The
    # trace ring may lose records on a loaded machine (it overwrites when the host falls
    # behind, and skips a slot a preempted worker left unwritten for TRACE_STALL_S), never
    # silently: every run is in a slice, or the trace counts lost records
    seen = {}

    def settled():
        run = sample("run")
        seen.update(run=run, wait=sample("wait"), sliced=sliced(),
                    lost=g.json("trace")["gpu_lost"])
        return run == N + seen["wait"] and (seen["sliced"] == run
                                            or (seen["lost"] > 0 and seen["sliced"] < run))
    assert wait_until(settled, 60), seen
    ran, lost = seen["run"], seen["lost"]
    stats = g.json("stats")
    assert stats["gpu"]["types"][str(SAMPLE)]["ok"] == N            # every task done, once
    assert stats["gpu"]["global"]["errors"] == 0 and stats["cpu"]["types"]["COLLECT"]["ok"] == N
    nworkers = g.json("ps")["kernels"][1]["workers"]
    assert nworkers >= 2
    out = tmp_path / "gpu.json"
    r = g("trace", "--perfetto", str(out))
    assert r.returncode == 0 and "GPU kernel events" in r.stdout, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    ev = check_trace_event_format(doc)
    od = doc["otherData"]
    assert od["gpu_trace_tasks"] and od["gpu_lost"] >= lost and od["gpu_dropped"] == 0
    pids = {e["pid"]: e["args"]["name"] for e in ev
            if e["ph"] == "M" and e["name"] == "process_name"}
    gpid = next(p for p, n in pids.items() if "GPU kernel" in n)
    tracks = {e["tid"]: e["args"]["name"] for e in ev
              if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == gpid}
    workers = {t - GPU_TID0 for t, n in tracks.items() if n.startswith("GPU worker")}
    assert workers == set(range(nworkers))                 # one track per GPU worker
    slices = [e for e in _gpu(ev, "X") if e["pid"] == gpid]
    assert slices and all(e["tid"] - GPU_TID0 in workers for e in slices)
    # every SAMPLE the GPU kernel ran is in exactly one slice (nothing cut, nothing lost but
    # what the trace counts as lost)
    mine = [e for e in slices if e["args"]["type"] == SAMPLE]
    assert {e["name"] for e in mine} == {"SAMPLE"}
    assert {e["args"]["handler"] for e in mine} == {"gpu_scale.scale"}
    in_slices = sum(e["args"]["n"] for e in mine)
    assert in_slices == ran if not od["gpu_lost"] else 0 < in_slices <= ran
    # a worker runs one batch at a time: its slices never overlap on its track
    for w in workers:
        mine_w = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices
                        if e["tid"] == GPU_TID0 + w)
        for (a0, a1), (b0, b1) in zip(mine_w, mine_w[1:]):
            assert a0 <= a1 <= b0 <= b1
    # the rows behind it: `ggmk trace --json` says which worker recorded each GPU event
    res = g.json("trace")
    assert res["gpu_nworkers"] == nworkers and res["gpu_trace_tasks"] is True
    rows = res["gpu_events"]
    assert rows and all(0 <= r[0] < nworkers and len(r) == 8 for r in rows)
    starts = [r for r in rows if r[2] == EventType.TASK_START and r[4] == SAMPLE]
    assert all(r[5] == r[7] >= 1 for r in starts)
    assert sum(r[7] for r in starts) == ran if not res["gpu_lost"] else \
        sum(r[7] for r in starts) <= ran


def test_perfetto_window_shows_gpu_slices_next_to_bridge_flows(traced, wait_until,
                                                              tmp_path):
    """`ggmk trace --seconds S --perfetto` while work flows: the window's GPU slices lie in
    the window, on GPU worker tracks, beside the bridge's flows and counters."""
    g = traced
    out = tmp_path / "window.json"
    p = subprocess.Popen([GGMK, "trace", "--seconds", "1.5", "--perfetto", str(out)],
                         env=g.env, stdout=subprocess.PIPE, text=True)

    def fed_until_done():
        assert g("emit", "BURST", "--meta0", "0", "--meta1", "200").returncode == 0
        return p.poll() is not None
    assert wait_until(fed_until_done, 120)
    assert p.wait(60) == 0
    ev = check_trace_event_format(json.loads(out.read_text()))
    slices = _gpu(ev, "X")
    assert slices and all(e["tid"] >= GPU_TID0 for e in slices)
    assert any(e["ph"] == "s" and e["cat"] == "bridge" for e in ev)
    assert any(e["ph"] == "C" and e["name"].startswith("gpu") for e in ev)


def test_trace_follow_streams_gpu_rows(traced, wait_until):
    """`ggmk trace -f` streams the GPU kernel's events too, as ["gpu", worker, ts, ...]."""
    g = traced
    p = subprocess.Popen([GGMK, "trace", "-f"], env=g.env, stdout=subprocess.PIPE, text=True)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")),
                              daemon=True)
    reader.start()
    nworkers = g.json("ps")["kernels"][1]["workers"]
    try:
        def fed_until_seen():
            assert g("emit", "BURST", "--meta0", "0", "--meta1", "100").returncode == 0
            return any(ln.startswith('["gpu"') and json.loads(ln)[3] == EventType.TASK_START
                       for ln in list(lines))
        assert wait_until(fed_until_seen, 120)
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
    reader.join(30)
    rows = [json.loads(ln) for ln in lines if ln.startswith('["gpu"')]
    assert rows and all(len(r) == 9 and 0 <= r[1] < nworkers for r in rows)
    assert any(r[3] == EventType.TASK_START and r[8] >= 1 for r in rows)


# last: it halts the module's system
def test_traced_system_halts_and_accounts_for_everything(traced, wait_until):
    g = traced
    pid = g.pid()
    r = g("halt", "--json")
    assert r.returncode == 0, r.stderr
    acc = json.loads(r.stdout)
    assert acc["bridge_halted"] == 0 and acc["device_unfinished"] == 0
    assert acc["outstanding"] == 0
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)
    assert not os.path.exists(g.sock) and g.pid() is None
