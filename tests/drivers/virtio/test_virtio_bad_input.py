"""Bad input everywhere: missing backend, refused connection, malformed messages. These need no
QEMU: a fake back end (a real socket served by a thread) plays the misbehaving peer."""
from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time

import numpy as np
import pytest

from ggmk.drivers.virtio import errors as E
from ggmk.drivers.virtio.backend import BackendProcess, find_backend
from ggmk.drivers.virtio.display_socket import DisplaySocket, GpuRequest, Monitor
from ggmk.drivers.virtio.gpu import VirtioGpu
from ggmk.drivers.virtio.vhost_user import VhostUserFrontend


def test_missing_backend_binary_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("GGMK_VHOST_USER_GPU", str(tmp_path / "nope"))
    with pytest.raises(E.BackendNotFound, match="missing or not executable.*apt-get install"):
        find_backend()
    with pytest.raises(E.BackendNotFound, match="qemu-system-gui"):
        VirtioGpu.launch(workdir=tmp_path)


def test_backend_that_exits_at_once_is_reported_with_its_status(tmp_path):
    fake = tmp_path / "fake-vugpu"
    fake.write_text("#!/bin/sh\necho 'cannot start: no GPU for you' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    t0 = time.monotonic()
    with pytest.raises(E.BackendDied, match="exited with status 3.*no GPU for you"):
        VirtioGpu.launch(workdir=tmp_path, binary=fake, timeout=5.0)
    assert time.monotonic() - t0 < 4


def test_refused_connection_retries_then_fails_clearly(tmp_path):
    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))              # the file exists, nobody listens: ECONNREFUSED
    try:
        t0 = time.monotonic()
        with pytest.raises(E.BackendError, match="could not connect.*within 0.3s"):
            VhostUserFrontend.connect(str(path), timeout=0.3)
        assert time.monotonic() - t0 < 2
    finally:
        s.close()
    with pytest.raises(E.BackendError, match="is the backend running"):
        VhostUserFrontend.connect(str(tmp_path / "absent.sock"), timeout=0.1)


class FakeBackend:
    """Accepts one connection and answers each request with ``reply(req, flags, payload)``."""

    def __init__(self, path, reply):
        self.lsock = socket.socket(socket.AF_UNIX)
        self.lsock.bind(str(path))
        self.lsock.listen(1)
        self.reply = reply
        self.requests = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        conn, _ = self.lsock.accept()
        conn.settimeout(5)
        try:
            while True:
                hdr = conn.recv(12, socket.MSG_WAITALL)
                if len(hdr) < 12:
                    return
                req, flags, size = struct.unpack("<III", hdr)
                payload = conn.recv(size, socket.MSG_WAITALL) if size else b""
                self.requests.append(req)
                out = self.reply(req, flags, payload)
                if out is not None:
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.lsock.close()
        self.thread.join(5)


def features_reply(value):
    return struct.pack("<IIIQ", 1, 0x5, 8, value)


@pytest.mark.parametrize("bad, match", [
    (struct.pack("<III", 1, 0x5, 4) + b"\0\0\0\0", "payload is 4 bytes, expected 8"),
    (struct.pack("<IIIQ", 2, 0x5, 8, 0), "replied with request 2, expected 1"),
    (struct.pack("<IIIQ", 1, 0x1, 8, 0), "lack REPLY"),
    (struct.pack("<III", 1, 0x5, 1 << 30), "claims 1073741824 payload bytes"),
])
def test_malformed_reply_is_a_protocol_error(tmp_path, bad, match):
    fake = FakeBackend(tmp_path / "fake.sock", lambda req, f, p: bad)
    try:
        with pytest.raises(E.ProtocolError, match=match):
            VirtioGpu.connect(str(tmp_path / "fake.sock"), timeout=2.0)
    finally:
        fake.close()


def test_backend_without_version_1_is_refused(tmp_path):
    fake = FakeBackend(tmp_path / "fake.sock", lambda req, f, p: features_reply(1 << 30))
    try:
        with pytest.raises(E.FeatureError, match="without VIRTIO_F_VERSION_1"):
            VirtioGpu.connect(str(tmp_path / "fake.sock"), timeout=2.0)
    finally:
        fake.close()


def test_silent_backend_times_out(tmp_path):
    fake = FakeBackend(tmp_path / "fake.sock", lambda req, f, p: None)
    try:
        t0 = time.monotonic()
        with pytest.raises(E.BackendTimeout, match="GET_FEATURES"):
            VirtioGpu.connect(str(tmp_path / "fake.sock"), timeout=0.3)
        assert time.monotonic() - t0 < 2
    finally:
        fake.close()


