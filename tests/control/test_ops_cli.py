"""``ggmk mod reset``, ``ggmk kv get|put|ls``, ``ggmk boot --metrics-port`` and the ``ggmk trace``
filters, each through the real executable against a booted app."""
import json
import math
import os
import socket
import textwrap
import urllib.error
import urllib.request

import pytest
from conftest import DEMO_APP

from ggmk.cli.control_cmds import EXIT_ERROR, EXIT_USAGE

OPS_APP = textwrap.dedent('''
    """An app with a kv store, a handler that fails until FIX arrives, and an init we count."""
    import ggmk
    from ggmk import FAIL, OK
    from ggmk.modules import kv

    STATE = {"fixed": False}
    flaky = ggmk.Module("flaky")

    @flaky.init
    def init(system):
        system.submit("INIT_MARK")          # counted per type: `mod info` shows each init run

    @flaky.handler("INIT_MARK")
    def mark(ctx):
        return OK

    @flaky.handler("FLAKY")
    def flaky_task(ctx):
        return OK if STATE["fixed"] else FAIL

    fixer = ggmk.Module("fixer")

    @fixer.handler("FIX")
    def fix(ctx):
        STATE["fixed"] = True
        return OK

    def app():
        return [kv.module(capacity=4), flaky, fixer], {
            # poisoned after failures in 2 of the window's 10 buckets (2000 ticks each): slow
            # `ggmk emit` processes on a loaded machine still land in one window
            "workers": 2, "poison_threshold": 2, "poison_window": 20000}
''')


