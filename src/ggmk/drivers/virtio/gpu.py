"""virtio-gpu over vhost-user: the 2D command set on the control queue, the cursor queue.

:class:`VirtioGpu` is the driver. It negotiates features with the back end (VIRTIO_F_VERSION_1,
which this back end requires, plus VHOST_USER_F_PROTOCOL_FEATURES for GET_PROTOCOL_FEATURES and
queue enable; of the protocol features only REPLY_ACK, so setup errors surface), shares one memfd
of guest memory, sets up two split virtqueues (0 = control, 1 = cursor), hands the back end the
display socket, and then runs commands: each command is a descriptor chain (request readable,
response writable), completion is seen by polling the used index. While it waits it serves the
display socket in the same loop, because the back end blocks on it (display info, big UPDATEs).

Every error response raises a typed :class:`~ggmk.drivers.virtio.errors.GpuResponseError`
subclass; a dead back end raises :class:`BackendDied`; nothing waits without a deadline.

Example::

    with VirtioGpu.launch([Monitor(640, 480)]) as gpu:
        info = gpu.get_display_info()                  # [(x, y, w, h, enabled, flags)] * 16
        res = gpu.create_resource(640, 480)            # RESOURCE_CREATE_2D + ATTACH_BACKING
        gpu.set_scanout(0, res.id, Rect(0, 0, 640, 480))
        res.pixels[:] = 255                            # the backing store, (h, w, 4) uint8
        gpu.transfer_and_flush(res, Rect(0, 0, 640, 480))
        gpu.display.scanouts[0].fb                     # pixels the display received
"""
from __future__ import annotations

import select
import socket
import operator
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Sequence

import numpy as np

from .backend import BackendProcess
from .display_socket import (CURSOR_SIZE, DISPLAY_INFO_SIZE, MAX_SCANOUTS, PMODE, DisplaySocket,
                             Monitor, socketpair)
from .errors import (RESPONSE_ERRORS, BackendDied, BackendError, BackendTimeout,
                     ErrInvalidResourceId, FeatureError, FrameError, GpuResponseError,
                     ProtocolError, VirtioError)
from .memory import GuestMemory
from .vhost_user import (PROTOCOL_F_REPLY_ACK, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1,
                         VhostUserFrontend)
from .virtqueue import SplitQueue

CONTROLQ = 0
CURSORQ = 1


class Cmd(IntEnum):
    GET_DISPLAY_INFO = 0x0100
    RESOURCE_CREATE_2D = 0x0101
    RESOURCE_UNREF = 0x0102
    SET_SCANOUT = 0x0103
    RESOURCE_FLUSH = 0x0104
    TRANSFER_TO_HOST_2D = 0x0105
    RESOURCE_ATTACH_BACKING = 0x0106
    RESOURCE_DETACH_BACKING = 0x0107
    UPDATE_CURSOR = 0x0300
    MOVE_CURSOR = 0x0301


class Resp(IntEnum):
    OK_NODATA = 0x1100
    OK_DISPLAY_INFO = 0x1101
    ERR_UNSPEC = 0x1200
    ERR_OUT_OF_MEMORY = 0x1201
    ERR_INVALID_SCANOUT_ID = 0x1202
    ERR_INVALID_RESOURCE_ID = 0x1203
    ERR_INVALID_CONTEXT_ID = 0x1204
    ERR_INVALID_PARAMETER = 0x1205


class Format(IntEnum):
    """virtio_gpu_formats; names give the byte order in memory (little endian)."""

    B8G8R8A8 = 1
    B8G8R8X8 = 2
    A8R8G8B8 = 3
    X8R8G8B8 = 4
    R8G8B8A8 = 67
    X8B8G8R8 = 68
    A8B8G8R8 = 121
    R8G8B8X8 = 134


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int


class DisplayMode(NamedTuple):
    """One scanout's entry of GET_DISPLAY_INFO."""

    scanout: int
    x: int
    y: int
    width: int
    height: int
    enabled: bool
    flags: int