@pytest.fixture
def display_pair():
    ours, theirs = socket.socketpair()
    d = DisplaySocket(ours, [Monitor(8, 4)], timeout=1.0)
    yield d, theirs
    d.close()
    theirs.close()


def test_display_socket_answers_and_takes_updates(display_pair, wait_until):
    d, peer = display_pair
    peer.sendall(struct.pack("<III", GpuRequest.GET_PROTOCOL_FEATURES, 0, 0))
    peer.sendall(struct.pack("<IIIIII", GpuRequest.SCANOUT, 0, 12, 0, 8, 4))
    px = np.arange(2 * 3 * 4, dtype=np.uint8)
    # uninitialised flags on an UPDATE must not matter
    peer.sendall(struct.pack("<III", GpuRequest.UPDATE, 0xDEADBEEF, 20 + px.size)
                 + struct.pack("<5I", 0, 1, 1, 3, 2) + px.tobytes())
    assert wait_until(lambda: d.scanouts[0].updates, 2, step=d.service)
    assert d.scanouts[0].fb[1:3, 1:4].tobytes() == px.tobytes()
    peer.settimeout(1)
    assert peer.recv(20, socket.MSG_WAITALL) == struct.pack("<IIIQ", 1, 4, 8, 0)


@pytest.mark.parametrize("msg, match", [
    (struct.pack("<III", GpuRequest.UPDATE, 0, 20 + 7) + struct.pack("<5I", 0, 0, 0, 1, 1) + b"x" * 7,
     "carries 7 pixel bytes, expected 4"),
    (struct.pack("<III", GpuRequest.UPDATE, 0, 20 + 4) + struct.pack("<5I", 0, 7, 0, 2, 2) + b"x" * 4,
     "carries 4 pixel bytes, expected 16"),
    (struct.pack("<III", GpuRequest.UPDATE, 0, 20 + 4) + struct.pack("<5I", 0, 9, 0, 1, 1) + b"x" * 4,
     r"outside scanout 0 \(8x4\)"),
    (struct.pack("<III", 99, 0, 0), "unknown request 99"),
    (struct.pack("<III", GpuRequest.SCANOUT, 0, 4) + b"\0" * 4, "has 4 payload bytes, needs 12"),
])
def test_malformed_display_messages_are_protocol_errors(display_pair, msg, match, wait_until):
    d, peer = display_pair
    peer.sendall(struct.pack("<IIIIII", GpuRequest.SCANOUT, 0, 12, 0, 8, 4))
    peer.sendall(msg)
    with pytest.raises(E.ProtocolError, match=match):
        wait_until(lambda: False, 2, step=d.service)


def test_display_socket_eof_is_backend_died(display_pair):
    d, peer = display_pair
    peer.sendall(struct.pack("<III", GpuRequest.SCANOUT, 0, 12))    # header, then death
    peer.close()
    with pytest.raises(E.BackendDied, match="closed the connection"):
        d.service()


def test_dmabuf_path_maps_the_buffer_and_acks_updates(display_pair, wait_until):
    # hosts with /dev/udmabuf or a render node make the back end share a dmabuf instead of
    # sending pixels; a memfd stands in for the udmabuf here (both are mmap-able files)
    import array
    d, peer = display_pair
    w, h, stride = 8, 4, 48                      # stride wider than the row, as GBM may do
    fd = os.memfd_create("fake-dmabuf")
    os.ftruncate(fd, stride * h)
    noise = np.random.default_rng(3).integers(0, 256, (h, stride), dtype=np.uint8)
    os.pwrite(fd, noise.tobytes(), 0)
    body = struct.pack("<IIIIIIIIIi", 0, 0, 0, w, h, w, h, stride, 0, 0x34325258)
    peer.sendmsg([struct.pack("<III", GpuRequest.DMABUF_SCANOUT, 0, len(body)) + body],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
    os.close(fd)
    peer.sendall(struct.pack("<III", GpuRequest.DMABUF_UPDATE, 0, 20) + struct.pack("<5I", 0, 2, 1, 3, 2))
    assert wait_until(lambda: d.scanouts[0].updates, 2, step=d.service)
    expect = noise[:, :w * 4].reshape(h, w, 4)
    assert d.scanouts[0].fb[1:3, 2:5].tobytes() == expect[1:3, 2:5].tobytes()
    assert not d.scanouts[0].fb[0].any()           # outside the damage: untouched
    peer.settimeout(1)                             # the back end waits for this empty reply
    assert peer.recv(12, socket.MSG_WAITALL) == struct.pack("<III", GpuRequest.DMABUF_UPDATE, 4, 0)