@pytest.fixture
def ops(g, tmp_path):
    path = tmp_path / "ops_app.py"
    path.write_text(OPS_APP)
    r = g("boot", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    yield g
    g.stop()


def _types(g):
    return g.json("stats")["types"]


def test_mod_reset_clears_poison_and_reruns_init(ops, wait_until):
    g = ops
    assert wait_until(lambda: _types(g).get("INIT_MARK", {}).get("ok") == 1, 30)

    def poisoned():
        g("emit", "FLAKY", "--count", "4")
        return "FLAKY" in g.json("stats")["poisoned"]
    assert wait_until(poisoned, 60)
    # a poisoned type is refused: emitted tasks land on sys.error (dropped), not run
    before = _types(g)["FLAKY"]
    assert g("emit", "FLAKY", "--count", "3").returncode in (0, EXIT_ERROR)
    assert wait_until(lambda: _types(g)["FLAKY"]["dropped"] >= before["dropped"] + 3, 30)
    assert _types(g)["FLAKY"]["ok"] == 0
    # fix the cause, then reset the module
    assert g("emit", "FIX").returncode == 0
    r = g("mod", "reset", "flaky")
    assert r.returncode == 0, r.stderr
    assert "poison cleared on FLAKY" in r.stdout and "init re-run" in r.stdout
    assert "FLAKY" not in g.json("stats")["poisoned"]
    assert wait_until(lambda: _types(g)["INIT_MARK"]["ok"] == 2, 30)     # init ran again
    assert g("emit", "FLAKY", "--count", "5").returncode == 0
    assert wait_until(lambda: _types(g)["FLAKY"]["ok"] == 5, 30)
    # accounting: every FLAKY accepted either failed, was dropped with a reason, or finished
    t = _types(g)["FLAKY"]
    assert t["enqueued"] + t["dropped"] >= t["ok"] + t["fail"]
    js = json.loads(g("mod", "reset", "fixer", "--json").stdout)
    assert js == {"module": "fixer", "cleared": [], "init": False}
    r = g("mod", "reset", "nope")
    assert r.returncode == EXIT_ERROR and "no module 'nope'" in r.stderr
    assert "module flaky reset" in g("log", "-n", "100").stdout


KVB_APP = textwrap.dedent('''
    from ggmk.modules import kv
    modules = [kv.module(capacity=16, value_size=32, name="kvb")]
''')


def test_kv_put_of_an_int_into_a_table_of_byte_values_is_confirmed(g, tmp_path):
    """The put was stored (as its little-endian bytes) but `kv put` compared the table's bytes
    with the int, waited 10 s, said "not stored" and exited 1; the answer of the module, by
    tag, is what says so now."""
    path = tmp_path / "kvb_app.py"
    path.write_text(KVB_APP)
    r = g("boot", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        _put_bytes_values(g)
    finally:
        g.stop()


def _put_bytes_values(g):
    r = g("kv", "put", "14", "7", "--name", "kvb", timeout=30)
    assert r.returncode == 0 and "14: ok" in r.stdout, r.stdout + r.stderr
    got = g.json("kv", "get", "14", "--name", "kvb")
    assert got["found"] and bytes.fromhex(got["hex"]) == b"\x07" if "hex" in got \
        else got["found"], got
    r = g("kv", "put", "15", "--text", "hello", "--name", "kvb")
    assert r.returncode == 0 and "15: ok" in r.stdout, r.stdout + r.stderr


def test_an_unknown_numeric_type_is_refused_and_not_added(ops):
    """`ggmk emit 4242` was refused but registered TYPE_4242 in the running system for good
    (and `trace --type 4343` was accepted with 0 events)."""
    g = ops
    for args in (("emit", "4242"), ("trace", "--type", "4343")):
        r = g(*args)
        assert r.returncode == EXIT_ERROR and "unknown type id" in r.stderr, r.stderr
    r = g("emit", "NOPE")
    assert r.returncode == EXIT_ERROR and "TYPE_4242" not in r.stderr \
        and "TYPE_4343" not in r.stderr, r.stderr
    assert g("emit", "INIT_MARK").returncode == 0       # a known one still goes


def test_kv_put_get_ls_through_the_module(ops):
    g = ops
    r = g("kv", "put", "7", "700")
    assert r.returncode == 0 and "7: ok" in r.stdout, r.stdout + r.stderr
    assert g("kv", "get", "7").stdout.strip() == "7: 700"
    got = g.json("kv", "get", "7")
    assert got == {"module": "kv", "key": 7, "found": True, "value": 700}
    r = g("kv", "get", "8")
    assert r.returncode == EXIT_ERROR and "not found" in r.stdout
    assert g("kv", "put", "8", "--text", "hi").returncode == 0
    assert g.json("kv", "get", "8")["value"] == int.from_bytes(b"hi", "little")   # 8-byte words
    for k in (1, 2):
        assert g("kv", "put", str(k), str(k * 10)).returncode == 0
    ls = g.json("kv", "ls")
    assert [it["key"] for it in ls["items"]] == [1, 2, 7, 8] and ls["capacity"] == 4
    assert ls["stats"]["put"] == 4
    # full table: the put reaches the module, which refuses it; nothing changes
    r = g("kv", "put", "99", "1")
    assert r.returncode == EXIT_ERROR and "not stored" in r.stdout
    assert g.json("kv", "ls")["stats"]["full"] == 1 and g.json("kv", "ls")["size"] == 4
    # bad input names the argument
    r = g("kv", "put", "3", "--text", "more than eight bytes")
    assert r.returncode == EXIT_ERROR and "at most 8 bytes" in r.stderr
    r = g("kv", "put", "3")
    assert r.returncode == EXIT_USAGE and "VALUE" in r.stderr
    r = g("kv", "get", "-1")
    assert r.returncode == EXIT_USAGE and "KEY" in r.stderr
    assert "7: 700" in g("kv", "ls").stdout


def test_kv_without_a_kv_module_is_a_clear_error(booted):
    r = booted("kv", "ls")
    assert r.returncode == EXIT_ERROR and "no kv module" in r.stderr


def test_metrics_port_serves_loopback_only_and_reads_at_scrape_time(g, wait_until):
    from prometheus_client.parser import text_string_to_metric_families
    r = g("boot", DEMO_APP, "--metrics-port", "0")
    assert r.returncode == 0, r.stderr
    try:
        port = g.json("ps")["metrics_port"]
        assert port and f"http://127.0.0.1:{port}/metrics" in r.stdout
        assert f"metrics: http://127.0.0.1:{port}/metrics" in g("ps").stdout   # as --help says

        def work_ok():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                assert resp.status == 200
                text = resp.read().decode()
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            assert fams["ggmk_up"].samples[0].value == 1
            return [s.value for s in fams["ggmk_type_tasks"].samples
                    if s.labels.get("type") == "WORK" and s.labels.get("counter") == "ok"]
        assert work_ok() == []
        assert g("emit", "WORK", "--count", "7", "--meta0", "10").returncode == 0
        assert wait_until(lambda: work_ok() == [7.0], 30)
        # bound to 127.0.0.1 only: the listening socket's address
        with open("/proc/net/tcp") as f:
            rows = [ln.split() for ln in f.read().splitlines()[1:]]
        listen = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
        assert listen == ["0100007F:%04X" % port]
        pid = g.pid()
    finally:
        assert g("halt").returncode == 0
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)
    with pytest.raises((urllib.error.URLError, ConnectionError, socket.timeout)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_port_in_use_fails_the_boot_cleanly(g):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        r = g("boot", DEMO_APP, "--metrics-port", str(port))
        # checked before booting: a usage error naming the option, the port and what to do
        assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr, r.stderr
        assert "'--metrics-port'" in r.stderr and f"port {port} on 127.0.0.1 is in use" \
            in r.stderr and "or 0 for any free port" in r.stderr
        assert "control socket" not in r.stderr and "booting" not in r.stderr
        assert not os.path.exists(g.sock) and g.pid() is None
        # taken after that check (the server itself): its own message, not the socket's
        r = g("_serve", DEMO_APP, "--metrics-port", str(port), "--state-dir", g.dir)
        assert r.returncode == EXIT_ERROR and "Traceback" not in r.stderr, r.stderr
        assert f"--metrics-port {port}: cannot serve /metrics" in r.stderr
        assert "control socket failed" not in r.stderr
        assert not os.path.exists(g.sock) and g.pid() is None
    finally:
        s.close()


def test_trace_filters(booted, wait_until):
    g = booted
    assert g("trace", "--level", "all").returncode == 0
    assert g("emit", "WORK", "--count", "200", "--meta0", "49").returncode == 0
    assert g("emit", "POINT", "--payload", '{"x": 1, "n": 2, "tag": "00112233"}').returncode == 0
    types = {v: int(k) for k, v in g.json("trace")["types"].items()}

    def events(*a):
        return g.json("trace", *a)["events"]
    assert wait_until(lambda: sum(e[4] == types["LOG_READING"] for e in events()) > 0, 30)
    everything = events()
    work = events("--type", "WORK")
    assert work and all(e[4] == types["WORK"] for e in work)
    sink = events("--module", "sink")
    assert sink and {e[4] for e in sink} == {types["LOG_READING"]}
    both = events("--module", "work", "--type", "POINT")
    assert both and {e[4] for e in both} == {types["POINT"]}
    assert events("--module", "sink", "--type", "WORK") == []
    n_all = len(events())
    sampled = events("--sample", "10")
    nrings = g.json("trace")["workers"]
    assert 0 < len(sampled) <= math.ceil(n_all / 10) + nrings + len(everything) // 10
    r = g("trace", "--type", "NOPE")
    assert r.returncode == EXIT_ERROR and "NOPE" in r.stderr
    r = g("trace", "--module", "nope")
    assert r.returncode == EXIT_ERROR and "no module 'nope'" in r.stderr
    r = g("trace", "--sample", "0")
    assert r.returncode == EXIT_USAGE and "--sample" in r.stderr
    # --level with --module sets that module's level only
    assert g("trace", "--level", "off", "--module", "sink").returncode == 0
    assert "trace level set to off for module sink" in g("log", "-n", "20").stdout
