"""The nic module with real sockets on 127.0.0.1 only (UDP and length-prefixed TCP)."""
from __future__ import annotations

import gc
import os
import socket
import struct
import threading
import time
import warnings

import pytest

import ggmk
from ggmk.errors import BootError, KernelStopped
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


def test_tcp_connect_out_and_host_send(wait_until):
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
        peer.settimeout(30)
        system.channel("net.tx").publish(meta0=cid, payload=b"hello")
        system.run()
        assert _read_frame(peer) == b"hello"
        peer.sendall(nic.frame(b"back"))
        wait_until(lambda: bool(got), 30, step=lambda: system.run(timeout=1))
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



def test_udp_datagram_longer_than_max_frame_is_dropped_not_truncated(wait_until):
    n = nic.module("udp", max_frame=100)
    app = ggmk.Module("app")
    got = []

    @app.handler("APP_RX", batch=True, consumes="net.rx", message="NET_RX")
    def rx(ctx, batch):
        for r in batch.records:
            p, ln = int(r["payload_ptr"]), int(r["payload_len"])
            got.append((int(r["meta1"]), bytes(ctx.system.arena.view(p, ln)) if p else b""))

    with ggmk.boot([n, app], workers=2) as system:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((LOOP, 0))
        c.sendto(b"x" * 250, n.nic.address)            # longer than max_frame: not delivered
        c.sendto(b"y" * 100, n.nic.address)            # exactly max_frame: whole
        c.sendto(b"z" * 50, n.nic.address)
        assert wait_until(lambda: len(got) == 2 and n.nic.stats()["truncated"] == 1,
                          step=lambda: system.run(0.05, until_idle=False))
        me = nic.peer(c.getsockname())
        c.close()
        assert system.run(timeout=10)
        drop, codes = system.dead_letters("sys.dropped")
    assert got == [(100, b"y" * 100), (50, b"z" * 50)]
    assert codes.tolist() == [nic.NET_ERROR]
    assert drop["meta0"].tolist() == [me] and drop["meta1"].tolist() == [100]
    s = n.nic.stats()
    assert s["truncated"] == 1 and s["rx"] == 2 and s["rx_bytes"] == 150


def test_udp_bad_peer_fails_only_its_record():
    n = nic.module("udp")
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind((LOOP, 0))
    good = nic.peer(r.getsockname())
    with ggmk.boot([n], workers=2) as system:
        # one batch: good, a peer word wider than ipv4 << 16 | port, good
        system.channel("net.tx").publish(meta0=[good, 1 << 60, good], meta1=[0, 1, 2])
        assert system.run(timeout=10)
        err, codes = system.dead_letters("sys.error")
        assert not system.exceptions
    assert list(zip(err["meta0"].tolist(), codes.tolist())) == [(1 << 60, nic.NET_ERROR)]
    s = n.nic.stats()
    assert s["tx"] == 2 and s["tx_errors"] == 1
    r.settimeout(5)
    assert [r.recv(100) for _ in range(2)] == [b"", b""]
    r.setblocking(False)
    with pytest.raises(BlockingIOError):                 # each good record sent exactly once
        r.recv(100)
    r.close()
    with pytest.raises(ValueError, match="peer"):
        nic.addr(1 << 60)


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs Linux /proc/net/udp")
def test_udp_os_drops_after_the_last_datagram_read_are_counted(wait_until):
    n = nic.module("udp", rcvbuf=4096)
    sent = 300
    holds = {0: threading.Event(), sent: threading.Event()}
    publish = n.nic._publish

    def held(who, data):
        # the receiver stalls on the first datagram of each flood: the OS buffer fills and the
        # rest of the flood is dropped after the datagrams it holds were stamped
        hold = holds.get(struct.unpack(">I", data[:4])[0])
        if hold is not None:
            hold.wait(10)
        publish(who, data)

    def flood(first):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(first, first + sent):
            c.sendto(struct.pack(">I", i) + b"p" * 200, n.nic.address)
        c.close()
        holds[first].set()

    def accounted():
        s = n.nic.stats()
        return s["rx"] + s["os_dropped"]

    n.nic._publish = held
    system = ggmk.boot([n], workers=2)
    flood(0)            # no drops yet when its datagrams were queued: no SO_RXQ_OVFL with them
    ok1 = wait_until(lambda: accounted() >= sent, 30)
    flood(sent)         # its queued datagrams carry the first flood's drops (SO_RXQ_OVFL)
    # the second flood's drops are counted when the receiver next looks (idle), not only at halt
    ok2 = wait_until(lambda: accounted() >= 2 * sent, 30)
    s_idle = n.nic.stats()
    system.halt()
    drop, codes = system.dead_letters("sys.dropped")
    s = n.nic.stats()
    assert ok1 and ok2, s_idle
    assert s["os_dropped"] > 0                          # it really did overflow
    assert s["rx"] + s["os_dropped"] == 2 * sent, s
    assert int((codes == nic.NET_OS_DROP).sum()) == s["os_dropped"]


