"""The device kernel on the ``cpu`` target: host interface, completion codes, events, arena,
trace, heartbeats, stop. One kernel (one compile) serves the whole file."""
import time

import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.device.host import SYS_ERROR, error_code
from ggmk.events import EventType
from ggmk.task import OK, RETRY, MAX_YIELDS

feat = gd.Module("feat", trace_level="warn")
traced = gd.Module("traced", trace_level="all")


@feat.handler(200)
def yield3(ctx, task):
    phase = g.meta0(task)
    if phase < 3:
        return g.yield_at(task, phase + 1)
    g.emit_host(ctx, 201, g.yield_count(task), g.meta1(task))
    return OK


@feat.handler(202)
def retry2(ctx, task):
    n = g.user_add(ctx, 100 + g.meta1(task), 1) + 1
    if n <= 2:
        return RETRY
    g.emit_host(ctx, 203, n, g.tick(ctx))
    return OK


@feat.handler(204)
def fail7(ctx, task):
    return -7


@feat.handler(205)
def timer(ctx, task):
    g.emit_at(ctx, g.tick(ctx) + g.meta0(task), 206, g.tick(ctx), g.meta0(task))
    return OK


@feat.handler(206)
def timer_fired(ctx, task):
    # report the tick this worker fired at: the host's published tick may lag (block 0 writes it)
    g.emit_host(ctx, 206, g.meta0(task), g.tick(ctx))
    return OK


@feat.handler(207)
def allocs(ctx, task):
    p = g.alloc(ctx, 1000)
    if p == 0:
        return -200
    g.store_u8(ctx, p, 42)
    g.store_i64(ctx, p + 8, -5)
    g.retain(ctx, p, 1)
    r1 = g.release(ctx, p)
    v = g.load_u8(ctx, p) + (g.load_i64(ctx, p + 8) == -5) * 100
    r2 = g.release(ctx, p)
    s = g.slab(ctx)
    b = g.bump(ctx, 100)
    g.emit_host(ctx, 208, r1 * 10 + r2, v + (s != 0) * 1000 + (b != 0) * 10000)
    if s != 0:
        g.release(ctx, s)
    return OK


@feat.handler(209, max_yields=4)
def forever(ctx, task):
    return 2  # YIELD, always


@feat.handler(211)
def fanout(ctx, task):
    for i in range(g.meta0(task)):
        g.emit(ctx, 210, i, 0)
    return OK


@traced.handler(210)
def traced_ok(ctx, task):
    g.metric_add(ctx, 3, 1)
    return OK


@pytest.fixture(scope="module")
def kern():
    k = gd.DeviceKernel([feat, traced], target="cpu", workers=2)
    k.start()
    yield k
    k.stop()


def test_push_rejects_bad_records(kern):
    with pytest.raises(TypeError, match="TASK_DTYPE"):
        kern.push(np.zeros(3, np.int64))


def test_roundtrip_unknown_type_bounces_to_host(kern):
    recs = taskmod.make(5, type=999, meta0=np.arange(5), meta1=7, tenant=3)
    assert kern.push(recs) == 5
    out = kern.pull_until(5, timeout=30)
    assert sorted(out["meta0"].tolist()) == [0, 1, 2, 3, 4]
    assert set(out["type"].tolist()) == {999} and set(out["tenant"].tolist()) == {3}


