"""The README's Python examples run, and print what the README says they print (the trailing
``# ...`` lines of a block)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _split(block):
    lines = block.rstrip("\n").split("\n")
    expect = []
    while lines and lines[-1].startswith("# "):
        expect.insert(0, lines.pop()[2:])
    return "\n".join(lines) + "\n", expect


@pytest.mark.parametrize("i", range(len(_blocks())))
def test_readme_example_runs_and_prints_what_it_says(i, tmp_path):
    code, expect = _split(_blocks()[i])
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    if expect:
        assert r.stdout.strip().split("\n") == expect
