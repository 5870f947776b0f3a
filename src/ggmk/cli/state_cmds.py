"""The ``ggmk`` commands on a running system's state: ``halt``, ``ps``, ``stats``, ``emit``,
``chan``, ``mod``, ``kern``, ``kv``."""
from __future__ import annotations

import json
import sys
import time

import click

from ggmk.cli.common import (EXIT_ERROR, EXIT_NOT_RUNNING, _call, _client_errors, _echo_json, _fail,
                             _paths, _show, _table, _uptime, json_option, listing, state_dir_option)
from ggmk.cli.params import FiniteFloatRange


@click.command(help="Halt the system (lose nothing accepted) and print the halt accounting.")
@click.option("--timeout", type=FiniteFloatRange(0, 3600), default=5.0, show_default=True,
              help="Seconds the workers may take to finish accepted work.")
@state_dir_option
@json_option
@_client_errors
def halt(timeout, state_dir, as_json):
    from ggmk.control.paths import pid_alive
    paths = _paths(state_dir)
    pid = paths.read_pid()
    res = _call(state_dir, "halt", {"timeout": timeout}, timeout=timeout + 120)
    # wait (bounded) for the server process to go, so a following `ggmk boot` finds it gone
    deadline = time.monotonic() + 10
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    acc = res["accounting"]
    if as_json:
        _echo_json(acc)
        return
    click.echo("halted: " + ", ".join(f"{k} {v}" for k, v in acc.items()))


@click.command(help="Show the running system: state, uptime, and per kernel the workers, tick, "
                    "tasks done and errors. Exit code 3 when no system is running.")
@state_dir_option
@json_option
@_client_errors
def ps(state_dir, as_json):
    from ggmk.control.client import probe
    paths = _paths(state_dir)
    try:
        res = _call(state_dir, "ps")
    except Exception as e:
        from ggmk.control.client import NotRunning, SocketPathTooLong
        if isinstance(e, SocketPathTooLong):
            _fail(f"not running: {e}", EXIT_NOT_RUNNING)
        if isinstance(e, NotRunning):
            st = probe(paths)
            if as_json:
                _echo_json({"state": "not running" if st != "booting" else "booting",
                            "stale": st == "stale", "state_dir": str(paths.dir)})
            msg = {"stale": f"not running (a dead system left stale files in {paths.dir}; "
                            "`ggmk boot` replaces them)",
                   "booting": f"booting at {paths.dir} (not answering yet)"}.get(
                st, f"not running (no system at {paths.dir})")
            _fail(msg, EXIT_NOT_RUNNING)
        raise
    if as_json:
        _echo_json(res)
        return
    click.echo(f"state {res['state']}  pid {res['pid']}  uptime {_uptime(res['uptime_s'])}  "
               f"app {res['app']}  device {res['device']}")
    if res.get("metrics_port"):
        click.echo(f"metrics: http://127.0.0.1:{res['metrics_port']}/metrics")
    _table(res["kernels"], KERN_COLS)
    _print_bridge(res.get("bridge"))


def _print_bridge(b):
    if not b:
        return
    click.echo(f"bridge: {b['transfers']} transfers, {b['records']} records, "
               f"{b['payload_copies']} payload copies ({b['payload_bytes']} B), retries "
               f"{b['retries']}, dead-lettered {b['dead_lettered']}"
               + (f", PAUSED ({b['paused']})" if b.get("paused") else ""))
    rows = [{"channel": n, **c, "crossed": c.get("pushed", c.get("crossed")),
             "in_flight": c.get("in_flight", c.get("waiting_for_room"))}
            for n, c in b.get("channels", {}).items()]
    _table(rows, ["channel", "direction", "type", "guarantee", "crossed", "in_flight", "dead"])


@click.command(help="Print the system's statistics (JSON), or the Prometheus text exposition.")
@click.option("--prometheus", is_flag=True, help="Prometheus text format.")
@state_dir_option
@json_option
@_client_errors
def stats(prometheus, state_dir, as_json):
    if prometheus and as_json:       # (--json was ignored: Prometheus text, exit 0)
        raise click.UsageError("--prometheus prints the Prometheus text format: it cannot be "
                               "combined with --json")
    if prometheus:
        click.echo(_call(state_dir, "stats", {"format": "prometheus"})["text"], nl=False)
        return
    _echo_json(_call(state_dir, "stats"))


# -- emit ------------------------------------------------------------------------------------------

