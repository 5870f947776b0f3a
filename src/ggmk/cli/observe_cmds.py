"""The ``ggmk`` commands that watch a running system: ``log``, ``trace``, ``top``."""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time

import click

from ggmk.cli.common import (OutFile, _call, _client_errors, _echo_json, _exit_closed_stdout,
                             _paths, _stdout_closed, _write_file, json_option, state_dir_option)
from ggmk.cli.params import FiniteFloatRange
# the most events one `trace` answer holds (the server refuses more): --max-events' range
from ggmk.control.protocol import TRACE_CAPACITY


def _print_log(lines):
    for ln in lines:
        ts = time.strftime("%H:%M:%S", time.localtime(ln["ts"]))
        click.echo(f"{ts} {ln['level']:<5} {ln['source']}: {ln['msg']}")


def _follow(state_dir, cmd: str, args: dict):
    """The streamed answers of ``cmd`` (``log -f``, ``trace -f``). While it waits for the next
    one, a thread watches stdout: when its reader goes away (``ggmk log -f | head -1``: the
    write end of a pipe polls POLLERR) it shuts the connection, and the command exits with
    EXIT_PIPE at once instead of at its next line."""
    from ggmk.control.client import Client
    from ggmk.control.protocol import ControlError
    with Client(_paths(state_dir), timeout=None) as c, _StdoutWatch(c.sock) as watch:
        try:
            yield from c.stream(cmd, args)
        except (ControlError, OSError):
            if watch.fired or _stdout_closed():
                _exit_closed_stdout()
            raise


class _StdoutWatch:
    """A thread that shuts ``sock`` down when stdout's reader goes away (POLLERR or POLLHUP on
    stdout; a regular file or /dev/null never polls either)."""

    def __init__(self, sock):
        self.sock = sock
        self.fired = False
        self._stop_r, self._stop_w = os.pipe()
        self._thread = None

    def __enter__(self):
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):    # not a file descriptor: no watch
            return self
        self._thread = threading.Thread(target=self._run, args=(fd,), daemon=True,
                                        name="ggmk-stdout-watch")
        self._thread.start()
        return self

    def _run(self, fd: int) -> None:
        p = select.poll()
        p.register(fd, 0)                     # POLLERR, POLLHUP, POLLNVAL: always reported
        p.register(self._stop_r, select.POLLIN)
        while True:
            for f, ev in p.poll():
                if f == self._stop_r or ev & select.POLLNVAL:
                    return
                if ev & (select.POLLERR | select.POLLHUP):
                    self.fired = True
                    try:
                        self.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return

    def __exit__(self, *exc):
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


