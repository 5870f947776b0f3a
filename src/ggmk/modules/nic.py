"""The ``nic`` module (SPEC §10): ``net.rx`` / ``net.tx`` over real sockets (UDP or TCP).

One task per datagram (UDP) or frame (TCP, each frame a 4-byte big-endian length then that
many bytes) with the bytes as the payload:

==========  =========  =======  =============================================================
channel     direction  type     record
==========  =========  =======  =============================================================
net.rx      produce    NET_RX   meta0 = peer, meta1 = length, payload = the bytes
net.tx      consume    NET_TX   meta0 = peer, payload = the bytes to send
==========  =========  =======  =============================================================

``peer``: for UDP the sender's address, ``ipv4 << 16 | port`` (:func:`peer` / :func:`addr`
convert); for TCP a connection id (accepted connections, or ``m.nic.connect(host, port)``).
The channel prefix is ``prefix`` (``net``). The socket binds ``bind`` (default
``("127.0.0.1", 0)``: loopback, any free port; ``m.nic.address`` after boot).

Feeding the kernel: a receiver thread per socket (UDP) or connection (TCP) publishes each
datagram / frame on ``net.rx`` (``system.channel("net.rx").publish``). Overload is never
silent: ``net.rx`` is ``lossy`` by default, so a message a full subscriber cannot take lands on
``sys.dropped`` (CHAN_FULL) and the receiver never blocks; with ``rx_guarantee="lossless"``
a message the channel refuses is put on ``sys.dropped`` by the module (CHAN_FULL). Datagrams
the operating system dropped before we read them (its receive buffer overflowed) are put there
too, one NET_RX record each with code ``NET_OS_DROP``: the drop count Linux sends with a
datagram (``SO_RXQ_OVFL``) is the fast path, and the socket's live ``drops`` in /proc/net/udp
(Linux; elsewhere only what ``SO_RXQ_OVFL`` reports) is read when the socket is idle, every 256
datagrams and at halt, so drops after the last datagram read are counted too. A UDP datagram
longer than ``max_frame`` is never delivered cut short: it goes there as one NET_RX record
(meta0 = peer, meta1 = ``max_frame``, the bytes read) with code ``NET_ERROR``, counted in
``truncated``. An arena that cannot hold a payload gives ``ALLOC_FAIL`` there.
A datagram / frame read once the kernel halts (its channels close) goes there too, with
``CHAN_CLOSED``, counted in ``halt_dropped``; at the module's fini the UDP socket is first
connected to itself (no other sender's datagram enters it any more), then read empty without
blocking and only then closed, so what it still held is counted as well. A TCP connection
is shut for reading and read to EOF (without blocking; for 1 s at most, against a peer that
keeps sending: what is left then is refused with a reset) before it closes, each frame handled
the same way. A connection that ends inside a frame (the peer closed or reset mid-frame, or the
drain) puts one NET_RX record there with ``NET_ERROR`` (meta1 = the bytes read of that frame,
its length prefix included), counted in ``partial``. An ``accept`` / ``recvmsg`` that fails
(out of file descriptors: EMFILE) is retried every 0.05 s, counted in ``accept_errors`` /
``recv_errors`` and logged once per errno. ``m.nic.stats()`` counts all (UDP: every datagram
that reached the socket is one of ``rx``, ``os_dropped``, ``truncated``, ``halt_dropped``; TCP:
every frame read is one of ``rx``, ``halt_dropped``, ``partial``).

Lifecycle: a bind that fails closes its socket and raises OSError naming the address; fini is
safe whatever boot left and idempotent. A second init (``system.reset_module``) first stops
the receivers and closes the old socket (a backlog is read and published, as above), then
binds again, at the same address while it is free: one receiver serves ``m.nic.address``.
The module serves one system at a time: booting it into another while the first still holds
it raises BootError. ``m.nic.connect`` works while the module runs (else KernelStopped).

Sending: ``NET_TX`` messages are sent by the consuming handler (UDP ``sendto``; TCP the frame,
length-prefixed, on that connection). A send that fails (unknown connection, peer 0 or a peer word
that is no ``ipv4 << 16 | port``, message too large, socket error) fails that task only, with
``NET_ERROR`` on ``sys.error`` (``tx_errors``); the other records of the batch are sent. A TCP peer
sending a frame longer than ``max_frame`` gets its connection closed (``bad_frames``), and so
does one whose frame could not be sent whole (the socket's 0.1 s timeout or an error: the stream
would be unframed).

Example (a UDP echo server: net.rx retyped onto net.tx by the echo module)::

    import socket
    import ggmk
    from ggmk.modules import echo, nic

    n = nic.module("udp")
    back = echo.module(to="net.tx", consumes="net.rx", message="NET_RX", retype="NET_TX")
    with ggmk.boot([n, back], workers=2) as system:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.sendto(b"ping", n.nic.address)
        print(c.recvfrom(100)[0])      # b'ping'
        c.close()
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time

import numpy as np

from ggmk import task as T
from ggmk.core.det import check_int
from ggmk.errors import AllocError, BootError, KernelStopped
from ggmk.modules import instance_type, std_module

__all__ = ["module", "peer", "addr", "NET_ERROR", "NET_OS_DROP", "frame"]

NET_ERROR = T.NET_ERROR
NET_OS_DROP = T.NET_OS_DROP
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
_PROC_UDP = ("/proc/net/udp", "/proc/net/udp6")
_LEN = struct.Struct(">I")
_RETRY_S = 0.05         # wait before retrying an accept() / recvmsg() that failed (EMFILE...)
_DRAIN_S = 1.0          # at most this long reading a connection's backlog at halt / reset
log = logging.getLogger("ggmk")


def peer(address) -> int:
    """``(ipv4, port)`` -> the peer word ``ipv4 << 16 | port``; ValueError for anything else
    (a port out of range would land in the address bits: another host)."""
    host, port = address[0], address[1]
    port = check_int(f"nic.peer: address {address!r}: port", port, 0, 65535)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"nic.peer: address {address!r}: host {host!r}: allowed an IPv4 "
                         f"literal such as '127.0.0.1' (no host names, no IPv6)") from None
    return int(ip) << 16 | port


def addr(p: int) -> tuple[str, int]:
    """The peer word -> ``(ipv4 string, port)``; ValueError if it is not one."""
    p = int(p)
    if not 0 <= p < 1 << 48:
        raise ValueError(f"nic: peer {p} is not a peer word: ipv4 << 16 | port, "
                         f"in 0..2**48-1")
    return str(ipaddress.IPv4Address(p >> 16)), p & 0xFFFF


def frame(data: bytes) -> bytes:
    """One TCP frame: 4-byte big-endian length, then the bytes."""
    return _LEN.pack(len(data)) + bytes(data)


class _Nic:
    def __init__(self, name, proto, bind, prefix, rx_guarantee, max_frame, rcvbuf):
        if proto not in ("udp", "tcp"):
            raise BootError(f"nic: proto must be 'udp' or 'tcp', got {proto!r}")
        if not (isinstance(bind, tuple) and len(bind) == 2 and isinstance(bind[0], str)
                and isinstance(bind[1], int) and not isinstance(bind[1], bool)
                and 0 <= bind[1] <= 65535):
            raise BootError(f"nic: bind must be (host, port) with port 0..65535, got {bind!r}")
        if isinstance(max_frame, bool) or not isinstance(max_frame, int) \
                or not 1 <= max_frame <= 120 * 1024:
            raise BootError(f"nic: max_frame must be 1..122880 bytes (an arena payload), "
                            f"got {max_frame!r}")
        if rcvbuf is not None:
            # SO_RCVBUF is a C int; 0 or less would not mean "no buffer" (-1 gives the maximum)
            check_int("nic: rcvbuf", rcvbuf, 1, (1 << 31) - 1, err=BootError,
                      what=" bytes, or None (the system default)")
        self.name = name
        self.proto, self.bind, self.prefix = proto, bind, prefix
        self.rx_name = f"{prefix}.rx"
        self.lossless = rx_guarantee == "lossless"
        self.max_frame = max_frame
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.address = None
        self.system = None
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.conns: dict[int, socket.socket] = {}
        self.send_locks: dict[int, threading.Lock] = {}
        self.next_conn = 1
        self.lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.os_seen = 0
        self.ovfl_total = None          # the SO_RXQ_OVFL that came with the last datagram
        self.counters = {"rx": 0, "rx_bytes": 0, "rx_refused": 0, "os_dropped": 0,
                         "truncated": 0, "halt_dropped": 0, "alloc_fail": 0, "tx": 0,
                         "tx_bytes": 0, "tx_errors": 0, "bad_frames": 0, "partial": 0,
                         "accepted": 0, "closed": 0, "accept_errors": 0, "recv_errors": 0}

    # -- lifecycle ------------------------------------------------------------------------------
    def boot(self, system):
        if self.sock is not None and self.system is not system:
            # the other system's fini would close the socket under this one
            raise BootError(f"nic: module {self.name!r} is already booted in another system; "
                            f"halt that one first, or give this system its own nic.module()")
        # a second init (system.reset_module) must not leave the old socket and receiver
        # serving beside the new ones: they go first, and a live socket's address is kept
        prev = self.address if self.sock is not None else None
        self._shutdown()
        with self.lock:
            # a new socket's drop counter starts at 0: the old one's total is no baseline
            self.os_seen, self.ovfl_total = 0, None
        self.system = system
        self.stop.clear()
        self.sock = self._open(prev)
        self.address = self.sock.getsockname()[:2]
        target = self._udp_loop if self.proto == "udp" else self._accept_loop
        self._spawn(target, f"nic-{self.proto}-rx")

    def _open(self, prev) -> socket.socket:
        """The bound socket: at ``prev`` (the address a reset keeps) if given and free, else
        at ``bind``; one that fails is closed (no leak), the error names the address."""
        err = None
        for where in ([prev] if prev else []) + [self.bind]:
            if self.proto == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if self.proto == "udp":
                    try:
                        s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                        self.ovfl = True
                    except OSError:
                        self.ovfl = False
                else:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.rcvbuf:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                s.bind(where)
                if self.proto == "tcp":
                    s.listen(64)
                s.settimeout(0.05)
            except OSError as e:
                s.close()
                err = e
                continue
            except BaseException:
                s.close()
                raise
            return s
        raise OSError(err.errno, f"nic: cannot bind {self.proto} {self.bind}: "
                                 f"{err.strerror or err}") from err

    def _spawn(self, fn, name, *args):
        """Start ``fn`` on a thread listed in ``threads`` from before it starts until it ends
        (what ``_shutdown`` joins: a connection's thread reading its backlog at a reset was
        missed when the list was rebuilt from ``is_alive()`` after the start, and its socket
        closed under it)."""
        def run():
            try:
                fn(*args)
            finally:
                with self.lock:
                    self.threads.remove(t)
        t = threading.Thread(target=run, name=name, daemon=True)
        with self.lock:
            self.threads.append(t)
        t.start()

    def halt(self, system):
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop the receivers and close the sockets, whatever state boot left (none, a failed
        boot, already shut: then nothing to do). UDP: sealed first, then read empty, so every
        datagram that reached the socket is accounted before it closes (at halt:
        ``halt_dropped``, on sys.dropped with CHAN_CLOSED; at a reset: published). TCP: each
        connection is shut for reading and its thread reads the backlog to EOF the same way
        (``_conn_loop``)."""
        self.stop.set()
        with self.lock:
            conns = list(self.conns.values())
            threads = [t for t in self.threads if t is not threading.current_thread()]
        sock = self.sock
        udp = self.proto == "udp" and sock is not None
        if udp:
            self._seal(sock)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout=2)
        if udp:
            self._drain(sock)
            self._check_os_drops()      # after the receiver stopped: every drop until now
        for c in conns:
            c.close()
        if sock is not None:
            sock.close()
        self.sock = None
        with self.lock:
            self.conns.clear()
            self.send_locks.clear()

    def _seal(self, sock) -> None:
        """Connect the UDP socket to itself: from now on no other sender's datagram enters
        it (the kernel refuses them as for a closed port), so reading it empty accounts for
        everything it will ever hold. Where that fails, the drain still reads what is there."""
        host, port = self.address
        try:
            sock.connect(("127.0.0.1" if host == "0.0.0.0" else host, port))
        except OSError:
            pass

    def _drain(self, sock) -> None:
        """Read the socket empty without blocking; each datagram handled as the receiver
        would (the receiver thread is stopped: a close would discard them uncounted)."""
        anc = socket.CMSG_SPACE(4)
        try:
            sock.setblocking(False)
        except OSError:
            return
        while True:
            try:
                msg = sock.recvmsg(self.max_frame, anc)
            except OSError:         # BlockingIOError: empty
                return
            self._handle(*msg)

    # -- receive --------------------------------------------------------------------------------
    def _publish(self, who: int, data: bytes) -> None:
        system = self.system
        if system.halted:
            # read while the kernel halts (its channels close): counted and dead-lettered,
            # never dropped unseen
            self._count("halt_dropped", 1)
            self._dead(who, len(data), T.CHAN_CLOSED)
            return
        ch = system.channel(self.rx_name)
        self._count("rx", 1, "rx_bytes", len(data))
        try:
            code = ch.publish(meta0=who, meta1=len(data), payload=data if data else None)
        except AllocError:
            self._count("alloc_fail", 1)
            self._dead(who, len(data), T.ALLOC_FAIL)
            return
        except Exception:   # noqa: BLE001 - the channel closed under us (halt)
            self._count("rx_refused", 1)
            self._dead(who, len(data), T.CHAN_CLOSED)
            return
        if code:
            self._count("rx_refused", 1)
            self._dead(who, len(data), code, count_on=ch)

    def _dead(self, who, n, code, count=1, count_on=None):
        system = self.system
        recs = T.make(count, type=system.type_id("NET_RX"), meta0=who, meta1=n)
        system.dead_letter(recs, code, which="sys.dropped", count_on=count_on)

    def _proc_drops(self) -> int | None:
        """The socket's live drop counter: the ``drops`` column of /proc/net/udp (udp6) for
        this socket's inode (Linux); None where there is none."""
        try:
            ino = str(os.fstat(self.sock.fileno()).st_ino)
            for path in _PROC_UDP:
                with open(path) as f:
                    for line in f:
                        cols = line.split()
                        if len(cols) > 12 and cols[9] == ino:
                            return int(cols[-1])
        except (OSError, ValueError):
            return None
        return None

    def _check_os_drops(self, live: bool = True) -> None:
        """Count the datagrams the OS dropped since the last look. ``live``: read the live
        counter (/proc); else, or where there is none, the last SO_RXQ_OVFL, which is blind to
        drops after the datagram it came with."""
        total = self._proc_drops() if live else None
        if total is None:
            total = self.ovfl_total
        if total is None:
            return
        with self.lock:
            # one 32-bit counter that only grows (sk_drops): the difference mod 2**32; a reading
            # older than one already counted (the stamp on a datagram queued before the last
            # /proc read) is behind it, not 2**32 ahead
            lost = (total - self.os_seen) & 0xFFFFFFFF
            if lost == 0 or lost >= 1 << 31:
                return
            self.os_seen = total & 0xFFFFFFFF
        self._count("os_dropped", lost)
        self._dead(0, 0, NET_OS_DROP, count=lost)

    def _udp_loop(self):
        s = self.sock
        anc = socket.CMSG_SPACE(4)
        k = 0
        seen = set()
        while not self.stop.is_set():
            try:
                data, cmsgs, flags, src = s.recvmsg(self.max_frame, anc)
            except socket.timeout:
                self._check_os_drops()
                continue
            except OSError as e:
                if self.stop.is_set():
                    return
                self._os_error("recv_errors", "recvmsg", e, seen)
                continue
            stamped = self._handle(data, cmsgs, flags, src)
            k += 1
            if k & 255 == 0:
                self._check_os_drops()
            elif stamped:
                self._check_os_drops(live=False)

    def _handle(self, data, cmsgs, flags, src) -> bool:
        """One datagram read: published, or counted ``truncated``. True when it came with
        the OS drop count (SO_RXQ_OVFL)."""
        stamped = False
        for level, typ, cdata in cmsgs:
            if level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL and len(cdata) >= 4:
                self.ovfl_total = struct.unpack("I", cdata[:4])[0]
                stamped = True
        if flags & MSG_TRUNC:
            # longer than max_frame: the rest is gone, and a cut datagram must not pass
            # for a whole one
            self._count("truncated", 1)
            self._dead(peer(src), len(data), NET_ERROR)
        else:
            self._publish(peer(src), data)
        return stamped

    def _os_error(self, counter, call, e, seen) -> None:
        """An accept() / recvmsg() that failed (EMFILE, ENOBUFS...): counted, logged once per
        errno and loop, retried after a short wait (at once it would spin while it lasts)."""
        self._count(counter, 1)
        if e.errno not in seen:
            seen.add(e.errno)
            log.warning("ggmk: nic %r: %s on %s failed: %s (counted in %s; retrying every "
                        "%.2f s)", self.name, call, self.address, e, counter, _RETRY_S)
        self.stop.wait(_RETRY_S)

    def _accept_loop(self):
        s = self.sock
        seen = set()
        while not self.stop.is_set():
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if self.stop.is_set():
                    return
                self._os_error("accept_errors", "accept", e, seen)
                continue
            self._count("accepted", 1)
            self._add_conn(c)

    def _add_conn(self, c: socket.socket) -> int:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            cid = self.next_conn
            self.next_conn += 1
            self.conns[cid] = c
            self.send_locks[cid] = threading.Lock()
        self._spawn(self._conn_loop, f"nic-tcp-{cid}", cid, c)
        return cid

    def connect(self, host: str, port: int) -> int:
        """Open a TCP connection (proto 'tcp'); its id is the peer for NET_TX / NET_RX. Only
        while the module is booted (its frames are published into that system)."""
        if self.proto != "tcp":
            raise ValueError("nic: connect() is for proto='tcp'")
        if self.sock is None or self.stop.is_set():
            raise KernelStopped(f"nic: connect(): module {self.name!r} is not running (not "
                                f"booted yet, halted or being reset)")
        return self._add_conn(socket.create_connection((host, port), timeout=5))

    def _read_exact(self, c, n, buf, drain_end) -> bool:
        """Read into ``buf`` until it holds ``n`` bytes; False at EOF or an error. Once
        ``stop`` is set the connection is shut for reading: recv then returns what it still
        holds, then EOF (never blocks), for ``_DRAIN_S`` at most (a peer that keeps sending)."""
        while len(buf) < n:
            if self.stop.is_set():
                if not drain_end:
                    drain_end.append(time.monotonic() + _DRAIN_S)
                    try:
                        c.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
                elif time.monotonic() > drain_end[0]:
                    return False
            try:
                chunk = c.recv(n - len(buf))
            except socket.timeout:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            buf += chunk
        return True

    def _conn_loop(self, cid, c):
        c.settimeout(0.1)
        buf = bytearray()
        drain_end = []          # set once stop is: the deadline for reading the backlog
        while True:
            buf.clear()
            if not self._read_exact(c, 4, buf, drain_end):
                break
            n = _LEN.unpack(buf)[0]
            if n > self.max_frame:
                self._count("bad_frames", 1)
                buf.clear()
                break
            if not self._read_exact(c, 4 + n, buf, drain_end):
                break
            self._publish(cid, bytes(buf[4:]))
        if buf:
            # the connection ended inside a frame (the peer closed or reset, halt): the bytes
            # read of it (its length prefix included) are counted, never dropped unseen
            self._count("partial", 1)
            self._dead(cid, len(buf), NET_ERROR)
        self._close(cid)

    def _close(self, cid):
        with self.lock:
            c = self.conns.pop(cid, None)
            self.send_locks.pop(cid, None)
        if c is not None:
            self._count("closed", 1)
            try:
                c.close()
            except OSError:
                pass

    # -- send -----------------------------------------------------------------------------------
    def send(self, who: int, data: bytes) -> int:
        """Send now (host side or from a handler): 0, or NET_ERROR."""
        try:
            if self.proto == "udp":
                sock = self.sock
                if sock is None:                # halted, or between a reset's close and bind
                    raise OSError(_errno.EBADF, "socket closed")
                if not who:
                    raise OSError(_errno.EDESTADDRREQ, "peer 0")
                try:
                    to = addr(who)
                except ValueError as e:
                    # a bad peer word fails this record only, not the rest of its batch
                    raise OSError(_errno.EINVAL, str(e)) from None
                sock.sendto(data, to)
            else:
                with self.lock:
                    c = self.conns.get(who)
                    lk = self.send_locks.get(who)
                if c is None:
                    raise OSError(_errno.ENOTCONN, f"no connection {who}")
                if len(data) > 0xFFFFFFFF:
                    raise OSError(_errno.EMSGSIZE, "frame too large")
                with lk:
                    try:
                        c.sendall(frame(data))
                    except OSError:
                        # a frame cut short (timeout, reset) leaves the stream unframed: the
                        # connection cannot be used any more
                        self._close(who)
                        raise
        except OSError:
            self._count("tx_errors", 1)
            return NET_ERROR
        self._count("tx", 1, "tx_bytes", len(data))
        return 0

    def _count(self, *pairs) -> None:
        """Counters are bumped by several threads (receivers, workers): under a lock."""
        with self.count_lock:
            for k in range(0, len(pairs), 2):
                self.counters[pairs[k]] += pairs[k + 1]

    def on_tx(self, ctx, batch):
        recs = batch.records
        arena = ctx.system.arena
        codes = np.zeros(len(recs), dtype=np.int32)
        for i in range(len(recs)):
            p, n = int(recs["payload_ptr"][i]), int(recs["payload_len"][i])
            data = bytes(arena.view(p, n)) if p else b""
            codes[i] = self.send(int(recs["meta0"][i]), data)
        return codes if codes.any() else None

    def stats(self) -> dict:
        return dict(self.counters, connections=len(self.conns))


def module(proto: str = "udp", *, bind=("127.0.0.1", 0), name: str = "nic",
           prefix: str = "net", rx_capacity: int = 1024, rx_guarantee: str = "lossy",
           max_frame: int = 65536, rcvbuf: int | None = None, rx_mode: str = "fanout"):
    """A configured nic ``ggmk.Module`` (see the module docstring). ``m.nic``: the state
    (``address``, ``connect``, ``send``, ``stats()``)."""
    if rx_guarantee not in ("lossy", "lossless"):
        raise BootError(f"nic: rx_guarantee must be 'lossy' or 'lossless', got {rx_guarantee!r}")
    m = std_module(name, "nic")
    st = _Nic(name, proto, bind, prefix, rx_guarantee, max_frame, rcvbuf)
    m.nic = st
    m.produces(st.rx_name, "NET_RX", mode=rx_mode, guarantee=rx_guarantee,
               capacity=rx_capacity)
    m.handler(instance_type("NET_TX", name, "nic"), batch=True, consumes=f"{prefix}.tx",
              message="NET_TX", name="on_tx")(st.on_tx)
    m.init(st.boot)
    m.fini(st.halt)
    return m
