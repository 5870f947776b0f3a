"""The control socket itself: permissions, peer credentials, malformed / oversized / half-closed
requests, disconnects mid-stream, many clients: clear errors and the system keeps running."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEMO_APP, Ggmk   # tests/control/conftest.py (imported at collection)
from ggmk.cli.control_cmds import EXIT_REFUSED
from ggmk.control import protocol as P

NOBODY = 65534


def connect(g):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(g.sock)
    return s, s.makefile("rb")


def ask(s, f, obj_or_bytes):
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else \
        (json.dumps(obj_or_bytes) + "\n").encode()
    s.sendall(data)
    return json.loads(f.readline())


def req(cmd, args=None, id=1, v=1):
    return {"v": v, "id": id, "cmd": cmd, "args": args or {}}


def alive(g):
    s, f = connect(g)
    try:
        return ask(s, f, req("ping"))["result"]["state"] == "running"
    finally:
        s.close()


def test_protocol_errors_keep_the_connection_and_the_system(booted):
    g = booted
    s, f = connect(g)
    r = ask(s, f, req("ping", id=7))
    assert r["ok"] and r["id"] == 7 and r["v"] == P.PROTOCOL_VERSION
    assert r["result"]["protocol"] == 1
    for bad, code in [(b"{nope\n", "bad_json"), (b"\xff\xfe\n", "bad_json"),
                      (b"[1, 2]\n", "bad_request"), (b'{"v": 1, "cmd": 3}\n', "bad_request"),
                      (b'{"v": 99, "cmd": "ps"}\n', "bad_version"),
                      (b'{"v": 1, "cmd": "ps", "args": []}\n', "bad_request")]:
        r = ask(s, f, bad)
        assert not r["ok"] and r["error"]["code"] == code, (bad, r)
    r = ask(s, f, req("reboot_the_world"))
    assert r["error"]["code"] == "unknown_command" and "ps" in r["error"]["message"]
    r = ask(s, f, req("emit", {"type": "WORK", "count": "many"}))
    assert r["error"]["code"] == "bad_args" and "'count'" in r["error"]["message"]
    r = ask(s, f, req("emit", {"type": "WORK", "count": 0}))
    assert r["error"]["code"] == "bad_args"
    r = ask(s, f, req("ps"))                               # same connection still works
    assert r["ok"] and r["result"]["state"] == "running"
    s.close()


def test_oversized_request_is_refused_and_closed(booted):
    g = booted
    s, f = connect(g)
    s.sendall(b"x" * (P.MAX_REQUEST + 10))
    r = json.loads(f.readline())
    assert r["error"]["code"] == "too_large"
    assert f.readline() == b""                             # closed
    s.close()
    big = json.dumps(req("ps", {"pad": "y" * P.MAX_REQUEST})).encode() + b"\n"
    s, f = connect(g)
    try:
        s.sendall(big)
    except BrokenPipeError:
        pass
    assert json.loads(f.readline())["error"]["code"] == "too_large"
    s.close()
    assert alive(g)


def test_half_closed_connection_is_answered(booted):
    g = booted
    s, f = connect(g)
    s.sendall(json.dumps(req("ping")).encode())           # no newline, then EOF
    s.shutdown(socket.SHUT_WR)
    assert json.loads(f.readline())["ok"]
    assert f.readline() == b""
    s.close()
    s, f = connect(g)
    s.shutdown(socket.SHUT_WR)                             # nothing at all
    assert f.readline() == b""
    s.close()
    assert alive(g)


def test_disconnect_mid_stream(booted, wait_until):
    g = booted
    for cmd, args in (("top", {"interval": 0.05}), ("log", {"follow": True}),
                      ("trace", {"follow": True})):
        s, f = connect(g)
        s.sendall(P.request(cmd, args))
        first = json.loads(f.readline())
        assert first["ok"] and (first.get("stream") or first.get("result") is not None)
        f.close()                                          # gone mid-stream (makefile
        s.close()                                          # holds the fd too)
    assert g("emit", "WORK", "--count", "50", "--meta0", "7").returncode == 0
    assert alive(g)
    assert wait_until(lambda: g.json("ps")["clients"] <= 1, 10)   # stream threads ended


def test_stream_ends_when_the_client_speaks(booted):
    g = booted
    s, f = connect(g)
    s.sendall(P.request("top", {"interval": 0.05}))
    assert json.loads(f.readline())["stream"]
    s.sendall(b"\n")
    while True:
        line = json.loads(f.readline())
        if not line.get("stream"):
            break
    s.close()
    assert alive(g)


def test_many_clients_at_once(booted):
    g = booted
    results, errors = [], []

    def one(i):
        try:
            s, f = connect(g)
            for _ in range(5):
                results.append(ask(s, f, req("ps", id=i))["ok"])
            s.close()
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors and len(results) == 200 and all(results)
    assert alive(g)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(st.binary(max_size=4096),
                      st.lists(st.binary(max_size=200), max_size=5).map(b"\n".join),
                      st.text(max_size=300).map(str.encode)),
       close=st.sampled_from(["close", "shut_wr", "read"]))
def test_fuzz_never_crashes_or_hangs_the_server(fuzz_system, data, close):
    g = fuzz_system
    s, f = connect(g)
    try:
        s.sendall(data)
        if close == "shut_wr":
            s.shutdown(socket.SHUT_WR)
            while f.readline():                            # the server answers, then closes
                pass
        elif close == "read" and any(ln.strip() for ln in data.split(b"\n")[:-1]):
            # a complete non-blank line gets an answer (blank lines are skipped)
            s.settimeout(5)
            line = f.readline()
            assert not line or "ok" in json.loads(line) or "error" in json.loads(line)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    assert alive(g)


@pytest.fixture(scope="module")
def fuzz_system():
    d = tempfile.mkdtemp(prefix="ggf-", dir="/tmp")
    g = Ggmk(d)
    assert g("boot", DEMO_APP).returncode == 0
    yield g
    g("halt", "--timeout", "1")
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(code: str, env=None):
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "/usr/bin/python3", "-c", code],
                          capture_output=True, text=True, timeout=60, env=env)


CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except OSError as e:
    print("CONNECT", type(e).__name__); sys.exit(0)
try:
    s.sendall(b'{{"v": 1, "id": 1, "cmd": "ps"}}\\n')
except OSError:
    pass
print("REPLY", s.makefile("rb").readline().decode().strip())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
def test_other_uid_cannot_connect_to_the_0600_socket(booted):
    g = booted
    assert oct(os.stat(g.sock).st_mode & 0o777) == "0o600"
    r = _as_nobody(CLIENT.format(path=g.sock))
    assert "CONNECT PermissionError" in r.stdout, r.stdout + r.stderr
    assert "REPLY" not in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
def test_peer_credentials_refuse_another_uid_even_on_an_open_socket():
    """With the file permissions opened up on purpose, SO_PEERCRED still refuses the client."""
    import ggmk
    from ggmk.control.paths import StatePaths
    from ggmk.control.server import ControlServer
    d = tempfile.mkdtemp(prefix="ggp-", dir="/tmp")
    os.chmod(d, 0o755)
    m = ggmk.Module("tiny")

    @m.handler("TINY")
    def tiny(ctx):
        return ggmk.OK

    system = ggmk.boot([m], workers=1)
    paths = StatePaths.resolve(d)
    srv = ControlServer(system, paths, socket_mode=0o666)
    srv.start()
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    try:
        r = _as_nobody(CLIENT.format(path=str(paths.sock)))
        assert "REPLY" in r.stdout, r.stdout + r.stderr
        reply = json.loads(r.stdout.split("REPLY", 1)[1])
        assert reply["error"]["code"] == "permission_denied"
        assert f"uid {NOBODY}" in reply["error"]["message"]
        assert any("refused a client" in ln["msg"] for ln in srv.log.tail(10))
        # the owner is still served
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(paths.sock))
        s.sendall(P.request("ping"))
        assert json.loads(s.makefile("rb").readline())["ok"]
        s.close()
    finally:
        srv.request_halt(0)
        t.join(30)
    assert not paths.sock.exists()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
def test_cli_as_nobody_is_refused_with_exit_code(booted):
    """`ggmk ps` as another user (through the real executable): refused, exit code 5."""
    g = booted
    env = {"PATH": "/usr/bin:/bin", "GGMK_STATE_DIR": g.dir}
    code = ("import sys, socket\nsys.argv=['ggmk','ps']\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(%r)\nexcept PermissionError:\n sys.exit(%d)\n" % (g.sock,
                                                                             EXIT_REFUSED))
    r = _as_nobody(code, env=env)
    assert r.returncode == EXIT_REFUSED
