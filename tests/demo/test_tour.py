"""`make demo`'s shell tour runs end to end with the real `ggmk` executable and leaves nothing
running."""
import subprocess
import sys


def test_the_tour_boots_works_traces_and_halts():
    r = subprocess.run([sys.executable, "-m", "ggmk.demo.tour"], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for step in ("$ ggmk boot", "$ ggmk emit", "$ ggmk ps", "$ ggmk top --once", "$ ggmk halt",
                 "halted: drained True", "Perfetto trace:"):
        assert step in r.stdout, step
