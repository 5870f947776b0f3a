"""Control-plane fixes from an audit, each against a real server process and its socket:
concurrent ``kv put`` replies, silent connections that locked out ``halt``, ``emit --payload
--count`` past the arena, ``emit --chan sys.*``, state dirs that cannot hold a socket or cannot
be written, streams ended by a halt, apps that ``sys.exit`` at import, deeply nested JSON, and
a job queued after the driver stopped."""
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest
from conftest import DEMO_APP, GGMK, Ggmk

from ggmk.cli.control_cmds import EXIT_ERROR, EXIT_NOT_RUNNING
from ggmk.control import protocol as P
from ggmk.control.client import Client, probe
from ggmk.control.paths import StatePaths

KV_APP = textwrap.dedent('''
    import ggmk
    from ggmk.modules import kv

    def app():
        return [kv.module(4096)], {"workers": 2}
''')

BIG_APP = textwrap.dedent('''
    import ggmk

    TYPES = """
    [types.BIG]
    id = 120
    payload = { blob = "bytes[4000]", n = "u32" }
    """
    m = ggmk.Module("big")

    @m.handler("BIG")
    def big(ctx):
        return ggmk.OK

    FILL = {"on": %s}

    @m.init
    def init(system):
        # leave no block of 4000 bytes or more: a BIG payload cannot be stored
        while FILL["on"] and system.arena.alloc(4000):
            pass

    def app():
        return [m], {"types": ggmk.load_types(TYPES), "workers": 1}
''')


def _boot(g, tmp_path, name, text, *extra):
    path = tmp_path / name
    path.write_text(text)
    r = g("boot", str(path), *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return g


def _connect(g):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(g.sock)
    return s


# -- 1: concurrent kv puts -------------------------------------------------------------------------

@pytest.fixture
def kv_sys(g, tmp_path):
    yield _boot(g, tmp_path, "kv_app.py", KV_APP)
    g.stop()


def test_concurrent_kv_puts_each_report_their_own_put(kv_sys):
    """Each reply is about its own put: another client's put running first must not make a
    stored put read as "not stored"."""
    paths = StatePaths.resolve(kv_sys.dir)
    bad, errs = [], []

    def worker(i):
        try:
            with Client(paths) as c:
                for j in range(20):
                    k = i * 1000 + j
                    res = c.call("kv", {"op": "put", "key": k, "value": k + 1})
                    if not res["stored"]:
                        bad.append((k, res["status"]))
        except Exception as e:   # noqa: BLE001
            errs.append(repr(e))
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errs and not bad, (errs[:3], bad[:5])
    with Client(paths) as c:
        ls = c.call("kv", {"op": "ls", "limit": 1000})
    assert ls["size"] == 320
    assert all(it["value"] == it["key"] + 1 for it in ls["items"])


# -- 2: silent connections -------------------------------------------------------------------------

def test_silent_connections_do_not_lock_out_halt_or_ps(booted, wait_until):
    g = booted
    silent = [_connect(g) for _ in range(64)]          # every client slot (max_clients 64)
    t0 = time.monotonic()
    try:
        # (a connection idle for less than EVICT_GRACE is not taken: poll, well within the
        # silent ones' own FIRST_REQUEST_TIMEOUT)
        assert wait_until(lambda: g("ps", timeout=30).returncode == 0, 4)
        assert time.monotonic() - t0 < 8
        r = g("ps", timeout=30)
        assert r.returncode == 0 and "state running" in r.stdout, r.stdout + r.stderr
        r = g("boot", DEMO_APP, timeout=30)
        assert r.returncode == 4 and "already running" in r.stderr, r.stderr
        r = g("halt", timeout=30)
        assert r.returncode == 0 and "halted" in r.stdout, r.stdout + r.stderr
    finally:
        for s in silent:
            s.close()


def test_a_connection_that_never_sends_is_closed_soon(booted):
    s = _connect(booted)
    try:
        t0 = time.monotonic()
        assert s.recv(100) == b""              # closed by the server (timeout 20 s here)
        assert time.monotonic() - t0 < 18      # FIRST_REQUEST_TIMEOUT, not the idle 600 s
    finally:
        s.close()


def test_probe_reads_a_busy_server_as_running():
    """A server whose slots are all taken answers ``busy``: it runs (not "booting")."""
    d = tempfile.mkdtemp(prefix="fixC_", dir="/tmp")
    paths = StatePaths.resolve(d)
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(paths.sock))
    srv.listen(4)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.sendall(P.error(None, "busy", "too many clients (at most 64)"))
            c.close()
    t = threading.Thread(target=serve)
    t.start()
    try:
        assert probe(paths) == "running"
    finally:
        stop.set()
        t.join()
        srv.close()
        os.close(lock)
        shutil.rmtree(d, ignore_errors=True)


