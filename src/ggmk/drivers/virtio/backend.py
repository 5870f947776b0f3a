"""Locating and launching QEMU's ``vhost-user-gpu`` back end (Debian package ``qemu-system-gui``).

Facts about that program that shape this file: it serves exactly one connection and exits when
the front end disconnects; its socket file can appear before it listens (so connecting retries);
and it scans for a DRM render node and /dev/udmabuf on its own (see display_socket for how the
dmabuf path is handled).

Example::

    with BackendProcess.start(tmpdir) as proc:
        proc.socket_path, proc.pid
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .errors import BackendDied, BackendError, BackendNotFound

ENV_VAR = "GGMK_VHOST_USER_GPU"
CANDIDATES = (
    "/usr/lib/qemu/vhost-user-gpu",            # Debian / Ubuntu
    "/usr/libexec/vhost-user-gpu",             # Fedora
    "/usr/libexec/qemu/vhost-user-gpu",
    "/usr/lib/vhost-user-gpu",
)
INSTALL_HINT = ("install it with `apt-get install --no-install-recommends qemu-system-gui` "
                f"(Debian/Ubuntu) or point {ENV_VAR} at the vhost-user-gpu binary")


def find_backend(explicit: str | os.PathLike | None = None) -> str:
    """Path of the vhost-user-gpu program: ``explicit``, then $GGMK_VHOST_USER_GPU, the usual
    install locations and $PATH. Raises :class:`BackendNotFound` saying how to install it."""
    if explicit is None:
        explicit = os.environ.get(ENV_VAR) or None
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file() or not os.access(p, os.X_OK):
            raise BackendNotFound(f"vhost-user-gpu backend {p} is missing or not executable; "
                                  + INSTALL_HINT)
        return str(p)
    for c in CANDIDATES:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("vhost-user-gpu")
    if found:
        return found
    raise BackendNotFound("QEMU's vhost-user-gpu backend is not installed (looked in "
                          + ", ".join(CANDIDATES) + " and $PATH); " + INSTALL_HINT)


class BackendProcess:
    """One vhost-user-gpu process listening on its own socket; :meth:`stop` always kills it."""

    def __init__(self, proc: subprocess.Popen, socket_path: str, log_path: str,
                 tmpdir: tempfile.TemporaryDirectory | None):
        self.proc = proc
        self.socket_path = socket_path
        self.log_path = log_path
        self._tmpdir = tmpdir

    @classmethod
    def start(cls, workdir: str | os.PathLike | None = None,
              binary: str | os.PathLike | None = None) -> "BackendProcess":
        """Launch the back end with a fresh socket path in ``workdir`` (a temp dir if None)."""
        path = find_backend(binary)
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ggmk-vugpu-")
            workdir = tmp.name
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        n = 0
        while (workdir / f"vugpu-{os.getpid()}-{n}.sock").exists():
            n += 1
        sock = workdir / f"vugpu-{os.getpid()}-{n}.sock"
        log = workdir / f"vugpu-{os.getpid()}-{n}.log"
        env = dict(os.environ)
        env.pop("G_MESSAGES_DEBUG", None)
        with open(log, "wb") as logf:
            try:
                proc = subprocess.Popen([path, "--socket-path", str(sock)], stdin=subprocess.DEVNULL,
                                        stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        close_fds=True)
            except OSError as e:
                if tmp is not None:
                    tmp.cleanup()
                raise BackendError(f"could not start {path}: {e}; " + INSTALL_HINT) from None
        return cls(proc, str(sock), str(log), tmp)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, nbytes: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise :class:`BackendDied` (with the tail of its log) if the process has exited."""
        rc = self.proc.poll()
        if rc is not None:
            tail = self.log_tail()
            raise BackendDied(f"vhost-user-gpu (pid {self.proc.pid}) exited with status {rc}"
                              + (f"; its log says: {tail}" if tail else ""))

    def kill(self) -> None:
        """SIGKILL the process (tests use this to simulate a crash)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def stop(self, timeout: float = 2.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "BackendProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
