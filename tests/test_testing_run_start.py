"""``run_module_tests`` (what ``ggmk test`` runs) leaves no pytest run behind when an exception
cuts its start short: a KeyboardInterrupt (Ctrl-C, or one a signal handler raises) that lands
after the child was forked but before ``Popen()`` returned the object. The child ran on with
nobody to stop it; now it waits at a gate until the call holds it, and leaves (reaped, pytest
never started) when the start failed.

The interrupt is injected at the fork/exec seam, the edge of the unit: ``subprocess``'s
``_fork_exec`` is wrapped to fork the real child, then raise, the child's pid lost to Popen."""
import os
import signal
import subprocess
import textwrap

import pytest

from ggmk.testing import run_module_tests

# a test that records its pid, then hangs: what an orphaned run would keep doing
SLOW_TEST = textwrap.dedent("""
    import os, time

    def test_hangs():
        with open(os.environ["GGMK_RUN_PID"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)
""")


def _kill_if_running(pid) -> None:
    """Stop a child a failed test left running (its group: the pytest run it became); one
    already reaped is left alone (its pid may be another process's by now)."""
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return
    except ChildProcessError:
        return
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("how", ["raise", "signal"])
def test_an_interrupt_as_popen_starts_leaves_no_pytest_behind(tmp_path, monkeypatch, how):
    d = tmp_path / "slowmod"
    d.mkdir()
    (d / "test_slow.py").write_text(SLOW_TEST)
    ran = tmp_path / "pytest.pid"
    monkeypatch.setenv("GGMK_RUN_PID", str(ran))
    forked = []
    real = subprocess._fork_exec

    def fork_exec(*a, **k):
        forked.append(real(*a, **k))             # the child runs; Popen never sees its pid
        if how == "signal":
            signal.raise_signal(signal.SIGINT)   # Ctrl-C: the default handler raises
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "_fork_exec", fork_exec)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_module_tests(d, timeout=60)
        assert len(forked) == 1
        with pytest.raises(ChildProcessError):   # gone, and reaped: not left running
            os.waitpid(forked[0], os.WNOHANG)
        assert not ran.exists(), "the pytest run started"
    finally:
        for pid in forked:                      # whatever a failed test left running
            _kill_if_running(pid)


def test_the_gate_passes_the_run_through(tmp_path):
    """The gated start runs pytest as before: in the module's directory, its exit code and
    output returned."""
    d = tmp_path / "okmod"
    d.mkdir()
    (d / "test_ok.py").write_text("import os\n\ndef test_cwd():\n"
                                  f"    assert os.getcwd() == {str(d)!r}\n")
    rc, out = run_module_tests(d, timeout=120)
    assert rc == 0 and "1 passed" in out, out
