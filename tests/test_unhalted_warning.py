"""A system dropped without halt: its threads (and a device process) ran on until exit, with
nothing said. Now a ResourceWarning names it: a DualSystem's when it is collected, a CPU
System's (its running workers hold it: never collected) at interpreter exit. Run in
subprocesses with -W error::ResourceWarning."""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import gc, sys
    import ggmk, ggmk.dual
    import ggmk.device as gd
    from ggmk.device import api as g
    dev = gd.Module("uwdev")

    @dev.handler("UW_WORK")
    def work(ctx, task):
        return 0

    def main(case):
        c = ggmk.Module("uwplain")
        if case == "cpu-drop":
            s = ggmk.boot([c], workers=2)
            del s
        elif case == "cpu-halted":
            ggmk.boot([c], workers=2).halt()
            with ggmk.boot([c], workers=1):
                pass
        elif case == "cpu-fork":
            # a child forked from a process with a running system inherits the object, not
            # its threads: only the parent, which boots and halts it, has anything to say
            import os
            s = ggmk.boot([c], workers=2)
            pid = os.fork()
            if pid == 0:
                sys.exit(0)                   # the child's normal exit runs the atexit hooks
            os.waitpid(pid, 0)
            s.halt()
        elif case.startswith("dual"):
            s = ggmk.dual.boot([c, dev], device="cpu", workers=2,
                               device_process=case.endswith("proc"))
            if "halted" in case:
                s.halt()
            del s
        gc.collect()
        print("collected", flush=True)
        print("collected", file=sys.stderr, flush=True)

    if __name__ == "__main__":
        main(sys.argv[1])
""")


def _run(tmp_path, case):
    script = tmp_path / "uw_child.py"
    script.write_text(CHILD)
    p = subprocess.run([sys.executable, "-W", "error::ResourceWarning", str(script), case],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def test_a_dropped_cpu_system_is_named_at_exit(tmp_path):
    out, err = _run(tmp_path, "cpu-drop")
    assert out == "collected\n" and err.index("collected") < err.index("ResourceWarning")
    assert "ResourceWarning: unhalted ggmk System at 0x" in err, err[-2000:]
    assert "(modules 'uwplain'): 2 worker thread(s) still running" in err
    assert err.count("ResourceWarning") == 1


@pytest.mark.parametrize("proc", [False, True])
def test_a_dropped_dual_system_is_named_when_collected(tmp_path, proc):
    out, err = _run(tmp_path, "dual-proc" if proc else "dual")
    # warned at the collect, before the print (and not again at exit for its CPU kernel)
    assert out == "collected\n" and err.index("ResourceWarning") < err.index("collected")
    head = err.split("ResourceWarning: ", 1)
    assert len(head) == 2 and head[1].startswith("unhalted ggmk DualSystem at 0x"), err[-2000:]
    assert "its CPU kernel's 2 worker thread(s), the bridge thread" in head[1]
    assert ("the device process (pid " in head[1]) == proc
    assert err.count("ResourceWarning") == 1


@pytest.mark.parametrize("case", ["cpu-halted", "dual-halted", "dual-halted-proc"])
def test_a_halted_system_says_nothing(tmp_path, case):
    out, err = _run(tmp_path, case)
    assert out == "collected\n" and "ResourceWarning" not in err, err[-2000:]


def test_a_forked_child_says_nothing_of_its_parents_system(tmp_path):
    out, err = _run(tmp_path, "cpu-fork")
    assert out == "collected\n" and "ResourceWarning" not in err, err[-2000:]
