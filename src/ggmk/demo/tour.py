"""The second half of ``make demo``: both kernels operated from a shell, the way a user would.

Boots ``examples/dual_app.py`` with ``ggmk boot --device auto`` (a detached process with its
own control socket in a temporary state directory; the GPU kernel runs on ``cuda`` where a GPU
is usable, else on its ``cpu`` target), then, every step the real ``ggmk`` executable:

* ``ggmk trace --level all`` (task tracing on), then ``ggmk emit BURST``: a CPU handler publishes 20,000 SAMPLEs (16-byte payloads) on the bridge
  channel ``scale.in`` (CPU -> GPU); the GPU handler sums each payload and hands it back on
  ``scale.out`` (GPU -> CPU), where a CPU batch handler checks it: the bridge, both ways, with
  payloads;
* ``ggmk emit SAMPLE --chan scale.in --payload JSON``: one more, typed from the shell;
* ``ggmk ps`` (per kernel, and per bridge channel), ``ggmk kern info``, ``ggmk chan ls``, three
  seconds of the live ``ggmk top``, ``ggmk trace --perfetto`` and ``ggmk halt``.

A cold GPU kernel build takes about 20 s on a 2-core machine (cached in ~/.cache/ggmk by source hash, so the next
run boots in a second or two); the boot step says so instead of looking hung. A failing step
stops the tour with its exit code and halts what it booted.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "examples" / "dual_app.py"
BURST = 20_000


def _ggmk() -> list[str]:
    exe = shutil.which("ggmk", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "ggmk.cli.main"]


def steps(trace: str, device: str = "auto") -> list[list[str]]:
    return [
        ["boot", str(APP), "--device", device, "--workers", "2", "--boot-timeout", "600"],
        ["emit", "SAMPLE", "--chan", "scale.in", "--payload",
         '{"x": 1.5, "n": 3, "tag": "cafe0001"}'],
        # task tracing on before the burst, so its slices are in the buffer whatever the
        # machine's speed (a 1 s capture after the burst missed it when it had finished)
        ["trace", "--level", "all"],
        ["emit", "BURST", "--meta0", "0", "--meta1", str(BURST)],
        ["trace", "--perfetto", trace],
        ["ps"],
        ["kern", "info"],
        ["chan", "ls"],
        ["top", "--seconds", "3", "--interval", "0.5"],
        ["halt"],
    ]


def summary(state: str) -> None:
    """What the system did, per kernel and per bridge channel (from ``ggmk ps --json``)."""
    r = subprocess.run(_ggmk() + ["ps", "--json", "--state-dir", state], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        print(f"(ps --json failed: {r.stderr.strip()})")
        return
    ps = json.loads(r.stdout)
    print("\nwhat it did:")
    for k in ps["kernels"]:
        where = f" ({k['target']} target)" if k.get("target") else ""
        print(f"  {k['name'].upper()} kernel{where}: {k['tasks_done']:,} tasks done, "
              f"{k['errors']} failed, {k['queued']} queued")
    b = ps.get("bridge") or {}
    for name, c in (b.get("channels") or {}).items():
        n = c.get("pushed", c.get("crossed", 0))
        print(f"  bridge channel {name} ({c['direction']}, {c['type']}, {c['guarantee']}): "
              f"{n:,} messages crossed, {c.get('dead', 0)} dead-lettered")
    if b:
        print(f"  bridge: {b['transfers']:,} transfers for {b['records']:,} records (batched), "
              f"{b['payload_copies']:,} payload copies ({b['payload_bytes']:,} bytes)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    device = argv[argv.index("--device") + 1] if "--device" in argv else "auto"
    if not APP.is_file():
        print(f"tour: {APP} not found (run from a source checkout)", file=sys.stderr)
        return 1
    state = tempfile.mkdtemp(prefix="ggmk-demo-")
    trace = os.path.join(state, "trace.json")
    print("ggmk tour: the CPU kernel and the GPU kernel as one system, joined by the bridge "
          f"(device {device}: cuda on a GPU machine, else the GPU kernel's cpu target)",
          flush=True)
    booted = False
    t0 = time.monotonic()
    try:
        for args in steps(trace, device):
            if args[0] != "halt":
                print(f"\n$ ggmk {' '.join(args)}", flush=True)
            if args[0] == "boot":
                print("(building the GPU kernel, cached after the first run: a cold build "
                      "takes about 20 s on 2 cores, a warm boot a second or two)", flush=True)
            if args[0] == "halt":
                summary(state)
                print(f"\n$ ggmk {' '.join(args)}", flush=True)
            t = time.monotonic()
            r = subprocess.run(_ggmk() + args + ["--state-dir", state], timeout=900)
            if r.returncode != 0:
                print(f"tour: `ggmk {args[0]}` exited {r.returncode}", file=sys.stderr)
                return r.returncode
            if args[0] == "boot":
                booted = True
                print(f"(booted both kernels in {time.monotonic() - t:.1f} s)", flush=True)
            if args[0] == "halt":
                booted = False
        print(f"\nPerfetto trace: {trace} (open it in https://ui.perfetto.dev)")
        print(f"tour done in {time.monotonic() - t0:.1f} s")
        return 0
    finally:
        if booted:      # never leave a system running behind a failed step
            subprocess.run(_ggmk() + ["halt", "--state-dir", state], timeout=60,
                           capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
