"""The display module (GhostNV display API, SPEC §9 and §13) over the virtio-gpu driver.

A CPU-kernel module: once channels exist it consumes ``display.frame`` and produces
``display.event``; until then it is this Python API, with :meth:`DisplayModule.handle_frame` and
:meth:`DisplayModule.subscribe` as the seam those channels will plug into.

Frames are NumPy arrays of shape (height, width, 4) (RGBA, uint8) or (height, width, 3) (RGB,
alpha set to 255) matching the display's current mode. Presenting copies the damaged rectangle
into the resource's backing store, then sends TRANSFER_TO_HOST_2D and RESOURCE_FLUSH for that
rectangle only. The pixels the virtual monitor received are :meth:`snapshot` (and
:meth:`snapshot_png`, written with the standard library's zlib: no Pillow).

Example::

    from ggmk.modules.display import DisplayModule
    with DisplayModule.open(displays=[(1280, 800)]) as disp:
        print(disp.displays())                     # [DisplayInfo(id=0, ..., mode=1280x800)]
        disp.set_mode(0, "1024x768")
        frame = np.zeros((768, 1024, 4), np.uint8); frame[..., 0] = 255
        disp.present(frame)                        # full frame
        frame[10:20, 10:20] = 0
        disp.present(frame, damage=(10, 10, 10, 10))   # only that rectangle travels
        disp.set_cursor(np.full((16, 16, 4), 255, np.uint8), hot=(8, 8))
        disp.move_cursor(100, 100)
        disp.snapshot_png("screen.png")
        disp.counters()
"""
from __future__ import annotations

import functools
import math
import operator
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ggmk.drivers.virtio.display_socket import CURSOR_SIZE, MAX_SCANOUTS, Monitor
from ggmk.drivers.virtio.errors import FrameError, VirtioError
from ggmk.drivers.virtio.gpu import Format, Rect, Resource2D, VirtioGpu, _rect, check_u32
from ggmk.drivers.virtio.memory import check_size

NAME = "display"
CHANNEL_IN = "display.frame"
CHANNEL_OUT = "display.event"

STANDARD_MODES = ((640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 800), (1366, 768),
                  (1440, 900), (1600, 900), (1680, 1050), (1920, 1080), (1920, 1200),
                  (2560, 1440), (3840, 2160))


class DisplayError(VirtioError):
    """A display request names an unknown display or an unsupported mode."""


