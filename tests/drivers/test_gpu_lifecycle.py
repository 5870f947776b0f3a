"""gpu_drv lifecycle edges on the ``cpu`` backend: bad timeouts given to launch / reset /
stop_kernel are refused by name before the running kernel is touched (a real kernel on the
``cpu`` target keeps serving), a payload slot cannot be freed once its pool is gone, and a
closed driver says so for displays too."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.drivers.gpu import (ContextDestroyed, GpuDriver, GpuDriverError, PoolExhausted)

# a device module at module level: the kernel build reads a handler's globals (``g``)
echo = gd.Module("gpu_drv_lifecycle")


@echo.handler(4311)
def double(ctx, task):
    g.emit_host(ctx, 4312, g.meta0(task) * 2, g.meta1(task))
    return 0


def _roundtrip(k, tag):
    k.push(taskmod.make(4, type=4311, meta0=np.arange(4), meta1=tag))
    out = k.pull_until(4, timeout=60)
    assert set(out["meta1"].tolist()) == {tag}
    return sorted(out["meta0"].tolist())


@pytest.fixture
def drv():
    d = GpuDriver(backend="cpu", memory_reservation="1M", command_timeout_ms=5000, display=None)
    yield d
    d.close(timeout=1)


# ------------------------------------------------------------------ kernel timeouts

BAD = [-1, float("nan"), float("inf"), "soon", True]


def test_bad_kernel_timeouts_are_refused_and_the_running_kernel_keeps_serving(drv):
    k = drv.launch([echo], workers=1)
    assert _roundtrip(k, 1) == [0, 2, 4, 6]
    for bad in BAD + [0]:                   # a start never completes in 0 s
        with pytest.raises(GpuDriverError, match=r"reset: start_timeout=.* seconds > 0"):
            drv.reset(start_timeout=bad)
    for bad in BAD:
        with pytest.raises(GpuDriverError, match=r"reset: timeout=.* seconds >= 0"):
            drv.reset(timeout=bad)
        with pytest.raises(GpuDriverError, match=r"stop_kernel: timeout=.* seconds >= 0"):
            drv.stop_kernel(bad)
    # nothing was stopped, abandoned or relaunched
    assert drv.kernel is k and k.alive() and drv.resets == 0 and drv.last_reset is None
    assert _roundtrip(k, 2) == [0, 2, 4, 6]
    drv.stop_kernel()
    for bad in BAD + [0]:
        with pytest.raises(GpuDriverError, match=r"launch: timeout=.* seconds > 0"):
            drv.launch([echo], workers=1, timeout=bad)
    assert drv.launches == 1 and drv.kernel is k and not k.alive()


# ------------------------------------------------------------------ payload pools

def test_freeing_a_slot_of_a_destroyed_pool_is_an_error(drv):
    ctx = drv.create_context()
    pool = ctx.payload_pool(slots=2, slot_size=64, name="p")
    slot = pool.alloc()
    pool.destroy()
    with pytest.raises(GpuDriverError, match=r"payload pool 'p': destroyed; slot 0 went with it"):
        pool.free(slot)
    assert pool.stats()["frees"] == 0          # not counted as a free
    # the same after the context went (its pools with it)
    pool2 = ctx.payload_pool(slots=2, slot_size=64, name="q")
    slot2 = pool2.put(b"abc")
    slot2.fence.wait()
    ctx.destroy()
    with pytest.raises(GpuDriverError, match="destroyed; slot 0 went with it"):
        pool2.free(slot2)
    assert drv.stats()["bytes_in_use"] == 0


def test_put_racing_context_destroy_raises_the_put_error(drv):
    # put() on real threads while the context is destroyed: each put either lands or fails
    # with the reason (destroyed / exhausted), never with a free() error of its own cleanup
    for _ in range(20):
        ctx = drv.create_context()
        pool = ctx.payload_pool(slots=4, slot_size=64)
        errors, go = [], threading.Barrier(3)

        def putter():
            go.wait()
            for _ in range(200):
                try:
                    s = pool.put(b"x" * 8)
                except (ContextDestroyed, PoolExhausted):
                    continue
                except GpuDriverError as e:
                    if "payload pool 'payload': destroyed" not in str(e):
                        errors.append(e)
                    continue
                try:
                    pool.free(s)
                except GpuDriverError as e:
                    if "went with it" not in str(e):
                        errors.append(e)
        ts = [threading.Thread(target=putter) for _ in range(2)]
        for t in ts:
            t.start()
        go.wait()
        ctx.destroy()
        for t in ts:
            t.join(30)
        assert not errors, errors
    assert drv.stats()["bytes_in_use"] == 0


# ------------------------------------------------------------------ displays after close

def test_displays_after_close_say_the_driver_is_closed():
    d = GpuDriver(backend="cpu", display=None)
    assert d.displays() == []
    d.close()
    with pytest.raises(GpuDriverError, match="displays: the driver is closed"):
        d.displays()
    with pytest.raises(GpuDriverError, match="set_mode: the driver is closed"):
        d.set_mode(0, "640x480")
