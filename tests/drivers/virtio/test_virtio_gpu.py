"""virtio-gpu against QEMU's real vhost-user-gpu back end: pixels, errors, cursor, failures."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import needs_backend
from ggmk.drivers.virtio import errors as E
from ggmk.drivers.virtio.display_socket import GpuRequest, Monitor
from ggmk.drivers.virtio.gpu import Format, Rect
from ggmk.drivers.virtio.vhost_user import PROTOCOL_F_REPLY_ACK, VIRTIO_F_VERSION_1

pytestmark = [pytest.mark.qemu, needs_backend]


def noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def scanout_resource(gpu, w, h, scanout=0):
    res = gpu.create_resource(w, h)
    gpu.set_scanout(scanout, res.id, Rect(0, 0, w, h))
    return res


def test_negotiation_is_minimal_and_display_socket_is_served(launch_gpu):
    gpu = launch_gpu([Monitor(320, 200)])
    assert gpu.features & VIRTIO_F_VERSION_1
    assert gpu.features == VIRTIO_F_VERSION_1 | (1 << 30)      # + PROTOCOL_FEATURES only
    assert gpu.protocol_features & ~PROTOCOL_F_REPLY_ACK == 0
    gpu.get_display_info()
    # the back end asked for protocol features (we said none) before any display command
    assert gpu.display.protocol_features == 0
    assert gpu.display.display_info_requests == 1


def test_display_info_is_what_our_monitors_report(launch_gpu):
    gpu = launch_gpu([Monitor(320, 200), Monitor(640, 480, x=320)])
    info = gpu.get_display_info()
    assert len(info) == 16
    assert [(m.x, m.width, m.height, m.enabled) for m in info[:2]] == [
        (0, 320, 200, True), (320, 640, 480, True)]
    assert not any(m.enabled for m in info[2:])


def test_full_frame_pixels_arrive_byte_for_byte(launch_gpu):
    gpu = launch_gpu([Monitor(320, 200)])
    res = scanout_resource(gpu, 320, 200)
    assert gpu.display.scanouts[0].width == 320       # SCANOUT message came through
    frame = noise((200, 320, 4), 1)
    res.pixels[:] = frame
    gpu.transfer_and_flush(res, Rect(0, 0, 320, 200))
    s = gpu.display.scanouts[0]
    assert s.fb.tobytes() == frame.tobytes()
    assert s.last_rect == (0, 0, 320, 200) and s.bytes == 320 * 200 * 4


def test_partial_damage_sends_only_the_rectangle(launch_gpu):
    gpu = launch_gpu([Monitor(320, 200)])
    res = scanout_resource(gpu, 320, 200)
    first = noise((200, 320, 4), 2)
    res.pixels[:] = first
    gpu.transfer_and_flush(res, Rect(0, 0, 320, 200))
    s = gpu.display.scanouts[0]
    before = s.bytes
    second = noise((200, 320, 4), 3)
    res.pixels[:] = second                      # backing changes everywhere ...
    gpu.transfer_and_flush(res, Rect(17, 33, 50, 21))   # ... but only this rect is pushed
    expect = first.copy()
    expect[33:54, 17:67] = second[33:54, 17:67]
    assert s.fb.tobytes() == expect.tobytes()
    assert s.last_rect == (17, 33, 50, 21)
    assert s.bytes - before == 50 * 21 * 4
    # a full-width band goes straight into the framebuffer rows
    gpu.transfer_and_flush(res, Rect(0, 100, 320, 7))
    expect[100:107] = second[100:107]
    assert s.fb.tobytes() == expect.tobytes()


def test_error_responses_are_typed(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    res = scanout_resource(gpu, 64, 64)
    with pytest.raises(E.ErrInvalidResourceId, match="RESOURCE_FLUSH resource 999") as ei:
        gpu.resource_flush(999, Rect(0, 0, 1, 1))
    assert ei.value.code == 0x1203 and ei.value.command == 0x0104
    with pytest.raises(E.ErrInvalidScanoutId):
        gpu.set_scanout(16, res.id, Rect(0, 0, 64, 64))
    with pytest.raises(E.ErrInvalidResourceId):
        gpu.set_scanout(0, 777, Rect(0, 0, 64, 64))
    with pytest.raises(E.ErrInvalidResourceId):            # id already in use
        gpu.resource_create_2d(res.id, 8, 8)
    with pytest.raises(E.ErrInvalidResourceId):            # id 0 is reserved
        gpu.resource_create_2d(0, 8, 8)
    with pytest.raises(E.ErrInvalidParameter):             # unknown pixel format
        gpu.resource_create_2d(50, 8, 8, fmt=999)
    with pytest.raises(E.ErrInvalidParameter):             # outside the resource
        gpu.transfer_to_host_2d(res.id, Rect(60, 0, 10, 10), 60 * 4)
    with pytest.raises(E.ErrInvalidParameter):
        gpu.resource_flush(res.id, Rect(0, 0, 65, 64))
    with pytest.raises(E.ErrUnspec):                       # backing attached twice
        gpu.resource_attach_backing(res.id, [(gpu.mem.gpa(res.offset), res.nbytes)])
    with pytest.raises(E.ErrUnspec):                       # backing outside guest memory
        gpu.resource_create_2d(51, 8, 8)
        gpu.resource_attach_backing(51, [(0x10, 256)])
    assert gpu.errors == 10
    # the device is still fine after error responses
    res.pixels[:] = 9
    gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))
    assert (gpu.display.scanouts[0].fb == 9).all()


def test_detach_and_unref(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    res = scanout_resource(gpu, 64, 64)
    gpu.resource_detach_backing(res.id)
    with pytest.raises(E.ErrInvalidResourceId):            # no backing: nothing to transfer
        gpu.transfer_to_host_2d(res.id, Rect(0, 0, 64, 64))
    with pytest.raises(E.ErrInvalidResourceId):
        gpu.resource_detach_backing(res.id)
    gpu.resource_unref(res.id)
    assert gpu.display.scanouts[0].fb is None               # scanout disabled with the resource
    with pytest.raises(E.ErrInvalidResourceId):
        gpu.resource_unref(res.id)


def test_resource_lifecycle_reuses_guest_memory(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)], mem_size=4 << 20)
    free0 = gpu.mem.available()
    for _ in range(5):
        r = gpu.create_resource(512, 512)                   # 1 MiB each
        gpu.destroy_resource(r)
    assert gpu.mem.available() == free0
    with pytest.raises(E.VirtioError, match="exhausted"):
        gpu.create_resource(2048, 2048)


def test_cursor_queue_update_and_move(launch_gpu):
    gpu = launch_gpu([Monitor(320, 200)])
    scanout_resource(gpu, 320, 200)
    cur = gpu.create_resource(64, 64, Format.B8G8R8A8)
    bgra = noise((64, 64, 4), 4)
    cur.pixels[:] = bgra
    gpu.transfer_to_host_2d(cur.id, Rect(0, 0, 64, 64))
    gpu.update_cursor(0, 10, 20, cur.id, hot_x=3, hot_y=4)
    c = gpu.display.cursor
    assert (c.x, c.y, c.hot_x, c.hot_y, c.visible, c.updates) == (10, 20, 3, 4, True, 1)
    assert c.image.tobytes() == bgra[..., [2, 1, 0, 3]].tobytes()       # shown as RGBA
    gpu.move_cursor(0, 100, 50, cur.id)
    assert (c.x, c.y, c.visible, c.moves) == (100, 50, True, 1)
    gpu.move_cursor(0, 100, 50, 0)                                  # resource 0 hides it
    assert not c.visible


def test_backend_dying_mid_command_is_a_clear_error(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    gpu.get_display_info()
    # the back end is now inside GET_DISPLAY_INFO, waiting for us: kill it there
    gpu.display.hooks[GpuRequest.GET_DISPLAY_INFO] = lambda payload: gpu.backend.kill() or True
    t0 = time.monotonic()
    with pytest.raises(E.BackendDied, match="closed the connection.*exited with status -9"):
        gpu.get_display_info()
    assert time.monotonic() - t0 < 3
    with pytest.raises(E.BackendError, match="unusable after an earlier failure"):
        gpu.get_display_info()


def test_backend_killed_between_commands(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])
    res = scanout_resource(gpu, 64, 64)
    gpu.backend.kill()
    gpu.backend.proc.wait(5)
    with pytest.raises(E.BackendDied):
        gpu.transfer_and_flush(res, Rect(0, 0, 64, 64))


def test_unanswered_command_times_out(launch_gpu):
    gpu = launch_gpu([Monitor(64, 64)])      # (start and connect with the default timeout)
    gpu.get_display_info()
    gpu.timeout = 0.5                         # what each command waits for its completion
    gpu.display.hooks[GpuRequest.GET_DISPLAY_INFO] = lambda payload: True   # never answer
    t0 = time.monotonic()
    with pytest.raises(E.BackendTimeout, match="GET_DISPLAY_INFO: no completion.*0.5s"):
        gpu.get_display_info()
    assert 0.4 < time.monotonic() - t0 < 5.0        # bounded: the point, not how tightly


def test_pipelined_frames_keep_up(launch_gpu):
    # many presents in a row: descriptors and slots are recycled, nothing leaks
    gpu = launch_gpu([Monitor(128, 64)], queue_size=8)
    res = scanout_resource(gpu, 128, 64)
    for i in range(300):
        res.pixels[:] = i % 256
        gpu.transfer_and_flush(res, Rect(0, 0, 128, 64))
    assert (gpu.display.scanouts[0].fb == 299 % 256).all()
    assert gpu.queues[0].free_descriptors == 8
    assert gpu.display.scanouts[0].updates == 300
