"""The live-system commands (cli/control_cmds.py) against a system that is still booting:
they say it is booting, naming its pid (``ggmk halt`` said "no system is running", and the
system then came up)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

GGMK = str(Path(sys.executable).parent / "ggmk")
EXIT_NOT_RUNNING = 3

# boots until RELEASE exists (bounded)
SLOW_APP = '''
import os, time
import ggmk
MARKS = os.environ["AF_MARKS"]
slow = ggmk.Module("slow")

@slow.init
def _slow(system):
    open(os.path.join(MARKS, "slow.init"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(MARKS, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)

modules = [slow]
'''


@pytest.fixture
def env(tmp_path):
    d = tempfile.mkdtemp(prefix="ggcc-", dir="/tmp")       # short: sun_path is 108 bytes
    e = {**os.environ, "GGMK_STATE_DIR": d, "AF_MARKS": str(tmp_path)}
    e.pop("XDG_RUNTIME_DIR", None)
    yield e
    (tmp_path / "release").touch()
    subprocess.run([GGMK, "halt", "--timeout", "1"], env=e, capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def test_commands_during_a_boot_say_it_is_booting(tmp_path, env):
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    boot = subprocess.Popen([GGMK, "boot", str(app)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "slow.init").exists():
            assert time.monotonic() < deadline and boot.poll() is None
            time.sleep(0.02)
        pid = int(Path(env["GGMK_STATE_DIR"], "ggmk.pid").read_text())
        for cmd in (["halt"], ["stats"], ["emit", "X"]):
            r = subprocess.run([GGMK, *cmd], env=env, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == EXIT_NOT_RUNNING, (cmd, r.stderr)
            assert "booting" in r.stderr and f"pid {pid}" in r.stderr, (cmd, r.stderr)
            assert "no system is running" not in r.stderr, (cmd, r.stderr)
        (tmp_path / "release").touch()
        assert boot.wait(60) == 0, boot.stderr.read()
    finally:
        if boot.poll() is None:
            boot.kill()
            boot.wait()


def test_no_system_still_says_not_running(env):
    r = subprocess.run([GGMK, "halt"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_NOT_RUNNING
    assert "not running: no system is running" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", [["stats", "--prometheus", "--json"],
                                 ["trace", "--perfetto", "t.json", "--json"]])
def test_an_output_format_and_json_together_are_a_usage_error(tmp_path, env, cmd):
    """(--json was silently ignored: text, exit 0.) Refused before anything is asked of a
    system: none runs here."""
    r = subprocess.run([GGMK, *cmd], env=env, capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "cannot be combined with --json" in r.stderr
    assert not (tmp_path / "t.json").exists()
