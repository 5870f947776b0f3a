"""The display side of vhost-user-gpu: what QEMU's UI normally is (docs/interop/vhost-user-gpu.rst).

The back end sends requests on this socket (scanout changes, frame updates with pixels, cursor
shape and position) and asks two questions that must be answered before it processes any display
command: GET_PROTOCOL_FEATURES (we answer 0: no EDID, no DMABUF2) and GET_DISPLAY_INFO (we answer
with our virtual monitors, :class:`Monitor`). Received pixels land in one NumPy framebuffer per
scanout, so ``DisplaySocket.scanouts[i].fb`` is what a monitor plugged into scanout ``i`` shows.

Wire format: header ``request: u32, flags: u32, size: u32`` then payload; bit 2 of flags marks a
reply. UPDATE messages may carry uninitialised flags (the back end builds them in malloc'd memory),
so flags are checked only on replies we expect, never on requests we receive.

When the host has /dev/udmabuf or a DRM render node the back end switches to the dmabuf path:
DMABUF_SCANOUT passes a buffer fd and DMABUF_UPDATE waits for an empty reply. We handle it by
mapping the fd read-only and copying the damaged rectangle, then replying.
"""
from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

import numpy as np

from .errors import ProtocolError
from .vhost_user import HEADER, U64, close_fds, recv_exact, send_all

REPLY = 0x4
MAX_SCANOUTS = 16
CURSOR_SIZE = 64
CURSOR_BYTES = CURSOR_SIZE * CURSOR_SIZE * 4


class GpuRequest(IntEnum):
    GET_PROTOCOL_FEATURES = 1
    SET_PROTOCOL_FEATURES = 2
    GET_DISPLAY_INFO = 3
    CURSOR_POS = 4
    CURSOR_POS_HIDE = 5
    CURSOR_UPDATE = 6
    SCANOUT = 7
    UPDATE = 8
    DMABUF_SCANOUT = 9
    DMABUF_UPDATE = 10
    GET_EDID = 11
    DMABUF_SCANOUT2 = 12


RESP_OK_DISPLAY_INFO = 0x1101
CTRL_HDR = struct.Struct("<IIQIB3x")
PMODE = struct.Struct("<IIIIII")          # rect x, y, w, h, enabled, flags
DISPLAY_INFO_SIZE = CTRL_HDR.size + MAX_SCANOUTS * PMODE.size      # 408
U32x3 = struct.Struct("<III")
U32x5 = struct.Struct("<IIIII")
DMABUF_SCANOUT = struct.Struct("<IIIIIIIIIi")
MAX_UPDATE = 16384 * 16384 * 4


@dataclass
class Monitor:
    """A virtual monitor on one scanout: its current (preferred) mode as reported to the device."""

    width: int
    height: int
    enabled: bool = True
    x: int = 0
    y: int = 0


@dataclass
class Scanout:
    """Host-side state of one scanout: its size and the pixels received so far."""

    width: int = 0
    height: int = 0
    fb: np.ndarray | None = None              # (height, width, 4) uint8, resource byte order
    updates: int = 0                           # UPDATE messages received
    bytes: int = 0                             # pixel bytes received
    last_rect: tuple[int, int, int, int] = (0, 0, 0, 0)      # in scanout coordinates
    # where the scanout's rectangle starts in its resource (SET_SCANOUT's rect.x, rect.y): the
    # back end sends UPDATE rectangles in resource coordinates, already clipped to the scanout
    origin: tuple[int, int] = (0, 0)
    dmabuf: tuple | None = None                # (mmap, stride, fd_width, fd_height) on the dmabuf path


@dataclass
class Cursor:
    scanout: int = 0
    x: int = 0
    y: int = 0
    hot_x: int = 0
    hot_y: int = 0
    visible: bool = False
    image: np.ndarray = field(default_factory=lambda: np.zeros((64, 64, 4), np.uint8))  # RGBA
    updates: int = 0
    moves: int = 0


