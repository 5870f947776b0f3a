"""``ggmk boot`` (start a system in the background, or --foreground) and the hidden ``_serve``
that runs it."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import click

from ggmk.cli.common import (AppArg, DEVICES, EXIT_ALREADY, EXIT_ERROR, _echo_json, _fail, _paths,
                             json_option, state_dir_option)
from ggmk.cli.params import FiniteFloatRange


def _boot_options(fn):
    fn = click.option("--deterministic/--no-deterministic", default=None,
                      help="Determinism mode (default: the app's choice).")(fn)
    fn = click.option("--hal", type=click.Choice(["threads", "sim"]), default=None,
                      help="Threads or the seeded simulator (default: the app's choice).")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=None,
                      help="CPU worker threads (default: the app's choice, else 2).")(fn)
    fn = click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                      help="Also serve Prometheus /metrics on 127.0.0.1:PORT (0: any free "
                      "port; `ggmk ps` shows it).")(fn)
    fn = click.option("--trace-tasks", is_flag=True, default=False,
                      help="Compile task slices into the GPU kernel (TASK_START/END per batch "
                      "a worker runs, every type) for `ggmk trace --perfetto`; needs --device. "
                      "A separate kernel build (cached); off: the default kernel, no cost.")(fn)
    fn = click.option("--device", type=click.Choice(DEVICES), default="none",
                      show_default=True, help="none: the CPU kernel alone; auto/cpu/sim/cuda: "
                      "both kernels (ggmk.dual) with the GPU kernel on that target.")(fn)
    return fn


@click.command(help="Boot APP (a Python file or module defining `modules`, or `app()` returning "
                    "(modules, options)) and serve its control socket. Detaches unless "
                    "--foreground; exit code 4 if a system already runs at the state dir.")
@click.argument("app", type=AppArg())
@_boot_options
@click.option("--foreground", is_flag=True, help="Stay attached (Ctrl-C halts the system).")
@click.option("--boot-timeout", type=FiniteFloatRange(1, 86400), default=120.0,
              show_default=True, help="Seconds to wait for the detached system to answer.")
@state_dir_option
@json_option
def boot(app, device, workers, hal, deterministic, metrics_port, trace_tasks, foreground,
         boot_timeout, state_dir, as_json):
    from ggmk.control.client import probe, remove_stale
    if trace_tasks and device == "none":
        raise click.BadParameter("compiles task slices into the GPU kernel: it needs --device "
                                 "auto|cpu|sim|cuda (got --device none)",
                                 param_hint="'--trace-tasks'")
    if metrics_port:
        _check_port_free(metrics_port)
    paths = _paths(state_dir)
    from ggmk.control.paths import StateDirError
    try:
        paths.ensure()
    except StateDirError as e:
        _fail(str(e), EXIT_ERROR)
    except OSError as e:
        _fail(f"state dir {paths.dir}: {e.strerror or e}", EXIT_ERROR)
    st = probe(paths)
    if st in ("running", "booting"):
        pid = paths.read_pid()
        _fail(f"a system is already {st} at {paths.dir} (pid {pid}, socket {paths.sock}); "
              "`ggmk halt` it first", EXIT_ALREADY)
    if st == "stale":
        gone = remove_stale(paths)
        click.echo(f"ggmk: removed stale files of a dead system: {', '.join(gone)}", err=True)
    if foreground:
        from ggmk.control.runner import serve
        sys.exit(serve(app, paths, device=device, workers=workers, hal=hal,
                       deterministic=deterministic, metrics_port=metrics_port,
                       trace_tasks=trace_tasks, as_json=as_json))
    argv = [sys.executable, "-m", "ggmk.cli.main", "_serve", app, "--state-dir",
            str(paths.dir), "--device", device]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if hal is not None:
        argv += ["--hal", hal]
    if deterministic is not None:
        argv.append("--deterministic" if deterministic else "--no-deterministic")
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    if trace_tasks:
        argv.append("--trace-tasks")
    if device != "none":
        click.echo(f"ggmk: booting {app} with the GPU kernel (device {device}): building the "
                   "GPU kernel, cached after the first run (a cold build takes about 20 s on 2 "
                   "cores)",
                   err=True)
    try:
        log = open(paths.log, "ab")
        os.chmod(paths.log, 0o600)
    except OSError as e:
        _fail(f"state dir {paths.dir}: cannot write the server log {paths.log} "
              f"({e.strerror or e})", EXIT_ERROR)
    start = log.tell()
    # Ctrl-C (or SIGTERM, SIGHUP) while the system boots stops it, as --boot-timeout does: the
    # server is in a session of its own, so the signal reaches only this process
    caught: list = []
    running: list = []

    def on_signal(signum, frame):
        caught.append(signum)
        if running:
            raise _Interrupted(signum)
    old = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
        running.append(proc)
        log.close()
        if caught:
            raise _Interrupted(caught[0])
        info = _wait_booted(proc, paths, app, start, boot_timeout)
    except _Interrupted as e:
        for sig in _STOP_SIGNALS:          # a second Ctrl-C must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        try:
            click.echo(f"ggmk: interrupted: stopping the system being booted (pid {proc.pid})",
                       err=True)
        except OSError:                    # SIGHUP: the terminal may be gone
            pass
        _stop_booting(proc, paths)
        _fail(f"interrupted ({signal.Signals(e.signum).name}): stopped the boot of {app} "
              f"(pid {proc.pid}); log: {paths.log}", 128 + e.signum)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if as_json:
        _echo_json({"pid": info["pid"], "socket": str(paths.sock), "state_dir": str(paths.dir),
                    "log": str(paths.log), "app": app, "device": device,
                    "metrics_port": info.get("metrics_port")})
    else:
        click.echo(f"ggmk: booted {app} (pid {info['pid']}, device {device})")
        click.echo(f"control socket: {paths.sock}")
        if info.get("metrics_port"):
            click.echo(f"metrics: http://127.0.0.1:{info['metrics_port']}/metrics")
        click.echo(f"log: {paths.log}")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupted(BaseException):
    """A stop signal while ``boot`` waits (a BaseException: no ``except Exception`` takes it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _wait_booted(proc, paths, app, start: int, boot_timeout: float) -> dict:
    """Wait for the detached server ``proc`` to answer a ping (its answer), to exit (a failed
    boot: its log's tail, exit code 1 or 4) or ``boot_timeout`` to pass (stopped, exit code 1)."""
    from ggmk.control.client import Client
    deadline = time.monotonic() + boot_timeout
    while True:
        rc = proc.poll()
        if rc is not None:
            tail = _log_tail(paths.log, start)
            click.echo(tail, err=True)
            _fail(f"boot of {app} failed (exit code {rc}); log: {paths.log}",
                  EXIT_ALREADY if rc == EXIT_ALREADY else EXIT_ERROR)
        if paths.sock.exists():
            try:
                with Client(paths, timeout=5) as c:
                    info = c.call("ping")
                # ours, not a system another `ggmk boot` started there meanwhile (ours then
                # exits "already running", which the poll above reports)
                if info.get("pid") == proc.pid:
                    return info
            except Exception:   # noqa: BLE001 - not ready yet
                pass
        if time.monotonic() > deadline:
            _stop_booting(proc, paths)
            _fail(f"boot of {app} did not answer within {boot_timeout:g}s (stopped it); log: "
                  f"{paths.log}", EXIT_ERROR)
        time.sleep(0.02)   # polling with a deadline


def _stop_booting(proc, paths, grace: float = 10.0) -> None:
    """Stop the server ``boot`` started: SIGINT (while it boots, a failed boot, which removes
    its pid file; once its system runs, a halt), SIGKILL to its process group when it has not
    gone within ``grace`` seconds; then the files a killed server leaves."""
    from ggmk.control.client import probe, remove_stale
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if probe(paths) == "stale":
        remove_stale(paths)


def _check_port_free(port: int) -> None:
    """A test bind, as prometheus_client's server binds (SO_REUSEADDR), before anything boots:
    a busy port then is a usage error, not a failed boot."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise click.BadParameter(f"port {port} on 127.0.0.1 is {why}: pick a free port, or 0 "
                                 "for any free port (`ggmk ps` shows which)",
                                 param_hint="'--metrics-port'") from None
    finally:
        s.close()


def _log_tail(path, start: int, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read()[-n:].decode(errors="replace").rstrip()
    except OSError:
        return ""


@click.command("_serve", hidden=True)
@click.argument("app")
@_boot_options
@state_dir_option
def serve_cmd(app, device, workers, hal, deterministic, metrics_port, trace_tasks, state_dir):
    from ggmk.control.runner import serve
    sys.exit(serve(app, _paths(state_dir), device=device, workers=workers, hal=hal,
                   deterministic=deterministic, metrics_port=metrics_port,
                   trace_tasks=trace_tasks))
