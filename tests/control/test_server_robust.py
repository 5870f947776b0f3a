"""The control server against hostile local clients: a request trickled a byte at a time, a
flood of connections past the client slots (real sockets, an in-process server)."""
import json
import shutil
import socket
import tempfile
import threading
import time

import pytest

import ggmk
from ggmk.control import protocol as P
from ggmk.control import server as server_mod
from ggmk.control.paths import StatePaths
from ggmk.control.server import ControlServer


@pytest.fixture
def served():
    """A tiny system served in-process; (server, socket path). Halted afterwards."""
    m = ggmk.Module("tiny")

    @m.handler("TINY")
    def tiny(ctx):
        return ggmk.OK
    d = tempfile.mkdtemp(prefix="ggr-", dir="/tmp")
    paths = StatePaths.resolve(d)
    paths.ensure()
    system = ggmk.boot([m], workers=2)
    holder = {}

    def make(**kw):
        srv = ControlServer(system, paths, modules=[m], **kw)
        srv.start()
        t = threading.Thread(target=srv.serve, daemon=True)
        t.start()
        holder["srv"], holder["t"] = srv, t
        return srv, str(paths.sock)
    try:
        yield make
    finally:
        if "srv" in holder:
            holder["srv"].request_halt(0)
            holder["t"].join(30)
        else:
            system.halt(timeout=0)
        shutil.rmtree(d, ignore_errors=True)


def _connect(path, timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def test_a_trickled_request_times_out_from_its_first_byte(served, monkeypatch):
    """A byte every 0.1 s never ends the request: closed with `timeout` once the limit has
    passed since its first byte (timed from the last byte, it held its slot forever)."""
    monkeypatch.setattr(server_mod, "PARTIAL_REQUEST_TIMEOUT", 1.0)
    srv, path = served()
    s = _connect(path)
    s.sendall(b'{"v": 1, ')
    t0 = time.monotonic()
    s.setblocking(False)
    got = b""
    while b"\n" not in got and time.monotonic() - t0 < 8:
        try:
            s.send(b" ")
        except OSError:
            pass
        try:
            got += s.recv(4096)
        except BlockingIOError:
            pass
        except OSError:
            break
        time.sleep(0.1)      # the trickle's pace (the wait above is bounded by its deadline)
    s.close()
    assert b"\n" in got, f"still open after {time.monotonic() - t0:.1f}s of trickling"
    reply = json.loads(got.split(b"\n")[0])
    assert reply["error"]["code"] == "timeout", reply
    assert "within 1s" in reply["error"]["message"]
    # the server still serves
    c = _connect(path)
    c.sendall(P.request("ping"))
    assert json.loads(c.makefile("rb").readline())["ok"]
    c.close()


def test_a_flood_past_the_slots_does_not_stall_accepting(served):
    """Every slot held mid-request, then connections that neither read nor close: each gets
    `busy` at once (the accept thread lingered 0.5 s on each refusal, so the 41st waited
    ~20 s and a larger flood filled the listen queue: connects failed with EAGAIN)."""
    srv, path = served(max_clients=2)
    held = [_connect(path) for _ in range(2)]
    for h in held:
        h.sendall(b'{"v": 1, ')        # mid-request: not evictable
    deadline = time.monotonic() + 10
    while srv._nclients < 2 or srv._waiting:       # both accepted and mid-request
        assert time.monotonic() < deadline
        time.sleep(0.01)
    flood = [_connect(path) for _ in range(40)]
    t0 = time.monotonic()
    last = _connect(path, timeout=15)
    reply = json.loads(last.makefile("rb").readline())
    took = time.monotonic() - t0
    assert reply["error"]["code"] == "busy", reply
    assert took < 5, f"the busy answer took {took:.1f}s"
    for c in flood + held + [last]:
        c.close()
    # bounded: the refusal threads end
    deadline = time.monotonic() + 10
    while srv._nrefusing:
        assert time.monotonic() < deadline, srv._nrefusing
        time.sleep(0.01)


def test_a_missing_name_is_named_as_missing(booted):
    """mod info / mod reset / chan inspect without a name: 'missing argument', not 'no module
    None'."""
    from ggmk.control.client import Client
    from ggmk.control.paths import StatePaths
    from ggmk.control.protocol import ControlError
    with Client(StatePaths.resolve(booted.dir), timeout=10) as c:
        for cmd in ("mod_info", "mod_reset", "chan_inspect"):
            with pytest.raises(ControlError) as e:
                c.call(cmd, {})
            assert e.value.code == "bad_args" and "missing argument 'name'" in str(e.value), cmd


def test_boot_waits_for_its_own_server_not_another_one(booted):
    """Two `ggmk boot` at once on one state dir: the one whose server lost the race must not
    report the winner's system as the one it booted (exit 0, the winner's pid)."""
    import subprocess
    import sys
    from ggmk.cli.control_cmds import EXIT_ALREADY, _wait_booted
    from ggmk.control.paths import StatePaths
    paths = StatePaths.resolve(booted.dir)
    # a server that loses: it exits "already running" shortly, while the winner answers
    loser = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.5); "
                              "sys.exit(4)"])
    with pytest.raises(SystemExit) as e:
        _wait_booted(loser, paths, "app.py", 0, 30)
    assert e.value.code == EXIT_ALREADY
