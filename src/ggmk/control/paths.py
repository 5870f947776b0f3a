"""Where a running system's control files live."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOCK_PATH_MAX = 107      # sun_path is 108 bytes with the terminating NUL


def default_state_dir() -> Path:
    """``$XDG_RUNTIME_DIR/ggmk`` when that directory exists, else ``/tmp/ggmk-$UID``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "ggmk"
    return Path(f"/tmp/ggmk-{os.getuid()}")


class StateDirError(OSError):
    """The state dir cannot be used (its message names it and why; ``errno`` the cause)."""

    def __init__(self, err, message: str):
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True)
class StatePaths:
    dir: Path

    @classmethod
    def resolve(cls, state_dir: str | os.PathLike | None = None) -> "StatePaths":
        d = Path(state_dir) if state_dir else default_state_dir()
        return cls(d.absolute())

    @property
    def sock(self) -> Path:
        return self.dir / "control.sock"

    @property
    def pid(self) -> Path:
        return self.dir / "ggmk.pid"

    @property
    def lock(self) -> Path:
        return self.dir / "ggmk.lock"

    @property
    def log(self) -> Path:
        return self.dir / "serve.log"

    def ensure(self) -> None:
        """Create the directory 0700; refuse one owned by another user or writable by others,
        one that cannot be written, or one whose socket path is too long. Raises
        StateDirError ("state dir DIR: ...")."""
        if len(os.fsencode(self.sock)) > SOCK_PATH_MAX:
            raise StateDirError(errno.ENAMETOOLONG, f"state dir {self.dir}: its control socket "
                                f"path {self.sock} is {len(os.fsencode(self.sock))} bytes, "
                                f"longer than the {SOCK_PATH_MAX} a Unix socket allows; use a "
                                "shorter --state-dir")
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.dir.stat()
        except OSError as e:
            raise StateDirError(e.errno, f"state dir {self.dir}: cannot create it "
                                f"({e.strerror or e})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(errno.ENOTDIR, f"state dir {self.dir}: not a directory")
        if st.st_uid != os.geteuid():
            raise StateDirError(errno.EPERM, f"state dir {self.dir} belongs to uid "
                                f"{st.st_uid}, not to you (uid {os.geteuid()})")
        try:
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(self.dir, 0o700)
            # writable? (a read-only mount, or mode 0500: the lock, pid and socket go here)
            fd, probe = tempfile.mkstemp(prefix=".ggmk-write-test-", dir=self.dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise StateDirError(e.errno, f"state dir {self.dir}: not writable "
                                f"({e.strerror or e})") from None

    def read_pid(self) -> int | None:
        try:
            return int(self.pid.read_text().strip())
        except (OSError, ValueError):
            return None


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
