"""A device process that dies during boot: the error names its exit code or signal and says
where its traceback went; the ``if __name__ == "__main__":`` advice comes only where it
applies (a main script without the guard, whose spawn child boots again). Before, every such
death got that advice, also a killed child of a guarded script."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import ggmk.device as gd
import ggmk.dual
from ggmk.errors import BootError
from ggmk.modules import echo, registry

pytestmark = pytest.mark.timeout(600)

GUARD = '`if __name__ == "__main__":`'


class _Die:
    """Unpickled in the device process (with its module): ends it there, before it reports."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        if self.how == "kill":
            return (signal.raise_signal, (signal.SIGKILL,))
        return (os._exit, (9,))


def _noop(ctx, task):
    return 0


@pytest.mark.parametrize("how, said", [
    ("exit", "exited during boot (exit code 9) without a report"),
    ("kill", "exited during boot (killed by signal SIGKILL (9)) without a report")])
def test_a_child_that_dies_in_boot_is_named_without_the_guard_advice(how, said):
    m = gd.Module("dies")
    m.handler(900)(_noop)
    m.die = _Die(how)                  # travels with the module: the child dies unpickling it
    with pytest.raises(BootError) as ei:
        ggmk.dual.boot([m], device="cpu", workers=2, device_process=True)
    msg = str(ei.value)
    assert said in msg and "on this process's stderr" in msg, msg
    assert GUARD not in msg, msg       # pytest's main module has the guard


def test_a_script_without_the_guard_gets_the_advice(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""\
        import ggmk.dual
        from ggmk.modules import echo, registry
        ggmk.dual.boot([echo.device_module("e.out")], device="cpu", workers=2,
                       types=registry("echo"), device_process=True).halt()
        print("BOOTED")
        """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "BOOTED" not in r.stdout, (r.stdout, r.stderr[-2000:])
    # the parent's error: the child (exit code 1, the bootstrapping error) and the advice
    assert "exited during boot (exit code 1) without a report" in r.stderr, r.stderr[-3000:]
    tail = r.stderr[r.stderr.index("exited during boot (exit code 1)"):]
    assert GUARD in tail, r.stderr[-3000:]


def test_a_spawn_that_fails_for_want_of_resources_gets_no_guard_advice(monkeypatch):
    import errno
    import multiprocessing.context as mpc

    def refuse(self):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(mpc.SpawnProcess, "start", refuse)
    with pytest.raises(BootError, match="could not be started: .*Resource temporarily") as ei:
        ggmk.dual.boot([echo.device_module("e.out")], device="cpu", workers=2,
                       types=registry("echo"), device_process=True)
    assert GUARD not in str(ei.value)
