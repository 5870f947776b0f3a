"""The public hooks the bridge uses instead of private pokes: DeviceKernel.write_arena /
read_arena / rx_pending / tx_ready / type_totals, gpu_drv's open_for_kernel, and the wake-up of
the pump when a CPU channel delivers to the bridge."""
import re

import numpy as np
import pytest

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge.options import check_options
from ggmk.drivers.gpu import open_for_kernel
from ggmk.errors import BootError, DeviceError
from tests.bridge.dualkit import boot


@pytest.fixture
def quiet_dual():
    s = boot()
    s.bridge.stop()                 # the test talks to the GPU kernel itself
    try:
        yield s
    finally:
        s.halt(timeout=0)


def test_arena_hooks_round_trip(quiet_dual):
    k = quiet_dual.kernel
    assert not k.tx_ready() and k.rx_pending() == 0
    assert k.push(T.make(1, type=ds.ALLOC, meta0=300, meta1=7)) == 1
    rep = k.pull_until(1, timeout=30)
    assert int(rep["type"][0]) == ds.ALLOC_REPLY and int(rep["meta1"][0]) == 7
    ptr = int(rep["meta0"][0])
    assert ptr
    data = np.arange(300, dtype=np.uint16).astype(np.uint8)
    k.write_arena(ptr, data)
    assert np.array_equal(k.read_arena(ptr, 300), data)
    k.write_arena(ptr + 10, b"hello")
    assert bytes(k.read_arena(ptr + 10, 5)) == b"hello"
    assert len(k.read_arena(ptr, 0)) == 0
    with pytest.raises(DeviceError, match="outside the device arena"):
        k.read_arena(16, 4)
    with pytest.raises(DeviceError, match="outside the device arena"):
        k.write_arena(ptr + (1 << 40), data)
    k.push(T.make(1, type=ds.RELEASE, meta0=ptr))
    # the cheap counters agree with metrics() once the kernel published them
    types = [ds.ALLOC, ds.RELEASE]
    quiet_dual.run(timeout=30)
    m = k.metrics()["types"]
    want = [m[t]["ok"] + m[t]["fail"] for t in types]
    assert k.type_totals(types).tolist() == want
    assert k.type_totals(types, ("run",)).tolist() == [m[t]["run"] for t in types]


def test_rx_pending_counts_what_the_device_has_not_taken(quiet_dual):
    tr = quiet_dual.transport
    assert tr.rx_pending() == quiet_dual.kernel.rx_pending() == 0
    assert len(tr.recv(64)) == 0            # nothing published: no copy at all


def test_open_for_kernel_is_the_boot_driver():
    d = open_for_kernel("cpu")
    try:
        info = d.describe()
        assert d.target == "cpu" and info["target"] == "cpu" and info["devices"]
        assert info["backend"] == "cpu"
    finally:
        d.close()
    with pytest.raises(BootError, match="'tpu'"):
        open_for_kernel("tpu")


def test_a_cpu_publish_wakes_the_pump():
    s = boot()
    try:
        b = s.bridge
        st = b.by_name["cpu.in"]
        # the notify hook (under the channel's lock) and the after-emit hook (the emitting
        # thread's send, tests/bridge/test_bridge_direct.py)
        assert len(st.sub.ring.hooks) == 1 and len(st.sub.after) == 1
        b.stop()
        b._wake.clear()
        assert s.channel("cpu.in").publish(meta0=1) == 0
        assert b._wake.is_set()
        b._stop.clear()
        b.start()
        assert s.run(timeout=30)
    finally:
        s.halt()


def test_a_full_device_arena_is_backpressure_not_alloc_fail():
    """More 4 KiB payloads in flight than the device arena's 4 KiB blocks: device block
    requests that fail are asked again (lossless channel), none ends on sys.error."""
    from tests.bridge import bridge_workloads as W
    from tests.bridge.dualkit import publish_all
    s = boot()
    try:
        data = bytes(range(256)) * 16
        W.REC.expect_payload = data
        publish_all(s, "cpu.in", 1000, payload=data, timeout=120)
        assert s.run(timeout=120)
        b = s.stats()["bridge"]
        assert b["alloc_fail"] == 0 and b["dead_lettered"] == 0, b
        assert W.REC.back_n == 1000 and all(r[2] and r[3] for r in W.REC.back)
        assert sorted(r[0] for r in W.REC.back) == list(range(1000))
        assert len(s.dead_letters()[0]) == 0
    finally:
        s.halt()


