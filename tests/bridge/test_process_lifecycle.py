"""The device process over a whole lifecycle: a script that exits with its dual system still
running (never halted) leaves no device process and no shared memory, and no resource-tracker
warning about "leaked shared_memory objects" (the segments are the parent's to unlink)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from ggmk.bridge import process as P
from tests.bridge.test_process import _gone

ROOT = Path(__file__).resolve().parents[2]


_NOT_HALTED = r"""
import json
from tests.bridge import watchdog_workloads as WW
if __name__ == "__main__":
    s = WW.boot()                       # a device process; the script ends without halt
    print(json.dumps({"pid": s.process.pid, "segs": s.process.segments}), flush=True)
"""


def test_interpreter_exit_with_a_running_device_process_unlinks_its_segments(tmp_path,
                                                                             wait_until):
    script = tmp_path / "not_halted.py"
    script.write_text(_NOT_HALTED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert "leaked shared_memory" not in r.stderr, r.stderr[-2000:]
    assert wait_until(lambda: _gone(info["pid"]), timeout=30), "the device process outlived"
    assert not any(P.shm_exists(x) for x in info["segs"])
