"""What the commands write is written whole or the command fails: a stdout write that fails
part-way (a file size limit, a full disk) is a message and exit code 1, never a silently
truncated file with exit code 0; a closed pipe is exit code 141 (EXIT_PIPE) however big the
output; ``--perfetto FILE`` / ``typegen -o FILE`` replace FILE whole or leave it as it was; and
``log -f`` / ``trace -f`` notice a closed stdout while they wait for the next line."""
import json
import os
import resource
import stat
import subprocess
import time

import pytest
from conftest import GGMK

from ggmk.cli.control_cmds import EXIT_ERROR, EXIT_PIPE

LIMIT = 64 * 1024            # RLIMIT_FSIZE for the write-error cases


def _fsize_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _trace_bigger_than(g, wait_until, nbytes):
    """Work until the buffered trace's JSON is over ``nbytes`` (it stays buffered)."""
    assert g("emit", "WORK", "--count", "200", "--meta0", "249").returncode == 0
    assert wait_until(lambda: len(g("trace", "--json").stdout) > nbytes, 60)


def _clean_failure(r_or_err: str, *words):
    assert "Traceback" not in r_or_err, r_or_err
    for w in words:
        assert w in r_or_err, (w, r_or_err)


def test_stdout_over_a_file_size_limit_fails_the_command(booted, wait_until, tmp_path):
    g = booted
    _trace_bigger_than(g, wait_until, 4 * LIMIT)
    out = tmp_path / "trace.json"
    with open(out, "wb") as f:
        p = subprocess.run([GGMK, "trace", "--json"], stdout=f, stderr=subprocess.PIPE,
                           text=True, env=g.env, timeout=120, preexec_fn=_fsize_limit)
    assert p.returncode == EXIT_ERROR, (p.returncode, p.stderr)
    _clean_failure(p.stderr, "ggmk:", "stdout", "File too large")
    assert out.stat().st_size <= LIMIT


@pytest.mark.parametrize("args", [["version"], ["typegen", "examples/dual_app.py"]])
def test_stdout_on_a_full_disk_fails_the_command(args):
    with open("/dev/full", "wb") as f:
        p = subprocess.run([GGMK, *args], stdout=f, stderr=subprocess.PIPE, text=True,
                           timeout=120, cwd=os.path.dirname(os.path.dirname(
                               os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == EXIT_ERROR, (p.returncode, p.stderr)
    _clean_failure(p.stderr, "ggmk:", "stdout", "No space left on device")


def test_big_output_into_a_closed_pipe_exits_141(booted, wait_until):
    g = booted
    _trace_bigger_than(g, wait_until, 4 * LIMIT)        # more than a pipe holds
    p = subprocess.Popen([GGMK, "trace", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=g.env)
    try:
        assert len(p.stdout.read(10)) == 10                # `| head -c 10`
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == EXIT_PIPE, (p.returncode, err)
        assert err == ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _no_leftovers(d, *keep):
    assert sorted(os.listdir(d)) == sorted(keep), os.listdir(d)


def test_perfetto_write_errors_are_clear_and_leave_no_partial_file(booted, wait_until,
                                                                     tmp_path):
    g = booted
    _trace_bigger_than(g, wait_until, 4 * LIMIT)
    r = g("trace", "--perfetto", "/dev/full")
    assert r.returncode == EXIT_ERROR, (r.returncode, r.stderr)
    _clean_failure(r.stderr, "/dev/full", "No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)     # written, not replaced
    d = tmp_path / "out"
    d.mkdir()
    out = d / "trace.json"
    # a file size limit: the write fails part-way; no partial file is left
    p = subprocess.run([GGMK, "trace", "--perfetto", str(out)], capture_output=True,
                       text=True, env=g.env, timeout=120, preexec_fn=_fsize_limit)
    assert p.returncode == EXIT_ERROR, (p.returncode, p.stderr)
    _clean_failure(p.stderr, str(out), "File too large")
    _no_leftovers(d)
    out.write_text("old")                                  # an existing file stays as it was
    p = subprocess.run([GGMK, "trace", "--perfetto", str(out)], capture_output=True,
                       text=True, env=g.env, timeout=120, preexec_fn=_fsize_limit)
    assert p.returncode == EXIT_ERROR and out.read_text() == "old"
    _no_leftovers(d, "trace.json")
    r = g("trace", "--perfetto", str(out))                 # and a good write replaces it
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["traceEvents"]
    _no_leftovers(d, "trace.json")


def _many_types(path, n=400):
    path.write_text("".join(f'[types.T{i}]\nid = {100 + i}\npayload = {{ x = "f64", '
                            f'n = "u32", data = "bytes" }}\n' for i in range(n)))


def test_typegen_output_write_errors_are_clear_and_leave_no_partial_file(tmp_path):
    toml = tmp_path / "types.toml"
    _many_types(toml)
    p = subprocess.run([GGMK, "typegen", str(toml), "-o", "/dev/full"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == EXIT_ERROR, (p.returncode, p.stderr)
    _clean_failure(p.stderr, "/dev/full", "No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    d = tmp_path / "out"
    d.mkdir()
    out = d / "payloads.py"
    p = subprocess.run([GGMK, "typegen", str(toml), "-o", str(out)], capture_output=True,
                       text=True, timeout=120, preexec_fn=_fsize_limit)
    assert p.returncode == EXIT_ERROR, (p.returncode, p.stderr)
    _clean_failure(p.stderr, str(out), "File too large")
    _no_leftovers(d)
    p = subprocess.run([GGMK, "typegen", str(toml), "-o", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "400 payload classes" in p.stdout and out.stat().st_size > LIMIT
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()   # as open() would make it
    _no_leftovers(d, "payloads.py")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _readline_while(p, step, timeout=30.0) -> bytes:
    """The first line ``p`` writes, calling ``step()`` until it comes (within ``timeout``)."""
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        if select.select([p.stdout], [], [], 1.0)[0]:
            return p.stdout.readline()
    return b""


@pytest.mark.parametrize("cmd", ["log", "trace"])
def test_follow_exits_when_stdout_closes_without_waiting_for_a_line(booted, cmd):
    g = booted
    # log: the newest line, then nothing while the demo app idles; trace: the events of one
    # WORK task (emitted until the stream is there), then none
    args = ["log", "-f", "-n", "1"] if cmd == "log" else \
        ["trace", "-f", "--level", "all", "--type", "WORK"]
    p = subprocess.Popen([GGMK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=g.env)
    try:
        step = (lambda: None) if cmd == "log" else \
            (lambda: g("emit", "WORK", "--count", "1", "--meta0", "249"))
        assert _readline_while(p, step)                  # `| head -1`
        p.stdout.close()
        assert p.wait(timeout=30) == EXIT_PIPE, p.stderr.read()
        assert p.stderr.read() == b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