def test_a_full_cpu_arena_is_backpressure_not_alloc_fail():
    """The host producer fills a small CPU arena with 4 KiB payloads waiting to cross while
    their echoes come back: the GPU -> CPU copies of a lossless channel take the arena's
    reserve, and one that finds no room waits (its credit withheld) instead of ending on
    sys.error with ALLOC_FAIL. Every payload arrives intact, exactly once."""
    from tests.bridge import bridge_workloads as W
    from tests.bridge.dualkit import publish_all
    n = 3000
    s = boot(arena_size=4 << 20)        # the 4 KiB bin holds ~200 blocks: n overfill it
    try:
        data = bytes(range(256)) * 16
        W.REC.expect_payload = data
        publish_all(s, "cpu.in", n, payload=data, timeout=120)
        assert s.run(timeout=120)
        b = s.stats()["bridge"]
        assert b["alloc_fail"] == 0 and b["dead_lettered"] == 0, b
        assert W.REC.back_n == n and all(r[2] and r[3] for r in W.REC.back)
        assert sorted(r[0] for r in W.REC.back) == list(range(n))
        assert len(s.dead_letters()[0]) == 0
        assert s.cpu.arena.stats()["total"]["live"] == 0
        st = s.bridge.by_name["cpu.in"]
        assert (st.fifo_n, st.asked_bytes, st.unasked, st.waiting) == (0, 0, 0, 0)
    finally:
        s.halt()


@pytest.mark.parametrize("bad", [0, 1, -0.5, "0.1", True])
def test_a_bad_arena_reserve_fails_the_boot_naming_it(bad):
    with pytest.raises(BootError, match=r"arena_reserve must be a share of the CPU arena in "
                                        r"\(0, 1\), got " + repr(bad).replace(".", r"\.")):
        boot(bridge={"arena_reserve": bad})


@pytest.mark.parametrize("name,bad,must", [
    ("max_retries", -1, "an int 0..1000"),      # booted, then sent no batch: every message lost
    ("max_retries", 1.5, "an int 0..1000"),
    ("max_retries", 10**12, "an int 0..1000"),   # booted, before: retried for ever
    ("batch", "8", "an int 1..65536"),           # a raw TypeError from deep inside, before
    ("batch", 0, "an int 1..65536"),
    ("batch", 2**70, "an int 1..65536"),         # booted, before
    ("window", 2**70, "None or an int 1..2147483647"),   # failed 18 s later in the GPU compile
    ("window", 2**31, "None or an int 1..2147483647"),
    ("flush_us", -1, "a finite number >= 0"),        # accepted without a word, before
    ("flush_us", float("nan"), "a finite number >= 0"),
    ("flush_us", float("inf"), "a finite number >= 0"),      # a bare OverflowError, before
    ("retry_backoff_us", float("inf"), "a finite number 0..1000000"),   # a retry never ended
    ("retry_backoff_us", 1e12, "a finite number 0..1000000"),           # (11 days)
    ("retry_backoff_us", "50", "a finite number 0..1000000"),
    ("pump_helps", "yes", "True or False"),
])
def test_a_bad_bridge_option_fails_the_boot_naming_it(name, bad, must):
    with pytest.raises(BootError, match=rf"bridge: {name} must be {must}.*, got {bad!r}"):
        boot(bridge={name: bad})


def test_the_bridge_option_bounds_themselves_are_allowed():
    check_options({"batch": 65536, "window": 2**31 - 1, "max_retries": 1000,
                   "retry_backoff_us": 1e6})
    check_options({"batch": 1, "window": 1, "max_retries": 0, "retry_backoff_us": 0})


@pytest.mark.parametrize("name", ["bridge", "device_config"])
@pytest.mark.parametrize("bad", ["window=8", [("window", 8)], 8])
def test_options_that_are_not_a_dict_fail_the_boot_naming_the_argument(name, bad):
    """(before: a ValueError about a "dictionary update sequence", or a list of pairs booted
    as if it were a dict)"""
    with pytest.raises(BootError, match=rf"boot: {name}={re.escape(repr(bad))}: allowed None "
                                        rf"or a dict of options"):
        boot(**{name: bad})


def test_a_numpy_int_window_is_taken():
    s = boot(bridge={"window": np.int64(8)})
    try:
        assert s.stats()["bridge"]["channels"]["cpu.in"]["window"] == 8
    finally:
        s.halt()


@pytest.mark.parametrize("call", ["halt", "run"])
@pytest.mark.parametrize("bad", ["1", -1, float("nan")])
def test_a_bad_timeout_is_named(call, bad):
    s = boot()
    try:
        with pytest.raises(ValueError, match=rf"{call}: timeout={re.escape(repr(bad))}: "
                                             rf"allowed .*a number of seconds >= 0"):
            getattr(s, call)(timeout=bad)
    finally:
        s.halt()


