import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ggmk.cli.main import cli


def test_version_and_help():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "demo" in r.output and "hw" in r.output
    assert CliRunner().invoke(cli, ["version"]).output.strip() == "0.1.0"


def test_hw_json_lists_real_pci_functions():
    r = CliRunner().invoke(cli, ["hw", "--json"])
    assert r.exit_code == 0
    assert isinstance(json.loads(r.output), list)


def test_demo_runs_and_prints_summary():
    out = subprocess.run([sys.executable, "-m", "ggmk.demo", "--seconds", "0.5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("PARTICLE_STEP", "SOLVE", "FETCH", "trace hash", "sys.error", "arena",
                 "all work finished"):
        assert word in out.stdout
    # the summary's sys.error count is what the queue table lists on sys.error (FETCH fails
    # every 50th task on purpose: never 0)
    listed = sum(int(n) for n in re.findall(r"\b[A-Z_]+: (\d+)", out.stdout.split(
        "sys.error", 2)[2].splitlines()[0]))
    said = int(re.search(r"([\d,]+) on sys.error with a reason", out.stdout)[1].replace(",", ""))
    assert listed > 0 and said == listed, out.stdout


# -- bad numeric options: a usage error naming the option and the allowed range (exit code 2) --

@pytest.mark.parametrize("args, option, words", [
    (["--workers", "0"], "--workers", ["0 is not in the range x>=1"]),
    (["--workers", "-3"], "--workers", ["-3 is not in the range x>=1"]),
    (["--workers", "two"], "--workers", ["'two' is not a valid integer"]),
    (["--workers", "1.5"], "--workers", ["'1.5' is not a valid integer"]),
    (["--seconds", "-1"], "--seconds", ["-1.0 is not in the range x>=0"]),
    (["--seconds", "nan"], "--seconds", ["nan is not a finite number", "x>=0"]),
    (["--seconds", "inf"], "--seconds", ["inf is not a finite number", "x>=0"]),
    (["--seed", "-1"], "--seed", ["-1 is not in the range x>=0"]),
])
def test_demo_bad_numbers_are_usage_errors(args, option, words):
    r = CliRunner().invoke(cli, ["demo", *args])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)              # no traceback
    assert "Usage: " in r.output and f"Invalid value for '{option}'" in r.output
    for w in words:
        assert w in r.output, (w, r.output)


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], ["argument --workers", "0 is not in the range >= 1"]),
    (["--workers", "x"], ["argument --workers", "'x' is not a valid integer"]),
    (["--seconds", "-2"], ["argument --seconds", "-2.0 is not in the range >= 0"]),
    (["--seconds", "nan"], ["argument --seconds", "not a finite number"]),
    (["--seed", "-1"], ["argument --seed", "-1 is not in the range >= 0"]),
])
def test_python_m_demo_bad_numbers_are_usage_errors(args, words, capsys):
    from ggmk.demo.workload import main as demo_main
    with pytest.raises(SystemExit) as ei:
        demo_main(args)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ggmk-demo" in err
    for w in words:
        assert w in err, (w, err)


# -- hw: the gpu_drv section ----------------------------------------------------------------------

def test_hw_text_ends_with_the_gpu_drv_section():
    r = CliRunner().invoke(cli, ["hw"])
    assert r.exit_code == 0, r.output
    pci_part, _, gpu_part = r.output.partition("\ngpu_drv:\n")
    assert gpu_part, r.output
    assert "  backend: " in gpu_part and "  device: " in gpu_part and "  NVML: " in gpu_part
    assert "  config: memory_reservation=" in gpu_part
    assert "displays" in gpu_part or "display " in gpu_part


def test_hw_json_gpu_drv_section():
    r = CliRunner().invoke(cli, ["hw", "--json", "--gpu-drv"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d) == {"pci", "gpu_drv"} and isinstance(d["pci"], list)
    g = d["gpu_drv"]
    assert g["backend"] in ("cpu", "cuda") and g["kernel_target"] == g["backend"]
    for key in ("device", "gpus", "nvml", "config", "displays", "backend_reason"):
        assert key in g, key
    assert g["device"]["sources"]                       # each fact says where it came from
    plain = json.loads(CliRunner().invoke(cli, ["hw", "--json"]).output)
    assert isinstance(plain, list) and len(plain) == len(d["pci"])   # the old shape is kept


def test_hw_gpu_drv_without_json_is_a_usage_error():
    r = CliRunner().invoke(cli, ["hw", "--gpu-drv"])
    assert r.exit_code == 2 and "--gpu-drv goes with --json" in r.output, r.output


@pytest.mark.parametrize("args", [["hw"], ["hw", "-v"], ["hw", "--json"],
                                  ["hw", "--json", "--gpu-drv"]])
def test_hw_reports_a_pci_discovery_failure_without_a_traceback(monkeypatch, args):
    from ggmk.drivers import pci

    def boom(*a, **k):
        raise PermissionError(13, "Permission denied", "/sys/bus/pci/devices")
    monkeypatch.setattr(pci, "list_functions", boom)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output                    # EXIT 1: the command failed
    assert not isinstance(r.exception, PermissionError)  # handled, not a traceback
    assert "Traceback" not in r.output
    assert "PCI discovery failed" in r.output and "Permission denied" in r.output, r.output


def test_new_writes_a_module_whose_test_passes_with_ggmk_test(tmp_path):
    r = CliRunner().invoke(cli, ["new", "greeter", "--dest", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "greeter" / "module.toml").is_file()
    r = CliRunner().invoke(cli, ["test", str(tmp_path / "greeter")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["new", "greeter", "--dest", str(tmp_path)])   # no overwrite
    assert r.exit_code == 2 and "greeter" in r.output
    r = CliRunner().invoke(cli, ["new", "Bad-Name", "--dest", str(tmp_path)])
    assert r.exit_code == 2 and "lowercase" in r.output


def test_ggmk_test_maps_pytest_exit_codes_to_ggmks(tmp_path):
    # pytest's 5 (no tests) and 4 (usage error) would read as "refused" / "already running"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["test", str(empty)])
    assert r.exit_code == 1 and f"no tests found in {empty}" in r.output, r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pytest.ini").write_text("[pytest]\naddopts = --no-such-pytest-option\n")
    (bad / "test_x.py").write_text("def test_x():\n    pass\n")
    r = CliRunner().invoke(cli, ["test", str(bad)])
    assert r.exit_code == 2 and "--no-such-pytest-option" in r.output, r.output
    (bad / "pytest.ini").unlink()
    (bad / "test_y.py").write_text("def test_y():\n    assert False\n")
    assert CliRunner().invoke(cli, ["test", str(bad)]).exit_code == 1


@pytest.mark.parametrize("args, named", [
    (["--perfetto", "out.json"], ["--perfetto"]),
    (["--seconds", "2"], ["--seconds"]),
    (["--seconds", "0", "--perfetto", "out.json"], ["--perfetto", "--seconds"]),
])
def test_trace_follow_refuses_options_it_would_ignore(args, named, tmp_path):
    """``ggmk trace -f`` streams: --perfetto and --seconds would be ignored, so they are a
    usage error naming them, before any connection (no system runs here)."""
    r = CliRunner().invoke(cli, ["trace", "-f", "--state-dir", str(tmp_path),
                                 *[str(tmp_path / a) if a == "out.json" else a for a in args]])
    assert r.exit_code == 2, r.output
    assert "Usage: " in r.output and "-f/--follow" in r.output
    for opt in named:
        assert opt in r.output, (opt, r.output)
    assert not (tmp_path / "out.json").exists()
