"""Where a running system's control files live."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

SOCK_PATH_MAX = 107      # sun_path is 108 bytes with the terminating NUL


def default_state_dir() -> Path:
    """``$XDG_RUNTIME_DIR/ggmk`` when that directory exists, else ``/tmp/ggmk-$UID``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "ggmk"
    return Path(f"/tmp/ggmk-{os.getuid()}")


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
        """Create the directory 0700; refuse one owned by another user or writable by others."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.dir.stat()
        if st.st_uid != os.geteuid():
            raise PermissionError(f"state dir {self.dir} belongs to uid {st.st_uid}, not to "
                                  f"you (uid {os.geteuid()})")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.dir, 0o700)
        if len(os.fsencode(self.sock)) > SOCK_PATH_MAX:
            raise OSError(f"control socket path {self.sock} is longer than {SOCK_PATH_MAX} "
                          "bytes (the Unix socket limit); use a shorter --state-dir")

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
