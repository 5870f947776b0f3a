"""Regressions from the virtio-gpu audit: double destroy, scanout sub-rectangles, tiny queues,
close during / after use, concurrent callers, out-of-range values. Real vhost-user-gpu back end."""
from __future__ import annotations

import gc
import os
import threading
import warnings

import numpy as np
import pytest

from ggmk.drivers.virtio import errors as E
from ggmk.drivers.virtio.display_socket import Monitor
from ggmk.drivers.virtio.gpu import Rect, VirtioGpu

from conftest import needs_backend

pytestmark = needs_backend


# ---- 1. destroy_resource twice / after a manual detach -------------------------------------------
def test_double_destroy_does_not_free_memory_of_another_resource(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    r1 = gpu.create_resource(64, 64)
    gpu.destroy_resource(r1)
    r2 = gpu.create_resource(64, 64)
    assert r2.offset == r1.offset                      # first fit reuses r1's memory
    with pytest.raises(E.VirtioError):
        gpu.destroy_resource(r1)
    assert r2.offset in gpu.mem._used                  # still r2's
    r3 = gpu.create_resource(64, 64)
    assert r3.offset != r2.offset
    r2.pixels[:] = 1
    r3.pixels[:] = 9
    assert (r2.pixels == 1).all()
    assert gpu.broken is None


def test_destroy_after_manual_detach_still_unrefs(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    free0 = gpu.mem.available()
    r = gpu.create_resource(32, 32)
    gpu.resource_detach_backing(r.id)
    with pytest.raises(E.ErrInvalidResourceId):
        gpu.destroy_resource(r)                        # DETACH fails, UNREF must still go out
    with pytest.raises(E.ErrInvalidResourceId):
        gpu.resource_unref(r.id)                       # so the device no longer knows it
    assert gpu.mem.available() == free0


# ---- 2. SET_SCANOUT of a sub-rectangle with a non-zero origin ------------------------------------
def test_scanout_subrect_with_origin(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    res = gpu.create_resource(64, 64)
    gpu.set_scanout(0, res.id, Rect(16, 16, 32, 32))
    img = np.random.default_rng(3).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    res.pixels[:] = img
    gpu.transfer_and_flush(res, Rect(16, 16, 32, 32))
    s = gpu.display.scanouts[0]
    assert (s.width, s.height) == (32, 32)
    assert np.array_equal(s.fb, img[16:48, 16:48])
    res.pixels[:] = 255 - img
    gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))   # partly outside the scanout: clipped
    assert np.array_equal(gpu.display.scanouts[0].fb, (255 - img)[16:48, 16:48])
    res.pixels[:] = 7
    gpu.transfer_and_flush(res, Rect(0, 0, 8, 8))     # wholly outside: nothing to show
    assert np.array_equal(gpu.display.scanouts[0].fb, (255 - img)[16:48, 16:48])
    assert gpu.broken is None


# ---- 3. queue sizes too small for the two-command flush ------------------------------------------
@pytest.mark.parametrize("qs", [1, 2])
def test_small_queue_size_refused_clearly(tmp_path, qs):
    with pytest.raises(E.VirtioError, match=r"queue_size.*4"):
        VirtioGpu.launch([Monitor(64, 64)], workdir=tmp_path, queue_size=qs)


def test_queue_size_4_runs_transfer_and_flush(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)], queue_size=4)
    res = gpu.create_resource(64, 64)
    gpu.set_scanout(0, res.id, Rect(0, 0, 64, 64))
    for _ in range(5):
        gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))
    assert len(gpu._ctrl_slots) == 2 and gpu.queues[0].free_descriptors == 4


def test_submit_without_enough_slots_publishes_nothing(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)], queue_size=4)
    res = gpu.create_resource(64, 64)
    taken = gpu._ctrl_slots.pop()                      # simulate one slot in use
    with pytest.raises(E.VirtioError, match="in flight"):
        gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))
    gpu._ctrl_slots.append(taken)
    assert gpu.queues[0].free_descriptors == 4 and gpu.queues[0].in_flight == 0
    gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))


