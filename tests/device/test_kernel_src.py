"""``kernel_src.py``, the one kernel source: read as text, never imported. Its worker iteration
is one function per phase, and nothing in it asks which target it runs on."""
import ast
from pathlib import Path

import ggmk.device as gd

SRC = Path(gd.__file__).resolve().parent / "kernel_src.py"
TREE = ast.parse(SRC.read_text())
DEFS = {n.name: n for n in TREE.body if isinstance(n, ast.FunctionDef)}
PHASES = ["iteration_start", "ingest_host", "gather", "idle_round", "load_batch",
          "type_offsets", "scatter_batch", "dispatch_batch", "iteration_end"]


def _calls(fn):
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return [n.func.id for n in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]


def test_worker_iteration_is_one_function_per_phase():
    calls = _calls(DEFS["worker_iteration"])
    assert [c for c in calls if c in PHASES] == PHASES
    for p in PHASES:
        assert p in DEFS, p
    # the phases do the work: the iteration itself only sequences them
    assert len(DEFS["worker_iteration"].body) < 25
    assert not [n for n in ast.walk(DEFS["worker_iteration"]) if isinstance(n, ast.For)]


def test_no_target_branches():
    names = {n.id for n in ast.walk(TREE) if isinstance(n, ast.Name)}
    strings = {n.value for n in ast.walk(TREE) if isinstance(n, ast.Constant)
               and isinstance(n.value, str) and len(n.value) < 10}
    assert not {"cuda", "TARGET", "NAME"} & names
    assert not {"cpu", "sim", "cuda"} & strings


def test_only_target_neutral_words():
    names = {n.id for n in ast.walk(TREE) if isinstance(n, ast.Name)}
    assert not {"C_DOORBELL", "C_PARKED", "G_NHOST", "G_HOST_TICKET"} & names