# little-endian wire structs (virtio spec 5.7.6)
HDR = struct.Struct("<IIQIB3x")                      # 24: type, flags, fence_id, ctx_id, ring_idx
CREATE_2D = struct.Struct("<IIQIB3xIIII")            # 40: + resource_id, format, width, height
RES_ID = struct.Struct("<IIQIB3xII")                 # 32: + resource_id, padding (unref, detach)
ATTACH = struct.Struct("<IIQIB3xII")                 # 32: + resource_id, nr_entries
MEM_ENTRY = struct.Struct("<QII")                    # 16: addr, length, padding
SET_SCANOUT = struct.Struct("<IIQIB3xIIIIII")        # 48: + rect, scanout_id, resource_id
FLUSH = struct.Struct("<IIQIB3xIIIIII")              # 48: + rect, resource_id, padding
TRANSFER = struct.Struct("<IIQIB3xIIIIQII")          # 56: + rect, offset, resource_id, padding
CURSOR = struct.Struct("<IIQIB3xIIIIIIII")           # 56: + pos(scanout, x, y, pad), id, hot_x, hot_y, pad
U32 = struct.Struct("<I")

SLOT = 4096            # one in-flight control command: request then response
RESP_AT = 3584         # response offset within a slot (display info is 408 bytes)
MAX_ENTRIES = (RESP_AT - ATTACH.size) // MEM_ENTRY.size
MIN_QUEUE_SIZE = 4     # two control slots: transfer_and_flush keeps two commands in flight
U32_MAX = 0xFFFFFFFF


def check_u32(value, what: str, lo: int = 0, hi: int = U32_MAX) -> int:
    """``value`` as an int in ``lo..hi`` (bools and floats refused), or a FrameError naming it."""
    if isinstance(value, bool):
        raise FrameError(f"{what} {value!r}: expected an integer {lo}..{hi}, not a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise FrameError(f"{what} {value!r}: expected an integer {lo}..{hi}, got "
                         f"{type(value).__name__}") from None
    if not lo <= v <= hi:
        raise FrameError(f"{what} {v} out of range (allowed {lo}..{hi})")
    return v


def _rect(rect, what: str = "rect") -> tuple[int, int, int, int]:
    try:
        x, y, w, h = rect
    except (TypeError, ValueError):
        raise FrameError(f"{what} {rect!r}: expected (x, y, width, height)") from None
    return (check_u32(x, f"{what} x"), check_u32(y, f"{what} y"), check_u32(w, f"{what} width"),
            check_u32(h, f"{what} height"))


@dataclass
class Resource2D:
    """A 2D resource with its backing store in guest memory; ``pixels`` is (height, width, 4)."""

    id: int
    width: int
    height: int
    format: int
    offset: int            # backing store offset in guest memory
    pixels: np.ndarray

    @property
    def stride(self) -> int:
        return self.width * 4

    @property
    def nbytes(self) -> int:
        return self.width * self.height * 4


