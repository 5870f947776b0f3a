"""The control server: the control socket of a running system (see ``ggmk.control``).

One thread accepts connections; each connection gets a thread (at most ``max_clients`` at
once: past that, the oldest connection waiting for a request makes room, and when every one
is busy with a request the new one is answered ``busy`` and closed). Everything that touches
the system (submit, stats, halt) runs on the *driver* thread, the one that called
:meth:`ControlServer.serve`, so the kernel only ever sees one host thread; connection threads
hand it work and wait. A trace
collector thread copies each worker's trace ring into a bounded buffer (``ggmk trace``) and
turns warning/error events into log lines (``ggmk log``).
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

import numpy as np

import ggmk
from ggmk import sdk
from ggmk.control import protocol as P
from ggmk.control import views
from ggmk.control.paths import StatePaths
from ggmk.control.protocol import TRACE_CAPACITY, ControlError
from ggmk.errors import KernelStopped

PARTIAL_REQUEST_TIMEOUT = 10.0      # seconds a request may take, from its first byte
FIRST_REQUEST_TIMEOUT = 10.0        # seconds a new connection may take to send its first byte
IDLE_CONNECTION_TIMEOUT = 600.0     # seconds a connection may sit idle between requests
EVICT_GRACE = 0.5                   # seconds idle before a connection may be closed for a new one
KV_PUT_TIMEOUT = 10.0               # seconds `kv put` waits for the module to apply the put
REQUIRED = object()                 # _arg's default for an argument a command cannot go without
MAX_REFUSING = 16                   # connections answered `busy` (lingering) at once
SEND_TIMEOUT = 10.0                 # seconds a client may take to read a response
LOG_CAPACITY = 10_000               # log lines kept
COLLECT_INTERVAL = 0.05             # seconds between trace collections
FULL_STATS_MAX_AGE = 0.5            # seconds a full System.stats() is shared by watchers

_STOP = object()


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


class _TraceFollower:
    """A ``ggmk trace -f`` client's queue of trace chunks (lists of (worker, events)): the
    newest ``capacity`` chunks; what falls off the old end (a client that reads slower than
    the trace grows) is counted, in events, and told to the client (``{"dropped": n}``)."""

    def __init__(self, capacity: int = 1024):
        self.q: deque = deque()
        self.capacity = capacity
        self.dropped = 0
        self.lock = threading.Lock()

    def push(self, chunk: list) -> None:
        with self.lock:
            if len(self.q) >= self.capacity:
                self.dropped += sum(len(part) for _, part in self.q.popleft())
            self.q.append(chunk)

    def take(self) -> tuple[list, int]:
        """Everything queued (flattened) and the events dropped since the last take."""
        with self.lock:
            out = [x for chunk in self.q for x in chunk]
            self.q.clear()
            lost, self.dropped = self.dropped, 0
        return out, lost


class _LogHandler(logging.Handler):
    def __init__(self, ring: LogRing):
        super().__init__(logging.INFO)
        self.ring = ring

    def emit(self, record):
        try:
            self.ring.add(record.levelname.lower(), record.name, record.getMessage())
        except Exception:   # noqa: BLE001 - logging must never raise
            pass


def _device_clock_offset(target: str) -> int:
    """Nanoseconds to add to a GPU kernel trace timestamp to put it on the trace's clock
    (``time.perf_counter_ns``, CLOCK_MONOTONIC). ``cpu`` and ``sim`` read CLOCK_MONOTONIC
    themselves (same machine, also from a device process): 0. ``cuda`` reads ``%globaltimer``,
    nanoseconds since the Unix epoch: the offset between the wall clock and the monotonic
    clock, taken now (good to the timer's microsecond resolution)."""
    if target != "cuda":
        return 0
    return time.perf_counter_ns() - time.time_ns()


class ControlServer:
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
            if result is _STOP:
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

    # -- commands ------------------------------------------------------------------------------
    def cmd_ping(self, conn, rid, args):
        return {"protocol": P.PROTOCOL_VERSION, "version": ggmk.__version__,
                "pid": os.getpid(), "state": self.state, "socket": str(self.paths.sock),
                "metrics_port": self.metrics_port}

    def _stats(self) -> dict:
        return self.system.stats()

    def _cpu_stats(self, s) -> dict:
        return s["cpu"] if self.dual else s

    def _stats_cached(self, max_age: float = FULL_STATS_MAX_AGE) -> dict:
        """The full stats, rebuilt at most every ``max_age`` s however many clients watch."""
        with self._full_lock:
            t, st = self._full
            if st is None or time.monotonic() - t > max_age:
                st = self.call(self._stats)
                self._full = (time.monotonic(), st)
            return st

    def _summary(self) -> dict:
        """Per-kernel rows and bridge totals from counters (cheap; read on the connection's
        thread: whole-word reads of counters the workers keep writing)."""
        if self.state != "running":
            return {"kernels": [], "bridge": None}
        return views.summary(self)

    def _ps(self) -> dict:
        return {"state": self.state, "pid": os.getpid(), "app": self.app,
                "device": self.device, "uptime_s": time.monotonic() - self.m0,
                "started": self.t0, "socket": str(self.paths.sock),
                "clients": self._nclients, "metrics_port": self.metrics_port,
                **self._summary()}

    def cmd_ps(self, conn, rid, args):
        return self._ps()

    def cmd_stats(self, conn, rid, args):
        fmt = self._arg(args, "format", str, "json")
        if fmt == "json":
            return self.call(self._stats)
        if fmt == "prometheus":
            if self._prom is None:
                try:
                    from ggmk.control.prom import make_registry
                    self._prom = make_registry(self._prom_source)
                except ImportError as e:
                    raise ControlError("unsupported", "Prometheus output needs "
                                       f"prometheus_client in the system's environment: {e}")
            from prometheus_client import generate_latest
            return {"text": generate_latest(self._prom).decode()}
        raise ControlError("bad_args", f"format {fmt!r}: allowed json, prometheus")

    def _prom_source(self) -> dict:
        """What the Prometheus collector reads at scrape time."""
        return {"stats": self.call(self._stats), "kernels": self._summary()["kernels"],
                "uptime_s": time.monotonic() - self.m0, "dual": self.dual}

    def _emit(self, tname, payload_json, chan, count, meta0, meta1):
        self._check_live()
        cpu = self.cpu
        tid = self._known_type(tname)
        info = cpu.types.info(tid)
        if chan is None and cpu.handler_of[tid] is None:
            # submitted anyway, every task would land on sys.error (UNKNOWN_TYPE)
            chans = [c["name"] for c in self._chans()
                     if c.get("type") == info.name and c.get("kernel") != "gpu"]
            hint = (f"; it is carried by channel {', '.join(chans)}: pass --chan "
                    f"{chans[0]}" if chans else "")
            raise ControlError("no_handler", f"no CPU handler takes {info.name}: submitted, "
                               f"each task would go to sys.error (UNKNOWN_TYPE){hint}")
        payload = None
        if payload_json is not None:
            try:
                payload = info.encode_json(payload_json)
            except Exception as e:   # noqa: BLE001 - PayloadError names the field
                raise ControlError("payload", str(e)) from None
        elif info.fields:
            raise ControlError("payload", f"{info.name} has payload fields "
                               f"{[f.name for f in info.fields]}; pass --payload JSON")
        out = {"accepted": 0, "count": count, "type": info.name, "type_id": tid}
        if chan is not None:
            if chan.startswith("sys."):
                # the system's own untyped channels (sys.error, sys.dropped): what lands there
                # is the kernel's accounting, not something to publish
                raise ControlError("bad_args", f"--chan {chan!r}: the sys.* channels carry the "
                                   "system's own dead letters and cannot be published to; "
                                   "allowed: a module's channel (`ggmk chan ls`)")
            try:
                ch = self.system.channel(chan)
            except Exception as e:   # noqa: BLE001
                raise ControlError("unknown_channel", f"no channel {chan!r}: {e}") from None
            if ch.type_id and ch.type_id != tid:
                raise ControlError("bad_args", f"channel {chan!r} carries "
                                   f"{cpu.type_name(ch.type_id)}, not {info.name}")
            out["channel"] = chan
            # with count given, publish returns how many were accepted (a prefix); it stores
            # the payload once and shares it (retained) among the messages
            try:
                accepted = int(ch.publish(meta0=meta0, meta1=meta1, payload=payload,
                                          count=count, type=tid))
            except ggmk.errors.AllocError:
                out["refused"] = "ALLOC_FAIL"
                return out
            out["accepted"] = accepted
            if accepted < count:       # the rest was refused, nothing of it kept: try again
                out["refused"] = "CHAN_CLOSED" if getattr(ch, "closed", False) else "CHAN_FULL"
            return out
        if payload is None:
            out["accepted"] = int(self.system.submit(tid, meta0, meta1, count=count))
            return out
        # one copy of the payload in the arena, shared by the count tasks (retained count - 1
        # times, as Channel.publish does): fast, and all or nothing when the arena is full
        arena = cpu.arena
        try:
            ptr, plen = cpu.store_payload(tid, payload)
        except ggmk.errors.AllocError:
            out["refused"] = "ALLOC_FAIL"
            return out
        if count > 1:
            arena.retain(ptr, count - 1)
        try:
            recs = ggmk.task.make(count, type=tid, payload_ptr=ptr, payload_len=plen,
                                  meta0=meta0, meta1=meta1)
        except BaseException:
            arena.release(ptr, count)
            raise
        # (what the scheduler does not accept goes to sys.error with a reason, payload and all)
        out["accepted"] = int(self.system.submit_batch(recs))
        return out

    def cmd_emit(self, conn, rid, args):
        tname = self._arg(args, "type", str)
        if not tname:
            raise ControlError("bad_args", "emit needs 'type'")
        payload = args.get("payload")
        if payload is not None and not isinstance(payload, str):
            raise ControlError("bad_args", "'payload' must be the JSON text of an object")
        count = self._arg(args, "count", int, 1, lo=1, hi=1_000_000)
        meta0 = self._arg(args, "meta0", int, 0, lo=0, hi=2**64 - 1)
        meta1 = self._arg(args, "meta1", int, 0, lo=0, hi=2**64 - 1)
        chan = self._arg(args, "chan", str, None)
        return self.call(self._emit, tname, payload, chan, count, meta0, meta1)

    def _chans(self) -> list:
        if self.state != "running":
            return []
        chs = getattr(self.cpu, "channels", None)
        cpu = {} if chs is None else chs.stats()
        return views.channel_rows(self, cpu, views.gpu_metrics(self) if self.dual else None,
                                  views.bridge_summary(self))

    def cmd_chan_ls(self, conn, rid, args):
        return {"channels": self._chans()}

    def cmd_chan_inspect(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        rows = self._chans()
        for c in rows:
            if c.get("name") == name:
                out = dict(c)
                chs = getattr(self.cpu, "channels", None)
                full = (chs.stats() if chs is not None else {}).get(name)
                if isinstance(full, dict):
                    out.update(full)
                b = (views.bridge_summary(self) or {}).get("channels", {}).get(name)
                if b is not None:
                    out["bridge"] = b
                if self.dual:
                    g = ((views.gpu_metrics(self) or {}).get("channels") or {}).get(name)
                    if g is not None:
                        out["gpu"] = g
                return out
        raise ControlError("unknown_channel", f"no channel {name!r}; known: "
                           f"{[c.get('name') for c in rows]}")

    def _module_row(self, m) -> dict:
        kernel = "cpu" if isinstance(m, ggmk.Module) else "gpu"
        handlers = []
        for h in getattr(m, "handlers", []):
            handlers.append({"type": str(getattr(h, "type", "?")),
                             "name": getattr(h, "name", None),
                             "batch": bool(getattr(h, "batch", False)),
                             "deterministic": bool(getattr(h, "deterministic", False))})
        chans = []
        for d in getattr(m, "channels", []):
            chans.append({"name": getattr(d, "name", "?"),
                          "direction": getattr(d, "direction", "?"),
                          "type": str(getattr(d, "type", "?")),
                          "mode": getattr(d, "mode", None),
                          "guarantee": getattr(d, "guarantee", None)})
        if kernel == "gpu":
            # a GPU module declares what it consumes on its handlers only
            seen = {(c["name"], c["direction"]) for c in chans}
            for h in getattr(m, "handlers", []):
                cons = getattr(h, "consumes", None) or ()
                for name in (cons,) if isinstance(cons, str) else cons:
                    if (name, "consume") not in seen:
                        seen.add((name, "consume"))
                        chans.append({"name": name, "direction": "consume",
                                      "type": str(getattr(h, "message", None) or h.type),
                                      "mode": None, "guarantee": None})
        return {"name": m.name, "version": getattr(m, "version", None), "kernel": kernel,
                "handlers": handlers, "channels": chans}

    def cmd_mod_ls(self, conn, rid, args):
        return {"modules": [self._module_row(m) for m in self.modules]}

    def cmd_mod_info(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        for m in self.modules:
            if m.name == name:
                row = self._module_row(m)
                if row["kernel"] == "gpu":
                    # the GPU kernel's own counters, keyed by type id (the CPU kernel's
                    # stats never see a GPU handler run)
                    gtypes = (views.gpu_metrics(self) or {}).get("types", {})
                    for h in row["handlers"]:
                        try:
                            tid = self.cpu.type_id(h["type"])
                        except (KeyError, ValueError, TypeError):
                            tid = None
                        h["counters"] = gtypes.get(str(tid), gtypes.get(tid, {}))
                    return row
                types = self._cpu_stats(self._stats_cached()).get("types", {})
                for h in row["handlers"]:
                    h["counters"] = types.get(h["type"], {})
                return row
        raise ControlError("unknown_module", f"no module {name!r}; known: "
                           f"{[m.name for m in self.modules]}")

    def cmd_kern_ls(self, conn, rid, args):
        return {"kernels": self._summary()["kernels"]}

    def _find_module(self, name):
        for m in self.modules:
            if m.name == name:
                return m
        raise ControlError("unknown_module", f"no module {name!r}; known: "
                           f"{[m.name for m in self.modules]}")

    def cmd_mod_reset(self, conn, rid, args):
        name = self._arg(args, "name", str, REQUIRED)
        self._check_live()
        m = self._find_module(name)
        if not isinstance(m, ggmk.Module):
            raise ControlError("unsupported", f"module {name!r} runs on the GPU kernel: a GPU "
                               "module is reset with its kernel (the watchdog resets and "
                               "reboots the GPU kernel); `ggmk mod reset` resets CPU modules")
        rep = self.call(self.cpu.reset_module, name)
        self.log.add("info", "control", f"module {name} reset: poison cleared on "
                     f"{rep['cleared'] or 'no type'}; init {'re-run' if rep['init'] else 'none'}")
        return rep

    def _kern_info(self) -> dict:
        cpu = self.cpu
        ks = {k["name"]: k for k in self._summary()["kernels"]}
        info = {"cpu": {**ks.get("cpu", {}), "nworkers": cpu.nworkers,
                        "modules": [m.name for m in self.modules if isinstance(m, ggmk.Module)],
                        "options": {k: v for k, v in self.options.items()
                                    if isinstance(v, (int, float, str, bool, type(None)))}}}
        if self.dual:
            sys_ = self.system
            kern = sys_.kernel
            built = getattr(kern, "built", None)
            cfg = getattr(kern, "config", None)
            info["gpu"] = {
                **ks.get("gpu", {}),
                "modules": [m.name for m in self.modules if not isinstance(m, ggmk.Module)],
                "boot": [{"step": a, "t_s": round(t, 4), "detail": d}
                         for a, t, d in sys_.boot_log],
                "gpu_drv": sys_.device_info,
                "build": None if built is None else {
                    "key": built.key, "path": str(built.path), "target": sys_.target,
                    "handlers": [{"module": h.module.name, "name": h.name, "type": int(h.type),
                                  "granularity": getattr(h, "granularity", None)}
                                 for h in built.handlers],
                    "noinline": list(built.noinline),
                    "channels": [c.name for c in built.chans],
                    "blocks": getattr(cfg, "blocks", None),
                    "threads": getattr(cfg, "threads", None)},
                "report": self._build_report}
        return info

    def cmd_kern_info(self, conn, rid, args):
        self._check_live()
        want = self._arg(args, "report", bool, False)
        if want and not self.dual:
            raise ControlError("unsupported", "--report: this system has no GPU kernel (booted "
                               f"with --device {self.device}): there is no ptxas report to "
                               "build; boot with --device auto|cpu|sim|cuda, or use `ggmk "
                               "build APP`")
        if want and self._build_report is None:
            # the ptxas report of the running GPU kernel: compiled on this connection's thread
            # (it touches no kernel state), once per system
            from ggmk.control import buildinfo
            try:
                self._build_report = buildinfo.report(self.modules, self._types_opts())
            except Exception as e:   # noqa: BLE001 - no toolchain: say so, do not fail kern info
                self._build_report = {"error": f"{type(e).__name__}: {e}"}
        return self._kern_info()

    def _types_opts(self) -> dict:
        return {"types": self.cpu.types}

    # -- kv ------------------------------------------------------------------------------------
    def _kv(self, name):
        from ggmk.modules.kv import _KV
        found = [m for m in self.modules if isinstance(getattr(m, "kv", None), _KV)]
        if not found:
            raise ControlError("unsupported", "this system has no kv module "
                               "(ggmk.modules.kv.module())")
        if name is None:
            if len(found) > 1:
                raise ControlError("bad_args", f"{len(found)} kv modules: pass --name (one of "
                                   f"{[m.name for m in found]})")
            return found[0]
        for m in found:
            if m.name == name:
                return m
        raise ControlError("unknown_module", f"no kv module {name!r}; known: "
                           f"{[m.name for m in found]}")

    @staticmethod
    def _kv_value(v):
        if isinstance(v, int):
            return {"value": v}
        b = bytes(v)
        try:
            return {"value": b.decode("utf-8"), "bytes": len(b)}
        except UnicodeDecodeError:
            return {"value_hex": b.hex(), "bytes": len(b)}

    def cmd_kv(self, conn, rid, args):
        op = self._arg(args, "op", str)
        m = self._kv(self._arg(args, "name", str, None))
        st = m.kv
        if op == "ls":
            limit = self._arg(args, "limit", int, 1000, lo=1, hi=1_000_000)
            with st.table.lock:
                items = sorted(st.table.items())
            return {"module": m.name, "size": len(items), "capacity": st.table.capacity,
                    "items": [{"key": k, **self._kv_value(v)} for k, v in items[:limit]],
                    "stats": st.stats()}
        key = self._arg(args, "key", int, None, lo=0, hi=2**64 - 1)
        if key is None:
            raise ControlError("bad_args", f"kv {op} needs 'key' (an integer 0..2**64-1)")
        if op == "get":
            with st.table.lock:
                v = st.table.get(key)
            if v is None:
                return {"module": m.name, "key": key, "found": False}
            return {"module": m.name, "key": key, "found": True, **self._kv_value(v)}
        if op != "put":
            raise ControlError("bad_args", f"kv op {op!r}: allowed get, put, ls")
        self._check_live()
        value = args.get("value")
        text = args.get("text")
        if (value is None) == (text is None):
            raise ControlError("bad_args", "kv put needs exactly one of 'value' (an integer) "
                               "and 'text' (a string stored as bytes)")
        if value is not None:
            value = self._arg(args, "value", int, lo=0, hi=2**64 - 1)
        else:
            value = self._arg(args, "text", str)
        return self._kv_put(m, key, value)

    def _kv_put(self, m, key, value):
        """Put through the module's own ``NAME.put`` channel as an ``sdk.KV`` client does: the
        module's answer on ``NAME.resp``, matched to this put by its tag, says whether it was
        stored. (Watching the table for the value mistook an int put into a table of byte
        values for "not stored", and could not tell a full table from another put of the
        key.)"""
        st = m.kv
        if isinstance(value, str):
            value = value.encode()
            if len(value) > st.value_size:
                raise ControlError("bad_args", f"text of {len(value)} bytes; kv {m.name!r} "
                                   f"keeps values of at most {st.value_size} bytes")
        elif st.inline and value > st.vmax:
            raise ControlError("bad_args", f"value {value} does not fit kv {m.name!r}'s "
                               f"{st.value_size}-byte values (at most {st.vmax})")
        with self._kv_lock:
            client = self._kv_clients.get(m.name)
            if client is None:
                client = self._kv_clients[m.name] = sdk.KV(self.system, m.name,
                                                           timeout=KV_PUT_TIMEOUT)
        try:
            client.put(key, value)
            status = "ok"
        except sdk.KV.KVError as e:
            status = f"not stored ({str(e).rsplit(': ', 1)[-1].lower().replace('_', ' ')})"
        except TimeoutError:
            status = f"not stored within {KV_PUT_TIMEOUT:g}s (no answer from {m.name}.resp)"
        except KernelStopped:
            raise ControlError("halted", "the system halted") from None
        return {"module": m.name, "key": key, "stored": status == "ok", "status": status,
                "stats": st.stats()}

    def cmd_log(self, conn, rid, args):
        n = self._arg(args, "lines", int, 50, lo=0, hi=LOG_CAPACITY)
        follow = self._arg(args, "follow", bool, False)
        lines = self.log.tail(n)
        if not follow:
            return {"lines": lines}
        seq = lines[-1]["seq"] if lines else self.log.seq
        if lines and not self._send(conn, P.stream(rid, {"lines": lines})):
            return _STOP
        while not self._stop.is_set():
            with self.log.cond:
                if self.log.seq == seq:
                    self.log.cond.wait(0.25)
            new = self.log.since(seq)
            if new:
                seq = new[-1]["seq"]
                if not self._send(conn, P.stream(rid, {"lines": new})):
                    return _STOP
            if self._client_gone(conn, 0, rid):
                return _STOP
        self._send(conn, P.end(rid))
        return _STOP

    # -- tracing -------------------------------------------------------------------------------
    def _collect_loop(self) -> None:
        while not self._stop.wait(COLLECT_INTERVAL):
            try:
                self._collect_trace()
                self._sample_counters()
            except Exception:   # noqa: BLE001
                self.log.add("error", "trace", traceback.format_exc())

    def _sample_counters(self) -> None:
        """Queue depths of both kernels and the bridge's per-channel counters, on the trace's
        clock (perf_counter_ns), for the Perfetto counter tracks: a few counter reads per
        collection, nothing on the kernels' hot path."""
        if self.state != "running":
            return
        ts = time.perf_counter_ns()
        rows = [(ts, "cpu", "queued", int(self.cpu.sched.outstanding))]
        if self.dual:
            gm = views.gpu_metrics(self) or {}
            # (the live kernel's own counters: the cumulative ones keep what a reset-away kernel
            # never dispatched, which is not queued anywhere now)
            gl = gm.get("live_global", gm.get("global", {}))
            rows.append((ts, "gpu", "queued",
                         max(0, gl.get("enqueued", 0) - gl.get("dispatched", 0))))
            b = views.bridge_summary(self) or {}
            for name, c in (b.get("channels") or {}).items():
                rows.append((ts, "bridge", f"{name} crossed", c.get("pushed", c.get("crossed", 0))))
                rows.append((ts, "bridge", f"{name} in flight",
                             c.get("in_flight", c.get("waiting_for_room", 0))))
        new = []
        b = getattr(self.system, "bridge", None) if self.dual else None
        if b is not None and getattr(b, "crossings", None):
            new = [c for c in list(b.crossings) if c[0] > self._crossed_upto]
            if new:
                self._crossed_upto = new[-1][0]
        with self._trace_lock:
            self._counters.extend(rows)
            self._crossings.extend(new)

    def _collect_trace(self) -> None:
        """Copy each worker's new trace events (reads the tracer's per-worker rings: the drain
        API merges workers, and ``ggmk trace`` needs one track per worker)."""
        if not self.trace_enabled:
            return
        tr = self.tracer
        new = []
        with self._trace_lock:
            with tr._drain_lock:
                for w, ring in enumerate(tr._rings):
                    part = ring.read(None)
                    if part is not None and len(part):
                        new.append((w, part))
            for w, part in new:
                self._trace_chunks.append((w, part))
                self._trace_n += len(part)
            while self._trace_n > TRACE_CAPACITY and len(self._trace_chunks) > 1:
                _, old = self._trace_chunks.popleft()
                self._trace_n -= len(old)
                self._trace_dropped += len(old)
            gpu = self._drain_gpu()
            subs = list(self._trace_subs)
        if gpu is not None:
            for q in subs:
                q.push([("gpu", gpu)])
            self._log_events([(None, gpu)], "GPU ")
        if not new:
            return
        for q in subs:
            q.push(new)
        self._log_events(new)

    def _drain_gpu(self):
        """The GPU kernel's new trace records (``DeviceKernel.drain_trace``: each says which
        worker recorded it), their timestamps moved to the trace's clock, kept like the CPU
        kernel's (bounded, oldest dropped). Called with ``_trace_lock`` held. The kernel is
        looked up each time: a watchdog reset replaces it (what the old one had not handed
        over is lost with it)."""
        k = getattr(self.system, "kernel", None) if self.dual else None
        if k is None or not hasattr(k, "drain_trace"):
            return None
        try:
            part = k.drain_trace()
        except Exception:   # noqa: BLE001 - not started / gone: nothing to take
            return None
        if not len(part):
            return None
        off = _device_clock_offset(getattr(k, "target_name", ""))
        if off:
            part["ts"] = (part["ts"].astype(np.int64) + off).astype(np.uint64)
        self._gpu_chunks.append(part)
        self._gpu_n += len(part)
        while self._gpu_n > TRACE_CAPACITY and len(self._gpu_chunks) > 1:
            old = self._gpu_chunks.popleft()
            self._gpu_n -= len(old)
            self._gpu_dropped += len(old)
        return part

    def _log_events(self, new, kernel: str = "") -> None:
        from ggmk.events import EVENT_LEVEL, SAMPLED_BIT, EventType, Level
        agg: dict = {}
        for w, part in new:
            ev = part["event"] & (SAMPLED_BIT - 1)
            for code in np.unique(ev):
                try:
                    e = EventType(int(code))
                except ValueError:
                    continue
                if EVENT_LEVEL.get(e, Level.ALL) > Level.WARN:
                    continue
                sel = part[ev == code]
                for t in np.unique(sel["task_type"]):
                    k = (e, int(t))
                    agg[k] = agg.get(k, 0) + int((sel["task_type"] == t).sum())
        for (e, t), n in sorted(agg.items()):
            lvl = "error" if EVENT_LEVEL.get(e) == Level.ERROR else "warn"
            self.log.add(lvl, "trace", f"{kernel}{e.name} {self.cpu.type_name(t)}: {n} "
                         "event(s)")

    def _check_exceptions(self) -> None:
        exc = list(getattr(self.cpu, "exceptions", ()))
        ids = {id(x) for x in exc}
        for x in exc:
            if id(x) not in self._seen_exc:
                mod, h, r, tb = (list(x) + [None] * 4)[:4]
                self.log.add("error", f"{mod}.{h}", f"handler raised {r}\n{tb or ''}".rstrip())
        self._seen_exc = ids

    def _type_names(self) -> dict:
        return {int(i.id): i.name for i in self.cpu.types}

    def _events_json(self, chunks, max_events: int) -> tuple[list, int]:
        rows = []
        for w, part in chunks:
            for r in part.tolist():
                rows.append([w, *r])
        rows.sort(key=lambda r: r[1])
        cut = max(0, len(rows) - max_events)
        return rows[cut:], cut

    @staticmethod
    def _gpu_rows(parts, max_events: int, t_from=None) -> tuple[list, int]:
        """GPU trace rows ``[worker, ts, event, tenant, type, arg0, arg1, n]`` (n: the task
        count of a task slice's start/end), oldest first, the newest ``max_events``."""
        rows = []
        for part in parts:
            if t_from is not None:
                part = part[part["ts"] >= t_from]
            for ts, ev, ten, ty, a0, a1, w, n in part.tolist():
                rows.append([w, ts, ev, ten, ty, a0, a1, n])
        rows.sort(key=lambda r: r[1])
        cut = max(0, len(rows) - max_events)
        return rows[cut:], cut

    def _gpu_meta(self) -> dict:
        k = getattr(self.system, "kernel", None) if self.dual else None
        if k is None:
            return {}
        cfg = getattr(k, "config", None)
        handlers = {str(int(h.type)): f"{h.module.name}.{h.name}"
                    for h in getattr(k, "handlers", ())}
        return {"gpu_nworkers": int(getattr(cfg, "blocks", 0) or 0),
                "gpu_handlers": handlers,
                "gpu_host_threads": int(getattr(cfg, "host_threads", 0) or 0),
                "gpu_trace_tasks": bool(getattr(cfg, "trace_tasks", False)),
                "gpu_lost": int(getattr(k, "trace_lost", 0))}

    def cmd_trace(self, conn, rid, args):
        level = self._arg(args, "level", str, None)
        seconds = self._arg(args, "seconds", float, 0.0, lo=0.0, hi=3600.0)
        follow = self._arg(args, "follow", bool, False)
        max_events = self._arg(args, "max_events", int, 200_000, lo=1, hi=TRACE_CAPACITY)
        module = self._arg(args, "module", str, None)
        tname = self._arg(args, "type", str, None)
        sample = self._arg(args, "sample", int, 1, lo=1, hi=1_000_000)
        keep = self._trace_types(module, tname)
        if not self.trace_enabled:
            why = ("deterministic mode (the trace feeds the trace hash)"
                   if getattr(self.cpu, "deterministic", False) else "tracing is off")
            raise ControlError("unsupported", f"no trace to show: {why}")
        gpu_levels = None
        if level is not None:
            # a GPU module's level is the GPU kernel's (set at run time, at most the module's
            # build level: DualSystem.set_gpu_trace_level); no --module: both kernels
            on_gpu = module is not None and not isinstance(self._find_module(module),
                                                           ggmk.Module)
            try:
                if self.dual and (module is None or on_gpu):
                    got = self.system.set_gpu_trace_level(module, level)   # may refuse: first
                    gpu_levels = {m: lv.name.lower() for m, lv in got.items()}
                if module is None:
                    self.tracer.set_default_level(level)
                elif not on_gpu:
                    self.tracer.set_level(module, level)
            except Exception as e:   # noqa: BLE001
                raise ControlError("bad_args", str(e)) from None
            gpu_note = ""
            if gpu_levels and module is None:
                gpu_note = ("; GPU kernel: " + ", ".join(f"{m} {v}" for m, v in
                                                         gpu_levels.items())
                            + (" (a GPU module's build level is the most it gets at run time)"
                               if any(v != level for v in gpu_levels.values()) else ""))
            elif gpu_levels:
                gpu_note = " (GPU kernel)"
            self.log.add("info", "control", f"trace level set to {level}"
                         + (f" for module {module}" if module else "") + gpu_note)

        streams: dict = {}      # each worker's sampling position, carried across a follow's reads

        def view(chunks):
            return views.sample_events(views.filter_events(chunks, keep), sample, streams)
        meta = {"workers": self.tracer.nworkers, "nworkers": self.cpu.nworkers,
                "types": self._type_names(), "pid": os.getpid(), "app": self.app,
                **self._gpu_meta()}
        if self.dual:
            try:             # the GPU kernel's run-time levels now (all of them)
                meta["gpu_levels"] = {m: v["level"] for m, v in
                                      self.system.gpu_trace_levels().items()}
            except Exception:   # noqa: BLE001 - halted / being reset: what was just set
                if gpu_levels is not None:
                    meta["gpu_levels"] = gpu_levels
        if follow:
            q = _TraceFollower()
            with self._trace_lock:
                self._trace_subs.append(q)
            try:
                if not self._send(conn, P.stream(rid, {"meta": meta})):
                    return _STOP
                while not self._stop.is_set():
                    if self._client_gone(conn, 0.1, rid):
                        return _STOP
                    chunks, lost = q.take()
                    # the oldest chunks fell off while the client was slow: say how many
                    # events (before --module/--type/--sample filtering) it will not see
                    if lost and not self._send(conn, P.stream(rid, {"dropped": lost})):
                        return _STOP
                    chunks = view(chunks)
                    gpu = [p for w, p in chunks if w == "gpu"]
                    chunks = [(w, p) for w, p in chunks if w != "gpu"]
                    if chunks:
                        rows, _ = self._events_json(chunks, max_events)
                        if not self._send(conn, P.stream(rid, {"events": rows})):
                            return _STOP
                    if gpu:
                        rows, _ = self._gpu_rows(gpu, max_events)
                        if not self._send(conn, P.stream(rid, {"gpu_events": rows})):
                            return _STOP
                self._send(conn, P.end(rid))
                return _STOP
            finally:
                with self._trace_lock:
                    self._trace_subs.remove(q)
        t_from = None
        if seconds:
            with self._trace_lock:
                mark = self._trace_n + self._trace_dropped
            t_from = time.perf_counter_ns()          # the trace's clock: counters from here
            self._stop.wait(seconds)
        self._collect_trace()
        with self._trace_lock:
            chunks = list(self._trace_chunks)
            dropped = self._trace_dropped
            gpu = list(self._gpu_chunks)
            gpu_dropped = self._gpu_dropped
        if seconds:
            # only what arrived during the capture window
            skip = mark - dropped
            kept = []
            for w, part in chunks:
                if skip >= len(part):
                    skip -= len(part)
                    continue
                kept.append((w, part[max(0, skip):]))
                skip = 0
            chunks = kept
        rows, cut = self._events_json(view(chunks), max_events)
        gpu_rows, gpu_cut = self._gpu_rows([p for _, p in view([("gpu", p) for p in gpu])],
                                           max_events, t_from)
        with self._trace_lock:
            counters = list(self._counters)
            crossings = list(self._crossings)
        if t_from is None:
            t_from = rows[0][1] if rows else 0
        counters = [list(c) for c in counters if c[0] >= t_from]
        crossings = [list(c) for c in crossings if c[0] >= t_from]
        gpu_part = {"gpu_events": gpu_rows, "gpu_cut": gpu_cut,
                    "gpu_dropped": gpu_dropped} if self.dual else {}
        return {**meta, **self._gpu_meta(), "events": rows, "cut": cut, "dropped": dropped,
                **gpu_part, "tracer": self.tracer.stats()["total"], "counters": counters,
                "crossings": crossings,
                "target": getattr(self.system, "target", None) if self.dual else None}

    def _trace_types(self, module, tname):
        """The task types ``ggmk trace --module/--type`` keep (None: all)."""
        keep = None
        if module is not None:
            m = self._find_module(module)
            keep = set()
            for h in getattr(m, "handlers", []):
                try:
                    keep.add(int(self.cpu.type_id(h.type)))
                except (KeyError, ValueError, TypeError):
                    pass
        if tname is not None:
            tid = self._known_type(tname)
            keep = {tid} if keep is None else keep & {tid}
        return keep

    def _known_type(self, tname: str) -> int:
        """The id of a type the system knows, by name or id (``emit``, ``trace --type``); an
        unknown one is an error. (``System.type_id`` registers an unknown *id* as TYPE_<id>:
        a refused ``ggmk emit 4242`` added that type to the running system for good.)"""
        cpu = self.cpu
        try:
            if tname.isdigit():
                tid = int(tname)
                if tid not in cpu.types:
                    raise KeyError(f"unknown type id {tid}; known: "
                                   f"{sorted(i.id for i in cpu.types)[:20]}")
                return tid
            return int(cpu.type_id(tname))
        except (KeyError, ValueError, TypeError) as e:
            raise ControlError("unknown_type", str(e).strip("'\"")) from None

    # -- top -----------------------------------------------------------------------------------
    def _frame(self) -> dict:
        """One ``top`` frame: kernels, bridge and channels fresh from the counters; workers,
        types, scheduler and arena from the shared full stats (at most FULL_STATS_MAX_AGE
        old), so any number of watchers costs the system one stats build per interval."""
        summ = self._summary()
        s = self._stats_cached()
        cs = self._cpu_stats(s)
        chans = sorted(self._chans(), key=lambda c: (c.get("kernel") == "cpu",
                                                     -(c.get("emitted") or 0)))
        arena = cs.get("arena", {}).get("total", {})
        types = sorted(cs.get("types", {}).items(), key=lambda kv: -kv[1].get("ok", 0))[:12]
        return {"t": time.monotonic(), "ps": {"state": self.state, "pid": os.getpid(),
                                              "app": self.app, "device": self.device,
                                              "uptime_s": time.monotonic() - self.m0},
                "kernels": summ["kernels"], "workers": cs.get("workers", []),
                "sched": {k: cs.get("sched", {}).get(k) for k in
                          ("outstanding", "ready_depth", "ready_high_watermark")},
                "arena": {k: arena.get(k) for k in ("total_bytes", "used_bytes",
                                                     "high_watermark", "fails")},
                "channels": chans[:14],
                "types": [{"type": n, **v} for n, v in types],
                "modules": [{"name": m.name, "kernel": "cpu" if isinstance(m, ggmk.Module)
                             else "gpu", "handlers": len(getattr(m, "handlers", []))}
                            for m in self.modules],
                "bridge": summ["bridge"]}

    def cmd_top(self, conn, rid, args):
        interval = self._arg(args, "interval", float, 1.0, lo=0.05, hi=60.0)
        once = self._arg(args, "once", bool, False)
        if once:
            return self._frame()
        while not self._stop.is_set():
            try:
                frame = self._frame()
            except ControlError:
                break
            if not self._send(conn, P.stream(rid, frame)):
                return _STOP
            if self._client_gone(conn, interval, rid):
                return _STOP
        self._send(conn, P.end(rid))
        return _STOP

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