# ---- 4. close during / after use -----------------------------------------------------------------
def test_use_after_close_raises_typed_error(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    res = gpu.create_resource(64, 64)
    gpu.close()
    for f in (gpu.get_display_info, gpu.poll_events, lambda: gpu.create_resource(8, 8),
              lambda: gpu.transfer_and_flush(res, Rect(0, 0, 8, 8)),
              lambda: gpu.move_cursor(0, 0, 0, 0)):
        with pytest.raises(E.BackendError, match="closed"):
            f()
    gpu.close()                                        # idempotent


def test_display_close_while_present_runs(open_display):
    disp = open_display([(640, 480)])
    frame = np.zeros((480, 640, 4), np.uint8)
    started = threading.Event()
    out = []

    def loop():
        try:
            while True:
                disp.present(frame)
                started.set()
        except BaseException as e:              # noqa: BLE001
            out.append(e)
            started.set()

    th = threading.Thread(target=loop)
    th.start()
    assert started.wait(10)
    disp.close()
    th.join(10)
    assert not th.is_alive()
    assert len(out) == 1 and isinstance(out[0], E.BackendError) and "closed" in str(out[0]), out
    for f in (disp.snapshot, disp.counters, disp.displays, lambda: disp.present(frame)):
        with pytest.raises(E.VirtioError, match="closed"):
            f()


# ---- 5. concurrent callers ------------------------------------------------------------------------
def test_concurrent_present_is_serialised(open_display):
    disp = open_display([(160, 100)])
    gpu = disp.gpu
    slots0, descs0 = len(gpu._ctrl_slots), gpu.queues[0].free_descriptors
    barrier = threading.Barrier(3)
    out = []

    def loop(k):
        f = np.full((100, 160, 4), k, np.uint8)
        barrier.wait()
        try:
            for _ in range(150):
                disp.present(f)
                disp.move_cursor(k, k) if disp._cursor_res is not None else None
            out.append("ok")
        except BaseException as e:              # noqa: BLE001
            out.append(e)

    ths = [threading.Thread(target=loop, args=(k,)) for k in (1, 2, 3)]
    [t.start() for t in ths]
    [t.join(60) for t in ths]
    assert out == ["ok"] * 3
    assert gpu.broken is None
    assert (len(gpu._ctrl_slots), gpu.queues[0].free_descriptors) == (slots0, descs0)


def test_ctrl_slots_return_on_unexpected_error(launch_gpu, monkeypatch):
    gpu = launch_gpu([Monitor(64, 64)])
    slots0 = len(gpu._ctrl_slots)

    def boom(*a, **k):
        raise RuntimeError("concurrent poll() invocation")
    monkeypatch.setattr(gpu, "_wait", boom)
    with pytest.raises(RuntimeError):
        gpu.get_display_info()
    monkeypatch.undo()
    assert len(gpu._ctrl_slots) == slots0 or gpu.broken is not None


# ---- 6. out-of-range and non-integer values -------------------------------------------------------
def test_bad_values_give_typed_errors(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)], mem_size=4 << 20)
    free0 = gpu.mem.available()
    for args in ((64.5, 64), (True, 64), ("64", 64), (64, -1), (0, 64), (64, 64, "RGBA")):
        with pytest.raises(E.FrameError) as ei:
            gpu.create_resource(*args)
        assert "width" in str(ei.value) or "height" in str(ei.value) or "format" in str(ei.value)
        assert gpu.mem.available() == free0 and isinstance(free0, int)
    res = gpu.create_resource(64, 64)
    with pytest.raises(E.FrameError, match="scanout_id -1"):
        gpu.set_scanout(-1, res.id, Rect(0, 0, 64, 64))
    with pytest.raises(E.FrameError, match="x 4294967296"):
        gpu.move_cursor(0, 2**32, 0, res.id)
    with pytest.raises(E.FrameError, match="rect"):
        gpu.set_scanout(0, res.id, Rect(0, -1, 64, 64))
    with pytest.raises(E.FrameError, match="resource_id"):
        gpu.resource_unref(1.5)
    assert gpu.broken is None
    gpu.set_scanout(0, res.id, Rect(0, 0, 64, 64))


def test_display_bad_values(open_display, tmp_path):
    from ggmk.modules.display import DisplayError, DisplayModule, Mode
    for bad in ([(-1, 480)], ["640x-480"], [(0, 480)], [(640.5, 480)], [(2**32, 480)]):
        with pytest.raises(DisplayError, match="mode"):
            DisplayModule.open(bad, workdir=tmp_path)
    with pytest.raises(DisplayError):
        Mode.parse("0x0")
    disp = open_display([(640, 480)])
    disp.set_cursor(np.full((8, 8, 4), 255, np.uint8))
    with pytest.raises(E.FrameError, match="4294967296"):
        disp.move_cursor(2**32, 0)
    with pytest.raises(E.FrameError):
        disp.move_cursor(1.5, 0)
    disp.present(np.zeros((480, 640, 4), np.uint8))


# ---- a failed init closes the vhost-user socket (it was left to the GC) --------------------------
def _socket_fds() -> set:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.add(fd)
        except OSError:
            pass
    return out


@pytest.mark.parametrize("kw, match", [
    ({"monitors": [Monitor(64, 48)] * 17}, "17 monitors; virtio-gpu has 16 scanouts"),
    ({"mem_size": 12345}, "size=12345: allowed an int > 0, a multiple of the page size"),
    ({"mem_size": "x"}, "size='x': allowed an int > 0"),
    ({"mem_size": True}, "size=True: allowed an int > 0"),
])
def test_failed_init_closes_the_vhost_user_socket(tmp_path, kw, match):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        before = _socket_fds()
        with pytest.raises(E.VirtioError, match=match):
            VirtioGpu.launch(workdir=tmp_path, **kw)
        left = _socket_fds() - before
        gc.collect()                    # a socket left open warns when it is collected
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert left == set() and leaked == []
