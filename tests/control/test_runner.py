"""``ggmk _serve`` (control/runner.py): a stop signal while the app boots stops the boot with
exit code 128 + the signal, runs the fini of the modules already initialised and leaves no
pid file (SIGTERM used to kill the server outright: a stale pid file, no fini, no message;
SIGINT read as "boot failed: KeyboardInterrupt", exit code 1)."""
import os
import signal
import subprocess
import time

import pytest

from conftest import GGMK

EXIT_NOT_RUNNING = 3

# the first module's init and fini leave marks; the second's init blocks until RELEASE exists
SLOW_APP = '''
import os, time
import ggmk
MARKS = os.environ["AF_MARKS"]
first = ggmk.Module("first")
slow = ggmk.Module("slow")

@first.init
def _init(system):
    open(os.path.join(MARKS, "first.init"), "w").close()

@first.fini
def _fini(system):
    open(os.path.join(MARKS, "first.fini"), "w").close()

@slow.init
def _slow(system):
    open(os.path.join(MARKS, "slow.init"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(MARKS, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)

modules = [first, slow]
'''


def _wait_for(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def slow_app(tmp_path, g):
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    g.env["AF_MARKS"] = str(tmp_path)
    yield str(app), tmp_path
    (tmp_path / "release").touch()
    g.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_foreground_boot_stops_it(g, slow_app, sig):
    app, marks = slow_app
    p = subprocess.Popen([GGMK, "boot", app, "--foreground"], env=g.env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marks / "slow.init")
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, (p.returncode, out, err)
    assert f"interrupted by {sig.name}" in err, err
    assert (marks / "first.fini").exists()          # what booted was finalised
    assert not os.path.exists(os.path.join(g.dir, "ggmk.pid"))
    r = g("ps")
    assert r.returncode == EXIT_NOT_RUNNING and "stale" not in r.stderr, r.stderr


def test_sigterm_to_a_detached_server_while_it_boots(g, slow_app):
    app, marks = slow_app
    p = subprocess.Popen([GGMK, "boot", app], env=g.env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marks / "slow.init")
        os.kill(g.pid(), signal.SIGTERM)             # kill $(cat ggmk.pid), mid-boot
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, (out, err)
    assert "interrupted by SIGTERM" in err and "exit code 143" in err, err
    assert (marks / "first.fini").exists()
    assert not os.path.exists(os.path.join(g.dir, "ggmk.pid"))
    assert "stale" not in g("ps").stderr
