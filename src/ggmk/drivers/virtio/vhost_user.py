"""The vhost-user front end: the control protocol spoken to a back-end process over a UNIX socket.

Wire format (QEMU docs/interop/vhost-user.rst): a 12-byte header ``request: u32, flags: u32,
size: u32`` then ``size`` payload bytes; file descriptors travel as SCM_RIGHTS ancillary data.
Flags: bits 0-1 the version (1), bit 2 REPLY, bit 3 NEED_REPLY (with REPLY_ACK negotiated, the
back end answers every request carrying it with a u64: 0 = success).

Every receive has a deadline; EOF is :class:`BackendDied`, a malformed reply :class:`ProtocolError`.

Example::

    fe = VhostUserFrontend.connect("/tmp/gpu.sock", timeout=5.0)
    features = fe.get_features()
    fe.set_features(features & (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES))
"""
from __future__ import annotations

import array
import os
import socket
import struct
import time
from enum import IntEnum
from typing import Callable, Sequence

from .errors import BackendDied, BackendError, BackendTimeout, ProtocolError, VirtioError

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_REGION = struct.Struct("<QQQQ")

FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_NOFD_MASK = 0x100
MAX_FDS = 8

# virtio / vhost feature bits we may negotiate
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
VIRTIO_F_VERSION_1 = 1 << 32

# protocol feature bits
PROTOCOL_F_MQ = 1 << 0
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9


