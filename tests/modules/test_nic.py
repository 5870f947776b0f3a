"""The nic module with real sockets on 127.0.0.1 only (UDP and length-prefixed TCP)."""
from __future__ import annotations

import socket
import struct

import time

import pytest

import ggmk
from ggmk.errors import BootError
from ggmk.modules import echo, nic

LOOP = "127.0.0.1"


def echo_back():
    return echo.module(to="net.tx", consumes="net.rx", message="NET_RX", retype="NET_TX",
                       name="back")


def test_udp_echo_round_trip_many():
    n = nic.module("udp")
    with ggmk.boot([n, echo_back()], workers=2) as system:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((LOOP, 0))
        c.settimeout(5)
        got = []
        for i in range(200):
            c.sendto(b"msg%d" % i, n.nic.address)
            got.append(c.recvfrom(100))
        c.close()
        assert system.run(timeout=10)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert [d for d, _ in got] == [b"msg%d" % i for i in range(200)]
    assert n.nic.address[0] == LOOP
    s = n.nic.stats()
    assert s["rx"] == 200 and s["tx"] == 200 and s["rx_refused"] == 0


def test_peer_word_round_trip():
    assert nic.addr(nic.peer(("127.0.0.1", 4242))) == ("127.0.0.1", 4242)


@pytest.mark.parametrize("guarantee", ["lossy", "lossless"])
def test_udp_overload_is_counted_never_silent(guarantee, wait_until):
    n = nic.module("udp", rx_capacity=8, rx_guarantee=guarantee, rcvbuf=1 << 20)
    slow = ggmk.Module("slow")
    got = []

    @slow.handler("SLOW_RX", batch=True, consumes="net.rx", message="NET_RX")
    def rx(ctx, batch):
        time.sleep(0.005)
        got.extend(batch.meta1.tolist())

    sent = 3000
    with ggmk.boot([n, slow], workers=2) as system:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(sent):
            c.sendto(struct.pack("<I", i) + b"x" * 60, n.nic.address)
        c.close()
        wait_until(lambda: n.nic.stats()["rx"] + n.nic.stats()["os_dropped"] >= sent, 20)
        assert system.run(timeout=30)
        drop, codes = system.dead_letters("sys.dropped")
    s = n.nic.stats()
    assert s["rx"] + s["os_dropped"] == sent
    assert len(got) + len(drop) == sent, (len(got), len(drop), s)
    assert len(drop) > 0                                  # it really was overloaded
    assert set(codes.tolist()) <= {ggmk.CHAN_FULL, nic.NET_OS_DROP}


def _read_frame(sock):
    hdr = b""
    while len(hdr) < 4:
        hdr += sock.recv(4 - len(hdr))
    (ln,) = struct.unpack(">I", hdr)
    data = b""
    while len(data) < ln:
        data += sock.recv(ln - len(data))
    return data


def test_tcp_length_prefixed_frames_echo_and_two_clients():
    n = nic.module("tcp")
    with ggmk.boot([n, echo_back()], workers=2) as system:
        clients = [socket.create_connection(n.nic.address, timeout=5) for _ in range(2)]
        for k, c in enumerate(clients):
            # frames split across writes and several in one write
            blob = b"".join(nic.frame(b"c%d-%d" % (k, i) * (i + 1)) for i in range(20))
            c.sendall(blob[:7])
            time.sleep(0.01)
            c.sendall(blob[7:])
        for k, c in enumerate(clients):
            for i in range(20):
                assert _read_frame(c) == b"c%d-%d" % (k, i) * (i + 1)
        clients[0].sendall(nic.frame(b""))                # an empty frame is a frame
        assert _read_frame(clients[0]) == b""
        for c in clients:
            c.close()
        assert system.run(timeout=10)
    assert n.nic.stats()["accepted"] == 2


def test_tcp_oversized_frame_closes_connection_and_unknown_peer_fails(wait_until):
    n = nic.module("tcp", max_frame=1024)
    with ggmk.boot([n], workers=2) as system:
        c = socket.create_connection(n.nic.address, timeout=5)
        c.sendall(struct.pack(">I", 5000) + b"z" * 100)
        try:
            assert c.recv(10) == b""                      # closed by the module
        except ConnectionResetError:                      # (or reset: it had unread bytes)
            pass
        c.close()
        wait_until(lambda: n.nic.stats()["bad_frames"], 5)
        assert n.nic.stats()["bad_frames"] == 1
        system.channel("net.tx").publish(meta0=999, payload=b"nobody")
        system.run()
        err, codes = system.dead_letters("sys.error")
    assert codes.tolist() == [nic.NET_ERROR]


def test_tcp_connect_out_and_host_send():
    srv = socket.socket()
    srv.bind((LOOP, 0))
    srv.listen(1)
    n = nic.module("tcp")
    got = []
    app = ggmk.Module("app")

    @app.handler("APP_RX", consumes="net.rx", message="NET_RX")
    def rx(ctx):
        got.append(bytes(ctx.payload))

    with ggmk.boot([n, app], workers=2) as system:
        cid = n.nic.connect(*srv.getsockname())
        peer, _ = srv.accept()
        peer.settimeout(5)
        system.channel("net.tx").publish(meta0=cid, payload=b"hello")
        system.run()
        assert _read_frame(peer) == b"hello"
        peer.sendall(nic.frame(b"back"))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            system.run(timeout=1)
            time.sleep(0.005)
        peer.close()
    srv.close()
    assert got == [b"back"]


def test_bad_config():
    with pytest.raises(BootError, match="proto"):
        nic.module("sctp")
    with pytest.raises(BootError, match="bind"):
        nic.module("udp", bind=("127.0.0.1", 70000))
    with pytest.raises(BootError, match="max_frame"):
        nic.module("udp", max_frame=1 << 20)
    with pytest.raises(BootError, match="rx_guarantee"):
        nic.module("udp", rx_guarantee="maybe")


def test_halt_stops_threads_and_closes_socket():
    n = nic.module("udp")
    system = ggmk.boot([n], workers=2)
    addr = n.nic.address
    system.halt()
    assert all(not t.is_alive() for t in n.nic.threads)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)                    # the port is free again
    s.close()

