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
from ggmk.task import (BAD_RETURN, CHAN_UNKNOWN, HANDLER_EXCEPTION, MAX_YIELDS, OK, RETRY,
                       UNKNOWN_TYPE)

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


@feat.handler(212)
def raiser(ctx, task):
    if g.meta0(task) == 1:
        raise ValueError("handler raised")
    g.emit_host(ctx, 213, g.meta0(task), 0)
    return OK


@feat.handler(214, granularity="warp")
def warp_raiser(ctx, task, lane, nlanes, smem, phase):
    if lane == g.meta1(task):
        raise ValueError("one lane raised")
    if lane == 0:
        g.emit_host(ctx, 215, g.meta0(task), 0)
    return OK


@feat.handler(216, granularity="block", phases=2)
def block_raiser(ctx, task, lane, nlanes, smem, phase):
    # meta1: the lane that raises in the last phase (after lane 0 has returned on cpu)
    if phase == 1 and lane == g.meta1(task):
        raise ValueError("one lane raised")
    if lane == 0 and phase == 1:
        g.emit_host(ctx, 217, g.meta0(task), 0)
    return OK


@feat.handler(218)
def returns_meta0(ctx, task):
    return g.meta0(task)


@feat.handler(219)
def emits_to(ctx, task):
    # meta0: the type id to emit to, meta1: which emit
    how = g.meta1(task)
    t = g.meta0(task)
    if how == 0:
        r = g.emit(ctx, t, 5, 0)
    elif how == 1:
        r = g.emit_full(ctx, t, 5, 0, 0, 0, -1, 0)
    elif how == 2:
        r = g.emit_at(ctx, g.tick(ctx), t, 5, 0)
    else:
        r = g.emit_host(ctx, t, 5, 0)
    g.emit_host(ctx, 220, r, how)
    return OK


@feat.handler(221)
def emits_on_channel(ctx, task):
    g.emit_host(ctx, 222, g.emit_chan(ctx, g.meta0(task), 9, 0), 0)
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


def _u64(vals):
    """int64 values as the u64 meta column holds them (a handler reads them back signed)."""
    return np.asarray(vals, np.int64).view(np.uint64)


def _split(out):
    err = out[out["channel"] == SYS_ERROR]
    return err, out[out["channel"] != SYS_ERROR]


def test_a_handler_that_raises_fails_its_task_and_the_kernel_goes_on(kern):
    """SPEC §6: a handler's exception is reported against it on sys.error (HANDLER_EXCEPTION)
    and never stops a worker: the tasks around it, and later ones, still run."""
    kern.push(taskmod.make(4, type=212, meta0=np.array([0, 1, 2, 3])))
    err, ok = _split(kern.pull_until(4, timeout=30))
    assert err["type"].tolist() == [212] and err["meta0"].tolist() == [1]
    assert error_code(err).tolist() == [HANDLER_EXCEPTION]
    assert ok["type"].tolist() == [213] * 3 and sorted(ok["meta0"].tolist()) == [0, 2, 3]
    assert kern.alive()
    kern.push(taskmod.make(1, type=212, meta0=7))
    assert kern.pull_until(1, timeout=30)["meta0"].tolist() == [7]


def test_a_lane_that_raises_fails_its_warp_or_block_task(kern):
    """Whichever lane raises (not only the one whose return counts; on cpu the last lane of
    the last phase runs after lane 0 returned), the task fails with HANDLER_EXCEPTION."""
    kern.push(taskmod.make(3, type=214, meta0=np.arange(3), meta1=np.array([99, 5, 0])))
    kern.push(taskmod.make(3, type=216, meta0=np.arange(3), meta1=np.array([99, 31, 0])))
    err, ok = _split(kern.pull_until(8, timeout=30))
    assert sorted(ok["type"].tolist()) == [215, 215, 217, 217]   # lane 0 ran in each task
    assert sorted(zip(ok["type"].tolist(), ok["meta0"].tolist())) == \
        [(215, 0), (215, 1), (217, 0), (217, 1)]
    assert error_code(err).tolist() == [HANDLER_EXCEPTION] * 4
    assert sorted(zip(err["type"].tolist(), err["meta0"].tolist())) == \
        [(214, 1), (214, 2), (216, 1), (216, 2)]