class VirtioGpu:
    """A virtio-gpu device driven through a vhost-user back end (see module docstring)."""

    def __init__(self, frontend: VhostUserFrontend, monitors: Sequence[Monitor] | None = None, *,
                 mem_size: int = 64 << 20, queue_size: int = 64, timeout: float = 5.0,
                 spin_s: float = 0.0005, backend: BackendProcess | None = None):
        self._closed = False
        self._torn_down = False
        # serialises commands (one thread in the event loop at a time) and close(); reentrant so
        # a caller (the display module) can hold it across several commands
        self.lock = threading.RLock()
        self.fe = frontend
        self.backend = backend
        self.timeout = timeout
        self.spin_s = spin_s
        self.monitors = list(monitors) if monitors else [Monitor(1280, 800)]
        self.features = 0
        self.protocol_features = 0
        self.broken: str | None = None
        self.commands = 0
        self.errors = 0
        self._next_resource_id = 1
        self.resources: dict[int, Resource2D] = {}
        self.mem: GuestMemory | None = None
        self.display: DisplaySocket | None = None
        self.queues: list[SplitQueue] = []
        try:        # whatever fails closes the front end too (its socket would leak)
            if len(self.monitors) > MAX_SCANOUTS:
                raise VirtioError(f"{len(self.monitors)} monitors; virtio-gpu has {MAX_SCANOUTS} "
                                  "scanouts")
            self.mem = GuestMemory(mem_size)
            if isinstance(queue_size, bool) or not isinstance(queue_size, int) \
                    or queue_size < MIN_QUEUE_SIZE:
                raise VirtioError(f"queue_size {queue_size!r}: must be at least {MIN_QUEUE_SIZE} "
                                  "(half of it are control slots and a flush needs two)")
            self.queues = [SplitQueue(self.mem, CONTROLQ, queue_size),
                           SplitQueue(self.mem, CURSORQ, queue_size)]
            nctrl = queue_size // 2
            base = self.mem.alloc(SLOT * nctrl, 4096)
            self._ctrl_slots = [base + i * SLOT for i in range(nctrl)]
            cbase = self.mem.alloc(64 * queue_size, 64)
            self._cursor_slots = [cbase + i * 64 for i in range(queue_size)]
            self._slot_of: list[dict[int, int]] = [{}, {}]      # per queue: head -> slot
            self._setup()
        except BaseException:
            self.close()
            raise

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def launch(cls, monitors: Sequence[Monitor] | None = None, *, workdir=None, binary=None,
               timeout: float = 5.0, **kw) -> "VirtioGpu":
        """Start a vhost-user-gpu process (one per device: it serves a single connection)."""
        proc = BackendProcess.start(workdir, binary)
        try:
            fe = VhostUserFrontend.connect(proc.socket_path, timeout, alive=proc.check_alive)
        except BaseException:
            proc.stop()
            raise
        try:
            return cls(fe, monitors, timeout=timeout, backend=proc, **kw)
        except BackendDied as e:
            proc_err = _exit_detail(proc, 0.5)
            proc.stop()
            raise BackendDied(f"{e}{proc_err}") from None
        except BaseException:
            proc.stop()
            raise

    @classmethod
    def connect(cls, socket_path: str, monitors: Sequence[Monitor] | None = None, *,
                timeout: float = 5.0, **kw) -> "VirtioGpu":
        """Drive a back end that is already listening on ``socket_path``."""
        return cls(VhostUserFrontend.connect(socket_path, timeout), monitors, timeout=timeout, **kw)

    def _setup(self) -> None:
        fe = self.fe
        offered = fe.get_features()
        if not offered & VIRTIO_F_VERSION_1:
            raise FeatureError(f"backend offers features {offered:#x} without VIRTIO_F_VERSION_1 "
                               "(bit 32), which this driver requires; use QEMU's vhost-user-gpu")
        if not offered & VHOST_USER_F_PROTOCOL_FEATURES:
            raise FeatureError(f"backend offers features {offered:#x} without "
                               "VHOST_USER_F_PROTOCOL_FEATURES (bit 30); cannot enable queues")
        # minimal set: nothing device-specific (no VIRGL, no EDID)
        self.features = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
        self.protocol_features = fe.get_protocol_features() & PROTOCOL_F_REPLY_ACK
        fe.set_protocol_features(self.protocol_features)
        fe.set_owner()
        fe.set_features(self.features)
        fe.set_mem_table([(self.mem.gpa_base, self.mem.size, self.mem.uaddr_base, 0)],
                         [self.mem.fd])
        for q in self.queues:
            fe.set_vring_num(q.index, q.size)
            fe.set_vring_base(q.index, 0)
            fe.set_vring_addr(q.index, q.desc_uaddr, q.used_uaddr, q.avail_uaddr)
            fe.set_vring_kick(q.index, q.kick_fd)
            fe.set_vring_call(q.index, q.call_fd)
            fe.set_vring_enable(q.index, True)
        ours, theirs = socketpair()
        self.display = DisplaySocket(ours, self.monitors, self.timeout)
        try:
            fe.gpu_set_socket(theirs.fileno())
        finally:
            theirs.close()            # the back end has its own copy; ours must go so EOF shows
        self._poller = select.poll()
        self._fd_display = self.display.fileno()
        self._fd_main = fe.fileno()
        self._fd_calls = {q.call_fd: q for q in self.queues}
        self._poller.register(self._fd_display, select.POLLIN)
        self._poller.register(self._fd_main, select.POLLIN)
        for fd in self._fd_calls:
            self._poller.register(fd, select.POLLIN)

    # ---- the event loop ------------------------------------------------------------------------
    def _fail(self, exc: VirtioError) -> VirtioError:
        self.broken = str(exc)
        if isinstance(exc, BackendDied) and self.backend is not None:
            return BackendDied(f"{exc}{_exit_detail(self.backend, 0.5)}")
        return exc

    def _check(self) -> None:
        if self._closed:
            raise BackendError("virtio-gpu device is closed; launch a new one")
        if self.broken is not None:
            raise BackendError(f"virtio-gpu device is unusable after an earlier failure "
                               f"({self.broken}); close it and launch a new one")

    def poll_events(self, timeout: float = 0.0) -> None:
        """Serve the display socket and drain call eventfds; ``timeout`` seconds at most."""
        with self.lock:
            self._check()
            try:
                self._poll_once(time.monotonic() + max(timeout, 0) + self.timeout,
                                int(timeout * 1000))
            except VirtioError as e:
                raise self._fail(e) from None

    def _poll_once(self, deadline: float, timeout_ms: int) -> None:
        for fd, _ev in self._poller.poll(timeout_ms):
            if fd == self._fd_display:
                self.display.service(deadline)
            elif fd == self._fd_main:
                try:
                    data = self.fe.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    raise BackendDied("vhost-user socket closed by the backend")
                raise ProtocolError("backend sent an unsolicited message on the vhost-user socket")
            else:
                self._fd_calls[fd].drain_call()

    def _wait(self, q: SplitQueue, heads: set[int], what: str,
              timeout: float | None = None) -> dict[int, int]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        spin_end = time.monotonic() + self.spin_s
        done: dict[int, int] = {}
        try:
            while True:
                if q.pending():
                    for head, written in q.collect():
                        done[head] = written
                    if heads.issubset(done):
                        # the back end writes display messages (UPDATE, SCANOUT, CURSOR_*)
                        # before it pushes the used entry, so they are already queued here
                        self.display.service(deadline)
                        return done
                now = time.monotonic()
                if now >= deadline:
                    if self.backend is not None:
                        self.backend.check_alive()
                    raise BackendTimeout(
                        f"{what}: no completion from the backend within "
                        f"{self.timeout if timeout is None else timeout:.1f}s")
                # spin briefly (the common case completes in tens of microseconds), then block
                # in poll() on the call eventfd / display socket with short slices
                self._poll_once(deadline, 0 if now < spin_end else
                                max(1, min(20, int((deadline - now) * 1000))))
        except VirtioError as e:
            raise self._fail(e) from None

    # ---- control queue -------------------------------------------------------------------------
    def _ctrl_submit(self, fmt: struct.Struct, args: tuple, resp_len: int = HDR.size,
                     extra: bytes = b"") -> int:
        slot = self._ctrl_slots.pop()
        buf = self.mem.buf
        fmt.pack_into(buf, slot, *args)
        n = fmt.size
        if extra:
            buf[slot + n:slot + n + len(extra)] = np.frombuffer(extra, np.uint8)
            n += len(extra)
        U32.pack_into(buf, slot + RESP_AT, 0)
        gpa = self.mem.gpa(slot)
        head = self.queues[CONTROLQ].add([(gpa, n, False), (gpa + RESP_AT, resp_len, True)])
        self._slot_of[CONTROLQ][head] = slot
        return head

    def _ctrl_run(self, cmds: list[tuple[struct.Struct, tuple, int, bytes, str]]) -> list[int]:
        """Submit commands as chains, kick once, wait for all; return response slots' offsets
        (valid until the next command). Raises the first error response, typed."""
        with self.lock:
            self._check()
            return self._ctrl_run_locked(cmds)

    def _ctrl_run_locked(self, cmds) -> list[int]:
        q = self.queues[CONTROLQ]
        if len(cmds) > len(self._ctrl_slots) or 2 * len(cmds) > q.free_descriptors:
            # checked before anything is published, so a refusal leaves the queue as it was
            raise VirtioError(f"control queue: {len(cmds)} commands need {len(cmds)} free slots, "
                              f"{len(self._ctrl_slots)} free (too many commands in flight)")
        heads = [self._ctrl_submit(fmt, args, rl, ex) for fmt, args, rl, ex, _ in cmds]
        q.kick()
        self.commands += len(cmds)
        what = cmds[0][4] if len(cmds) == 1 else " + ".join(c[4].split(" ")[0] for c in cmds)
        try:
            done = self._wait(q, set(heads), what)
        except BaseException as e:
            # the chains may still be in the device's hands: their slots cannot be reused safely
            if self.broken is None:
                self.broken = f"{what}: interrupted by {type(e).__name__}: {e}"
            raise
        slots = []
        first_err = None
        for head, (_, args, rl, _, desc) in zip(heads, cmds):
            slot = self._slot_of[CONTROLQ].pop(head)
            self._ctrl_slots.append(slot)
            slots.append(slot + RESP_AT)
            written = done[head]
            rtype = U32.unpack_from(self.mem.buf, slot + RESP_AT)[0]
            if first_err is None and rtype >= Resp.ERR_UNSPEC:
                self.errors += 1
                cls = RESPONSE_ERRORS.get(rtype, GpuResponseError)
                name = Resp(rtype).name if rtype in Resp._value2member_map_ else hex(rtype)
                first_err = cls(f"{desc}: device answered {name}", code=rtype, command=args[0])
            elif first_err is None and (written < HDR.size or rtype < Resp.OK_NODATA):
                first_err = ProtocolError(f"{desc}: malformed response (type {rtype:#x}, "
                                          f"{written} bytes written)")
        if first_err is not None:
            raise first_err
        return slots

    def _hdr(self, cmd: Cmd) -> tuple:
        return (int(cmd), 0, 0, 0, 0)

    def get_display_info(self) -> list[DisplayMode]:
        """GET_DISPLAY_INFO: the 16 scanouts' modes as the device reports them."""
        with self.lock:           # the response slot is ours until the next command
            return self._get_display_info()

    def _get_display_info(self) -> list[DisplayMode]:
        (resp,) = self._ctrl_run([(HDR, self._hdr(Cmd.GET_DISPLAY_INFO), DISPLAY_INFO_SIZE, b"",
                                   "GET_DISPLAY_INFO")])
        rtype = U32.unpack_from(self.mem.buf, resp)[0]
        if rtype != Resp.OK_DISPLAY_INFO:
            raise ProtocolError(f"GET_DISPLAY_INFO: response type {rtype:#x}, expected "
                                f"OK_DISPLAY_INFO ({Resp.OK_DISPLAY_INFO:#x})")
        out = []
        for i in range(MAX_SCANOUTS):
            x, y, w, h, en, fl = PMODE.unpack_from(self.mem.buf, resp + HDR.size + i * PMODE.size)
            out.append(DisplayMode(i, x, y, w, h, bool(en), fl))
        return out

    def resource_create_2d(self, resource_id: int, width: int, height: int,
                           fmt: int = Format.R8G8B8A8) -> None:
        resource_id, width, height = (check_u32(resource_id, "resource_id"), check_u32(width, "width"),
                                      check_u32(height, "height"))
        fmt = check_u32(fmt, "format")
        self._ctrl_run([(CREATE_2D, self._hdr(Cmd.RESOURCE_CREATE_2D) +
                         (resource_id, int(fmt), width, height), HDR.size, b"",
                         f"RESOURCE_CREATE_2D id {resource_id} {width}x{height} format {int(fmt)}")])

    def resource_unref(self, resource_id: int) -> None:
        resource_id = check_u32(resource_id, "resource_id")
        self._ctrl_run([(RES_ID, self._hdr(Cmd.RESOURCE_UNREF) + (resource_id, 0), HDR.size, b"",
                         f"RESOURCE_UNREF id {resource_id}")])

    def resource_attach_backing(self, resource_id: int, entries: Sequence[tuple[int, int]]) -> None:
        """``entries``: (guest physical address, length) pieces of the backing store."""
        resource_id = check_u32(resource_id, "resource_id")
        if not 1 <= len(entries) <= MAX_ENTRIES:
            raise VirtioError(f"RESOURCE_ATTACH_BACKING: {len(entries)} entries "
                              f"(1..{MAX_ENTRIES} fit one command)")
        extra = b"".join(MEM_ENTRY.pack(a, n, 0) for a, n in entries)
        self._ctrl_run([(ATTACH, self._hdr(Cmd.RESOURCE_ATTACH_BACKING) +
                         (resource_id, len(entries)), HDR.size, extra,
                         f"RESOURCE_ATTACH_BACKING id {resource_id}")])

    def resource_detach_backing(self, resource_id: int) -> None:
        resource_id = check_u32(resource_id, "resource_id")
        self._ctrl_run([(RES_ID, self._hdr(Cmd.RESOURCE_DETACH_BACKING) + (resource_id, 0),
                         HDR.size, b"", f"RESOURCE_DETACH_BACKING id {resource_id}")])

    def set_scanout(self, scanout_id: int, resource_id: int, rect: Rect) -> None:
        """Show ``rect`` of a resource on a scanout (resource 0 disables the scanout)."""
        scanout_id = check_u32(scanout_id, "scanout_id")
        resource_id = check_u32(resource_id, "resource_id")
        rect = _rect(rect)
        with self.lock:
            self._ctrl_run([(SET_SCANOUT, self._hdr(Cmd.SET_SCANOUT) + rect +
                             (scanout_id, resource_id), HDR.size, b"",
                             f"SET_SCANOUT scanout {scanout_id} resource {resource_id} {rect}")])
            if scanout_id < MAX_SCANOUTS and self.display is not None:
                # UPDATEs for this scanout come in resource coordinates, offset by rect's origin
                self.display.scanouts[scanout_id].origin = \
                    (rect[0], rect[1]) if resource_id else (0, 0)

    def _transfer_cmd(self, resource_id: int, rect: Rect, offset: int):
        resource_id, rect = check_u32(resource_id, "resource_id"), _rect(rect)
        offset = check_u32(offset, "offset", 0, 2**64 - 1)
        return (TRANSFER, self._hdr(Cmd.TRANSFER_TO_HOST_2D) + rect + (offset, resource_id, 0),
                HDR.size, b"", f"TRANSFER_TO_HOST_2D resource {resource_id} {tuple(rect)}")

    def _flush_cmd(self, resource_id: int, rect: Rect):
        resource_id, rect = check_u32(resource_id, "resource_id"), _rect(rect)
        return (FLUSH, self._hdr(Cmd.RESOURCE_FLUSH) + rect + (resource_id, 0), HDR.size,
                b"", f"RESOURCE_FLUSH resource {resource_id} {tuple(rect)}")

    def transfer_to_host_2d(self, resource_id: int, rect: Rect, offset: int = 0) -> None:
        """Copy ``rect`` from the backing store (starting at byte ``offset``) into the resource."""
        self._ctrl_run([self._transfer_cmd(resource_id, rect, offset)])

    def resource_flush(self, resource_id: int, rect: Rect) -> None:
        """Push ``rect`` of the resource to every scanout showing it."""
        self._ctrl_run([self._flush_cmd(resource_id, rect)])

    def transfer_and_flush(self, res: Resource2D, rect: Rect) -> None:
        """TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of one rectangle, both in flight at once."""
        x, y, _w, _h = _rect(rect)
        offset = y * res.stride + x * 4
        self._ctrl_run([self._transfer_cmd(res.id, rect, offset), self._flush_cmd(res.id, rect)])

    # ---- resources with backing in guest memory ------------------------------------------------
    def create_resource(self, width: int, height: int, fmt: int = Format.R8G8B8A8) -> Resource2D:
        """Allocate backing memory, RESOURCE_CREATE_2D and RESOURCE_ATTACH_BACKING it."""
        # validated before anything is allocated
        width = check_u32(width, "resource width", 1, 16384)
        height = check_u32(height, "resource height", 1, 16384)
        try:
            fmt = Format(check_u32(fmt, "resource format"))
        except ValueError:
            raise FrameError(f"resource format {fmt}: not one of "
                             + ", ".join(f"{f.name}={f.value}" for f in Format)) from None
        nbytes = width * height * 4
        with self.lock:
            self._check()
            off = self.mem.alloc(nbytes, 4096)
            rid = self._next_resource_id
            self._next_resource_id += 1
            try:
                self.resource_create_2d(rid, width, height, fmt)
            except BaseException:
                self.mem.free(off)
                raise
            try:
                self.resource_attach_backing(rid, [(self.mem.gpa(off), nbytes)])
            except BaseException:
                self.mem.free(off)
                if self.broken is None:
                    self.resource_unref(rid)
                raise
            res = Resource2D(rid, width, height, int(fmt), off,
                             self.mem.view(off, nbytes).reshape(height, width, 4))
            self.resources[rid] = res
            return res

    def destroy_resource(self, res: Resource2D) -> None:
        """RESOURCE_DETACH_BACKING + RESOURCE_UNREF, then free the backing memory.

        UNREF is sent even when DETACH fails (say the backing was detached by hand already), so
        the device never keeps the resource. A resource destroyed before (or not made by this
        device's :meth:`create_resource`) raises ErrInvalidResourceId and touches nothing: its
        guest memory may already belong to another resource."""
        with self.lock:
            self._check()
            if self.resources.get(res.id) is not res or res.pixels is None:
                raise ErrInvalidResourceId(
                    f"destroy_resource: resource {res.id} was already destroyed (or was not "
                    "created by this device's create_resource)", command=int(Cmd.RESOURCE_UNREF))
            del self.resources[res.id]
            try:
                try:
                    self.resource_detach_backing(res.id)
                finally:
                    if self.broken is None:
                        self.resource_unref(res.id)
            finally:
                res.pixels = None
                if self.broken is None:
                    self.mem.free(res.offset)

    # ---- cursor queue --------------------------------------------------------------------------
    def _cursor_run(self, cmd: Cmd, scanout: int, x: int, y: int, resource_id: int,
                    hot_x: int = 0, hot_y: int = 0) -> None:
        scanout, x, y = check_u32(scanout, "cursor scanout"), check_u32(x, "cursor x"), check_u32(y, "cursor y")
        resource_id = check_u32(resource_id, "cursor resource_id")
        hot_x, hot_y = check_u32(hot_x, "cursor hot_x"), check_u32(hot_y, "cursor hot_y")
        with self.lock:
            self._check()
            q = self.queues[CURSORQ]
            slot = self._cursor_slots.pop()
            CURSOR.pack_into(self.mem.buf, slot, int(cmd), 0, 0, 0, 0, scanout, x, y, 0,
                             resource_id, hot_x, hot_y, 0)
            head = q.add([(self.mem.gpa(slot), CURSOR.size, False)])
            q.kick()
            self.commands += 1
            try:
                self._wait(q, {head}, f"{cmd.name} scanout {scanout} ({x},{y})")
            except BaseException as e:
                if self.broken is None:
                    self.broken = f"{cmd.name}: interrupted by {type(e).__name__}: {e}"
                raise
            self._cursor_slots.append(slot)

    def update_cursor(self, scanout: int, x: int, y: int, resource_id: int,
                      hot_x: int = 0, hot_y: int = 0) -> None:
        """UPDATE_CURSOR: shape from a 64x64 resource (already transferred) and position."""
        self._cursor_run(Cmd.UPDATE_CURSOR, scanout, x, y, resource_id, hot_x, hot_y)

    def move_cursor(self, scanout: int, x: int, y: int, resource_id: int) -> None:
        """MOVE_CURSOR: position only (resource 0 hides the cursor)."""
        self._cursor_run(Cmd.MOVE_CURSOR, scanout, x, y, resource_id)

    # ---- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect (the back end exits on disconnect) and release every resource."""
        lock = getattr(self, "lock", None)
        if lock is None or getattr(self, "_torn_down", False):
            return
        self._closed = True           # callers waiting for the lock see "closed" once they get it
        with lock:                    # waits for the command in flight (bounded by its deadline)
            if self._torn_down:
                return
            self._torn_down = True
            self._teardown()

    def _teardown(self) -> None:
        self.fe.close()
        if self.display is not None:
            self.display.close()
        if self.backend is not None:
            self.backend.stop()
        for q in self.queues:
            q.close()
        for r in self.resources.values():
            r.pixels = None
        self.resources.clear()
        if self.mem is not None:
            self.mem.close()

    def __enter__(self) -> "VirtioGpu":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _exit_detail(proc: BackendProcess, wait_s: float) -> str:
    """Give a dying back end ``wait_s`` to exit, then describe its status and log tail."""
    try:
        rc = proc.proc.wait(wait_s)
    except Exception:
        rc = None
    tail = proc.log_tail(600)
    parts = []
    if rc is not None:
        parts.append(f"backend pid {proc.pid} exited with status {rc}")
    if tail:
        parts.append(f"its log says: {tail}")
    return ("; " + "; ".join(parts)) if parts else ""


__all__ = ["VirtioGpu", "Resource2D", "Rect", "DisplayMode", "Format", "Cmd", "Resp", "Monitor",
           "CURSOR_SIZE"]
