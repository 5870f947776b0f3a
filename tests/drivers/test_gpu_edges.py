"""gpu_drv edge cases on the ``cpu`` backend: a failed destroy / close leaves nothing behind,
huge timeouts are refused by name, the kernel cannot start on a closed driver, cancelled fences
and malformed commands have errors that name what was wrong, payload pools and config aliases
are unambiguous, and the boot's ``KernelDriver`` stops a kernel it started itself."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk.device as gd
from ggmk.drivers.gpu import (Call, ContextDestroyed, Copy, Fill, GpuConfig, GpuConfigError,
                              GpuDriver, GpuDriverError, Nop, Read, Write)


def _usage(d):
    st = d.stats()
    return st["contexts"], st["allocations"], st["bytes_in_use"]


@pytest.fixture
def drv():
    d = GpuDriver(backend="cpu", memory_reservation="1M", command_timeout_ms=5000, display=None)
    yield d
    d.close(timeout=1)


@pytest.fixture
def ctx(drv):
    return drv.create_context()


# ------------------------------------------------------------------ 1. failed destroy / close

@pytest.mark.parametrize("bad", [-1, "soon", float("nan"), True])
def test_destroy_with_a_bad_timeout_changes_nothing(drv, bad):
    ctx = drv.create_context()
    m = ctx.alloc(4096)
    with pytest.raises(GpuDriverError, match=f"destroy\\(context {ctx.id}\\): timeout="):
        ctx.destroy(timeout=bad)
    assert ctx.alive and not m.freed and _usage(drv) == (1, 1, 4096)
    ctx.free(m)                                         # still fully usable
    report = ctx.destroy(timeout=1)
    assert report["stopped"] and not ctx._b.thread.is_alive() and _usage(drv) == (0, 0, 0)


def test_destroy_frees_everything_even_when_a_step_fails(drv):
    ctx = drv.create_context()
    ctx.alloc(100)
    ctx.payload_pool(slots=2, slot_size=8)
    real = ctx._b.cancel_pending

    def failing_cancel():
        real()
        raise RuntimeError("backend trouble")

    ctx._b.cancel_pending = failing_cancel
    with pytest.raises(RuntimeError, match="backend trouble"):
        ctx.destroy(timeout=1)
    assert not ctx.alive and _usage(drv) == (0, 0, 0)
    assert not ctx._b.thread.is_alive()                 # the worker was still stopped
    assert ctx.destroy() == ctx.report                  # the second destroy: the same report


def test_close_with_a_bad_timeout_changes_nothing():
    d = GpuDriver(backend="cpu", display=None)
    a, b = d.create_context(), d.create_context()
    a.alloc(1024)
    b.alloc(1024)
    with pytest.raises(GpuDriverError, match="close: timeout='soon'"):
        d.close(timeout="soon")
    assert not d.closed and a.alive and b.alive and _usage(d) == (2, 2, 2048)
    d.close(timeout=1)
    assert d.closed and not a.alive and not b.alive and _usage(d) == (0, 0, 0)


def test_close_destroys_every_context_when_one_fails():
    d = GpuDriver(backend="cpu", display=None)
    a, b, c = d.create_context(), d.create_context(), d.create_context()
    for x in (a, b, c):
        x.alloc(512)
    real = a._b.cancel_pending

    def failing_cancel():
        real()
        raise RuntimeError("first failure")

    a._b.cancel_pending = failing_cancel
    real_b = b._b.cancel_pending

    def failing_cancel_b():
        real_b()
        raise RuntimeError("second failure")

    b._b.cancel_pending = failing_cancel_b
    with pytest.raises(RuntimeError, match="first failure"):
        d.close(timeout=1)
    assert d.closed and not any(x.alive for x in (a, b, c)) and _usage(d) == (0, 0, 0)


# ------------------------------------------------------------------ 2. huge timeouts

@pytest.mark.parametrize("t", [1e10, 1e300])
def test_huge_wait_timeout_is_refused_by_name(ctx, t):
    gate = threading.Event()
    f = ctx.submit([Call(gate.wait, (10,))])
    try:
        with pytest.raises(GpuDriverError, match=r"wait\(fence 1 of context \d+\): timeout=.* "
                                                 r"at most"):
            ctx.wait(f, timeout=t)
    finally:
        gate.set()
    assert ctx.wait(f, timeout=10) is f


def test_largest_allowed_timeout_still_works(ctx):
    assert ctx.wait(ctx.submit([Nop()]), timeout=threading.TIMEOUT_MAX).done()


@pytest.mark.parametrize("name", ["command_timeout_ms", "gpu_command_timeout_ms"])
def test_huge_command_timeout_ms_is_refused_by_name(name):
    with pytest.raises(GpuConfigError) as ei:
        GpuDriver(backend="cpu", display=None, **{name: 1e13})
    assert ei.value.option == "command_timeout_ms" and "at most" in str(ei.value)
    GpuConfig.make(command_timeout_ms=threading.TIMEOUT_MAX * 1000)      # the limit itself: ok


def test_huge_destroy_and_close_timeouts_are_refused(drv):
    ctx = drv.create_context()
    with pytest.raises(GpuDriverError, match="at most"):
        ctx.destroy(timeout=1e10)
    assert ctx.alive
    with pytest.raises(GpuDriverError, match="at most"):
        drv.close(timeout=1e10)
    assert not drv.closed and ctx.alive


# ------------------------------------------------------------------ 3. kernel after close

class _FakeKernel:
    made: list = []

    def __init__(self, modules, target=None, workers=None, **config):
        self.target = target
        self.running = False
        _FakeKernel.made.append(self)

    def start(self, timeout=600.0):
        self.running = True
        return self

    def stop(self, timeout=60.0):
        self.running = False

    def alive(self):
        return self.running


@pytest.fixture
def fake_kernel(monkeypatch):
    _FakeKernel.made = []
    monkeypatch.setattr(gd, "DeviceKernel", _FakeKernel)
    return _FakeKernel


def test_launch_and_reset_after_close_are_refused(fake_kernel):
    d = GpuDriver(backend="cpu", display=None)
    d.launch(["m"], workers=1)
    d.close()
    assert not fake_kernel.made[0].alive()
    with pytest.raises(GpuDriverError, match="launch: the driver is closed"):
        d.launch(["m"], workers=1)
    with pytest.raises(GpuDriverError, match="reset: the driver is closed"):
        d.reset()
    assert len(fake_kernel.made) == 1 and d.stats()["kernel"]["running"] is False


# ------------------------------------------------------------------ 4. cancelled fences

def test_fence_cancelled_by_destroy_names_fence_and_context(drv, wait_until):
    ctx = drv.create_context()
    gate, started = threading.Event(), threading.Event()
    ctx.submit([Call(started.set), Call(gate.wait, (30,))])
    later = ctx.submit([Nop()])
    assert started.wait(10)
    try:
        ctx.destroy(timeout=0)
    finally:
        gate.set()
    words = f"fence 2 of context {ctx.id}.*before this batch ran"
    with pytest.raises(ContextDestroyed, match=words):
        later.wait(1)
    assert isinstance(later.error, ContextDestroyed) and later.error.fence is later
    assert wait_until(lambda: not ctx._b.thread.is_alive(), 10)


# ------------------------------------------------------------------ 5. malformed command fields

@pytest.mark.parametrize("make, words", [
    (lambda a: Fill(a, 1, offset="x"), "command 0 (Fill): offset='x' must be an integer >= 0"),
    (lambda a: Fill(a, 1, offset=-1), "command 0 (Fill): offset=-1 must be an integer >= 0"),
    (lambda a: Fill(a, 1, offset=300), "command 0 (Fill): offset=300 is past the end"),
    (lambda a: Fill(a, 1, nbytes="4"), "command 0 (Fill): nbytes='4' must be an integer >= 0"),
    (lambda a: Copy(a, a, src_offset=300), "command 0 (Copy): src_offset=300 is past the end"),
    (lambda a: Copy(a, a, src_offset=1.5), "command 0 (Copy): src_offset=1.5 must be an integer"),
    (lambda a: Copy(a, a, nbytes=8, dst_offset="y"),
     "command 0 (Copy): dst_offset='y' must be an integer"),
    (lambda a: Write(a, b"ab", offset=None), "command 0 (Write): offset=None must be an integer"),
    (lambda a: Write(a, np.array([object()])), "command 0 (Write): data"),
    (lambda a: Read(a, np.empty(2, object)), "command 0 (Read): out"),
    (lambda a: Read(a, np.empty(2, np.uint8), offset="z"),
     "command 0 (Read): offset='z' must be an integer"),
])
def test_malformed_command_fields_are_named(ctx, make, words):
    a = ctx.alloc(256)
    with pytest.raises(GpuDriverError) as ei:
        ctx.submit([make(a)])
    assert words in str(ei.value), str(ei.value)
    assert "nbytes=-" not in str(ei.value)
    assert ctx.stats()["fences_submitted"] == 0


def test_object_arrays_name_their_dtype(ctx):
    a = ctx.alloc(64)
    with pytest.raises(GpuDriverError, match="dtype object"):
        ctx.submit([Nop(), Write(a, np.array([object()]))])
    with pytest.raises(GpuDriverError, match="command 1 .*dtype object"):
        ctx.submit([Nop(), Read(a, np.empty(2, object))])
    with pytest.raises(GpuDriverError, match="put: .*dtype object"):
        ctx.payload_pool(slots=2, slot_size=64).put(np.array([object()]))


def test_offset_at_the_end_is_an_empty_range(ctx):
    a = ctx.alloc(16)
    out = np.zeros(0, np.uint8)
    ctx.wait(ctx.submit([Fill(a, 1, offset=16), Copy(a, a, src_offset=16), Read(a, out, 16)]), 5)


# ------------------------------------------------------------------ 6. payload pool kind

def test_payload_pool_same_name_other_kind_is_refused(ctx):
    p = ctx.payload_pool(slots=2, slot_size=64, name="q")
    assert p.mem.kind == "device"
    with pytest.raises(GpuDriverError, match="pool 'q'.*device"):
        ctx.payload_pool(slots=2, slot_size=64, name="q", kind="host")
    assert ctx.payload_pool(slots=2, slot_size=64, name="q", kind="device") is p
    h = ctx.payload_pool(slots=2, slot_size=64, name="h", kind="host")
    assert h.mem.kind == "host" and ctx.payload_pool(2, 64, name="h", kind="host") is h


def test_payload_pool_bad_kind_names_the_pool(ctx):
    with pytest.raises(GpuDriverError, match="payload_pool 'w': kind='weird' must be one of"):
        ctx.payload_pool(2, 64, name="w", kind="weird")


# ------------------------------------------------------------------ 7. config aliases

@pytest.mark.parametrize("options, a, b", [
    ({"memory_reservation": "64M", "gpu_memory_size": "128M"},
     "memory_reservation", "gpu_memory_size"),
    ({"command_timeout_ms": 10, "gpu_command_timeout_ms": 99999},
     "command_timeout_ms", "gpu_command_timeout_ms"),
    ({"enable_display": True, "gpu_enable_display": False}, "enable_display",
     "gpu_enable_display"),
])
def test_alias_and_name_with_different_values_are_refused(options, a, b):
    with pytest.raises(GpuConfigError) as ei:
        GpuConfig.make(**options)
    assert a in str(ei.value) and b in str(ei.value), str(ei.value)
    with pytest.raises(GpuConfigError, match=b):
        GpuConfig.make(options)                         # the same within a dict


def test_alias_and_name_agreeing_or_keyword_over_config_are_fine():
    c = GpuConfig.make(memory_reservation="64M", gpu_memory_size="64M")
    assert c.memory_reservation == 64 << 20
    c = GpuConfig.make({"memory_reservation": "64M"}, gpu_memory_size="128M")   # keyword wins
    assert c.memory_reservation == 128 << 20
    c = GpuConfig.make(GpuConfig.make(memory_reservation="64M"), gpu_memory_size="32M")
    assert c.memory_reservation == 32 << 20


# ------------------------------------------------------------------ 8. KernelDriver (boot)

def test_kernel_driver_close_stops_a_sim_kernel_it_started(monkeypatch, fake_kernel):
    import ggmk.device.targets as targets
    from ggmk.drivers.gpu import kernel_boot

    class FakeSim:
        NAME = "sim"

        @staticmethod
        def available():
            return True, ""

    monkeypatch.setattr(targets, "get_target", lambda name: FakeSim)
    kd = kernel_boot.open_for_kernel("sim")
    k = kd.launch(["m"])
    assert k.target == "sim" and k.alive() and kd.driver.kernel is None
    kd.close()
    assert not k.alive() and kd.kernel is None and kd.driver.closed


def test_kernel_driver_close_stops_kernel_once_when_driver_owns_it(monkeypatch, fake_kernel):
    from ggmk.drivers.gpu import kernel_boot
    kd = kernel_boot.open_for_kernel("cpu")
    k = kd.launch(["m"])
    assert kd.driver.kernel is k
    kd.close()
    assert not k.alive() and kd.driver.closed


def test_config_takes_numpy_sizes_as_alloc_does():
    """Sizes computed with NumPy (np.int64) are ints to the config too, not refused."""
    import numpy as np
    from ggmk.drivers.gpu.config import GpuConfig
    c = GpuConfig.make(None, memory_reservation=np.int64(1 << 20), payload_slots=np.int32(4),
                       payload_slot_size=np.int64(64), device=np.int64(0))
    assert (c.memory_reservation, c.payload_slots, c.payload_slot_size, c.device) == \
        (1 << 20, 4, 64, 0)
    assert all(type(v) is int for v in (c.memory_reservation, c.payload_slots,
                                         c.payload_slot_size, c.device))
