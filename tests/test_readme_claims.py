"""README claims a user would try by hand, run the way the README tells them (scripts in a
process of their own, the ``ggmk`` command): halting from a signal handler, what a boot
registered on sight, ``ggmk hw --gpu-drv``, the control socket's name, where the build puts
standard device modules made without ``base=``."""
import json
import os
import subprocess
import sys

import pytest

from ggmk.cli.main import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def _py(code, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


SIGNAL_HALT = r"""
import os, signal, threading, time
import numpy as np
import ggmk
from ggmk import OK

m = ggmk.Module("w")

@m.handler("WORK")
def work(ctx):
    time.sleep(0.0005)
    return OK

got = []
# (a) the signal lands in the program's own code: the halt runs at once, returns its report
with ggmk.boot([m], workers=2) as system:
    signal.signal(signal.SIGTERM, lambda *a: got.append(system.halt()))
    system.submit("WORK", meta0=np.arange(200))
    signal.raise_signal(signal.SIGTERM)
    print("own", type(got[0]).__name__, got[0] == system.halt())

# (b) the signal lands inside ggmk's run(): halt() returns None, the halt finishes on a thread
# of its own, halt() again (the with block's exit) returns the report; nothing accepted lost
got.clear()
N = 20000
with ggmk.boot([m], workers=2, host_helps=False) as system:   # (run() runs no handler here)
    signal.signal(signal.SIGTERM, lambda *a: got.append(system.halt()))
    system.submit("WORK", meta0=np.arange(N))
    def fire():
        t_end = time.monotonic() + 30
        while system.stats()["types"]["WORK"]["ok"] < 100 and time.monotonic() < t_end:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=fire).start()
    system.run(until_idle=True, timeout=60)
    rep = system.halt()
ok = system.stats()["types"]["WORK"]["ok"]
print("kernel", got, sorted(rep), ok + rep["halted"] + rep["outstanding"] == N, ok < N)
"""


def test_signal_handler_halt_as_the_readme_shows(tmp_path):
    r = _py(SIGNAL_HALT, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    own, kernel = r.stdout.strip().split("\n")
    assert own == "own dict True"
    assert kernel == ("kernel [None] ['channel_dropped', 'drained', 'halted', 'outstanding', "
                      "'stuck_workers'] True True"), r.stdout


def test_auto_registered_names_are_on_the_systems_registry(tmp_path):
    import ggmk
    from ggmk import OK
    (tmp_path / "types.toml").write_text("[types.SENSOR_READING]\nid = 0x0100\n")
    reg = ggmk.load_types(str(tmp_path / "types.toml"))
    m = ggmk.Module("sensors")

    @m.handler("SENSOR_READNG")
    def h(ctx):
        return OK
    with ggmk.boot([m], types=reg) as system:
        assert system.types.auto_registered() == ["SENSOR_READNG"]       # (no SYS_* type)
        assert reg.auto_registered() == [] and "SENSOR_READNG" not in reg    # (a copy)


def test_hw_gpu_drv_goes_with_json():
    from click.testing import CliRunner
    r = CliRunner().invoke(cli, ["hw", "--gpu-drv"])
    assert r.exit_code == 2 and "--gpu-drv goes with --json" in r.output
    r = CliRunner().invoke(cli, ["hw", "--json", "--gpu-drv"])
    assert r.exit_code == 0 and sorted(json.loads(r.output)) == ["gpu_drv", "pci"]


def test_control_socket_is_the_state_dirs_control_sock(tmp_path):
    sd = tmp_path / "sd"
    ggmk_cmd = [sys.executable, "-m", "ggmk.cli.main"]
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run(ggmk_cmd + ["boot", os.path.join(ROOT, "examples", "demo_app.py"),
                                   "--state-dir", str(sd)],
                       capture_output=True, text=True, timeout=120, env=env)
    try:
        assert r.returncode == 0, r.stderr
        sock = sd / "control.sock"
        assert f"control socket: {sock}" in r.stdout and sock.is_socket()
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
    finally:
        h = subprocess.run(ggmk_cmd + ["halt", "--state-dir", str(sd)], capture_output=True,
                           text=True, timeout=120, env=env)
    assert h.returncode == 0 and h.stdout.startswith("halted:"), (h.stdout, h.stderr)


def test_standard_device_modules_without_base_are_placed_by_the_build():
    pytest.importorskip("numba")
    from ggmk.device.codegen.resolve import resolve_handlers
    from ggmk.errors import BootError
    from ggmk.modules import gate, kv, stats
    g, s = gate.device_module(n=64), stats.device_module()
    assert g.user_words[0] < s.user_words[0] < g.user_words[1]        # defaults overlap
    resolve_handlers([g, s])                                           # (no compile)
    a, b = sorted([g.user_words[:2], s.user_words[:2]])
    assert a[1] <= b[0]
    # an explicit base stays where given; the movable one goes around it
    g, s = gate.device_module(n=64), stats.device_module(base=12288)
    resolve_handlers([g, s])
    assert s.user_words[:2] == (12288, 16900) and g.user_words[0] != 8192
    # a movable module's size is bounded by the user words, a given base's from that base
    assert kv.device_module(capacity=4096, base=0).user_words[:2] == (0, 32770)
    assert kv.device_module(capacity=4096).user_words[1] == 65536
    assert gate.device_module(n=340).user_words[1] == 65536
    with pytest.raises(BootError, match="capacity <= 2048 at this base"):
        kv.device_module(capacity=4096, base=32768)