@pytest.mark.parametrize("address, why", [
    (("10.0.0.2", 70000), r"port=70000: allowed an int 0\.\.65535"),   # was: 10.0.0.3:4464
    ((LOOP, 65536), r"port=65536: allowed an int 0\.\.65535"),
    ((LOOP, -1), r"port=-1: allowed an int 0\.\.65535"),
    ((LOOP, True), r"port=True: allowed an int 0\.\.65535"),
    ((LOOP, 5.7), r"port=5\.7: allowed an int 0\.\.65535"),
    (("localhost", 5), r"host 'localhost': allowed an IPv4 literal"),
    (("::1", 5), r"host '::1': allowed an IPv4 literal"),
])
def test_peer_refuses_what_is_no_ipv4_and_port(address, why):
    with pytest.raises(ValueError, match=r"nic\.peer: address .*" + why):
        nic.peer(address)
    assert nic.addr(nic.peer(("10.0.0.2", 65535))) == ("10.0.0.2", 65535)


def test_bad_config_names_rcvbuf_and_refuses_bools():
    for bad in ("big", 1.5, -1, 0, True, 1 << 31):
        with pytest.raises(BootError, match=rf"nic: rcvbuf={bad!r}: allowed an int "
                                            r"1\.\.2147483647 bytes, or None"):
            nic.module("udp", rcvbuf=bad)
    with pytest.raises(BootError, match=r"bind must be .*got \('127\.0\.0\.1', True\)"):
        nic.module("udp", bind=(LOOP, True))
    with pytest.raises(BootError, match=r"max_frame must be .*got True"):
        nic.module("udp", max_frame=True)


def test_socket_closed_when_open_fails_with_other_than_oserror():
    n = nic.module("udp")
    n.nic.rcvbuf = "big"            # past the config check: setsockopt raises TypeError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(TypeError):
            ggmk.boot([n], workers=1)
        gc.collect()                # a socket left open warns when it is collected
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == [] and n.nic.sock is None


def test_same_module_refused_by_a_second_system_while_the_first_holds_it(wait_until):
    n = nic.module("udp")
    s1 = ggmk.boot([n], workers=1)
    addr1, sock1 = n.nic.address, n.nic.sock
    with pytest.raises(BootError, match="nic: module 'nic' is already booted in another "
                                        "system; halt that one first"):
        ggmk.boot([n], workers=1)
    # the first system keeps its socket and receiver
    assert n.nic.sock is sock1 and sock1.fileno() != -1 and n.nic.system is s1
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"12345", addr1)
    assert wait_until(lambda: n.nic.stats()["rx"] == 1, 10)
    s1.halt()
    with ggmk.boot([n], workers=1) as s2:           # free again once the first halted
        assert n.nic.system is s2 and n.nic.sock is not None
    c.close()


def test_connect_refused_before_boot_and_after_halt():
    srv = socket.socket()
    srv.bind((LOOP, 0))
    srv.listen(4)
    n = nic.module("tcp")
    with pytest.raises(KernelStopped, match="nic: connect\\(\\): module 'nic' is not "
                                                 "running"):
        n.nic.connect(*srv.getsockname())        # was: a receiver thread that crashed
    system = ggmk.boot([n], workers=1)
    cid = n.nic.connect(*srv.getsockname())
    assert cid in n.nic.conns
    system.halt()
    with pytest.raises(KernelStopped, match="not running"):
        n.nic.connect(*srv.getsockname())
    assert n.nic.conns == {} and all(not t.is_alive() for t in n.nic.threads)
    srv.close()


def test_accept_failing_is_retried_slowly_counted_and_logged_once(wait_until, caplog):
    resource = pytest.importorskip("resource")
    n = nic.module("tcp")
    system = ggmk.boot([n], workers=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pending = socket.socket()
    pending.settimeout(5)
    dummies = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        while True:                                # fill the fd table: accept() fails (EMFILE)
            try:
                dummies.append(socket.socket())
            except OSError:
                break
        with caplog.at_level("WARNING", logger="ggmk"):
            pending.connect(n.nic.address)         # the kernel completes it in the backlog
            assert wait_until(lambda: n.nic.stats()["accept_errors"] >= 1, 10)
            t0, e0 = time.monotonic(), n.nic.stats()["accept_errors"]
            assert wait_until(lambda: n.nic.stats()["accept_errors"] >= e0 + 4, 10)
            # four retries take four waits (was: a busy loop, thousands per second)
            assert time.monotonic() - t0 >= 3 * 0.05
    finally:
        for d in dummies:
            d.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert wait_until(lambda: n.nic.stats()["accepted"] == 1, 10)   # served once fds are free
    system.halt()
    pending.close()
    logged = [r.getMessage() for r in caplog.records if "accept on" in r.getMessage()]
    assert len(logged) == 1 and "Too many open files" in logged[0] \
        and "accept_errors" in logged[0], logged