def _asleep_on(tid: int, addr: int) -> bool:
    """Thread ``tid`` of this process is blocked in futex(2) on ``addr`` (its current system
    call, as Linux reports it)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            parts = f.read().split()
    except OSError:
        return False
    return len(parts) > 1 and parts[0] == "202" and int(parts[1], 16) == addr


def test_tx_bell_wakes_a_host_thread_asleep_on_the_tx_ring(kern, wait_until):
    """The device -> host bell: a host thread that raised C_HOST_WAIT and sleeps on the bell
    (a futex, for far longer than the test waits) is woken by the device's tx publish, round
    after round. Each push waits until the thread is really asleep in the futex (so the wake,
    not a bell value that moved on before the sleep, ends it): a lost wake-up would leave it
    asleep past the deadline."""
    import platform
    import threading
    from ggmk.device import layout
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("reads the x86-64 futex system call number")
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/syscall") as f:
            f.read()
    except OSError as e:
        pytest.skip(f"cannot read a thread's current system call here: {e}")
    bell = kern.tx_bell()
    assert bell is not None and kern.tx_bell() is bell
    addr = kern._h["ctl"][layout.C_HOST_BELL:].ctypes.data
    kern.pull(1 << 20)
    rounds, got, seen_ids, armed, errors = 10, [], [], threading.Semaphore(0), []

    def sleeper():
        try:
            while len(got) < rounds:
                seen = bell.value()
                bell.waiting(True)
                armed.release()
                if not kern.tx_ready():
                    bell.wait(seen, 120.0)
                bell.waiting(False)
                r = kern.pull_until(1, timeout=30)
                got.append(len(r))
                seen_ids.extend(r["meta0"].tolist())
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    for i in range(rounds):
        assert armed.acquire(timeout=60)
        assert wait_until(lambda: _asleep_on(t.native_id, addr), 60), "never fell asleep"
        # an unknown type: the device sends it straight back to the host (a tx publish)
        assert kern.push(taskmod.make(1, type=999, meta0=i)) == 1
        assert wait_until(lambda: len(got) > i or errors, 60), f"round {i}: not woken"
    assert wait_until(lambda: not t.is_alive(), 60), f"woken {len(got)}/{rounds} times"
    assert errors == [] and got == [1] * rounds and seen_ids == list(range(rounds))
    assert kern._h["ctl"][layout.C_HOST_WAIT] == 0 and not kern.tx_ready()


def test_yield_three_times_keeps_meta(kern):
    kern.push(taskmod.make(3, type=200, meta0=0, meta1=np.array([11, 12, 13])))
    out = kern.pull_until(3, timeout=30)
    assert out["type"].tolist() == [201] * 3
    assert out["meta0"].tolist() == [3, 3, 3]          # yield_count in the header
    assert sorted(out["meta1"].tolist()) == [11, 12, 13]


def test_retry_backs_off_then_succeeds(kern):
    kern.push(taskmod.make(1, type=202, meta1=1))
    out = kern.pull_until(1, timeout=30)
    assert out["type"][0] == 203 and out["meta0"][0] == 3


def test_failure_goes_to_sys_error_with_code(kern):
    kern.push(taskmod.make(2, type=204, meta0=5))
    out = kern.pull_until(2, timeout=30)
    assert (out["channel"] == SYS_ERROR).all()
    assert error_code(out).tolist() == [-7, -7]
    assert out["type"].tolist() == [204, 204] and out["meta0"].tolist() == [5, 5]


def test_max_yields_circuit_breaker(kern):
    kern.push(taskmod.make(1, type=209))
    out = kern.pull_until(1, timeout=30)
    assert out["channel"][0] == SYS_ERROR and error_code(out)[0] == MAX_YIELDS
    assert out["yield_count"][0] == 5


def test_event_fires_at_due_tick(kern):
    kern.push(taskmod.make(1, type=205, meta0=20))        # 20 ticks of 1 ms
    t0 = time.monotonic()
    out = kern.pull_until(1, timeout=30)
    assert out["type"][0] == 206
    assert time.monotonic() - t0 >= 0.015
    assert out["meta1"][0] >= out["meta0"][0] + 20         # fired no earlier than due


def test_arena_refcounts_slab_and_bump(kern):
    kern.push(taskmod.make(4, type=207))
    out = kern.pull_until(4, timeout=30)
    assert out["meta0"].tolist() == [10] * 4             # 1 ref left, then 0 (freed)
    assert out["meta1"].tolist() == [11142] * 4          # bytes kept, slab and bump non-zero
    kern.stop()                                          # the last test on this kernel
    m = kern.metrics()
    assert m["global"]["alloc"] == 4 and m["global"]["free"] >= 4 + 4
    assert m["global"]["alloc_fail"] == 0
    assert m["types"][202]["retry"] == 2 and m["global"]["retry_scheduled"] == 2
    with pytest.raises(gd.host.KernelStopped):
        kern.push(taskmod.make(1, type=200))


def test_trace_levels_and_metrics_after_restart(wait_until):
    k = gd.DeviceKernel([feat, traced], target="cpu", workers=2)   # same handlers: cached
    t0 = time.monotonic()
    with k:
        assert time.monotonic() - t0 < 30
        k.push(taskmod.make(1, type=211, meta0=50))
        k.push(taskmod.make(1, type=204))
        k.pull_until(1, timeout=30)
        wait_until(lambda: k.metrics()["user"][3] >= 50, 30)
        hb1 = k.heartbeats()
        assert wait_until(lambda: (k.heartbeats() > hb1).all(), 10)
        ev = k.drain_trace()
    m = k.metrics()
    assert m["user"][3] == 50 and m["types"][210]["ok"] == 50
    assert m["types"][211]["run"] == 1 and m["types"][204]["fail"] == 1
    ends = ev[ev["event"] == EventType.TASK_END]
    assert len(ends) >= 50 and set(ends["task_type"].tolist()) <= {210, 211}
    assert 210 in set(ends["task_type"].tolist())
    # feat is at level warn: its successful tasks leave no TASK_END, its failure is traced
    assert 211 not in set(ends["task_type"].tolist())
    fails = ev[ev["event"] == EventType.TASK_FAIL]
    assert 204 in set(fails["task_type"].tolist())
    assert k.drain_trace().size == 0
    assert not k.alive()




def test_two_host_threads_share_the_blocks_with_real_atomics(wait_until):
    """host_threads=2: each host thread runs its share of the blocks; free lists, reference
    counts, the event lock and user words are touched from both threads at once."""
    import threading
    k = gd.DeviceKernel([feat, traced], target="cpu", workers=2, host_threads=2)  # cached
    assert k.config.host_threads == 2
    n_alloc, n_fan, n_retry = 400, 200, 40
    with k:
        names = {t.name for t in threading.enumerate() if t.is_alive()}
        assert {"ggmk-device-cpu-0", "ggmk-device-cpu-1"} <= names
        k.push_all(taskmod.make(n_alloc, type=207))
        k.push_all(taskmod.make(n_fan, type=211, meta0=5))
        k.push_all(taskmod.make(n_retry, type=202, meta1=np.arange(n_retry)))
        out = k.pull_until(n_alloc + n_retry, timeout=60)
        wait_until(lambda: k.metrics()["user"][3] >= n_fan * 5, 30)
        hb1 = k.heartbeats()
        # block 0 on one thread, block 1 on the other
        assert wait_until(lambda: (k.heartbeats() > hb1).all(), 10)
    a = out[out["type"] == 208]
    assert len(a) == n_alloc
    assert a["meta0"].tolist() == [10] * n_alloc and a["meta1"].tolist() == [11142] * n_alloc
    r = out[out["type"] == 203]
    assert r["meta0"].tolist() == [3] * n_retry      # each key's counter: exactly 3 runs
    m = k.metrics()
    assert m["user"][3] == n_fan * 5 and m["types"][210]["ok"] == n_fan * 5
    assert m["global"]["alloc"] == n_alloc and m["global"]["slab_alloc"] == n_alloc
    assert m["global"]["free"] == 2 * n_alloc and m["global"]["alloc_fail"] == 0
    assert m["types"][202]["retry"] == 2 * n_retry


def test_host_threads_cannot_exceed_blocks():
    with pytest.raises(gd.host.BootError, match="host_threads=3"):
        gd.DeviceKernel([feat, traced], target="cpu", workers=2, host_threads=3)