# -- 3: emit --payload --count past the arena ------------------------------------------------------

PAYLOAD = json.dumps({"n": 1, "blob": "00" * 4000})


def test_emit_payload_count_shares_one_payload(g, tmp_path, wait_until):
    """40000 tasks of a 4000-byte payload (160 MB as copies, the arena has 64 MB): one copy,
    retained, so all are accepted and run. (The sim HAL runs nothing while the emit runs on
    the driver thread: no task frees its payload meanwhile.)"""
    _boot(g, tmp_path, "big_app.py", BIG_APP % "False", "--hal", "sim")
    try:
        r = g("emit", "BIG", "--payload", PAYLOAD, "--count", "40000")
        assert r.returncode == 0 and "accepted 40000 of 40000 BIG" in r.stdout, \
            r.stdout + r.stderr
        assert wait_until(lambda: g.json("stats")["types"]["BIG"]["ok"] == 40000, 60)
        arena = g.json("stats")["arena"]["total"]
        assert arena["fails"] == 0
    finally:
        g.stop()


def test_emit_payload_into_a_full_arena_is_refused_not_internal(g, tmp_path):
    _boot(g, tmp_path, "full_app.py", BIG_APP % "True")
    try:
        r = g("emit", "BIG", "--payload", PAYLOAD, "--count", "5")
        assert r.returncode == EXIT_ERROR, r.stdout + r.stderr
        assert "accepted 0 of 5 BIG (refused: ALLOC_FAIL)" in r.stdout, r.stdout + r.stderr
        assert "internal" not in r.stderr and "Traceback" not in r.stderr
    finally:
        g.stop()


# -- 4: emit --chan sys.* ----------------------------------------------------------------------------

def test_emit_refuses_the_system_channels(booted):
    g = booted
    before = g.json("stats")["types"].get("WORK", {}).get("dropped", 0)
    for chan in ("sys.error", "sys.dropped"):
        r = g("emit", "WORK", "--chan", chan)
        assert r.returncode == EXIT_ERROR, r.stdout + r.stderr
        assert "bad_args" in r.stderr and repr(chan) in r.stderr and "sys.*" in r.stderr
    assert g.json("stats")["types"].get("WORK", {}).get("dropped", 0) == before


# -- 5: a state dir too long for a socket ----------------------------------------------------------

def test_state_dir_too_long_for_a_socket_is_a_clear_error():
    d = "/tmp/fixC_" + "d" * 100
    g = Ggmk(d)
    try:
        r = g("boot", DEMO_APP)
        assert r.returncode == EXIT_ERROR and "shorter --state-dir" in r.stderr, r.stderr
        for cmd in (["ps"], ["halt"], ["emit", "WORK"], ["log", "-f"], ["top", "--once"]):
            r = g(*cmd, timeout=30)
            assert r.returncode == EXIT_NOT_RUNNING, (cmd, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and "shorter --state-dir" in r.stderr, \
                (cmd, r.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- 6: a read-only state dir ------------------------------------------------------------------------

@pytest.fixture
def ro_dir():
    d = tempfile.mkdtemp(prefix="fixC_ro", dir="/tmp")
    mounted = False
    if os.geteuid() == 0:         # root writes through mode bits: a read-only mount
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,mode=0700", "tmpfs", d],
                           capture_output=True)
        if r.returncode:
            shutil.rmtree(d, ignore_errors=True)
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr!r}")
        mounted = True
    else:
        os.chmod(d, 0o500)
    yield d
    if mounted:
        subprocess.run(["umount", d], capture_output=True)
    else:
        os.chmod(d, 0o700)
    shutil.rmtree(d, ignore_errors=True)


