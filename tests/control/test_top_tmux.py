"""``ggmk top`` in a real terminal (tmux): it draws in place, refreshes, and quits on q / Ctrl-C."""
import shutil
import subprocess
import uuid

import pytest
from conftest import GGMK

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_live_view_quits(booted, wait_until, key):
    g = booted
    name = f"ggtop-{uuid.uuid4().hex[:8]}"
    cmd = (f"GGMK_STATE_DIR={g.dir} {GGMK} top --interval 0.2; echo EXITED=$?; sleep 60")
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