@click.command(help="Submit COUNT tasks of TYPE (a name or id), or publish them on --chan. The "
                    "payload is checked against the type's schema (types.toml).")
@click.argument("type_", metavar="TYPE")
@click.option("--payload", default=None, metavar="JSON",
              help='The payload as a JSON object, e.g. \'{"x": 1.5, "n": 3}\'.')
@click.option("--chan", default=None, metavar="NAME", help="Publish on this channel.")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, show_default=True)
@click.option("--meta0", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
@click.option("--meta1", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
@state_dir_option
@json_option
@_client_errors
def emit(type_, payload, chan, count, meta0, meta1, state_dir, as_json):
    if payload is not None:
        try:
            obj = json.loads(payload)
        except ValueError as e:
            raise click.BadParameter(f"not valid JSON: {e}", param_hint="--payload")
        if not isinstance(obj, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--payload")
    res = _call(state_dir, "emit", {"type": type_, "payload": payload, "chan": chan,
                                    "count": count, "meta0": meta0, "meta1": meta1})
    if as_json:
        _echo_json(res)
    else:
        where = f" on {chan}" if chan else ""
        why = f" (refused: {res['refused']})" if res.get("refused") else ""
        click.echo(f"accepted {res['accepted']} of {res['count']} {res['type']}{where}{why}")
    if res["accepted"] < res["count"]:
        sys.exit(EXIT_ERROR)


# -- chan / mod / kern / kv -------------------------------------------------------------------

CHAN_COLS = ["name", "kernel", "type", "mode", "guarantee", "capacity", "depth", "emitted",
             "dropped", "crossed", "in_flight"]
KERN_COLS = ["name", "state", "target", "workers", "tick", "tasks_done", "errors", "dropped",
             "queued"]


@click.group(help="Channels: ls, inspect NAME (bridge channels show their direction and "
                  "the bridge's counters).")
def chan():
    pass


listing(chan, "ls", "chan_ls", "List the channels of both kernels.", key="channels",
        table=CHAN_COLS)
listing(chan, "inspect", "chan_inspect", "Everything about one channel.", arg="name")


@click.group(help="Modules: ls, info NAME, reset NAME.")
def mod():
    pass


def _mod_rows(rows):
    _table([{**r, "handlers": ",".join(h["type"] for h in r["handlers"]),
             "channels": ",".join(f"{c['direction'][0]}:{c['name']}" for c in r["channels"])}
            for r in rows], ["name", "version", "kernel", "handlers", "channels"])


def _mod_info(res):
    click.echo(f"module {res['name']} {res['version']} ({res['kernel']} kernel)")
    click.echo("handlers:")
    for h in res["handlers"]:
        c = h.get("counters") or {}
        click.echo(f"  {h['type']:<20} {h['name'] or '':<16} batch={h['batch']} "
                   f"ok={c.get('ok', 0)} fail={c.get('fail', 0)}")
    click.echo("channels:")
    for c in res["channels"]:
        click.echo(f"  {c['direction']:<8} {c['name']:<24} {c['type']} {c['mode'] or ''} "
                   f"{c['guarantee'] or ''}")


def _mod_reset(res):
    click.echo(f"reset {res['module']}: poison cleared on "
               f"{', '.join(res['cleared']) or 'no type (none was poisoned)'}; init "
               f"{'re-run' if res['init'] else 'none to run'}")


listing(mod, "ls", "mod_ls", "List modules (both kernels).", key="modules", text=_mod_rows)
listing(mod, "info", "mod_info", "One module: handlers (with their counters) and channels.",
        arg="name", text=_mod_info)
listing(mod, "reset", "mod_reset", "Clear a CPU module's poison and run its init again.",
        arg="name", text=_mod_reset)


@click.group(help="Kernels: ls, info.")
def kern():
    pass


def _kern_info(res):
    for name, k in res.items():
        click.echo(f"{name} kernel: state {k.get('state')}, workers {k.get('workers')}, "
                   f"tick {k.get('tick')}, tasks done {k.get('tasks_done')}, errors "
                   f"{k.get('errors')}, queued {k.get('queued')}")
        click.echo(f"  modules: {', '.join(k.get('modules', [])) or '-'}")
        if name == "cpu":
            click.echo(f"  hal {k.get('hal')}, deterministic {k.get('deterministic')}")
            continue
        click.echo(f"  target {k.get('target')}; boot: " + ", ".join(
            f"{b['step']} {b['t_s']:.3f}s" for b in k.get("boot", [])))
        drv = k.get("gpu_drv") or {}
        for d in drv.get("devices", []) or []:
            click.echo("  gpu_drv device: " + ", ".join(f"{a} {v}" for a, v in d.items()
                                                        if not isinstance(v, (dict, list))))
        for a, v in drv.items():
            if a != "devices" and not isinstance(v, (dict, list)):
                click.echo(f"  gpu_drv {a}: {v}")
        b = k.get("build")
        if b:
            click.echo(f"  build: key {b['key'][:16]}, {len(b['handlers'])} handlers "
                       f"({', '.join(h['module'] + '.' + h['name'] for h in b['handlers'])}), "
                       f"{b['blocks']} blocks x {b['threads']} threads, cached at {b['path']}")
        rep = k.get("report")
        if rep:
            click.echo(rep.get("table") or f"  build report: {rep.get('error')}")
        else:
            click.echo("  (ptxas build report: `ggmk kern info --report`)")


listing(kern, "ls", "kern_ls", "List the kernels (cpu, and gpu when dual).", key="kernels",
        table=KERN_COLS)
@kern.command("info", help="Both kernels: options, gpu_drv's device facts, the GPU kernel's boot "
                           "steps and build (--report: the ptxas register/spill report; exit "
                           "code 1 when it failed or there is no GPU kernel).")
@click.option("--report", is_flag=True, help="Compile the GPU kernel's ptxas report of its "
              "handlers (tens of seconds, in the system's process: it slows the system "
              "meanwhile; kept after).")
@click.option("--kernel", "whole", is_flag=True, help="With --report: the whole persistent "
              "kernel too (minutes more).")
@state_dir_option
@json_option
@_client_errors
def kern_info(report, whole, state_dir, as_json):
    if whole and not report:
        raise click.BadParameter("--kernel is part of the build report: give --report too "
                                 "(`ggmk kern info --report --kernel`)",
                                 param_hint="'--kernel'")
    _show(state_dir, "kern_info", {"report": report, "kernel": whole}, as_json=as_json,
          text=_kern_info,
          timeout=900 if report else 30.0,
          fail_if=lambda r: report and "error" in ((r.get("gpu") or {}).get("report") or {}))


@click.group(help="The running system's kv module (ggmk.modules.kv): get KEY, put KEY VALUE, "
                  "ls.")
def kv():
    pass


_KV_NAME = click.option("--name", default=None, help="The kv module (when there are several).")


def _kv_get(res):
    if not res["found"]:
        click.echo(f"{res['key']}: not found")
    else:
        click.echo(f"{res['key']}: {res.get('value', res.get('value_hex'))}")


def _kv_ls(res):
    click.echo(f"{res['module']}: {res['size']} of {res['capacity']} keys")
    for it in res["items"]:
        click.echo(f"  {it['key']}: {it.get('value', it.get('value_hex'))}")


@kv.command("get", help="The value of KEY (exit code 1 when it is not there).")
@click.argument("key", type=click.IntRange(0, 2**64 - 1))
@_KV_NAME
@state_dir_option
@json_option
@_client_errors
def kv_get(key, name, state_dir, as_json):
    _show(state_dir, "kv", {"op": "get", "key": key, "name": name}, as_json=as_json,
          text=_kv_get, fail_if=lambda r: not r["found"])


@kv.command("put", help="Store VALUE (an integer, or --text) under KEY through the module's "
                        "put channel.")
@click.argument("key", type=click.IntRange(0, 2**64 - 1))
@click.argument("value", required=False, type=click.IntRange(0, 2**64 - 1))
@click.option("--text", default=None, help="Store this string (as bytes) instead of VALUE.")
@_KV_NAME
@state_dir_option
@json_option
@_client_errors
def kv_put(key, value, text, name, state_dir, as_json):
    if (value is None) == (text is None):
        raise click.UsageError("give exactly one of VALUE (an integer) and --text")
    args = {"op": "put", "key": key, "name": name}
    args.update({"value": value} if text is None else {"text": text})
    _show(state_dir, "kv", args, as_json=as_json,
          text=lambda r: click.echo(f"{r['key']}: {r['status']}"),
          fail_if=lambda r: not r["stored"])


listing(kv, "ls", "kv", "Every key and value.", text=_kv_ls, options=[
    _KV_NAME, click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000,
                           show_default=True)],
        args_of=lambda kw: {"op": "ls", "name": kw["name"], "limit": kw["limit"]})