def test_read_only_state_dir_is_a_clear_error(ro_dir):
    g = Ggmk(ro_dir)
    for extra in ([], ["--foreground"]):
        r = g("boot", *extra, DEMO_APP, timeout=60)
        assert r.returncode == EXIT_ERROR, (extra, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, (extra, r.stderr)
        assert f"state dir {ro_dir}: not writable (" in r.stderr, (extra, r.stderr)
    r = g("ps")
    assert r.returncode == EXIT_NOT_RUNNING and "Traceback" not in r.stderr


# -- 7: a stream with a long interval ends cleanly on halt ---------------------------------------

def test_top_with_a_long_interval_ends_cleanly_on_halt(booted):
    g = booted
    s = _connect(g)
    f = s.makefile("rb")
    try:
        s.sendall(P.request("top", {"interval": 30}, 9))
        first = json.loads(f.readline())
        assert first["ok"] and first["stream"]
        r = g("halt", timeout=60)
        assert r.returncode == 0, r.stderr
        last = json.loads(f.readline())          # the end line, not a dropped connection
        assert last == {"v": 1, "id": 9, "ok": True, "end": True}
    finally:
        s.close()


def test_cli_top_interval_10_exits_0_on_halt(booted, wait_until):
    g = booted
    p = subprocess.Popen([GGMK, "top", "--interval", "10", "--seconds", "60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=g.env)
    try:
        assert wait_until(lambda: g.json("ps")["clients"] >= 2, 30)   # top's + this ps
        assert g("halt", timeout=60).returncode == 0
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- 8: an app that exits at import --------------------------------------------------------------

@pytest.mark.parametrize("body,want", [("import sys\nsys.exit(4)\n", "SystemExit: 4"),
                                       ("raise KeyboardInterrupt\n", "KeyboardInterrupt")])
def test_app_exiting_at_import_is_a_boot_failure(g, tmp_path, body, want):
    app = tmp_path / "exit_app.py"
    app.write_text(body)
    try:
        for extra in ([], ["--foreground"]):
            r = g("boot", *extra, str(app), timeout=60)
            assert r.returncode == EXIT_ERROR, (extra, r.stdout, r.stderr)
            assert "boot failed" in r.stderr and want in r.stderr, (extra, r.stderr)
            assert "already running" not in r.stderr
            assert not os.path.exists(os.path.join(g.dir, "ggmk.pid"))
            assert g("ps").returncode == EXIT_NOT_RUNNING
    finally:
        g.stop()


# -- 9: deeply nested JSON -------------------------------------------------------------------------

def test_deeply_nested_json_is_bad_json(booted):
    g = booted
    s = _connect(g)
    f = s.makefile("rb")
    try:
        s.sendall(b"[" * 60000 + b"\n")
        r = json.loads(f.readline())
        assert not r["ok"] and r["error"]["code"] == "bad_json", r
        s.sendall(P.request("ping"))                 # the connection still serves
        assert json.loads(f.readline())["ok"]
    finally:
        s.close()
    assert "request failed" not in g("log", "-n", "200").stdout


# -- 10: a job queued after the driver stopped -----------------------------------------------------

class _LateStop(threading.Event):
    """Reads unset once more (the halt lands between ``call``'s check and its put)."""

    def __init__(self):
        super().__init__()
        self.set()
        self.lie = 1

    def is_set(self):
        if self.lie:
            self.lie -= 1
            return False
        return super().is_set()


def test_a_job_queued_after_shutdown_is_answered_halted(tmp_path):
    import ggmk
    from ggmk.control.protocol import ControlError
    from ggmk.control.server import ControlServer
    m = ggmk.Module("m")

    @m.handler("T")
    def t(ctx):
        return ggmk.OK
    d = tempfile.mkdtemp(prefix="fixC_", dir="/tmp")
    try:
        paths = StatePaths.resolve(d)
        paths.ensure()
        system = ggmk.boot([m], workers=1)
        srv = ControlServer(system, paths, modules=[m])
        srv.start()
        th = threading.Thread(target=srv.serve)
        th.start()
        srv.request_halt(1.0)
        th.join(30)
        assert not th.is_alive()
        res = []

        def caller():
            try:
                res.append(srv.call(lambda: 1, timeout=20))
            except ControlError as e:
                res.append(e.code)
        srv._stop = _LateStop()
        c = threading.Thread(target=caller)
        t0 = time.monotonic()
        c.start()
        c.join(30)
        assert res == ["halted"] and time.monotonic() - t0 < 10
    finally:
        shutil.rmtree(d, ignore_errors=True)
