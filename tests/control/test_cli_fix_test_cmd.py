"""``ggmk test`` does not leave its pytest run going: the run is a process group of its own,
stopped whole when ``--timeout`` expires (a clear message, exit code 1, no traceback) and when
``ggmk test`` is interrupted or terminated (exit code 128 + the signal)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import GGMK

# a test that starts a child process and then hangs; it writes "PYTEST_PID CHILD_PID" where
# GGMK_FIX_PIDS says once both run
SLOW_TEST = textwrap.dedent("""
    import os, subprocess, time

    def test_hangs():
        child = subprocess.Popen(["sleep", "300"])
        path = os.environ["GGMK_FIX_PIDS"]
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        os.replace(path + ".tmp", path)
        time.sleep(300)
""")


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                  # a zombie not yet reaped by init is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def slow_dir(tmp_path):
    d = tmp_path / "slowmod"
    d.mkdir()
    (d / "test_slow.py").write_text(SLOW_TEST)
    pids_file = tmp_path / "pids"
    env = {**os.environ, "GGMK_FIX_PIDS": str(pids_file)}
    started = []

    def pids():
        try:
            a, b = pids_file.read_text().split()
        except (OSError, ValueError):
            return None
        started[:] = [int(a), int(b)]
        return started

    yield d, env, pids
    for pid in started:                   # whatever a failed test left running
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_timeout_stops_the_run_and_says_so(slow_dir, wait_until):
    d, env, pids = slow_dir
    r = subprocess.run([GGMK, "test", str(d), "--timeout", "5"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback (most recent call last)" not in r.stderr, r.stderr
    assert "--timeout" in r.stderr and "5 s" in r.stderr, r.stderr
    assert pids(), "the test never started"
    assert wait_until(lambda: not any(_alive(p) for p in pids()), 30), pids()


@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, True),
                                        (signal.SIGHUP, False)])
def test_a_signal_stops_the_whole_run(slow_dir, wait_until, sig, group):
    d, env, pids = slow_dir
    # group: Ctrl-C in a terminal signals ggmk's process group (the shell's job), which no
    # longer holds the pytest run
    p = subprocess.Popen([GGMK, "test", str(d)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert wait_until(lambda: pids() is not None, 60)
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 128 + sig, (p.returncode, out, err)
        assert "Traceback (most recent call last)" not in err, err
        assert wait_until(lambda: not any(_alive(x) for x in pids()), 30), pids()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_run_module_tests_timeout_kills_the_run(slow_dir, wait_until):
    d, env, pids = slow_dir
    code = ("import subprocess, sys\n"
            "from ggmk.testing import run_module_tests\n"
            f"try:\n    run_module_tests({str(d)!r}, timeout=5)\n"
            "except subprocess.TimeoutExpired as e:\n"
            "    print('timed out', e.timeout, 'passed' in (e.output or '') or 'output')\n"
            "    sys.exit(0)\n"
            "sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("timed out 5"), (r.stdout, r.stderr)
    assert pids() and wait_until(lambda: not any(_alive(p) for p in pids()), 30), pids()
