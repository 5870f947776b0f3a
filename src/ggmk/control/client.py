"""The client side of the control socket (what the ``ggmk`` command line uses)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Iterator

from ggmk.control import protocol as P
from ggmk.control.paths import SOCK_PATH_MAX, StatePaths, pid_alive
from ggmk.control.protocol import ControlError


class NotRunning(Exception):
    """No system answers at this state dir."""


class SocketPathTooLong(NotRunning):
    """The state dir's control socket path is too long for a Unix socket."""


class Refused(Exception):
    """The socket refused us (permissions)."""


class Client:
    def __init__(self, paths: StatePaths, timeout: float | None = 30.0):
        self.paths = paths
        self.timeout = timeout
        self._id = 0
        self.sock = None
        self.rfile = None

    def connect(self) -> "Client":
        n = len(os.fsencode(self.paths.sock))
        if n > SOCK_PATH_MAX:
            # (no system can listen there: `ggmk boot` refuses such a state dir)
            raise SocketPathTooLong(f"no system can run at {self.paths.dir}: its control socket "
                                    f"path {self.paths.sock} is {n} bytes, longer than the "
                                    f"{SOCK_PATH_MAX} a Unix socket allows; use a shorter "
                                    "--state-dir")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.paths.sock))
                break
            except BlockingIOError:
                # EAGAIN: the server's listen queue is full (a flood of connections): it
                # runs, so wait for room (this is not "no system is running")
                s.close()
                if deadline is not None and time.monotonic() >= deadline:
                    raise ControlError("busy", f"the system at {self.paths.dir} accepts no "
                                       "connection: its listen queue stayed full for "
                                       f"{self.timeout:g}s (too many clients connecting)"
                                       ) from None
                time.sleep(0.01)     # polling with a deadline
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                raise NotRunning(f"no system is running at {self.paths.dir} "
                                 f"({e.strerror})") from None
            except PermissionError as e:
                s.close()
                raise Refused(f"not allowed to connect to {self.paths.sock}: "
                              f"{e.strerror}") from None
            except OSError as e:  # not a socket, a bad path component, ...: nothing answers
                s.close()
                raise NotRunning(f"no system is running at {self.paths.dir} (connecting to "
                                 f"{self.paths.sock}: {e.strerror or e})") from None
        self.sock = s
        self.rfile = s.makefile("rb")
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.rfile is not None:
            self.rfile.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None

    def __enter__(self):
        if self.sock is None:
            self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self) -> dict:
        line = self.rfile.readline(P.MAX_RESPONSE)
        if not line:
            raise ControlError("closed", "the system closed the connection")
        try:
            msg = json.loads(line)
        except ValueError as e:
            raise ControlError("protocol", f"bad response from the system: {e}") from None
        if not msg.get("ok", False):
            err = msg.get("error") or {}
            code = err.get("code", "error")
            if code == "permission_denied":
                raise Refused(err.get("message", "refused"))
            raise ControlError(code, err.get("message", "error"))
        return msg

    def send(self, cmd: str, args: dict | None = None) -> int:
        if self.sock is None:
            self.connect()
        self._id += 1
        try:
            self.sock.sendall(P.request(cmd, args, self._id))
        except (BrokenPipeError, ConnectionResetError):
            # refused right after accept: read the reason the server sent
            self._read()
            raise
        return self._id

    def call(self, cmd: str, args: dict | None = None):
        self.send(cmd, args)
        return self._read().get("result")

    def stream(self, cmd: str, args: dict | None = None) -> Iterator:
        """Yield each streamed ``data`` (or the single ``result`` of a non-streaming answer)."""
        self.send(cmd, args)
        while True:
            msg = self._read()
            if msg.get("end"):
                return
            if msg.get("stream"):
                yield msg.get("data")
            else:
                yield msg.get("result")
                return


def probe(paths: StatePaths) -> str:
    """'running' (answers, perhaps only ``busy``), 'booting' (its server holds the lock, no
    answer yet), 'stale' (files of a dead server) or 'absent'."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    except PermissionError:
        return "running"
    except OSError:         # a path no lock can be at (under a file, too long, a loop...)
        fd = None
    held = False
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
        finally:
            os.close(fd)
    if held:
        try:
            with Client(paths, timeout=5).connect() as c:
                c.call("ping")
            return "running"
        except ControlError as e:
            # busy: it answers (every client slot taken), so it runs
            return "running" if e.code == "busy" else "booting"
        except (NotRunning, OSError):
            return "booting"
        except Refused:
            return "running"
    if pid_alive(paths.read_pid()) and _is_server(paths.read_pid()):
        return "booting"
    try:
        if paths.sock.exists() or paths.pid.exists():
            return "stale"
    except OSError:         # e.g. a name too long: nothing can be there
        pass
    return "absent"


def _is_server(pid) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"_serve" in f.read()
    except OSError:
        return False


def remove_stale(paths: StatePaths) -> list[str]:
    gone = []
    for p in (paths.sock, paths.pid):
        try:
            os.unlink(p)
            gone.append(str(p))
        except FileNotFoundError:
            pass
    return gone
