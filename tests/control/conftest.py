"""Fixtures for the control-plane tests: real processes, the real socket, the ``ggmk``
executable. Waiting is polling with a deadline (the ``wait_until`` fixture)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GGMK = str(Path(sys.executable).parent / "ggmk")
DEMO_APP = str(ROOT / "examples" / "demo_app.py")


class Ggmk:
    """Runs ``ggmk ... --state-dir DIR`` as a subprocess."""

    def __init__(self, state_dir: str):
        self.dir = state_dir
        self.env = {**os.environ, "GGMK_STATE_DIR": state_dir}
        self.env.pop("XDG_RUNTIME_DIR", None)

    def __call__(self, *args, timeout=120, input=None):
        return subprocess.run([GGMK, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, input=input)

    def json(self, *args, **kw):
        r = self(*args, "--json", **kw)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return json.loads(r.stdout)

    @property
    def sock(self):
        return os.path.join(self.dir, "control.sock")

    def pid(self):
        try:
            return int(Path(self.dir, "ggmk.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self):
        """Test cleanup: halt what this state dir runs, and kill it if the halt did not."""
        pid = self.pid()
        if pid:
            self("halt", "--timeout", "1")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def state_dir():
    d = tempfile.mkdtemp(prefix="ggc-", dir="/tmp")      # short: sun_path is 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def g(state_dir):
    return Ggmk(state_dir)


@pytest.fixture
def booted(g):
    """The demo app booted (detached); halted (or killed) afterwards."""
    r = g("boot", DEMO_APP)
    assert r.returncode == 0, r.stdout + r.stderr
    yield g
    g.stop()