def test_the_bridge_reserves_cpu_memory_for_arriving_payloads():
    s = boot(bridge={"arena_reserve": 0.25})
    try:
        bins = s.cpu.arena.stats()["block"]["bins"]
        assert all(b["reserve_slots"] == max(1, b["slots"] // 4) for b in bins)
    finally:
        s.halt()


def _payloads_stepped_by_hand(s, n, ahead_blocks, data):
    """Stop ``s``'s pump (its steps are run by hand), let it ask for ``ahead_blocks`` 4 KiB
    device blocks ahead, publish ``n`` messages with ``data`` on cpu.in and run one step:
    (the bridge, cpu.in's state). A stopped bridge's refused blocks are final."""
    from tests.bridge import bridge_workloads as W
    b = s.bridge
    b.stop()
    b.ASK_AHEAD_BYTES = ahead_blocks * 4096
    W.REC.expect_payload = data
    ch = s.channel("cpu.in")
    for i in range(n):
        assert ch.publish(meta0=i, payload=data) == 0
    b.step()
    return b, b.by_name["cpu.in"]


def test_device_blocks_are_asked_for_a_bounded_amount_ahead():
    """CPU -> GPU payload messages ask the device for blocks at most ``ASK_AHEAD_BYTES`` ahead
    (in channel order); the rest are asked for as those are sent, and all arrive."""
    from tests.bridge import bridge_workloads as W
    s = boot()
    try:
        b, st = _payloads_stepped_by_hand(s, 20, 4, bytes(range(256)) * 16)
        assert (len(b._pending_alloc), st.asked_bytes, st.unasked, st.fifo_n) == \
            (4, 4 * 4096, 16, 20)
        b._stop.clear()
        b.start()
        assert s.run(timeout=60)
        assert sorted(r[0] for r in W.REC.back) == list(range(20))
        assert all(r[2] and r[3] for r in W.REC.back)
        assert s.stats()["bridge"]["payload_copies"] == 40
    finally:
        s.halt()


def test_gpu_payloads_that_can_never_be_copied_go_to_sys_error_and_do_not_stall(quiet_dual):
    """A lossless GPU -> CPU channel waits for host memory, but a payload no host block can
    hold (longer than the largest bin) or a span the device arena does not have (a GPU
    handler's bad emit) will never copy: each goes to sys.error (BRIDGE_PAYLOAD_TOO_LARGE,
    BRIDGE_TRANSFER_FAILED) and the messages around it are delivered, intact and in order."""
    from ggmk.core.alloc import MAX_ALLOC
    from ggmk.task import BRIDGE_PAYLOAD_TOO_LARGE, BRIDGE_TRANSFER_FAILED
    from tests.bridge import bridge_workloads as W
    s, k, b = quiet_dual, quiet_dual.kernel, quiet_dual.bridge
    k.push(T.make(3, type=ds.ALLOC, meta0=4096, meta1=np.array([1, 2, 3], np.uint64)))
    rep = k.pull_until(3, timeout=30)
    blocks = rep["meta0"][np.argsort(rep["meta1"])].tolist()
    data = bytes(range(256)) * 16
    for p in blocks:
        k.write_arena(p, np.frombuffer(data, np.uint8))
    W.REC.expect_payload = data
    st = b.by_name["gpu.back"]
    marks = T.make(4, type=ds.MARK(st.k), channel=np.arange(1, 5, dtype=np.uint64),
                   meta0=np.arange(4, dtype=np.uint64),
                   payload_ptr=np.array([blocks[0], blocks[1], 1 << 40, blocks[2]], np.uint64),
                   payload_len=np.array([4096, MAX_ALLOC + 1, 4096, 4096], np.uint64))
    with b.lock:
        b._dispatch(marks)
        b._deliver_out()
    assert not st.uncopied and not st.ready
    assert s.cpu.run(timeout=30)
    assert [(r[0], r[2], r[3]) for r in W.REC.back] == [(0, True, True), (3, True, True)]
    err, codes = s.cpu.dead_letters("sys.error")
    assert err["meta0"].tolist() == [1, 2] and not err["payload_ptr"].any()
    assert np.asarray(codes).tolist() == [BRIDGE_PAYLOAD_TOO_LARGE, BRIDGE_TRANSFER_FAILED]
    assert any("cannot be read" in e for e in b.errors)


def test_a_payload_message_that_dies_makes_room_to_ask_for_the_next_blocks():
    """Blocks are asked for a bounded amount ahead; when the messages asked for end without
    being sent (a refused block while the bridge stops: sys.error), the next ones are asked
    for, so none waits for a request that never goes out."""
    s = boot()
    try:
        b, st = _payloads_stepped_by_hand(s, 5, 2, bytes(4096))
        tags = sorted(b._pending_alloc)
        assert len(tags) == 2 and st.unasked == 3
        with b.lock:                              # the device refuses both blocks
            b._alloc_replies(T.make(2, type=ds.ALLOC_REPLY, meta0=0,
                                    meta1=np.array(tags, np.uint64)))
            b._fifo_to_stage(st)
        assert len(b._pending_alloc) == 2 and st.unasked == 1 and st.fifo_n == 3
        err, codes = s.cpu.dead_letters("sys.error")
        assert err["meta0"].tolist() == [0, 1]
    finally:
        s.halt()