class DisplaySocket:
    """Serves the back end's display socket. Call :meth:`service` when the socket is readable."""

    def __init__(self, sock: socket.socket, monitors: list[Monitor], timeout: float = 5.0):
        self.sock = sock
        self.monitors = monitors
        self.timeout = timeout
        self.scanouts = [Scanout() for _ in range(MAX_SCANOUTS)]
        self.cursor = Cursor()
        self.protocol_features: int | None = None
        self.messages = 0
        self.display_info_requests = 0
        # test/extension hook: request -> callable(payload); returning True means "handled"
        self.hooks: dict[int, Callable[[bytes], bool]] = {}
        self._scratch = bytearray(0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        for s in self.scanouts:
            if s.dmabuf is not None:
                s.dmabuf[0].close()
                s.dmabuf = None
        try:
            self.sock.close()
        except OSError:
            pass

    def display_info(self) -> bytes:
        """The 408-byte virtio_gpu_resp_display_info describing our monitors."""
        out = bytearray(DISPLAY_INFO_SIZE)
        CTRL_HDR.pack_into(out, 0, RESP_OK_DISPLAY_INFO, 0, 0, 0, 0)
        for i, m in enumerate(self.monitors[:MAX_SCANOUTS]):
            PMODE.pack_into(out, CTRL_HDR.size + i * PMODE.size,
                            m.x, m.y, m.width, m.height, int(m.enabled), 0)
        return bytes(out)

    def _reply(self, req: GpuRequest, payload: bytes, deadline: float) -> None:
        send_all(self.sock, HEADER.pack(int(req), REPLY, len(payload)) + payload, (), deadline,
                 f"display socket {req.name} reply")

    def service(self, deadline: float | None = None) -> int:
        """Handle every message already waiting on the socket; return how many."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        n = 0
        while True:
            self.sock.setblocking(False)
            try:
                self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return n
            except (ConnectionResetError, BrokenPipeError):
                pass
            self.handle_one(deadline)          # on EOF this raises BackendDied
            n += 1

    def handle_one(self, deadline: float) -> int:
        """Read and handle one message (blocking until ``deadline``). Returns its request."""
        fds: list[int] = []
        hdr = recv_exact(self.sock, HEADER.size, deadline, "display socket header", fds=fds)
        req, _flags, size = HEADER.unpack(hdr)
        self.messages += 1
        try:
            if req == GpuRequest.UPDATE:
                self._on_update(size, deadline)
                return req
            if size > 1 << 20:
                raise ProtocolError(f"display socket: request {req} claims {size} payload bytes")
            payload = recv_exact(self.sock, size, deadline, f"display socket request {req}",
                                 fds=fds) if size else b""
            hook = self.hooks.get(req)
            if hook is not None and hook(payload):
                return req
            self._dispatch(req, payload, fds, deadline)
            return req
        finally:
            close_fds(fds)

    def _need(self, req: int, payload: bytes, size: int) -> None:
        if len(payload) < size:
            raise ProtocolError(f"display socket: request {GpuRequest(req).name} has "
                                f"{len(payload)} payload bytes, needs {size}")

    def _dispatch(self, req: int, payload: bytes, fds: list[int], deadline: float) -> None:
        if req == GpuRequest.GET_PROTOCOL_FEATURES:
            self._reply(GpuRequest.GET_PROTOCOL_FEATURES, U64.pack(0), deadline)
        elif req == GpuRequest.SET_PROTOCOL_FEATURES:
            self._need(req, payload, 8)
            self.protocol_features = U64.unpack_from(payload)[0]
        elif req == GpuRequest.GET_DISPLAY_INFO:
            self.display_info_requests += 1
            self._reply(GpuRequest.GET_DISPLAY_INFO, self.display_info(), deadline)
        elif req == GpuRequest.SCANOUT:
            self._need(req, payload, U32x3.size)
            sid, w, h = U32x3.unpack_from(payload)
            self._set_scanout(sid, w, h)
        elif req in (GpuRequest.CURSOR_POS, GpuRequest.CURSOR_POS_HIDE):
            self._need(req, payload, U32x3.size)
            c = self.cursor
            c.scanout, c.x, c.y = U32x3.unpack_from(payload)
            c.visible = req == GpuRequest.CURSOR_POS
            c.moves += 1
        elif req == GpuRequest.CURSOR_UPDATE:
            self._need(req, payload, 20 + CURSOR_BYTES)
            c = self.cursor
            c.scanout, c.x, c.y, c.hot_x, c.hot_y = U32x5.unpack_from(payload)
            # wire format is PIXMAN_a8r8g8b8 (bytes B, G, R, A); keep RGBA here
            bgra = np.frombuffer(payload, np.uint8, CURSOR_BYTES, 20).reshape(64, 64, 4)
            c.image = bgra[..., [2, 1, 0, 3]].copy()
            c.visible = True
            c.updates += 1
        elif req == GpuRequest.DMABUF_SCANOUT:
            self._need(req, payload, DMABUF_SCANOUT.size)
            self._on_dmabuf_scanout(payload, fds)
        elif req == GpuRequest.DMABUF_UPDATE:
            self._need(req, payload, U32x5.size)
            self._on_dmabuf_update(payload, deadline)
        elif req == GpuRequest.GET_EDID:
            raise ProtocolError("display socket: backend asked for EDID, which we never negotiate")
        else:
            raise ProtocolError(f"display socket: unknown request {req} ({len(payload)} bytes); "
                                "is the backend newer than this driver?")

    def _set_scanout(self, sid: int, w: int, h: int) -> Scanout:
        if sid >= MAX_SCANOUTS:
            raise ProtocolError(f"display socket: scanout id {sid} out of range")
        s = self.scanouts[sid]
        if w == 0 or h == 0:
            s.width = s.height = 0
            s.fb = None
            return s
        if (w, h) != (s.width, s.height) or s.fb is None:
            s.width, s.height = w, h
            s.fb = np.zeros((h, w, 4), np.uint8)
        return s

    def _check_rect(self, sid: int, x: int, y: int, w: int, h: int) -> Scanout:
        if sid >= MAX_SCANOUTS:
            raise ProtocolError(f"display socket: update for scanout {sid} (max {MAX_SCANOUTS - 1})")
        s = self.scanouts[sid]
        if s.fb is None or x + w > s.width or y + h > s.height:
            raise ProtocolError(
                f"display socket: update rect ({x},{y})+{w}x{h} outside scanout {sid} "
                f"({s.width}x{s.height})")
        return s

    def _on_update(self, size: int, deadline: float) -> None:
        if size < U32x5.size or size > MAX_UPDATE:
            raise ProtocolError(f"display socket: UPDATE with {size} payload bytes")
        sid, x, y, w, h = U32x5.unpack(
            recv_exact(self.sock, U32x5.size, deadline, "display socket UPDATE header"))
        nbytes = size - U32x5.size
        if nbytes != w * h * 4:
            raise ProtocolError(f"display socket: UPDATE {w}x{h} carries {nbytes} pixel bytes, "
                                f"expected {w * h * 4}")
        if sid < MAX_SCANOUTS and nbytes:
            ox, oy = self.scanouts[sid].origin
            x, y = x - ox, y - oy               # resource -> scanout coordinates
            if x < 0 or y < 0:
                raise ProtocolError(
                    f"display socket: update rect ({x + ox},{y + oy})+{w}x{h} starts before the "
                    f"origin ({ox},{oy}) of scanout {sid}")
            s = self._check_rect(sid, x, y, w, h)
        elif sid >= MAX_SCANOUTS:
            s = self._check_rect(sid, x, y, w, h)
        else:
            s = self.scanouts[sid]              # empty update (flush outside the scanout)
            x = y = w = h = 0
        if nbytes:
            if x == 0 and w == s.width:
                # full-width damage: rows are contiguous in our framebuffer, receive in place
                target = memoryview(s.fb[y:y + h].reshape(-1))
                recv_exact(self.sock, nbytes, deadline, "display socket UPDATE pixels", into=target)
            else:
                if len(self._scratch) < nbytes:
                    self._scratch = bytearray(nbytes)
                mv = memoryview(self._scratch)[:nbytes]
                recv_exact(self.sock, nbytes, deadline, "display socket UPDATE pixels", into=mv)
                s.fb[y:y + h, x:x + w] = np.frombuffer(mv, np.uint8).reshape(h, w, 4)
        s.updates += 1
        s.bytes += nbytes
        s.last_rect = (x, y, w, h)

    def _on_dmabuf_scanout(self, payload: bytes, fds: list[int]) -> None:
        sid, x, y, w, h, fd_w, fd_h, stride, _flags, _fourcc = DMABUF_SCANOUT.unpack_from(payload)
        s = self._set_scanout(sid, w, h)
        if s.dmabuf is not None:
            s.dmabuf[0].close()
            s.dmabuf = None
        if w == 0 or not fds:
            return
        try:
            mm = mmap.mmap(fds[0], stride * fd_h, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as e:
            raise ProtocolError(
                f"display socket: cannot map the dmabuf of scanout {sid} ({e}); run the backend "
                "where it sees no /dev/udmabuf or DRM render node to keep it on the shared-"
                "memory path") from None
        s.dmabuf = (mm, stride, fd_w, fd_h, x, y)

    def _on_dmabuf_update(self, payload: bytes, deadline: float) -> None:
        sid, x, y, w, h = U32x5.unpack_from(payload)
        s = self._check_rect(sid, x, y, w, h)
        if s.dmabuf is not None and w and h:
            mm, stride, fd_w, fd_h, ox, oy = s.dmabuf
            src = np.frombuffer(mm, np.uint8, stride * fd_h).reshape(fd_h, stride)
            rows = src[oy + y:oy + y + h, (ox + x) * 4:(ox + x + w) * 4]
            s.fb[y:y + h, x:x + w] = rows.reshape(h, w, 4)
            del src, rows
        s.updates += 1
        s.bytes += w * h * 4
        s.last_rect = (x, y, w, h)
        self._reply(GpuRequest.DMABUF_UPDATE, b"", deadline)


def socketpair(buffer_bytes: int = 8 << 20) -> tuple[socket.socket, socket.socket]:
    """A (ours, theirs) stream pair with large buffers so big UPDATEs need few wakeups."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (ours, theirs):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
            except OSError:
                pass
    os.set_inheritable(theirs.fileno(), False)
    return ours, theirs
