"""The dual app's documented commands, run as written; a type only a GPU handler takes is refused
without --chan (with the channel to use); ``mod info``/``mod ls`` of a GPU module show the GPU
kernel's counters and the channel it consumes; ``kern info --report`` fails when the build report
failed. One system of examples/dual_app.py's modules on the GPU kernel's cpu target (its build is
cached), booted from a wrapper app that makes the ptxas report fail."""
import json
import os
import shlex
import subprocess
import textwrap

import pytest
from conftest import ROOT, Ggmk

from ggmk.cli.control_cmds import EXIT_ERROR

DUAL_APP = ROOT / "examples" / "dual_app.py"


@pytest.fixture(scope="module")
def dual_bad_report(tmp_path_factory):
    app = tmp_path_factory.mktemp("app") / "dual_no_report.py"
    app.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(DUAL_APP.parent)!r})
        from dual_app import app  # noqa: F401  (the example's modules and types)
        from ggmk.control import buildinfo

        def _no_report(*a, **kw):
            raise RuntimeError("injected: no ptxas report today")

        buildinfo.report = _no_report
    """))
    short = f"/tmp/ggk-{os.getpid()}"          # sun_path is 108 bytes
    os.makedirs(short, mode=0o700, exist_ok=True)
    g = Ggmk(short)
    r = g("boot", str(app), "--device", "cpu", "--boot-timeout", "600", timeout=700)
    assert r.returncode == 0, r.stdout + r.stderr
    yield g
    g.stop()
    subprocess.run(["rm", "-rf", short])


def test_documented_commands_work_as_written(dual_bad_report, wait_until):
    g = dual_bad_report
    doc = DUAL_APP.read_text().split('"""')[1]
    cmds = [shlex.split(ln.strip(), comments=True) for ln in doc.splitlines()
            if ln.strip().startswith("ggmk emit")]
    assert any(c[2] == "SAMPLE" for c in cmds)
    for cmd in cmds:
        count = int(cmd[cmd.index("--count") + 1]) if "--count" in cmd else 1
        r = g(*cmd[1:])
        assert r.returncode == 0 and f"accepted {count} of {count} {cmd[2]}" in r.stdout, \
            (cmd, r.stdout, r.stderr)
    # the `--chan scale.in --payload JSON` of the prose is the same command
    assert "``ggmk emit SAMPLE --chan scale.in --payload JSON``" in " ".join(doc.split())
    for part in next(ln for ln in doc.splitlines() if "ggmk ps;" in ln).split(";"):
        r = g(*shlex.split(part)[1:])
        assert r.returncode == 0, (part, r.stderr)
    assert wait_until(lambda: g.json("stats")["cpu"]["types"]["COLLECT"]["ok"] == 5100, 120)


def test_emit_of_a_gpu_only_type_names_the_channel(dual_bad_report):
    g = dual_bad_report
    before = g.json("stats")["cpu"]["sys_error"]["pushed"]
    r = g("emit", "SAMPLE", "--payload", '{"x": 1.5, "n": 3, "tag": "cafe0001"}',
          "--count", "10")
    assert r.returncode == EXIT_ERROR and "accepted" not in r.stdout
    assert "no CPU handler takes SAMPLE" in r.stderr and "--chan scale.in" in r.stderr
    assert g.json("stats")["cpu"]["sys_error"]["pushed"] == before


def test_mod_info_of_a_gpu_module(dual_bad_report, wait_until):
    g = dual_bad_report
    assert g("emit", "SAMPLE", "--chan", "scale.in", "--payload",
             '{"x": 1.5, "n": 3, "tag": "cafe0001"}', "--count", "7").returncode == 0

    def ok():
        return g.json("mod", "info", "gpu_scale")["handlers"][0]["counters"].get("ok", 0)
    # the GPU kernel's count of SAMPLEs its handler ran (all of them: the other tests' too)
    assert wait_until(lambda: ok() == g.json("ps")["bridge"]["channels"]["scale.in"]["pushed"],
                      60)
    assert ok() >= 7
    info = g.json("mod", "info", "gpu_scale")
    chans = {(c["name"], c["direction"]) for c in info["channels"]}
    assert chans == {("scale.in", "consume"), ("scale.out", "produce")}
    r = g("mod", "info", "gpu_scale")
    assert r.returncode == 0 and f"ok={ok()} fail=0" in r.stdout and "consume  scale.in" \
        in r.stdout
    row = next(m for m in g.json("mod", "ls") if m["name"] == "gpu_scale")
    assert {c["name"] for c in row["channels"]} == {"scale.in", "scale.out"}
    assert "c:scale.in" in g("mod", "ls").stdout


def test_kern_info_report_failure_is_an_error(dual_bad_report):
    g = dual_bad_report
    r = g("kern", "info", "--report")
    assert r.returncode == EXIT_ERROR and "injected: no ptxas report today" in r.stdout
    r = g("kern", "info", "--report", "--json")
    assert r.returncode == EXIT_ERROR
    assert "injected" in json.loads(r.stdout)["gpu"]["report"]["error"]
    assert g("kern", "info").returncode == 0          # no --report asked: the listing is fine
    assert g("build").returncode == EXIT_ERROR
