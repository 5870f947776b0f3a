"""The display module (GhostNV display API, ``ggmk.modules.display``) over the real virtio-gpu
back end (QEMU's vhost-user-gpu; the ``open_display`` fixture skips when it is not installed)."""
from __future__ import annotations

import numpy as np
import pytest

from ggmk.drivers.virtio.errors import FrameError, VirtioError
from ggmk.modules.display import (DisplayError, DisplayModule, Mode, decode_png, encode_png)


def noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_png_round_trip_and_format():
    img = noise((7, 5, 3), 1)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    assert decode_png(data).tobytes() == img.tobytes()
    rgba = noise((3, 4, 4), 2)
    assert decode_png(encode_png(rgba)).tobytes() == rgba.tobytes()
    with pytest.raises(FrameError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), np.float32))


def test_mode_parsing():
    assert Mode.parse("1024x768") == Mode(1024, 768) == Mode.parse((1024, 768))
    assert str(Mode(800, 600)) == "800x600"
    with pytest.raises(DisplayError, match="WIDTHxHEIGHT"):
        Mode.parse("big")




@pytest.mark.qemu
def test_displays_modes_and_set_mode(open_display):
    disp = open_display([(1024, 768), (320, 200)])
    events = []
    disp.subscribe(events.append)
    ds = disp.displays()
    assert [(d.id, d.preferred, d.mode) for d in ds] == [
        (0, Mode(1024, 768), Mode(1024, 768)), (1, Mode(320, 200), Mode(320, 200))]
    assert Mode(640, 480) in ds[0].modes and Mode(1280, 800) not in ds[0].modes
    assert ds[1].modes == (Mode(320, 200),)
    disp.set_mode(0, "800x600")
    assert disp.mode(0) == Mode(800, 600)
    assert disp.gpu.display.scanouts[0].width == 800         # the monitor switched
    assert events == [{"type": "mode_set", "display": 0, "width": 800, "height": 600}]
    assert len(disp.gpu.resources) == 2                       # the old scanout resource is gone
    with pytest.raises(DisplayError, match="does not support mode 1280x800; supported: 640x480"):
        disp.set_mode(0, (1280, 800))
    with pytest.raises(DisplayError, match=r"display 5 does not exist \(displays: \[0, 1\]\)"):
        disp.set_mode(5, "640x480")


@pytest.mark.qemu
def test_present_full_and_damaged_frames_and_snapshot(open_display, tmp_path):
    disp = open_display([(320, 200)])
    frame = noise((200, 320, 4), 5)
    assert disp.present(frame) == 1
    assert disp.snapshot().tobytes() == frame.tobytes()
    new = noise((200, 320, 4), 6)
    disp.present(new, damage=(40, 50, 100, 30))
    expect = frame.copy()
    expect[50:80, 40:140] = new[50:80, 40:140]
    assert disp.snapshot().tobytes() == expect.tobytes()
    rgb = noise((200, 320, 3), 7)
    disp.present(rgb)
    shown = disp.snapshot()
    assert shown[..., :3].tobytes() == rgb.tobytes() and (shown[..., 3] == 255).all()
    png = disp.snapshot_png(tmp_path / "s.png")
    assert decode_png(png.read_bytes()).tobytes() == rgb.tobytes()
    c = disp.counters()
    assert c["frames_presented"] == 3 and c["frames_received"] == {0: 3}
    assert c["bytes_received"] == {0: 2 * 320 * 200 * 4 + 100 * 30 * 4}
    assert c["bytes_presented"] == c["bytes_received"][0]
    assert disp.handle_frame({"frame": frame, "damage": None}) == 4
    assert disp.snapshot().tobytes() == frame.tobytes()


@pytest.mark.qemu
def test_bad_frames_say_what_is_expected(open_display):
    disp = open_display([(320, 200)])
    with pytest.raises(FrameError, match=r"needs a uint8 array of shape \(200, 320, 4\).*got array "
                                         r"of shape \(100, 320, 4\)"):
        disp.present(np.zeros((100, 320, 4), np.uint8))
    with pytest.raises(FrameError, match="dtype float64"):
        disp.present(np.zeros((200, 320, 4)))
    with pytest.raises(FrameError, match="got list"):
        disp.present([[0]])
    with pytest.raises(FrameError, match=r"damage \(300, 0, 30, 10\) is outside the 320x200"):
        disp.present(np.zeros((200, 320, 4), np.uint8), damage=(300, 0, 30, 10))
    with pytest.raises(DisplayError, match="display 3 does not exist"):
        disp.present(np.zeros((200, 320, 4), np.uint8), display=3)
    with pytest.raises(FrameError, match="'frame' array"):
        disp.handle_frame(np.zeros(3))
    with pytest.raises(FrameError, match="cursor image"):
        disp.set_cursor(np.zeros((65, 65, 4), np.uint8))
    with pytest.raises(DisplayError, match="set_cursor\\(\\) first"):
        disp.move_cursor(1, 1)
    # nothing bad reached the device
    assert disp.gpu.errors == 0 and disp.counters()["frames_presented"] == 0