class Request(IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25
    GPU_SET_SOCKET = 33


def recv_exact(sock: socket.socket, n: int, deadline: float, what: str,
               into: memoryview | None = None, fds: list[int] | None = None) -> bytes | None:
    """Read exactly ``n`` bytes before ``deadline`` (monotonic). Collects SCM_RIGHTS fds into ``fds``.

    With ``into``, the bytes land there (no copy) and None is returned.
    """
    out = into if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendTimeout(f"{what}: backend sent {got} of {n} bytes before the deadline")
        sock.settimeout(remaining)
        try:
            if fds is not None:
                nbytes, anc, _, _ = sock.recvmsg_into(
                    [out[got:n]], socket.CMSG_SPACE(MAX_FDS * 4))
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fa = array.array("i")
                        fa.frombytes(data[:len(data) - len(data) % fa.itemsize])
                        fds.extend(fa)
            else:
                nbytes = sock.recv_into(out[got:n])
        except socket.timeout:
            raise BackendTimeout(f"{what}: no answer from the backend in time "
                                 f"({got} of {n} bytes)") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise BackendDied(f"{what}: backend closed the connection ({e})") from None
        if nbytes == 0:
            raise BackendDied(f"{what}: backend closed the connection "
                              f"({got} of {n} bytes received); see its log for why")
        got += nbytes
    return None if into is not None else bytes(out)


def send_all(sock: socket.socket, data: bytes, fds: Sequence[int], deadline: float,
             what: str) -> None:
    """Send ``data`` (fds attached to the first byte) before ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BackendTimeout(f"{what}: deadline passed before sending")
    sock.settimeout(remaining)
    try:
        if fds:
            sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", fds).tobytes())])
            if sent < len(data):
                sock.sendall(data[sent:])
        else:
            sock.sendall(data)
    except socket.timeout:
        raise BackendTimeout(f"{what}: the backend is not reading its socket") from None
    except (BrokenPipeError, ConnectionResetError) as e:
        raise BackendDied(f"{what}: backend closed the connection ({e})") from None


class VhostUserFrontend:
    """The front end's half of the vhost-user control socket (requests out, replies in)."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.timeout = timeout
        self.reply_ack = False          # set once PROTOCOL_F_REPLY_ACK is negotiated

    @classmethod
    def connect(cls, path: str, timeout: float = 5.0,
                alive: Callable[[], None] | None = None) -> "VhostUserFrontend":
        """Connect to ``path``, retrying until ``timeout``: the back end may create its socket
        file before it listens. ``alive()`` is called between attempts and should raise if the
        back-end process has exited."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        pause = 0.001
        while True:
            if alive is not None:
                alive()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                return cls(sock, timeout)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                last = e
            except OSError:
                sock.close()
                raise
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"could not connect to the vhost-user socket {path} within {timeout:.1f}s "
                    f"({last}); is the backend running and listening there?")
            # polling for the listener with a deadline (no event tells us it is listening)
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- message primitives ------------------------------------------------------------------
    def send(self, req: Request, payload: bytes = b"", fds: Sequence[int] = (),
             need_reply: bool = False) -> None:
        if len(fds) > MAX_FDS:
            raise VirtioError(f"{req.name}: {len(fds)} fds, at most {MAX_FDS} per message")
        flags = FLAG_VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        msg = HEADER.pack(int(req), flags, len(payload)) + payload
        send_all(self.sock, msg, fds, time.monotonic() + self.timeout, req.name)

    def recv_reply(self, req: Request, size: int | None = None) -> bytes:
        deadline = time.monotonic() + self.timeout
        hdr = recv_exact(self.sock, HEADER.size, deadline, f"{req.name} reply header")
        rreq, flags, rsize = HEADER.unpack(hdr)
        if rreq != int(req):
            raise ProtocolError(f"{req.name}: backend replied with request {rreq}, expected "
                                f"{int(req)} (out-of-step protocol)")
        if not flags & FLAG_REPLY or flags & 0x3 != FLAG_VERSION:
            raise ProtocolError(f"{req.name}: reply flags {flags:#x} lack REPLY/version 1")
        if rsize > 4096:
            raise ProtocolError(f"{req.name}: reply claims {rsize} payload bytes (max 4096)")
        payload = recv_exact(self.sock, rsize, deadline, f"{req.name} reply payload") if rsize \
            else b""
        if size is not None and rsize != size:
            raise ProtocolError(f"{req.name}: reply payload is {rsize} bytes, expected {size}")
        return payload

    def request_u64(self, req: Request) -> int:
        self.send(req)
        return U64.unpack(self.recv_reply(req, U64.size))[0]

    def command(self, req: Request, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send a request that has no reply; with REPLY_ACK, wait for and check the ack."""
        self.send(req, payload, fds, need_reply=self.reply_ack)
        if self.reply_ack:
            status = U64.unpack(self.recv_reply(req, U64.size))[0]
            if status != 0:
                raise BackendError(f"{req.name}: backend refused the request (status {status}); "
                                   "see its log")

    # ---- the requests --------------------------------------------------------------------------
    def get_features(self) -> int:
        return self.request_u64(Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self.command(Request.SET_FEATURES, U64.pack(features))

    def get_protocol_features(self) -> int:
        return self.request_u64(Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        # sent before reply_ack takes effect: the back end acks only once it knows the feature
        self.send(Request.SET_PROTOCOL_FEATURES, U64.pack(features))
        self.reply_ack = bool(features & PROTOCOL_F_REPLY_ACK)

    def set_owner(self) -> None:
        self.command(Request.SET_OWNER)

    def set_mem_table(self, regions: Sequence[tuple[int, int, int, int]], fds: Sequence[int]) -> None:
        """``regions``: (guest_phys_addr, size, user_addr, mmap_offset), one fd each."""
        if len(regions) != len(fds) or not 1 <= len(regions) <= MAX_FDS:
            raise VirtioError(f"SET_MEM_TABLE: {len(regions)} regions with {len(fds)} fds")
        payload = struct.pack("<II", len(regions), 0) + b"".join(
            MEM_REGION.pack(*r) for r in regions)
        self.command(Request.SET_MEM_TABLE, payload, fds)

    def set_vring_num(self, index: int, num: int) -> None:
        self.command(Request.SET_VRING_NUM, VRING_STATE.pack(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self.command(Request.SET_VRING_BASE, VRING_STATE.pack(index, base))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self.command(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_vring_kick(self, index: int, fd: int) -> None:
        self.command(Request.SET_VRING_KICK, U64.pack(index), [fd])

    def set_vring_call(self, index: int, fd: int) -> None:
        self.command(Request.SET_VRING_CALL, U64.pack(index), [fd])

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self.command(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, int(enable)))

    def gpu_set_socket(self, fd: int) -> None:
        # libvhost-user handles this one in the device callback, which never acks: no NEED_REPLY
        self.send(Request.GPU_SET_SOCKET, b"", [fd])


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
