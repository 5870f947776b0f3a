"""Ctrl-C during a detached ``ggmk boot`` stops the system it started (exit code 130); bad
paths (``new --dest``, ``--state-dir`` under a file) are clear errors, not tracebacks; another
user pointing at a running system's state dir gets exit code 5 (refused), not click's
"not readable"; ``build --arch`` without APP is refused; ``trace --max-events`` checks the
server's real limit."""
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
from conftest import DEMO_APP, GGMK

from ggmk.cli.control_cmds import EXIT_NOT_RUNNING, EXIT_REFUSED, EXIT_USAGE
from ggmk.control.protocol import TRACE_CAPACITY

SLOW_APP = """
import time
import ggmk
slow = ggmk.Module("slow")
@slow.handler("SLOWX")
def x(ctx):
    return ggmk.OK
@slow.init
def init(system):
    time.sleep(300)
modules = [slow]
"""


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _server_pid(g):
    """The pid in the state dir's pid file, once it names a live ggmk server."""
    pid = g.pid()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if b"_serve" in f.read() else None
    except (OSError, TypeError):
        return None


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_boot_stops_the_system_it_started(g, wait_until, tmp_path, sig, code):
    app = tmp_path / "slow_app.py"
    app.write_text(SLOW_APP)
    # its own process group, as a shell runs it: Ctrl-C signals the whole group
    p = subprocess.Popen([GGMK, "boot", str(app)], env=g.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    server = None
    try:
        assert wait_until(lambda: _server_pid(g) is not None, 60)
        server = _server_pid(g)
        os.killpg(p.pid, sig)
        out, err = p.communicate(timeout=60)
        assert p.returncode == code, (p.returncode, out, err)
        assert "Aborted!" not in err and "Traceback" not in err
        assert "interrupted" in err and str(server) in err
        assert not _alive(server)               # stopped before `ggmk boot` returned
        r = g("ps")
        assert r.returncode == EXIT_NOT_RUNNING and "stale" not in r.stderr, r.stderr
        assert g.pid() is None and not os.path.exists(g.sock)
        assert g("boot", DEMO_APP).returncode == 0             # the state dir is free
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if server and _alive(server):
            os.kill(server, signal.SIGKILL)
        g.stop()


def test_new_with_dest_under_a_file_is_a_clear_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    dest = str(afile / "sub")
    r = subprocess.run([GGMK, "new", "widget", "--dest", dest], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr, r.stderr
    for w in ("'--dest'", repr(dest), "Not a directory", "allowed:"):
        assert w in r.stderr, (w, r.stderr)
    assert afile.read_text() == "x"


def _as_nobody(argv):
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as another user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


def test_new_with_an_unwritable_dest_is_a_clear_error():
    top = tempfile.mkdtemp(prefix="ggn-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        ro = os.path.join(top, "ro")
        os.mkdir(ro, 0o555)
        os.chmod(ro, 0o555)
        r = subprocess.run(_as_nobody([GGMK, "new", "widget", "--dest", ro]),
                           capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr, r.stderr
        for w in ("'--dest'", repr(ro), "Permission denied", "allowed:"):
            assert w in r.stderr, (w, r.stderr)
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_ps_with_a_state_dir_under_a_file_is_not_running(tmp_path, json_flag):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = subprocess.run([GGMK, "ps", "--state-dir", str(afile / "sub"), *json_flag],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_NOT_RUNNING and "Traceback" not in r.stderr, r.stderr
    assert "not running" in r.stderr


@pytest.mark.parametrize("args", [["ps"], ["emit", "WORK"], ["chan", "ls"]])
def test_another_user_is_refused_with_exit_code_5(booted, args):
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    r = subprocess.run(_as_nobody([GGMK, *args, "--state-dir", booted.dir]),
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == EXIT_REFUSED, (r.returncode, r.stderr)
    assert "refused" in r.stderr and "not readable" not in r.stderr


def test_build_arch_without_app_is_refused(g):
    r = g("build", "--arch", "sm_80")
    assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr, r.stderr
    for w in ("'--arch'", "sm_80", "APP"):
        assert w in r.stderr, (w, r.stderr)


def test_build_of_a_cpu_only_system_names_build_not_kern_info(booted):
    """Without APP, ``build`` asks the running system for its GPU kernel's report; a system
    without one answered with kern info's ``--report``, an option the user never typed."""
    r = booted("build")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no GPU kernel" in r.stderr and "APP" in r.stderr and "--report" not in r.stderr


def test_trace_max_events_range_is_the_servers(g):
    r = g("trace", "--max-events", str(TRACE_CAPACITY + 1))
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stderr)
    for w in ("'--max-events'", str(TRACE_CAPACITY + 1), f"1<=x<={TRACE_CAPACITY}"):
        assert w in r.stderr, (w, r.stderr)
    assert f"1<=x<={TRACE_CAPACITY}" in g("trace", "--help").stdout
