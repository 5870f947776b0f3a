"""Bad input is a usage error (exit 2) naming the option, the value and what is allowed, checked
before anything starts; what the commands answer on a running CPU-only system (a type no CPU
handler takes, ``kern info --report``, a closed stdout, one traceback per failed task); the
commands the demo app's docstring and the README document, run as written."""
import os
import re
import shlex
import subprocess

import pytest
from conftest import DEMO_APP, GGMK, ROOT

from ggmk.cli.control_cmds import EXIT_ERROR, EXIT_PIPE, EXIT_USAGE


def _usage_error(r, *words):
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.mark.parametrize("args, words", [
    (["halt", "--timeout", "nan"], ["'--timeout'", "nan", "not a finite number"]),
    (["halt", "--timeout", "inf"], ["'--timeout'", "inf", "0<=x<=3600"]),
    (["halt", "--timeout", "4000"], ["'--timeout'", "4000", "0<=x<=3600"]),
    (["trace", "--seconds", "nan"], ["'--seconds'", "nan"]),
    (["top", "--seconds", "nan"], ["'--seconds'", "nan"]),
    (["top", "--interval", "nan"], ["'--interval'", "nan", "0.05<=x<=60"]),
    (["top", "--interval", "-inf"], ["'--interval'", "-inf"]),
    (["boot", DEMO_APP, "--boot-timeout", "nan"], ["'--boot-timeout'", "nan"]),
    (["boot", DEMO_APP, "--trace-tasks"], ["'--trace-tasks'", "--device none"]),
    (["build", DEMO_APP, "--arch", "bogus"], ["'--arch'", "'bogus'", "sm_90"]),
    (["build", DEMO_APP, "--arch", "sm_9x"], ["'--arch'", "'sm_9x'"]),
    (["boot", "missing.py"], ["'APP'", "'missing.py': no such file"]),
    (["boot", "no_such_module_x"], ["'APP'", "'no_such_module_x'", "no importable module"]),
    (["build", "missing.py"], ["'[APP]'", "'missing.py': no such file"]),
    (["typegen", "missing"], ["'TYPES_SRC'", "'missing'", ".toml"]),
    (["typegen", "missing.toml"], ["'TYPES_SRC'", "'missing.toml': no such file"]),
])
def test_bad_values_are_usage_errors_before_anything_starts(g, args, words):
    r = g(*args)
    _usage_error(r, *words)
    assert g.pid() is None and not os.path.exists(g.sock)       # nothing was booted


def test_emit_usage_names_type():
    r = subprocess.run([GGMK, "emit", "--help"], capture_output=True, text=True)
    assert "ggmk emit [OPTIONS] TYPE\n" in r.stdout and "TYPE_" not in r.stdout


def test_boot_of_a_gpu_app_without_device_names_the_option(g):
    r = g("boot", str(ROOT / "examples" / "dual_app.py"))
    assert r.returncode == EXIT_ERROR and "Traceback" not in r.stderr
    assert "--device auto" in r.stderr and "device='auto'" not in r.stderr


def test_emit_of_a_type_no_cpu_handler_takes_is_refused(booted, wait_until):
    g = booted
    # READING only travels on demo.readings (its consumer's handler is LOG_READING)
    r = g("emit", "READING", "--count", "5")
    assert r.returncode == EXIT_ERROR and "accepted" not in r.stdout, r.stdout
    assert "no CPU handler takes READING" in r.stderr and "--chan demo.readings" in r.stderr
    r = g("emit", "READING", "--chan", "demo.readings", "--count", "5")
    assert r.returncode == 0 and "accepted 5 of 5 READING on demo.readings" in r.stdout
    assert wait_until(lambda: g.json("stats")["types"]["LOG_READING"]["ok"] >= 5, 30)
    assert g.json("stats")["sys_error"]["pushed"] == 0       # nothing went to sys.error


def test_kern_info_report_without_a_gpu_kernel_says_so(booted):
    r = booted("kern", "info", "--report")
    assert r.returncode == EXIT_ERROR
    assert "--report: this system has no GPU kernel" in r.stderr and "--device" in r.stderr
    assert booted("kern", "info").returncode == 0


@pytest.mark.parametrize("args", [["chan", "ls"], ["ps"], ["log", "-n", "5"],
                                  ["stats", "--prometheus"]])
def test_closed_stdout_exits_quietly(booted, args):
    r_fd, w_fd = os.pipe()
    os.close(r_fd)                           # the reader is gone before anything is written
    try:
        p = subprocess.run([GGMK, *args], stdout=w_fd, stderr=subprocess.PIPE, text=True,
                           env=booted.env, timeout=60)
    finally:
        os.close(w_fd)
    assert p.returncode == EXIT_PIPE and p.stderr == "", (p.returncode, p.stderr)


def test_each_failed_task_keeps_its_traceback(booted, wait_until):
    g = booted
    n = 30                                   # under the poison threshold (32)
    assert g("emit", "BOOM", "--count", str(n)).returncode == 0
    assert wait_until(lambda: g.json("ps")["kernels"][0]["errors"] == n, 30)
    assert g.json("ps")["kernels"][0]["exceptions"] == n
    assert wait_until(lambda: g("log", "-n", "1000").stdout.count(
        "handler raised RuntimeError('BOOM handler failed on purpose')") == n, 30)


def _documented(text: str, prefix: str) -> list[list[str]]:
    """The ``ggmk`` commands of a doc block starting with ``prefix`` (comments dropped)."""
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.startswith(prefix):
            out.append(shlex.split(ln, comments=True))
    return out


def test_demo_app_documented_commands_do_what_the_docs_say(booted, wait_until, tmp_path):
    g = booted
    doc = (ROOT / "examples" / "demo_app.py").read_text().split('"""')[1]
    emits = _documented(doc, "ggmk emit")
    # README's command block documents the same WORK burst
    readme = (ROOT / "README.md").read_text()
    assert [c for c in _documented(readme, "ggmk emit WORK")] == \
        [c for c in emits if c[2] == "WORK"]
    for cmd in emits:
        r = g(*cmd[1:])
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert re.search(r"accepted (\d+) of \1 ", r.stdout), r.stdout
    work = next(c for c in emits if c[2] == "WORK")
    count, meta0 = int(work[work.index("--count") + 1]), int(work[work.index("--meta0") + 1])
    per_task = meta0 % 50                    # what do_work emits, as the docstring says
    assert f"each emits {per_task} READINGs" in doc and per_task > 0
    # the burst emits count * per_task readings and the lossy channel drops some of them
    assert wait_until(lambda: g.json("ps")["kernels"][0]["queued"] == 0, 60)
    ch = g.json("chan", "inspect", "demo.readings")
    assert ch["emitted"] == count * per_task and 0 < ch["dropped"] < ch["emitted"], ch
    for cmd in _documented(doc, "ggmk ps;"):  # `ggmk ps; ggmk top --once; ...`
        for part in " ".join(cmd).split(";"):
            r = g(*shlex.split(part)[1:])
            assert r.returncode == 0, (part, r.stderr)
    cmd = _documented(doc, "ggmk trace")[0]
    out = tmp_path / "trace.json"
    r = g(*[str(out) if a == "trace.json" else a for a in cmd[1:]])
    assert r.returncode == 0 and out.is_file(), r.stderr
