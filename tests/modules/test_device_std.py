"""The GPU-kernel versions of kv, reduce, timer, log, gate and stats, on the device kernel's
``cpu`` target (in this process, one kernel shared by every test here: one compile) and on
``sim`` (the CUDA simulator, in a subprocess of its own, once for all its checks: it is slow,
so the scenarios are small).

Each scenario (``device_std_scenarios.py``) includes the bad-input cases: a full kv table
answers FULL and never overwrites; a reduce group short of partials is reported after its
timeout, a late partial fails with REDUCE_LATE, a group too many with REDUCE_TABLE_FULL;
cancel of an unknown or fired timer answers UNKNOWN / FIRED, a full timer table FULL; a log
flood is rate-limited and its drop count reported (every line passed or counted); a gate
holds arrivals until it opens, then is reusable, and refuses a bad id or a gate too many;
stats refuses a metric used with two kinds and an id out of range. Every record pushed is
accounted for (an answer, or a sys.error record with its code)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")
sys.path.insert(0, str(HERE))

import device_std_scenarios as S  # noqa: E402
from ggmk.errors import BootError  # noqa: E402
from ggmk.modules import gate, kv, log, reduce, stats, timer  # noqa: E402

NAMES = list(S.SCENARIOS)


@pytest.fixture(scope="module")
def cpu_kernel():
    with S.kernel("cpu") as k:
        yield k, S.Collector(k)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_target(cpu_kernel, name):
    k, c = cpu_kernel
    run, check = S.SCENARIOS[name]
    r = json.loads(json.dumps(run(k, c), default=int))
    check(r)
    assert c.errors == []                      # every failure was one the scenario expected


@pytest.fixture(scope="module")
def sim_results():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    p = subprocess.run([sys.executable, str(HERE / "device_std_scenarios.py"), "sim"], env=env,
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_sim_target(sim_results, name):
    r = sim_results[name]
    assert "exception" not in r, r
    S.SCENARIOS[name][1](r)


def test_device_factories_refuse_bad_config():
    with pytest.raises(BootError, match="op must be one of"):
        reduce.device_module(n=4, op="concat")
    with pytest.raises(BootError, match="dtype must be"):
        reduce.device_module(n=4, dtype="f64")
    with pytest.raises(BootError, match="n must be an int"):
        reduce.device_module(n=0)
    with pytest.raises(BootError, match="base must be an int"):
        timer.device_module(timers=4096, base=60000)
    with pytest.raises(BootError, match="rate must be > 0"):
        log.device_module(rate=0)
    with pytest.raises(BootError, match="below one line per 1000 ticks"):
        log.device_module(rate=0.1)
    with pytest.raises(ValueError, match="log level"):
        log.device_module(level="loud")
    with pytest.raises(BootError, match="gates must be an int"):
        gate.device_module(n=2, gates=0)
    with pytest.raises(BootError, match="metrics must be an int"):
        stats.device_module(metrics=10_000)
    with pytest.raises(BootError, match="exceeds the 65536 user words"):
        kv.device_module(capacity=10000)


def test_batch_codec_roundtrip():
    raw = kv.batch_encode([kv.OP_PUT, kv.OP_GET], [5, -7], [9, 0], tags=[1, 2])
    d = kv.batch_decode(raw)
    assert d["op"].tolist() == [kv.OP_PUT, kv.OP_GET] and d["key"].tolist() == [5, -7]
    assert d["value"].tolist() == [9, 0] and d["tag"].tolist() == [1, 2]
    assert d["status"].tolist() == [0, 0]


def test_log_decode():
    assert log.decode(log.encode(log.WARN, "disk %d at %d%%", 3, 97)) == (log.WARN,
                                                                          "disk 3 at 97%")
    lv, line = log.decode(log.encode(log.INFO, "x %d %d", 1))
    assert lv == log.INFO and "bad format" in line
    assert log.decode(b"\x01")[0] == log.ERROR


# ------------------------------------------------------------------ placed on the GPU kernel
# The device versions with ``channels=True`` in a dual boot: CPU modules publish on the
# standard channels (reduce.in, timer.set, gate.arrive, log.in) and consume the standard
# outputs (reduce.out, reduce.missing, timer.fire, timer.ack, gate.open), which the bridge
# carries across; a CPU log module formats the lines the device log let through.

def _app(modname, toml, prod, cons, got, lock):
    from ggmk.modules import std_module
    m = std_module(modname, toml)
    for ch, t in prod:
        m.produces(ch, t)
    for ch, t in cons:
        def h(ctx, batch, _ch=ch):
            with lock:
                got.setdefault(_ch, []).extend(zip(batch.meta0.tolist(), batch.meta1.tolist()))
        m.handler(f"APP_{ch.upper().replace('.', '_')}", batch=True, consumes=ch, message=t,
                  name=f"on_{ch}")(h)
    return m


def test_dual_boot_standard_channels_cross_the_bridge(wait_until):
    import threading

    import ggmk.dual
    from ggmk.modules import registry
    got, lock = {}, threading.Lock()
    lines = []
    cpu = [_app("app_r", "reduce", [("reduce.in", "REDUCE_PART")],
                [("reduce.out", "REDUCE_RESULT"), ("reduce.missing", "REDUCE_MISSING")], got, lock),
           _app("app_t", "timer", [("timer.set", "TIMER_SET"), ("timer.cancel", "TIMER_CANCEL")],
                [("timer.fire", "TIMER_FIRE"), ("timer.ack", "TIMER_ACK")], got, lock),
           _app("app_g", "gate", [("gate.arrive", "GATE_ARRIVE")], [("gate.open", "GATE_PASS")],
                got, lock),
           _app("app_l", "log", [("log.in", "LOG")], [], got, lock),
           log.module(name="hostlog", level="info", sink=lambda lv, ln: lines.append((lv, ln)))]
    gpu = [reduce.device_module(n=4, timeout=200, channels=True),
           timer.device_module(channels=True), gate.device_module(n=3, channels=True),
           log.device_module(channels=True, rate=1000, burst=2, out="hostlog.in")]
    with ggmk.dual.boot(cpu + gpu, device="cpu", workers=2,
                        types=registry("reduce", "timer", "gate", "log")) as s:
        s.channel("reduce.in").publish(meta0=7, meta1=[1, 2, 3, 4], count=4)
        s.channel("reduce.in").publish(meta0=8, meta1=[1, 2], count=2)     # short: missing
        s.channel("timer.set").publish(meta0=1, meta1=timer.arg(delay=3))
        s.channel("gate.arrive").publish(meta0=1, meta1=[10, 11, 12], count=3)
        s.channel("log.in").publish(meta0=log.WARN, meta1=[101, 102, 103, 104, 105], count=5)

        def have():
            with lock:
                return (len(got.get("reduce.out", ())) == 1 and len(got.get("gate.open", ())) == 3
                        and len(got.get("reduce.missing", ())) == 1
                        and len(got.get("timer.fire", ())) == 1 and len(lines) >= 2)
        assert wait_until(have, timeout=120), (got, lines)
        s.channel("log.in").publish(meta0=log.ERROR, meta1=106)     # brings the drop report
        assert wait_until(lambda: any(ln == "106" for _, ln in lines), timeout=60), lines
        assert s.run(timeout=60)
    assert got["reduce.out"] == [(7, 10)] and got["reduce.missing"] == [(8, 2)]
    assert got["timer.ack"] == [(1, timer.OP_SET << 32 | timer.OK)]
    assert got["timer.fire"] == [(1, 1)]
    assert sorted(got["gate.open"]) == [(1, 10), (1, 11), (1, 12)]
    # 6 lines against a bucket of 2: every line formatted on the host or counted as dropped
    # on the device, the count reported (a WARN line whose number is the count, < 100)
    passed = [int(ln) for _, ln in lines if int(ln) > 100]
    reports = [int(ln) for lv, ln in lines if int(ln) < 100]
    assert len(set(passed)) == len(passed) and 106 in passed and len(passed) >= 2
    assert len(passed) + sum(reports) == 6
