"""The second half of ``make demo``: the system operated from a shell, the way a user would.

Boots ``examples/demo_app.py`` with ``ggmk boot`` (a detached process with its own control
socket in a temporary state directory), sends it work with ``ggmk emit``, shows ``ggmk ps``,
one frame of ``ggmk top``, the channels, writes a Perfetto trace and halts with ``ggmk halt``.
Every step is the real ``ggmk`` executable; a failing step stops the tour with its exit code.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "examples" / "demo_app.py"


def _ggmk() -> list[str]:
    exe = shutil.which("ggmk", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "ggmk.cli.main"]


def main() -> int:
    if not APP.is_file():
        print(f"tour: {APP} not found (run from a source checkout)", file=sys.stderr)
        return 1
    state = tempfile.mkdtemp(prefix="ggmk-demo-")
    trace = os.path.join(state, "trace.json")
    steps = [
        ["boot", str(APP), "--workers", "2"],
        ["emit", "WORK", "--count", "1000", "--meta0", "249"],
        ["emit", "POINT", "--payload", '{"x": 1.5, "n": 3, "tag": "cafe0001"}'],
        ["ps"],
        ["top", "--once"],
        ["chan", "ls"],
        ["trace", "--level", "all", "--seconds", "1", "--perfetto", trace],
        ["halt"],
    ]
    booted = False
    try:
        for args in steps:
            print(f"\n$ ggmk {' '.join(args)}", flush=True)
            r = subprocess.run(_ggmk() + args + ["--state-dir", state], timeout=120)
            if r.returncode != 0:
                print(f"tour: `ggmk {args[0]}` exited {r.returncode}", file=sys.stderr)
                return r.returncode
            booted = booted or args[0] == "boot"
            if args[0] == "halt":
                booted = False
        print(f"\nPerfetto trace: {trace} (open it in ui.perfetto.dev)")
        return 0
    finally:
        if booted:      # never leave a system running behind a failed step
            subprocess.run(_ggmk() + ["halt", "--state-dir", state], timeout=60,
                           capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