MAX_MODE = 16384       # largest width / height of a virtio-gpu 2D resource
# 'WIDTHxHEIGHT' in ASCII digits: int() alone would also take '+800', '1_024' and non-ASCII digits
_MODE_RE = re.compile(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*")


def _api(method):
    """Run a public method holding the device lock (one caller at a time, close() waits for it)
    after checking the device is open; events it emits reach subscribers after the lock is
    released."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.gpu.lock:
            self.gpu._check()
            outer = self._depth == 0
            self._depth += 1
            try:
                result = method(self, *args, **kwargs)
            finally:
                self._depth -= 1
                events, self._events = (self._events, []) if outer else ([], self._events)
        for event in events:
            for cb in list(self._subscribers):
                cb(event)
        return result
    return wrapper


@dataclass(frozen=True, order=True)
class Mode:
    """A display mode (RGBA 32 bits per pixel)."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, value: "Mode | str | Sequence[int]") -> "Mode":
        if isinstance(value, Mode):
            return value
        try:
            if isinstance(value, str):
                m = _MODE_RE.fullmatch(value)
                if m is None:
                    raise ValueError(value)
                w, h = int(m.group(1)), int(m.group(2))
            else:
                w, h = value
                if isinstance(w, bool) or isinstance(h, bool):
                    raise TypeError
                w, h = operator.index(w), operator.index(h)
        except (ValueError, TypeError):
            raise DisplayError(f"mode {value!r}: expected Mode, 'WIDTHxHEIGHT' or (width, height) "
                               "with integer width and height") from None
        if not (1 <= w <= MAX_MODE and 1 <= h <= MAX_MODE):
            raise DisplayError(f"mode {value!r}: width and height must be 1..{MAX_MODE}")
        return cls(w, h)


@dataclass(frozen=True)
class DisplayInfo:
    """One output: ``preferred`` is what the device reports (GET_DISPLAY_INFO), ``mode`` the
    mode currently set (None before :meth:`DisplayModule.set_mode`)."""

    id: int
    enabled: bool
    preferred: Mode
    mode: Mode | None
    modes: tuple[Mode, ...]


class DisplayModule:
    """List displays and modes, set a mode, present frames, drive the cursor, snapshot."""

    def __init__(self, gpu: VirtioGpu, *, auto_mode: bool = True):
        self.gpu = gpu
        self._res: dict[int, Resource2D] = {}            # display id -> scanout resource
        self._cursor_res: Resource2D | None = None
        self._cursor_display = 0
        self._cursor_pos = (0, 0)
        self._subscribers: list[Callable[[dict], None]] = []
        self._presented = 0
        self._presented_bytes = 0
        self._present_ns = 0
        self._depth = 0
        self._events: list[dict] = []
        info = gpu.get_display_info()
        self._preferred = {m.scanout: Mode(m.width, m.height) for m in info if m.enabled}
        if auto_mode:
            for did, mode in self._preferred.items():
                self.set_mode(did, mode)

    @classmethod
    def open(cls, displays: Iterable[Sequence[int] | str] = ((1280, 800),), *,
             auto_mode: bool = True, workdir: str | os.PathLike | None = None,
             binary: str | os.PathLike | None = None, timeout: float = 5.0,
             mem_size: int | None = None) -> "DisplayModule":
        """Start a virtio-gpu back end with one virtual monitor per entry of ``displays`` (its
        native mode) and return the module; guest memory is sized from the modes if not given.
        Bad arguments are refused before the back end starts."""
        if isinstance(displays, (str, bytes)):
            raise DisplayError(f"open(): displays={displays!r}: expected a list of modes, e.g. "
                               f"[{displays!r}], not one string")
        monitors = [Monitor(m.width, m.height) for m in map(Mode.parse, displays)]
        if not monitors:
            raise DisplayError("open(): at least one display is needed")
        if len(monitors) > MAX_SCANOUTS:
            raise DisplayError(f"open(): {len(monitors)} displays; virtio-gpu has at most "
                               f"{MAX_SCANOUTS}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout < math.inf:
            raise DisplayError(f"open(): timeout={timeout!r}: allowed a finite number of "
                               "seconds > 0")
        if mem_size is not None:
            check_size(mem_size, "open(): mem_size")
        else:
            # a mode switch holds the old and the new scanout resource at once; the memfd is
            # sparse, so untouched room costs nothing
            fb = sum(m.width * m.height * 4 for m in monitors)
            mem_size = -(-(2 * fb + (8 << 20)) // (1 << 20)) << 20
        gpu = VirtioGpu.launch(monitors, workdir=workdir, binary=binary, timeout=timeout,
                               mem_size=mem_size)
        try:
            return cls(gpu, auto_mode=auto_mode)
        except BaseException:
            gpu.close()
            raise

    # ---- events (the display.event channel, for now callbacks) ---------------------------------
    def subscribe(self, callback: Callable[[dict], None]) -> None:
        """Call ``callback(event)`` for each display.event (mode_set, frame, cursor)."""
        self._subscribers.append(callback)

    def _emit(self, **event: Any) -> None:
        if self._depth:
            self._events.append(event)          # delivered once the device lock is released
            return
        for cb in list(self._subscribers):
            cb(event)

    def handle_frame(self, msg: dict) -> int:
        """The display.frame entry point: ``{"frame": ndarray, "display": 0, "damage": None}``."""
        if not isinstance(msg, dict) or "frame" not in msg:
            raise FrameError(f"{CHANNEL_IN}: message must be a dict with a 'frame' array, got "
                             f"{type(msg).__name__}")
        return self.present(msg["frame"], msg.get("display", 0), msg.get("damage"))

    # ---- displays and modes --------------------------------------------------------------------
    def _display(self, display: int) -> Mode:
        check_u32(display, "display")           # True would pass for display 1, 0.0 for 0
        if display not in self._preferred:
            raise DisplayError(f"display {display} does not exist (displays: "
                               f"{sorted(self._preferred)})")
        return self._preferred[display]

    def modes(self, display: int = 0) -> list[Mode]:
        """Modes the display accepts: standard modes up to its native one, plus the native one."""
        native = self._display(display)
        out = {Mode(w, h) for w, h in STANDARD_MODES if w <= native.width and h <= native.height}
        out.add(native)
        return sorted(out)

    @_api
    def displays(self) -> list[DisplayInfo]:
        """Enabled displays as the device reports them now (a GET_DISPLAY_INFO round trip)."""
        out = []
        for m in self.gpu.get_display_info():
            if not m.enabled:
                continue
            self._preferred[m.scanout] = Mode(m.width, m.height)
            res = self._res.get(m.scanout)
            out.append(DisplayInfo(m.scanout, True, Mode(m.width, m.height),
                                   Mode(res.width, res.height) if res else None,
                                   tuple(self.modes(m.scanout))))
        return out

    def mode(self, display: int = 0) -> Mode | None:
        check_u32(display, "display")
        res = self._res.get(display)
        return Mode(res.width, res.height) if res else None

    @_api
    def set_mode(self, display: int, mode: "Mode | str | Sequence[int]") -> None:
        """Switch ``display`` to ``mode``: a new scanout resource, SET_SCANOUT, old one freed."""
        mode = Mode.parse(mode)
        if mode not in self.modes(display):
            raise DisplayError(f"display {display} does not support mode {mode}; supported: "
                               + ", ".join(map(str, self.modes(display))))
        old = self._res.get(display)
        if old is not None and (old.width, old.height) == (mode.width, mode.height):
            return
        res = self.gpu.create_resource(mode.width, mode.height, Format.R8G8B8A8)
        try:
            self.gpu.set_scanout(display, res.id, Rect(0, 0, mode.width, mode.height))
        except BaseException:
            if self.gpu.broken is None:
                self.gpu.destroy_resource(res)
            raise
        self._res[display] = res
        if old is not None:
            self.gpu.destroy_resource(old)
        self._emit(type="mode_set", display=display, width=mode.width, height=mode.height)

    # ---- frames --------------------------------------------------------------------------------
    @_api
    def present(self, frame: np.ndarray, display: int = 0,
                damage: Sequence[int] | None = None) -> int:
        """Show ``frame`` on ``display``; with ``damage=(x, y, w, h)`` only that rectangle is
        copied, transferred and flushed. Returns the frame number (1, 2, ...)."""
        t0 = time.perf_counter_ns()
        self._display(display)
        res = self._res.get(display)
        if res is None:
            raise DisplayError(f"display {display} has no mode set; call set_mode() first")
        _check_frame(frame, res.height, res.width, display)
        if damage is None:
            x = y = 0
            w, h = res.width, res.height
            if frame.shape[2] == 4:
                np.copyto(res.pixels, frame)
            else:
                res.pixels[..., :3] = frame
                res.pixels[..., 3] = 255
        else:
            x, y, w, h = _check_rect(damage, res.width, res.height, "damage")
            if w == 0 or h == 0:
                return self._presented
            if frame.shape[2] == 4:
                res.pixels[y:y + h, x:x + w] = frame[y:y + h, x:x + w]
            else:
                res.pixels[y:y + h, x:x + w, :3] = frame[y:y + h, x:x + w]
                res.pixels[y:y + h, x:x + w, 3] = 255
        self.gpu.transfer_and_flush(res, Rect(x, y, w, h))
        self._presented += 1
        self._presented_bytes += w * h * 4
        self._present_ns += time.perf_counter_ns() - t0
        if self._subscribers:
            self._emit(type="frame", display=display, seq=self._presented, rect=(x, y, w, h))
        return self._presented

    # ---- cursor --------------------------------------------------------------------------------
    @_api
    def set_cursor(self, image: np.ndarray, hot: Sequence[int] = (0, 0),
                   display: int | None = None) -> None:
        """Set the cursor shape from an RGBA uint8 image up to 64x64 (padded with transparency)."""
        if display is not None:
            self._display(display)
            self._cursor_display = display
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 4 or not (0 < image.shape[0] <= CURSOR_SIZE) \
                or not (0 < image.shape[1] <= CURSOR_SIZE):
            raise FrameError(f"cursor image must be a uint8 array of shape (h, w, 4) with h, w <= "
                             f"{CURSOR_SIZE}; got {_describe(image)}")
        try:
            hx, hy = hot
        except (TypeError, ValueError):
            raise FrameError(f"cursor hot spot {hot!r}: expected (x, y)") from None
        hx, hy = check_u32(hx, "cursor hot spot x"), check_u32(hy, "cursor hot spot y")
        if not (0 <= hx < CURSOR_SIZE and 0 <= hy < CURSOR_SIZE):
            raise FrameError(f"cursor hot spot {tuple(hot)} outside the 64x64 cursor")
        if self._cursor_res is None:
            # the device takes cursor shapes from 64x64 resources in PIXMAN_a8r8g8b8 (B8G8R8A8)
            self._cursor_res = self.gpu.create_resource(CURSOR_SIZE, CURSOR_SIZE, Format.B8G8R8A8)
        px = self._cursor_res.pixels
        px[:] = 0
        h, w = image.shape[:2]
        px[:h, :w] = image[..., [2, 1, 0, 3]]
        rid = self._cursor_res.id
        self.gpu.transfer_to_host_2d(rid, Rect(0, 0, CURSOR_SIZE, CURSOR_SIZE), 0)
        x, y = self._cursor_pos
        self.gpu.update_cursor(self._cursor_display, x, y, rid, hx, hy)
        self._emit(type="cursor", display=self._cursor_display, x=x, y=y, shape=True)

    @_api
    def move_cursor(self, x: int, y: int, display: int | None = None) -> None:
        """Move the cursor (set a shape first with :meth:`set_cursor`)."""
        if display is not None:
            self._display(display)
            self._cursor_display = display
        if self._cursor_res is None:
            raise DisplayError("move_cursor(): no cursor shape yet; call set_cursor() first")
        x, y = check_u32(x, "cursor x"), check_u32(y, "cursor y")
        self.gpu.move_cursor(self._cursor_display, x, y, self._cursor_res.id)
        self._cursor_pos = (x, y)
        self._emit(type="cursor", display=self._cursor_display, x=x, y=y, shape=False)

    @_api
    def hide_cursor(self) -> None:
        """Hide the cursor (MOVE_CURSOR with resource 0)."""
        x, y = self._cursor_pos
        self.gpu.move_cursor(self._cursor_display, x, y, 0)

    # ---- what the monitor shows ----------------------------------------------------------------
    @_api
    def snapshot(self, display: int = 0) -> np.ndarray:
        """A copy of the pixels the display received, (height, width, 4) RGBA uint8."""
        self._display(display)
        self.gpu.poll_events()
        fb = self.gpu.display.scanouts[display].fb
        if fb is None:
            raise DisplayError(f"display {display} shows nothing (no scanout set)")
        return fb.copy()

    def snapshot_png(self, path: str | os.PathLike, display: int = 0, alpha: bool = False) -> Path:
        """Write the current scanout as a PNG (RGB, or RGBA with ``alpha``); returns the path."""
        img = self.snapshot(display)
        path = Path(path)
        path.write_bytes(encode_png(img if alpha else img[..., :3]))
        return path

    @_api
    def cursor_state(self):
        """The cursor as the display last saw it (position, hot spot, RGBA image, visible)."""
        self.gpu.poll_events()
        return self.gpu.display.cursor

    @_api
    def counters(self) -> dict:
        """Frame counters: presented (front end) and received (display side), bytes, commands."""
        self.gpu.poll_events()
        sc = self.gpu.display.scanouts
        return {
            "frames_presented": self._presented,
            "bytes_presented": self._presented_bytes,
            "present_avg_us": (self._present_ns / self._presented / 1e3) if self._presented else 0.0,
            "frames_received": {d: sc[d].updates for d in self._preferred},
            "bytes_received": {d: sc[d].bytes for d in self._preferred},
            "commands": self.gpu.commands,
            "error_responses": self.gpu.errors,
            "cursor_updates": self.gpu.display.cursor.updates,
            "cursor_moves": self.gpu.display.cursor.moves,
        }

    def close(self) -> None:
        """Stop the back end and free everything (resources go with the process). Waits for a
        command in flight in another thread; later calls raise BackendError "closed"."""
        self.gpu._closed = True             # other threads stop at their next call
        with self.gpu.lock:
            self._res.clear()
            self._cursor_res = None
            self.gpu.close()

    def __enter__(self) -> "DisplayModule":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"array of shape {a.shape} dtype {a.dtype}"
    return type(a).__name__


def _check_frame(frame: Any, h: int, w: int, display: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[:2] != (h, w) or frame.shape[2] not in (3, 4):
        raise FrameError(
            f"display {display} is in mode {w}x{h}: present() needs a uint8 array of shape "
            f"({h}, {w}, 4) (RGBA) or ({h}, {w}, 3) (RGB); got {_describe(frame)}. "
            "Convert with np.asarray(frame, np.uint8) or call set_mode() for another size")


def _check_rect(rect: Any, w: int, h: int, what: str) -> tuple[int, int, int, int]:
    x, y, rw, rh = _rect(rect, what)
    if x + rw > w or y + rh > h:
        raise FrameError(f"{what} ({x}, {y}, {rw}, {rh}) is outside the {w}x{h} frame")
    return x, y, rw, rh


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img: np.ndarray, level: int = 6) -> bytes:
    """Encode a (h, w, 3) RGB or (h, w, 4) RGBA uint8 array as PNG bytes (filter 0 per row)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
            or img.shape[2] not in (3, 4):
        raise FrameError(f"PNG needs a uint8 (h, w, 3|4) array; got {_describe(img)}")
    h, w, c = img.shape
    raw = np.empty((h, 1 + w * c), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = img.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _png_chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNGs written by :func:`encode_png` (8-bit RGB/RGBA, filter 0); for tests and tools."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise FrameError("not a PNG file (bad signature)")
    pos, idat, w = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, pos + 8 + n)[0]:
            raise FrameError(f"PNG chunk {kind!r}: CRC mismatch")
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack_from(">IIBB", body)
            if depth != 8 or ctype not in (2, 6):
                raise FrameError(f"PNG depth {depth} colour type {ctype} not supported")
            c = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if w is None:
        raise FrameError("PNG without IHDR")
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    if raw[:, 0].any():
        raise FrameError("PNG rows use filters other than 0 (not written by encode_png)")
    return raw[:, 1:].reshape(h, w, c).copy()