@click.command(help="The system's log (boot, halt, refused clients, handler exceptions, "
                    "warning/error trace events); -f follows it.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@click.option("-n", "--lines", type=click.IntRange(0, 10_000), default=50, show_default=True)
@state_dir_option
@json_option
@_client_errors
def log(follow, lines, state_dir, as_json):
    if not follow:
        res = _call(state_dir, "log", {"lines": lines})["lines"]
        _echo_json(res) if as_json else _print_log(res)
        return
    try:
        for data in _follow(state_dir, "log", {"lines": lines, "follow": True}):
            if as_json:
                if data["lines"]:
                    click.echo("\n".join(json.dumps(ln) for ln in data["lines"]))
            else:
                _print_log(data["lines"])
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@click.command(help="Trace events of both kernels: a summary, JSON, or (--perfetto FILE) "
                    "Chrome trace-event JSON for Perfetto: one track per worker of each "
                    "kernel, task slices, instant events for drops, failures and the watchdog, "
                    "counters, bridge flows. CPU task slices need --level all; GPU task slices "
                    "a GPU kernel booted with --trace-tasks.")
@click.option("--perfetto", type=OutFile(), default=None,
              metavar="FILE", help="Write Chrome trace-event JSON to FILE.")
@click.option("--level", type=click.Choice(["off", "error", "warn", "info", "all"]),
              default=None, help="Set the system's default trace level first (it stays set).")
@click.option("--seconds", type=FiniteFloatRange(0, 3600), default=0.0, show_default=True,
              help="Capture this long and show only those events (0: what is buffered).")
@click.option("-f", "--follow", is_flag=True,
              help="Stream events as JSON lines (not with --perfetto or --seconds). A line "
                   '{"dropped": N} says N events were lost because this client read slower '
                   "than the trace grew (the server keeps the newest 1024 batches per client).")
@click.option("--max-events", type=click.IntRange(1, TRACE_CAPACITY), default=200_000,
              show_default=True, help="At most this many events (the newest), of each kernel.")
@click.option("--module", default=None, metavar="M",
              help="Only module M's task types (with --level: set M's level only).")
@click.option("--type", "type_", default=None, metavar="T", help="Only task type T (name/id).")
@click.option("--sample", type=click.IntRange(1, 1_000_000), default=1, show_default=True,
              metavar="N", help="Show 1 of every N events of each worker.")
@state_dir_option
@json_option
@_client_errors
def trace(perfetto, level, seconds, follow, max_events, module, type_, sample, state_dir,
          as_json):
    from ggmk.events import SAMPLED_BIT, EventType
    if perfetto and as_json:         # (--json was ignored: the file was written, a text line)
        raise click.UsageError("--perfetto writes FILE in the Chrome trace format: it cannot "
                               "be combined with --json")
    args = {"level": level, "seconds": seconds, "max_events": max_events, "module": module,
            "type": type_, "sample": sample}
    if follow:
        ctx = click.get_current_context()
        given = click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT
        bad = [opt for opt, name in (("--perfetto", "perfetto"), ("--seconds", "seconds"))
               if ctx.get_parameter_source(name) in given]
        if bad:
            raise click.UsageError(f"-f/--follow streams events as they come: it cannot be "
                                   f"combined with {' or '.join(bad)}", ctx)
        try:
            for data in _follow(state_dir, "trace", {**args, "follow": True}):
                out = []
                if data.get("dropped"):          # this client fell behind: events lost
                    out.append(json.dumps({"dropped": data["dropped"]}))
                out += [json.dumps(e) for e in data.get("events", [])]
                out += [json.dumps(["gpu", *e])                # ["gpu", worker, ts, ...]
                        for e in data.get("gpu_events", [])]
                if out:
                    click.echo("\n".join(out))     # one write per batch
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        return
    res = _call(state_dir, "trace", args, timeout=seconds + 60)
    if perfetto:
        from ggmk.control.perfetto import to_chrome
        doc = to_chrome(res)
        _write_file(perfetto, lambda f: json.dump(doc, f), what="--perfetto")
        click.echo(f"wrote {perfetto}: {len(doc['traceEvents'])} trace events from "
                   f"{len(res['events'])} ggmk events"
                   + (f" and {len(res['gpu_events'])} GPU kernel events"
                      if res.get("gpu_events") else "")
                   + " (open in https://ui.perfetto.dev)")
        return
    if as_json:
        _echo_json(res)
        return
    if level:
        click.echo(f"trace level set to {level}" + (f" for module {module}" if module else "")
                   + " (it stays set); buffered now:")
    for key, what, dropped in (("events", "events", res.get("dropped", 0)),
                               ("gpu_events", "GPU kernel events", res.get("gpu_dropped", 0))):
        if key == "gpu_events" and key not in res:
            continue
        counts: dict = {}
        for e in res[key]:
            code = e[2] & (SAMPLED_BIT - 1)
            try:
                name = EventType(code).name
            except ValueError:
                name = f"EVENT_{code}"
            counts[name] = counts.get(name, 0) + 1
        click.echo(f"{len(res[key])} {what} ({dropped} dropped from the buffer)")
        for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {name:<16} {n}")


@click.command(help="A live view of the system (both kernels: workers, queues, memory, "
                    "channels, modules); q or Ctrl-C quits. --once prints one frame.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--interval", type=FiniteFloatRange(0.05, 60), default=1.0, show_default=True)
@click.option("--seconds", type=FiniteFloatRange(0.1, 86400), default=None,
              help="Quit by itself after this long (non-interactive use, e.g. make demo).")
@state_dir_option
@json_option
@_client_errors
def top(once, interval, seconds, state_dir, as_json):
    from rich.console import Console

    from ggmk.control import top as top_mod
    from ggmk.control.client import Client
    if once or as_json:
        frame = _call(state_dir, "top", {"once": True})
        if as_json:
            _echo_json(frame)
        else:
            Console().print(top_mod.render(frame))
        return
    c = Client(_paths(state_dir), timeout=None).connect()
    top_mod.run_live(c, interval, Console(), seconds=seconds)
