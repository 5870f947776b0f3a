"""examples/particles.py: standard modules + one custom module, on real threads."""
from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_particles_runs_to_completion():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from particles import main
    finally:
        sys.path.remove(str(EXAMPLES))
    out = main(n=48, steps=6, workers=2)
    assert out["idle"] and out["errors"] == 0
    assert out["steps"] == 6
    assert len(set(out["energy"])) == 1 and out["energy"][0] > 0     # elastic walls
    assert out["positions_match"]                                      # kv has the last step
    assert out["log_lines"] == 6 and out["first_line"].startswith("step 1 energy")
    assert out["stats"] == {"steps": 6}
