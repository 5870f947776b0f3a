"""``ggmk top`` in a real terminal (tmux): it draws in place, refreshes, and quits on q / Ctrl-C."""
import os
import shutil
import subprocess
import uuid

import pytest
from conftest import GGMK, ROOT

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)


def _cmd(g):
    # the tmux server may have been started by someone else: pass our tree's PYTHONPATH
    return (f"PYTHONPATH={os.environ.get('PYTHONPATH', '')} GGMK_STATE_DIR={g.dir} {GGMK} top "
            "--interval 0.2; echo EXITED=$?; sleep 60")


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_live_view_quits(booted, wait_until, key):
    g = booted
    name = f"ggtop-{uuid.uuid4().hex[:8]}"
    cmd = _cmd(g)
    assert tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "60", cmd).returncode == 0
    try:
        def pane():
            return tmux("capture-pane", "-p", "-t", name).stdout

        assert wait_until(lambda: "kernels" in pane() and "workers" in pane(), 30), pane()
        # it refreshes in place: new work shows up in the same view
        assert g("emit", "WORK", "--count", "77", "--meta0", "0").returncode == 0
        assert wait_until(lambda: " 77 " in pane(), 30), pane()
        assert pane().count("ggmk top") == 1                  # redrawn, not scrolled
        tmux("send-keys", "-t", name, key)
        assert wait_until(lambda: "EXITED=0" in pane(), 30), pane()
    finally:
        tmux("kill-session", "-t", name)
    assert g.json("ps")["state"] == "running"


def test_top_live_view_shows_both_kernels_and_the_bridge(g, wait_until):
    r = g("boot", str(ROOT / "examples" / "dual_app.py"), "--device", "cpu", "--boot-timeout",
          "600", timeout=700)
    assert r.returncode == 0, r.stderr
    name = f"ggtop-{uuid.uuid4().hex[:8]}"
    assert tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "80",
                _cmd(g)).returncode == 0
    try:
        def pane():
            return tmux("capture-pane", "-p", "-t", name).stdout

        assert wait_until(lambda: all(w in pane() for w in ("kernels", "gpu", "bridge",
                                                            "scale.in", "cpu->gpu")), 30), pane()
        assert g("emit", "BURST", "--meta0", "0", "--meta1", "1234").returncode == 0
        # the bridge table updates in place: 1,234 messages crossed each way
        assert wait_until(lambda: pane().count("1,234") >= 2, 60), pane()
        assert pane().count("ggmk top") == 1
        tmux("send-keys", "-t", name, "q")
        assert wait_until(lambda: "EXITED=0" in pane(), 30), pane()
    finally:
        tmux("kill-session", "-t", name)
        g("halt")
    assert not os.path.exists(g.sock)