@pytest.mark.qemu
def test_cursor_through_the_module(open_display):
    disp = open_display([(320, 200)])
    img = noise((16, 24, 4), 8)
    disp.set_cursor(img, hot=(2, 3))
    disp.move_cursor(150, 90)
    c = disp.cursor_state()
    assert (c.x, c.y, c.hot_x, c.hot_y, c.visible) == (150, 90, 2, 3, True)
    assert c.image[:16, :24].tobytes() == img.tobytes()
    assert not c.image[16:].any() and not c.image[:, 24:].any()
    disp.hide_cursor()
    assert not disp.cursor_state().visible
    assert disp.counters()["cursor_updates"] == 1


@pytest.mark.qemu
def test_every_mode_switch_fits_default_guest_memory(open_display):
    disp = open_display([(1280, 800)])
    for i, m in enumerate(reversed(disp.modes(0))):     # largest first: old + new held at once
        disp.set_mode(0, m)
        frame = np.full((m.height, m.width, 4), i + 1, np.uint8)
        disp.present(frame)
        assert disp.snapshot().tobytes() == frame.tobytes()
    assert len(disp.gpu.resources) == 1


@pytest.mark.parametrize("kw, match", [
    ({"displays": "320x200"}, r"open\(\): displays='320x200': expected a list of modes"),
    ({"displays": [(64, 48)] * 17}, r"open\(\): 17 displays; virtio-gpu has at most 16"),
    ({"mem_size": 0}, r"open\(\): mem_size=0: allowed an int > 0, a multiple of the page size"),
    ({"mem_size": 12345}, r"open\(\): mem_size=12345: allowed an int > 0"),
    ({"mem_size": "x"}, r"open\(\): mem_size='x': allowed an int > 0"),
    ({"mem_size": True}, r"open\(\): mem_size=True: allowed an int > 0"),
    ({"timeout": "x"}, r"open\(\): timeout='x': allowed a finite number of seconds > 0"),
    ({"timeout": -1}, r"open\(\): timeout=-1: allowed a finite number of seconds > 0"),
    ({"timeout": float("inf")}, r"open\(\): timeout=inf: allowed a finite number"),
])
def test_open_refuses_bad_arguments_before_starting_the_back_end(tmp_path, kw, match):
    # a back end that does not exist: reached only if the arguments were not checked first
    kw = {"displays": [(320, 200)], "binary": tmp_path / "no-backend", **kw}
    with pytest.raises(VirtioError, match=match):
        DisplayModule.open(workdir=tmp_path, **kw)


@pytest.mark.qemu
def test_damage_hot_spot_and_display_id_are_checked_not_cast(open_display):
    disp = open_display([(320, 200), (640, 480)])
    frame = np.zeros((200, 320, 4), np.uint8)
    cursor = np.full((16, 16, 4), 255, np.uint8)
    for damage, match in [((0.9, 0, 10.7, 10), "damage x 0.9: expected an integer"),
                          ((True,) * 4, "damage x True: expected an integer .*not a bool"),
                          ("1234", "damage x '1': expected an integer .*got str"),
                          ((1, 2, 3), r"damage \(1, 2, 3\): expected \(x, y, width, height\)")]:
        with pytest.raises(FrameError, match=match):
            disp.present(frame, damage=damage)
    for hot, match in [((1, 2, 3), r"cursor hot spot \(1, 2, 3\): expected \(x, y\)"),
                       (None, r"cursor hot spot None: expected \(x, y\)"),
                       ((1.9, 2.9), "cursor hot spot x 1.9: expected an integer"),
                       ("12", "cursor hot spot x '1': expected an integer")]:
        with pytest.raises(FrameError, match=match):
            disp.set_cursor(cursor, hot=hot)
    # True was taken for display 1 (whose frames are 640x480)
    big = np.zeros((480, 640, 4), np.uint8)
    for call in (lambda: disp.modes(True), lambda: disp.mode(True),
                 lambda: disp.present(big, display=True), lambda: disp.snapshot(True)):
        with pytest.raises(FrameError, match="display True: expected an integer .*not a bool"):
            call()
    with pytest.raises(FrameError, match="display 1.0: expected an integer .*got float"):
        disp.present(big, display=1.0)
    assert disp.counters()["frames_presented"] == 0 and disp.cursor_state().updates == 0
    assert disp.present(frame, damage=(1, 2, 3, 4)) == 1
    disp.set_cursor(cursor, hot=(np.int64(3), 4))
    c = disp.cursor_state()
    assert (c.hot_x, c.hot_y) == (3, 4) and disp.present(big, display=1) == 2
