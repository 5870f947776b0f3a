"""`ggmk build --kernel` report: compiled for sm_90 with the toolchain on the machine (no GPU
needed). Runs in a subprocess: the report needs the real numba-cuda, configured for PTX."""
import json
import os
import subprocess
import sys

import pytest

from ggmk.device.build import ToolchainMissing, find_ptxas

try:
    find_ptxas()
    import numba.cuda  # noqa: F401
    HAVE = None
except (ToolchainMissing, ImportError) as e:
    HAVE = str(e)

pytestmark = pytest.mark.skipif(HAVE is not None, reason=f"no CUDA toolchain: {HAVE}")

SCRIPT = r'''
import json, sys
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device.build import build_report, BuildError
m = gd.Module("costs")

@m.handler(1)
def light(ctx, task):
    g.emit(ctx, 2, g.meta0(task) + 1, 0)
    return 0

@m.handler(3)
def heavy(ctx, task):
    x = g.meta0(task)
    a0 = x; a1 = x * 3; a2 = x * 5; a3 = x * 7; a4 = x * 11; a5 = x * 13; a6 = x * 17
    a7 = x * 19; a8 = x * 23; a9 = x * 29; a10 = x * 31; a11 = x * 37; a12 = x * 41
    a13 = x * 43; a14 = x * 47; a15 = x * 53
    for i in range(g.meta1(task)):
        a0 = a0 * a15 + a1; a1 = a1 * a14 + a2; a2 = a2 * a13 + a3; a3 = a3 * a12 + a4
        a4 = a4 * a11 + a5; a5 = a5 * a10 + a6; a6 = a6 * a9 + a7; a7 = a7 * a8 + a0
        a8 = a8 * a7 + a9; a9 = a9 * a6 + a10; a10 = a10 * a5 + a11; a11 = a11 * a4 + a12
        a12 = a12 * a3 + a13; a13 = a13 * a2 + a14; a14 = a14 * a1 + a15; a15 = a15 * a0 + a1
    g.emit_host(ctx, 4, a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7, a8 ^ a9 ^ a10 ^ a11 ^ a12 ^ a13 ^ a14 ^ a15)
    return 0

@m.handler(5, granularity="block", shared_bytes=4096)
def blk(ctx, task, lane, nlanes, smem, phase):
    smem[lane] = lane
    return 0

out = {}
rep = build_report([m], reg_limit=32, workers=4)
out["report"] = rep.as_dict()
out["table"] = rep.table()
try:
    build_report([m], reg_limit=32, workers=4, whole_kernel=False, maxrregcount=16)
    out["spill_error"] = None
except BuildError as e:
    out["spill_error"] = str(e)
print(json.dumps(out))
'''


def test_build_report_registers_spill_smem_noinline(tmp_path):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GGMK_CACHE_DIR", str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    rows = {h["name"]: h for h in out["report"]["handlers"]}
    assert set(rows) == {"light", "heavy", "blk"}
    assert 0 < rows["light"]["registers"] <= 32 and not rows["light"]["noinline"]
    assert rows["heavy"]["registers"] > 32 and rows["heavy"]["noinline"]
    assert rows["blk"]["shared_bytes"] >= 4096
    assert all(h["spill_bytes"] == 0 for h in rows.values())
    k = out["report"]["kernel"]
    assert k["registers"] > 0 and k["spill_bytes"] == 0 and k["smem"] > 0
    assert k["noinline"] == ["heavy"] and k["functions"] >= 2   # heavy kept out of line
    assert "heavy" in out["table"]
    # capped at 16 registers the heavy handler spills: the build fails and says where
    assert out["spill_error"] and "heavy" in out["spill_error"] and "spill" in out["spill_error"]


@pytest.mark.parametrize("arch, cc", [("sm_80", (8, 0)), ("sm_90", (9, 0)), ("sm_89", (8, 9)),
                                      ("sm_100", (10, 0)), ("sm_120", (12, 0))])
def test_the_compute_capability_of_an_arch(arch, cc):
    """(before: sm_100 was read as compute capability 1.0)"""
    from ggmk.device.build import compute_capability
    assert compute_capability(arch) == cc


@pytest.mark.parametrize("bad", ["bogus", "sm_9x", "sm_", "sm_9", "compute_90"])
def test_a_bad_arch_is_named(bad):
    from ggmk.device.build import compute_capability
    with pytest.raises(ValueError, match=rf"arch='{bad}': allowed sm_"):
        compute_capability(bad)