def test_return_values_the_record_cannot_hold_are_bad_returns(kern):
    """A failure code travels in the record's int16: one below -32768 arrived as 25536 or 0
    (OK), and a positive value that is not a code as FAIL; both are BAD_RETURN, as on the
    CPU kernel. Codes that fit arrive as they are."""
    vals = [-7, -32768, -32769, -40000, -65536, -(1 << 40), 4, 5, 1 << 40]
    kern.push(taskmod.make(len(vals), type=218, meta0=_u64(vals)))
    out = kern.pull_until(len(vals), timeout=30)
    assert (out["channel"] == SYS_ERROR).all()
    got = dict(zip(out["meta0"].astype(np.int64).tolist(), error_code(out).tolist()))
    assert got == {-7: -7, -32768: -32768, **{v: BAD_RETURN for v in vals[2:]}}


def test_an_emit_to_a_type_id_out_of_range_is_refused_against_the_emitter(kern):
    """emit/emit_full/emit_at/emit_host to an id outside 1..2**32-1 schedules nothing (the id
    was truncated: (1 << 32) + 212 ran handler 212, -1 went to the host as type 2**32-1):
    UNKNOWN_TYPE to the handler, and a sys.error record with its type."""
    before = kern.metrics()["types"][212]["run"]
    bad = [0, -1, 1 << 32, (1 << 32) + 212]
    t = np.repeat(np.array(bad), 4)
    how = np.tile(np.arange(4), len(bad))
    kern.push(taskmod.make(len(t), type=219, meta0=_u64(t), meta1=how))
    err, ok = _split(kern.pull_until(2 * len(t), timeout=30))
    assert len(err) == len(t) and (err["type"] == 219).all()
    assert (error_code(err) == UNKNOWN_TYPE).all() and (err["meta0"] == 5).all()
    assert sorted(err["seq"].tolist()) == sorted(v & 0xFFFFFFFF for v in t.tolist())
    assert (ok["type"] == 220).all() and (ok["meta0"].astype(np.int64) == UNKNOWN_TYPE).all()
    assert sorted(ok["meta1"].tolist()) == sorted(how.tolist())
    assert kern.metrics()["types"][212]["run"] == before


def test_an_unknown_channel_is_reported_against_the_emitter(kern):
    kern.push(taskmod.make(2, type=221, meta0=_u64([99, -3])))
    err, ok = _split(kern.pull_until(4, timeout=30))
    assert err["type"].tolist() == [221, 221]
    assert error_code(err).tolist() == [CHAN_UNKNOWN] * 2
    assert sorted(err["seq"].tolist()) == sorted([99, -3 & 0xFFFFFFFF])
    assert err["meta0"].tolist() == [9, 9]
    assert ok["meta0"].astype(np.int64).tolist() == [CHAN_UNKNOWN] * 2


def test_pull_until_keeps_what_it_took_when_it_gives_up(kern, wait_until):
    """Records a timed-out pull_until had taken off the ring are not dropped with its error:
    the next pull returns them first."""
    base = kern.metrics()["types"][212]["ok"]
    kern.push(taskmod.make(3, type=212, meta0=np.array([10, 11, 12])))
    # done (its counters are published once the worker is idle): the 3 records are out
    assert wait_until(lambda: kern.metrics()["types"][212]["ok"] == base + 3, 30)
    with pytest.raises(gd.host.DeviceError,
                       match=r"3/5 records after 0.2 s \(the 3 taken are kept: the next pull"):
        kern.pull_until(5, timeout=0.2)
    assert kern.tx_ready()
    first = kern.pull(2)["meta0"].tolist()
    assert sorted(first + kern.pull()["meta0"].tolist()) == [10, 11, 12]
    assert not kern.tx_ready()


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
