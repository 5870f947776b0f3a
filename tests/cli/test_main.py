import json
import subprocess
import sys

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
    for word in ("PARTICLE_STEP", "SOLVE", "FETCH", "trace hash", "sys.error", "arena"):
        assert word in out.stdout
