"""The control server: the control socket of a running system (see ``ggmk.control``).

One thread accepts connections; each connection gets a thread (at most ``max_clients`` at
once: past that, the oldest connection waiting for a request makes room, and when every one
is busy with a request the new one is answered ``busy`` and closed). Everything that touches
the system (submit, stats, halt) runs on the *driver* thread, the one that called
:meth:`ControlServer.serve`, so the kernel only ever sees one host thread; connection threads
hand it work and wait. A trace
collector thread copies each worker's trace ring into a bounded buffer (``ggmk trace``) and
turns warning/error events into log lines (``ggmk log``).

This file is the server itself (lifecycle, connections, requests, halt); the commands on the
system's state are in :mod:`ggmk.control.commands`, the trace collector and the commands that
read it in :mod:`ggmk.control.observe` (mixins of :class:`ControlServer`).
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from queue import Empty, SimpleQueue

import ggmk
from ggmk.control import protocol as P
from ggmk.control import views
from ggmk.control.commands import LOG_CAPACITY, REQUIRED, STREAMED, Commands
from ggmk.control.observe import Observe
from ggmk.control.paths import StatePaths
from ggmk.control.protocol import ControlError

PARTIAL_REQUEST_TIMEOUT = 10.0      # seconds a request may take, from its first byte
FIRST_REQUEST_TIMEOUT = 10.0        # seconds a new connection may take to send its first byte
IDLE_CONNECTION_TIMEOUT = 600.0     # seconds a connection may sit idle between requests
EVICT_GRACE = 0.5                   # seconds idle before a connection may be closed for a new one
MAX_REFUSING = 16                   # connections answered `busy` (lingering) at once
SEND_TIMEOUT = 10.0                 # seconds a client may take to read a response


def _claim(fut: Future) -> bool:
    """Take ``fut`` to settle it: True for exactly one caller (the driver running a job, or a
    thread answering a job queued after the driver stopped), False for the others."""
    try:
        return fut.set_running_or_notify_cancel()
    except RuntimeError:          # already taken (running or done)
        return False


class LogRing:
    """The last ``capacity`` log lines, numbered; followers wait on a condition."""

    def __init__(self, capacity: int = LOG_CAPACITY):
        self.lines: deque = deque(maxlen=capacity)
        self.seq = 0
        self.cond = threading.Condition()

    def add(self, level: str, source: str, msg: str) -> None:
        with self.cond:
            self.seq += 1
            self.lines.append({"seq": self.seq, "ts": time.time(), "level": level,
                               "source": source, "msg": msg})
            self.cond.notify_all()

    def since(self, seq: int) -> list:
        with self.cond:
            return [ln for ln in self.lines if ln["seq"] > seq]

    def tail(self, n: int) -> list:
        with self.cond:
            return list(self.lines)[-n:] if n > 0 else []


class _LogHandler(logging.Handler):
    def __init__(self, ring: LogRing):
        super().__init__(logging.INFO)
        self.ring = ring

    def emit(self, record):
        try:
            self.ring.add(record.levelname.lower(), record.name, record.getMessage())
        except Exception:   # noqa: BLE001 - logging must never raise
            pass


class ControlServer(Commands, Observe):
    """Serve ``system`` on ``paths.sock``. ``start()`` binds and listens; ``serve()`` runs the
    driver loop on the calling thread until halted; ``request_halt()`` (signal-safe) asks for
    a halt."""

    def __init__(self, system, paths: StatePaths, *, modules=(), app: str = "",
                 device: str = "none", options: dict | None = None, socket_mode: int = 0o600,
                 max_clients: int = 64, allowed_uids=None):
        self.system = system
        self.paths = paths
        self.dual = hasattr(system, "cpu") and hasattr(system, "bridge")
        self.cpu = system.cpu if self.dual else system
        self.modules = list(modules) or list(getattr(self.cpu, "modules", []))
        self.app = app
        self.device = device
        self.options = {k: v for k, v in (options or {}).items() if k != "types"}
        self.socket_mode = socket_mode
        self.max_clients = max_clients
        self.allowed_uids = set(allowed_uids) if allowed_uids is not None else {os.geteuid()}
        self.state = "running"
        self.t0 = time.time()
        self.m0 = time.monotonic()
        self.halt_report = None
        self.log = LogRing()
        self._q: SimpleQueue = SimpleQueue()
        self._stop = threading.Event()
        self._driver = None
        self._sock = None
        self._threads: set = set()
        self._nclients = 0
        self._nrefusing = 0                  # threads answering `busy` (_refuse_busy)
        self._clients_lock = threading.Lock()
        # connections waiting for their next request: conn -> (never used, since); when every
        # slot is taken, the oldest of these is closed to make room (never-used ones first),
        # so `ggmk halt` / `ggmk ps` always get in
        self._waiting: dict = {}
        self._pump = self.dual or getattr(self.cpu, "deterministic", False) or \
            type(self.cpu.hal).__name__.lower().find("sim") >= 0
        # tracing
        self.tracer = self.cpu.tracer
        self.trace_enabled = bool(getattr(self.tracer, "enabled", False)) and \
            not getattr(self.cpu, "deterministic", False)
        self._trace_lock = threading.Lock()
        self._kv_lock = threading.Lock()
        self._kv_clients: dict = {}          # kv module name -> its sdk.KV (``kv put``)
        self._trace_chunks: deque = deque()      # (worker, TRACE_DTYPE array)
        self._trace_n = 0
        self._trace_dropped = 0
        self._trace_subs: list = []
        self._gpu_chunks: deque = deque()        # DEVICE_TRACE_DTYPE arrays, trace clock
        self._gpu_n = 0
        self._gpu_dropped = 0
        self._seen_exc: set = set()
        self._log_handler = _LogHandler(self.log)
        logging.getLogger("ggmk").addHandler(self._log_handler)
        self._prom = None
        self._metrics_http = None
        self.metrics_port = None
        self.gpu_types = views.gpu_user_types(self.modules, self.cpu.type_id)
        self._full = (-1e9, None)            # (monotonic time, System.stats()) for watchers
        self._full_lock = threading.Lock()
        self._build_report = None
        self._counters: deque = deque(maxlen=1 << 16)   # (ts_ns, kernel, name, value)
        self._crossings: deque = deque(maxlen=1 << 14)  # bridge transfers (ts_ns, dir, n)
        self._crossed_upto = 0                           # newest ts_ns taken from the bridge

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        path = str(self.paths.sock)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)           # the socket is created 0600: no window with wider mode
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, self.socket_mode)
        s.listen(128)
        self._sock = s
        self._spawn(self._accept_loop, "ggmk-control-accept")
        if self.trace_enabled:
            self._spawn(self._collect_loop, "ggmk-control-trace")
        self.log.add("info", "control", f"ggmk {ggmk.__version__}: system running (pid "
                     f"{os.getpid()}, app {self.app or '-'}, device {self.device}); control "
                     f"socket {path}")

    def start_metrics(self, port: int) -> int:
        """Serve ``/metrics`` (Prometheus text) on 127.0.0.1:``port`` (0: any free port) with
        a collector that reads the counters at scrape time; returns the port."""
        from prometheus_client import start_http_server
        from ggmk.control.prom import make_registry
        httpd, _ = start_http_server(port, addr="127.0.0.1",
                                     registry=make_registry(self._prom_source))
        self._metrics_http = httpd
        self.metrics_port = httpd.server_address[1]
        self.log.add("info", "control", f"/metrics on http://127.0.0.1:{self.metrics_port}/")
        return self.metrics_port

    def _spawn(self, fn, name, *args):
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        self._threads.add(t)
        t.start()
        return t

    def request_halt(self, timeout: float = 5.0) -> None:
        """Ask the driver to halt the system (callable from a signal handler)."""
        self._q.put((self._do_halt, (timeout,), Future()))

    def serve(self) -> dict | None:
        """The driver loop; returns the halt accounting once halted."""
        self._driver = threading.current_thread()
        last_check = 0.0
        sys_ = self.system
        while not self._stop.is_set():
            busy = False
            if self._pump:
                try:
                    busy = not sys_.idle()
                except Exception:   # noqa: BLE001
                    busy = False
            try:
                item = self._q.get_nowait() if busy else self._q.get(timeout=0.05)
            except Empty:
                item = None
            while item is not None:
                fn, args, fut = item
                if _claim(fut):
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as e:   # noqa: BLE001 - handed to the waiter
                        fut.set_exception(e)
                if self._stop.is_set():
                    break
                try:
                    item = self._q.get_nowait()
                except Empty:
                    item = None
            if self._stop.is_set():
                break
            if busy:
                try:
                    sys_.run(until_idle=True, timeout=0.005)
                except Exception as e:   # noqa: BLE001
                    self.log.add("error", "driver", f"run failed: {type(e).__name__}: {e}")
            now = time.monotonic()
            if now - last_check > 0.2:
                last_check = now
                self._check_exceptions()
        self._shutdown()
        return self.halt_report

    def _shutdown(self) -> None:
        # answer whatever is still queued
        while True:
            try:
                fn, args, fut = self._q.get_nowait()
            except Empty:
                break
            if _claim(fut):
                if fn == self._do_halt:
                    fut.set_result(self.halt_report)
                else:
                    fut.set_exception(ControlError("halted", "the system halted"))
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        with self.log.cond:
            self.log.cond.notify_all()
        # give connection threads a moment to send their last responses
        deadline = time.monotonic() + 2.0
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        logging.getLogger("ggmk").removeHandler(self._log_handler)

    def _cleanup_files(self) -> None:
        for p in (self.paths.sock, self.paths.pid):
            try:
                if p == self.paths.pid and self.paths.read_pid() != os.getpid():
                    continue
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _do_halt(self, timeout: float) -> dict:
        if self.halt_report is not None:
            return self.halt_report
        self.state = "halting"
        self.log.add("info", "control", f"halting (timeout {timeout}s)")
        try:
            rep = self.system.halt(timeout=timeout)
        except Exception as e:   # noqa: BLE001 - halted anyway; report it
            rep = {"error": f"{type(e).__name__}: {e}"}
        self._collect_trace()
        self.halt_report = dict(rep)
        self.state = "halted"
        self.log.add("info", "control", f"halted: {self.halt_report}")
        self._cleanup_files()
        self._stop.set()
        return self.halt_report

    def call(self, fn, *args, timeout: float = 60.0):
        """Run ``fn(*args)`` on the driver thread and return its result."""
        if threading.current_thread() is self._driver:
            return fn(*args)
        if self._stop.is_set():
            raise ControlError("halted", "the system halted")
        fut = Future()
        self._q.put((fn, args, fut))
        if self._stop.is_set():
            # the driver may have drained the queue (``_shutdown``) before this job got in:
            # nobody would run it. Answer it here unless the driver already took it.
            self._answer_halted(fut)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise ControlError("internal", f"the system did not answer within {timeout}s")

    def _answer_halted(self, fut: Future) -> None:
        """Settle ``fut`` (a job the driver will never run) as refused by the halt, unless the
        driver took it first (then its answer stands)."""
        if _claim(fut):
            fut.set_exception(ControlError("halted", "the system halted"))

    # -- connections ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._sock], [], [], 0.2)
                if not r:
                    continue
                conn, _ = self._sock.accept()
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            with self._clients_lock:
                full = self._nclients >= self.max_clients
                victim = self._pick_idle() if full else None
                if not full or victim is not None:
                    self._nclients += 1
            if victim is not None:
                # every slot taken: the oldest connection waiting for a request (never-used
                # ones first) makes room, so a halt or ps always gets in
                self.log.add("warn", "control", f"{self.max_clients} clients: closed the "
                             f"oldest idle connection to serve a new one")
                try:
                    victim.shutdown(socket.SHUT_RDWR)   # its thread sees EOF and ends
                except OSError:
                    pass
            elif full:
                self._refuse_busy(conn)
                continue
            self._spawn(self._serve_conn, "ggmk-control-conn", conn)

    def _pick_idle(self):
        """The connection to close for a new one (called with ``_clients_lock``): the oldest
        never-used one, else the oldest waiting between requests; None when all are busy."""
        # (one that connected or answered a moment ago is about to send: not taken)
        upto = time.monotonic() - EVICT_GRACE
        idle = [(not fresh, since, i, c) for i, (c, (fresh, since))
                in enumerate(self._waiting.items()) if since <= upto]
        if not idle:
            return None
        conn = min(idle)[3]
        del self._waiting[conn]
        return conn

    def _refuse_busy(self, conn) -> None:
        """Answer ``busy`` off the accept thread (at most MAX_REFUSING at once, past that
        without lingering): lingering there, up to 0.5 s a refusal, stalled every accept
        behind a flood of connections until the listen queue filled and clients' connects
        failed (EAGAIN: "no system is running")."""
        msg = f"too many clients (at most {self.max_clients}, all of them busy with a request)"
        with self._clients_lock:
            spare = self._nrefusing < MAX_REFUSING
            if spare:
                self._nrefusing += 1
        if not spare:
            try:
                conn.setblocking(False)     # a new socket's send buffer takes the line
                conn.send(P.error(None, "busy", msg))
            except OSError:
                pass
            conn.close()
            return

        def refuse():
            try:
                self._refuse(conn, "busy", msg)
            finally:
                with self._clients_lock:
                    self._nrefusing -= 1
                self._threads.discard(threading.current_thread())
        self._spawn(refuse, "ggmk-control-refuse")

    def _refuse(self, conn, code, msg) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(P.error(None, code, msg))
            self._linger(conn, 0.5, 1 << 16)
        except OSError:
            pass
        finally:
            conn.close()

    def _peer(self, conn) -> tuple[int, int, int]:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)

    def _serve_conn(self, conn) -> None:
        try:
            pid, uid, _gid = self._peer(conn)
            if uid not in self.allowed_uids:
                self.log.add("warn", "control", f"refused a client: pid {pid} uid {uid} "
                             f"(allowed: uid {sorted(self.allowed_uids)})")
                self._refuse(conn, "permission_denied",
                             f"uid {uid} may not control this system (owner uid "
                             f"{os.geteuid()})")
                return
            conn.settimeout(SEND_TIMEOUT)
            buf = b""
            used = False
            while not self._stop.is_set():
                line, buf, eof = self._read_line(conn, buf, used)
                used = True
                if line is None:
                    return
                if line.strip():
                    if not self._handle(conn, line):
                        return
                if eof:
                    return
        except Exception:   # noqa: BLE001 - one connection never takes the server down
            self.log.add("error", "control", "connection failed:\n" + traceback.format_exc())
        finally:
            with self._clients_lock:
                self._waiting.pop(conn, None)
            try:
                conn.close()
            except OSError:
                pass
            with self._clients_lock:
                self._nclients -= 1
            self._threads.discard(threading.current_thread())

    def _read_line(self, conn, buf: bytes, used: bool = True):
        """(line, rest, eof). line None: close the connection (EOF, timeout, too large).
        ``used``: the connection sent a request before (a new one has FIRST_REQUEST_TIMEOUT
        to start its first, then IDLE_CONNECTION_TIMEOUT between requests). While nothing of
        a request has come, the connection is listed as waiting (``_pick_idle``)."""
        last = time.monotonic()
        try:
            return self._read_line_waiting(conn, buf, used, last)
        finally:
            with self._clients_lock:
                self._waiting.pop(conn, None)

    def _read_line_waiting(self, conn, buf: bytes, used: bool, last: float):
        waiting = False
        # when this request's first byte came: a request must end within
        # PARTIAL_REQUEST_TIMEOUT of it (timed from the last byte, a client trickling a byte
        # every few seconds held its slot forever, and enough of them locked out `ggmk halt`)
        begun = last if buf.strip() else None
        while True:
            if not buf.strip() and not waiting:
                with self._clients_lock:
                    self._waiting[conn] = (not used, last)
                waiting = True
            elif buf.strip() and waiting:
                with self._clients_lock:
                    self._waiting.pop(conn, None)
                waiting = False
            i = buf.find(b"\n")
            if i >= 0:
                if i + 1 > P.MAX_REQUEST:
                    self._send(conn, P.error(None, "too_large",
                                             f"request of {i + 1} bytes; at most "
                                             f"{P.MAX_REQUEST}"))
                    self._linger(conn)
                    return None, b"", True
                return buf[:i], buf[i + 1:], False
            if len(buf) >= P.MAX_REQUEST:
                self._send(conn, P.error(None, "too_large",
                                         f"request longer than {P.MAX_REQUEST} bytes"))
                self._linger(conn)
                return None, b"", True
            if self._stop.is_set():
                return None, b"", True
            r, _, _ = select.select([conn], [], [], 0.2)
            now = time.monotonic()
            if begun is not None and now - begun > PARTIAL_REQUEST_TIMEOUT:
                self._send(conn, P.error(None, "timeout", "incomplete request (no newline "
                                         f"within {PARTIAL_REQUEST_TIMEOUT:g}s)"))
                self._linger(conn)
                return None, b"", True
            if not r:
                limit = PARTIAL_REQUEST_TIMEOUT if buf else \
                    IDLE_CONNECTION_TIMEOUT if used else FIRST_REQUEST_TIMEOUT
                if now - last > limit:
                    if buf:
                        self._send(conn, P.error(None, "timeout", "incomplete request "
                                                 f"(no newline within {limit:g}s)"))
                    return None, b"", True
                continue
            try:
                data = conn.recv(65536)
            except (ConnectionResetError, OSError):
                return None, b"", True
            if not data:
                # half-closed: a last request without its newline is still answered
                return (buf, b"", True) if buf.strip() else (None, b"", True)
            buf += data
            last = now
            if begun is None and buf.strip():
                begun = now

    def _linger(self, conn, seconds: float = 1.0, limit: int = 4 << 20) -> None:
        """Before closing on an error: stop writing and discard what the client still sends
        (closing with unread input would reset the connection and lose the error line)."""
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            got = 0
            while got < limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([conn], [], [], left)
                if not r:
                    break
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
        except OSError:
            pass

    def _send(self, conn, data: bytes) -> bool:
        try:
            conn.sendall(data)
            return True
        except (OSError, socket.timeout):
            return False

    def _handle(self, conn, line: bytes) -> bool:
        """Answer one request; False: close the connection."""
        rid = None
        try:
            rid, cmd, args = P.parse_request(line)
            if cmd not in P.COMMANDS:
                raise ControlError("unknown_command", f"unknown command {cmd!r}; known: "
                                   f"{', '.join(P.COMMANDS)}")
            fn = getattr(self, "cmd_" + cmd)
            result = fn(conn, rid, args)
            if result is STREAMED:
                return True
            return self._send(conn, P.ok(rid, result))
        except ControlError as e:
            return self._send(conn, P.error(rid, e.code, e.message))
        except Exception as e:   # noqa: BLE001
            self.log.add("error", "control", f"request failed:\n{traceback.format_exc()}")
            return self._send(conn, P.error(rid, "internal", f"{type(e).__name__}: {e}"))

    def _client_gone(self, conn, wait: float, rid=None) -> bool:
        """Wait up to ``wait`` s (in slices of at most 0.1 s: a halt cuts the wait short, so
        the stream's end line goes out while the server still waits for its connections);
        True when the stream must end: the client closed (nothing more is sent) or sent
        anything (the stream's end line is sent; what it sent is read as its next request)."""
        deadline = time.monotonic() + wait
        try:
            while True:
                left = deadline - time.monotonic()
                r, _, _ = select.select([conn], [], [], max(0.0, min(left, 0.1)))
                if r:
                    break
                if left <= 0.1 or self._stop.is_set():
                    return False
            if conn.recv(1, socket.MSG_PEEK):
                self._send(conn, P.end(rid))
        except (OSError, ValueError):
            pass
        return True

    # -- argument helpers ----------------------------------------------------------------------
    @staticmethod
    def _arg(args, name, kind, default=None, *, lo=None, hi=None):
        v = args.get(name, default)
        if v is None or v is REQUIRED:
            if default is REQUIRED:
                raise ControlError("bad_args", f"missing argument {name!r}")
            return default
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ControlError("bad_args", f"{name!r} must be an integer, got {v!r}")
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ControlError("bad_args", f"{name!r} must be a number, got {v!r}")
            v = float(v)
        if kind is str and not isinstance(v, str):
            raise ControlError("bad_args", f"{name!r} must be a string, got {v!r}")
        if kind is bool and not isinstance(v, bool):
            raise ControlError("bad_args", f"{name!r} must be true or false, got {v!r}")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ControlError("bad_args", f"{name!r} = {v!r} is out of range {lo}..{hi}")
        return v

    def _check_live(self) -> None:
        if self.state != "running":
            raise ControlError("halted", f"the system is {self.state}")

    def cmd_halt(self, conn, rid, args):
        timeout = self._arg(args, "timeout", float, 5.0, lo=0.0, hi=3600.0)
        if self.halt_report is not None:
            return {"accounting": self.halt_report, "already": True}
        fut = Future()
        self._q.put((self._do_halt, (timeout,), fut))
        if self._stop.is_set() and _claim(fut):
            # halted meanwhile (its queue may be drained already): the report is final
            fut.set_result(self.halt_report)
        rep = fut.result(timeout + 60)
        return {"accounting": rep}
