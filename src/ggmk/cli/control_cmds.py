"""The ``ggmk`` commands that drive a running system over its control socket.

See ``ggmk.cli.main`` for the exit codes and ``ggmk.control`` for the socket and protocol.
"""
from __future__ import annotations

import errno
import functools
import importlib.util
import io
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import click

from ggmk.cli.params import FiniteFloatRange
# the most events one `trace` answer holds (the server refuses more): --max-events' range
from ggmk.control.protocol import TRACE_CAPACITY

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_ALREADY = 4
EXIT_REFUSED = 5
EXIT_PROTOCOL = 6
# stdout's reader went away (`ggmk kv ls | head -1`): 128 + SIGPIPE, what a tool killed by
# SIGPIPE (ls, cat) reports, so `set -o pipefail` scripts see what they see for coreutils;
# click's own EPIPE exit (1) would read as "the command failed" in the table above
EXIT_PIPE = 128 + 13

DEVICES = ("auto", "cpu", "sim", "cuda", "none")


class OutFile(click.Path):
    """A file the command will write: checked before any work is done (click's ``writable``
    checks an existing file only, so a missing directory surfaced as a traceback from
    ``open`` after the trace buffer was already drained)."""

    def __init__(self):
        super().__init__(dir_okay=False, writable=True)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        d = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(d):
            self.fail(f"{value!r}: its directory {d!r} does not exist", param, ctx)
        if not os.path.exists(value) and not os.access(d, os.W_OK):
            self.fail(f"{value!r}: its directory {d!r} is not writable", param, ctx)
        return value


class AppArg(click.ParamType):
    """APP (or a types file): a path must name a file, a module name must be importable; checked
    before anything starts (a missing file used to surface from the detached server's log)."""

    name = "app"

    def __init__(self, exts=(".py",)):
        self.exts = exts

    def convert(self, value, param, ctx):
        if value.endswith(self.exts) or os.sep in value or os.path.exists(value):
            if not os.path.isfile(value):
                self.fail(f"{value!r}: no such file", param, ctx)
            return value
        # a module name: found the way the server finds it (`python -m` puts the cwd first)
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(value) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            self.fail(f"{value!r}: no such file, and no importable module of that name "
                      f"(allowed: a {' or '.join(self.exts)} file, or a module such as "
                      "pkg.app)", param, ctx)
        return value


class _FullWriter(io.RawIOBase):
    """A file descriptor's bytes, written whole or an error: ``os.write`` until every byte is
    out. (The BufferedWriter under ``sys.stdout`` or ``open()`` drops the rest of a big write
    that fails part-way, a file size limit or a full disk, without raising: `ggmk trace
    --json > f` exited 0 leaving a truncated file.)"""

    def __init__(self, fd: int, *, closefd: bool = False):
        self._fd = fd
        self._closefd = closefd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        while view:
            try:
                k = os.write(self._fd, view)
            except BlockingIOError:          # a non-blocking fd (shared with another process)
                select.select([], [self._fd], [])
                continue
            if k <= 0:
                raise OSError(errno.EIO, "the write wrote nothing")
            view = view[k:]
        return n

    def close(self) -> None:
        if not self.closed and self._closefd:
            os.close(self._fd)
        super().close()


class _StdoutWriter(_FullWriter):
    """stdout's ``_FullWriter``: a closed pipe exits with EXIT_PIPE (as ``_client_errors``
    does); any other failed write is ``OutputError`` (a message, exit code 1)."""

    def write(self, b) -> int:
        try:
            return super().write(b)
        except BrokenPipeError:
            _exit_closed_stdout()
        except OSError as e:
            raise OutputError(e) from None


class OutputError(click.ClickException):
    """stdout could not be written (a file size limit, a full disk, an I/O error): what was
    printed is incomplete, so the command failed."""

    exit_code = EXIT_ERROR

    def __init__(self, e: OSError):
        super().__init__(f"cannot write to stdout: {e.strerror or e}; the output is incomplete")

    def show(self, file=None) -> None:
        click.echo(f"ggmk: {self.message}", err=True)


_OLD_STDOUT: list = []


def check_stdout_writes() -> None:
    """Make ``sys.stdout`` write through ``_StdoutWriter`` (``ggmk``'s entry point calls this;
    a stdout that is not a file descriptor, such as click's test runner's, is left alone)."""
    out = sys.stdout
    try:
        fd = out.fileno()
        out.flush()
    except (AttributeError, OSError, ValueError):
        return
    _OLD_STDOUT.append(out)          # kept: its file object must not close fd 1
    sys.stdout = io.TextIOWrapper(_StdoutWriter(fd), encoding=out.encoding, errors=out.errors,
                                  write_through=True)


def _write_file(path: str, write, *, what: str) -> None:
    """Write FILE whole or not at all: ``write(f)`` fills (text, utf-8) a temporary file in
    FILE's directory that then replaces FILE, so a write that fails (a full disk, a file size
    limit) leaves no partial file and an existing FILE as it was. A FILE that is not a regular
    file (a device such as /dev/stdout, a FIFO) is written in place. A failure is a message
    naming FILE and exit code 1 (``what``: the option, for the message)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as e:
        _fail(f"{what}: cannot write {path}: {e.strerror or e}", EXIT_ERROR)
    tmp = None
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            fd = os.open(real, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        else:
            try:
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real),
                                           prefix=f".{os.path.basename(real)}.", suffix=".tmp")
            except PermissionError:
                if st is None:
                    raise
                # a writable FILE in a directory we cannot create files in: in place
                fd = os.open(real, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        with io.TextIOWrapper(_FullWriter(fd, closefd=True), encoding="utf-8") as f:
            write(f)
            f.flush()
            if tmp is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
                os.fsync(fd)
        if tmp is not None:
            os.replace(tmp, real)
            tmp = None
    except OSError as e:
        _fail(f"{what}: cannot write {path}: {e.strerror or e}"
              + (f" ({path} is as it was)" if tmp is not None and st is not None else
                 f" (no {path} written)" if tmp is not None else ""), EXIT_ERROR)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (the write end of a pipe then polls POLLERR): tells a
    closed stdout from a BrokenPipeError of the control socket."""
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _exit_closed_stdout():
    # point stdout at /dev/null so the interpreter's final flush does not complain
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_PIPE)


def _fail(msg: str, code: int):
    click.echo(f"ggmk: {msg}", err=True)
    sys.exit(code)


def _paths(state_dir):
    from ggmk.control.paths import StatePaths
    return StatePaths.resolve(state_dir)


def state_dir_option(fn):
    # readable=False: a system's state dir is mode 0700, so another user's command is refused
    # by the socket (exit code 5), not by click's "not readable" (a usage error)
    return click.option("--state-dir", type=click.Path(file_okay=False, readable=False),
                        envvar="GGMK_STATE_DIR",
                        default=None, help="Where the control socket lives (default "
                        "$XDG_RUNTIME_DIR/ggmk or /tmp/ggmk-$UID; env GGMK_STATE_DIR).")(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def _client_errors(fn):
    """Map control-plane failures to messages and exit codes."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from ggmk.control.client import NotRunning, Refused
        from ggmk.control.protocol import ControlError
        try:
            return fn(*a, **kw)
        except BrokenPipeError:
            if _stdout_closed():
                _exit_closed_stdout()
            _fail("protocol error: the system closed the connection", EXIT_PROTOCOL)
        except NotRunning as e:
            _fail(_not_running(e, kw.get("state_dir")), EXIT_NOT_RUNNING)
        except Refused as e:
            _fail(f"refused: {e}", EXIT_REFUSED)
        except ControlError as e:
            if e.code in ("closed", "protocol"):
                _fail(f"protocol error: {e.message}", EXIT_PROTOCOL)
            _fail(f"error ({e.code}): {e.message}", EXIT_ERROR)
        except (TimeoutError, ConnectionError) as e:
            _fail(f"protocol error: the system did not answer: {e}", EXIT_PROTOCOL)
    return wrapper


def _not_running(e, state_dir) -> str:
    """The message for a system that does not answer: one still booting says so (``ggmk
    halt`` during a boot said "no system is running", and the system then came up)."""
    from ggmk.control.client import SocketPathTooLong, probe
    from ggmk.control.paths import pid_alive
    if not isinstance(e, SocketPathTooLong):
        paths = _paths(state_dir)
        pid = paths.read_pid()
        # (a halting server holds the lock too, but has removed its pid file)
        if pid_alive(pid) and probe(paths) == "booting":
            return (f"not running yet: a system is booting at {paths.dir} (pid {pid}; it "
                    "does not answer yet): try again once its `ggmk boot` has finished")
    return f"not running: {e}"


def _show(state_dir, cmd, args=None, *, as_json: bool, key: str | None = None,
          table: list | None = None, text=None, timeout: float = 30.0, fail_if=None):
    """The one shape of a listing command: request ``cmd`` over the socket, take ``key`` of the
    result, print it as JSON (``--json``), a table of columns ``table``, or with ``text(res)``;
    exit EXIT_ERROR when ``fail_if(res)`` says the command did not do what was asked.
    Control-plane failures become exit codes in ``_client_errors``."""
    res = _call(state_dir, cmd, args, timeout=timeout)
    data = res[key] if key else res
    if as_json:
        _echo_json(data)
    elif table is not None:
        _table(data, table)
    elif text is not None:
        text(data)
    else:
        for k, v in data.items():
            click.echo(f"{k}: {json.dumps(v, default=str)}")
    if fail_if is not None and fail_if(data):
        sys.exit(EXIT_ERROR)
    return data


def listing(group, name, cmd, help, *, key=None, table=None, text=None, arg=None,
            options=(), args_of=None):
    """Register ``group name [ARG] [--json]``: one request, printed by ``_show``."""
    def body(state_dir, as_json, **kw):
        args = args_of(kw) if args_of else ({arg: kw[arg]} if arg else None)
        _show(state_dir, cmd, args, as_json=as_json, key=key, table=table, text=text)
    f = _client_errors(body)
    f = json_option(f)
    f = state_dir_option(f)
    for opt in reversed(options):
        f = opt(f)
    if arg:
        f = click.argument(arg)(f)
    return group.command(name, help=help)(f)


def _call(state_dir, cmd, args=None, timeout=30.0):
    from ggmk.control.client import Client
    with Client(_paths(state_dir), timeout=timeout) as c:
        return c.call(cmd, args)


def _echo_json(obj) -> None:
    from ggmk.control.protocol import dumps
    click.echo(json.dumps(json.loads(dumps(obj)), indent=2))


def _table(rows: list, cols: list) -> None:
    cells = [[str(c) for c in cols]] + [["" if r.get(c) is None else str(r.get(c))
                                         for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _uptime(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s"


# -- boot / _serve ---------------------------------------------------------------------------------

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


# -- halt / ps / stats -------------------------------------------------------------------------------

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
@click.option("--report", is_flag=True, help="Compile the GPU kernel's ptxas report (tens of "
              "seconds, in the system's process: it slows the system meanwhile; kept after).")
@state_dir_option
@json_option
@_client_errors
def kern_info(report, state_dir, as_json):
    _show(state_dir, "kern_info", {"report": report}, as_json=as_json, text=_kern_info,
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


# -- log / trace / top -----------------------------------------------------------------------------

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


# -- build / typegen (no running system needed) -----------------------------------------------

def _check_arch(ctx, param, value):
    from ggmk.device.build import compute_capability
    try:
        compute_capability(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a GPU architecture (allowed: sm_ and the "
                                 "compute capability's digits, e.g. sm_80, sm_90, sm_100)") \
            from None
    return value


@click.command(help="The build report of the GPU kernel (ggmk.device.build: registers, spills, "
                    "shared memory per handler; --kernel: the persistent kernel too): of APP's "
                    "GPU modules plus the bridge's, or, without APP, of the running system's "
                    "GPU kernel. Needs numba-cuda's compiler and ptxas; takes a while.")
@click.argument("app", required=False, type=AppArg())
@click.option("--kernel", "whole", is_flag=True, help="Also the whole persistent kernel.")
@click.option("--arch", default="sm_90", show_default=True, callback=_check_arch,
              help="The GPU architecture (sm_80, sm_90, sm_100); with APP only.")
@state_dir_option
@json_option
@_client_errors
def build(app, whole, arch, state_dir, as_json):
    ctx = click.get_current_context()
    if app is None and ctx.get_parameter_source("arch") == click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter(f"{arch!r} needs APP: without APP the report is the running "
                                 "system's GPU kernel, which it compiles for its own GPU "
                                 "(allowed: --arch with APP, e.g. `ggmk build APP --arch "
                                 f"{arch}`)", ctx, param_hint="'--arch'")
    if app is None:
        from ggmk.control.protocol import ControlError
        try:
            res = _call(state_dir, "kern_info", {"report": True}, timeout=900)
        except ControlError as e:
            if e.code != "unsupported":
                raise
            # (the server's answer names kern info's --report, an option not typed here)
            _fail("the running system has no GPU kernel: give APP for its GPU modules' "
                  "report, or boot the system with --device", EXIT_ERROR)
        rep = (res.get("gpu") or {}).get("report")
        if rep is None:
            _fail("the running system has no GPU kernel (boot it with --device)", EXIT_ERROR)
    else:
        from ggmk.control import app as app_mod
        from ggmk.control import buildinfo
        try:
            modules, options = app_mod.load(app)
            rep = buildinfo.report(modules, options, arch=arch, whole_kernel=whole)
        except app_mod.AppError as e:
            _fail(str(e), EXIT_ERROR)
        except Exception as e:   # noqa: BLE001 - no toolchain, a bad module: say which
            rep = {"error": f"{type(e).__name__}: {e}"}
    if as_json:
        _echo_json(rep)
    elif "error" in rep:
        click.echo(f"ggmk: build report failed: {rep['error']}", err=True)
    else:
        click.echo(f"GPU kernel build report ({rep['arch']}, register limit "
                   f"{rep['reg_limit']}):")
        click.echo(rep["table"])
        if rep.get("spills"):
            click.echo(f"local-memory spills in: {', '.join(rep['spills'])}")
    if "error" in rep:
        sys.exit(EXIT_ERROR)


@click.command(help="Write typed payload accessors (a Python module: one class per type with "
                    "a payload, encode()/decode()) generated from TYPES (a types.toml file, or "
                    "an app whose options carry `types`).")
@click.argument("types_src", type=AppArg((".toml", ".py")))
@click.option("-o", "--output", type=OutFile(), default=None,
              help="Write here (default: stdout).")
def typegen(types_src, output):
    from ggmk.control.typegen import generate
    try:
        if types_src.endswith(".toml"):
            from ggmk.typereg import load_types
            reg = load_types(types_src)
        else:
            from ggmk.control import app as app_mod
            _, options = app_mod.load(types_src)
            reg = options.get("types")
            if reg is None:
                _fail(f"{types_src}: the app's options have no `types` (a types.toml "
                      "registry)", EXIT_ERROR)
    except Exception as e:   # noqa: BLE001 - TypesError names file, line and field
        _fail(f"typegen: {e}", EXIT_ERROR)
    try:
        src = generate(reg, source=types_src)
    except ValueError as e:        # names no Python module can have: the type and the field
        _fail(f"typegen: {types_src}: {e}", EXIT_ERROR)
    if output is None:
        click.echo(src, nl=False)
        return
    _write_file(output, lambda f: f.write(src), what="--output")
    click.echo(f"wrote {output}: {src.count(chr(10) + 'class ')} payload classes")


def register(cli: click.Group) -> None:
    for cmd in (boot, serve_cmd, halt, ps, stats, emit, chan, mod, kern, kv, log, trace, top,
                build, typegen):
        cli.add_command(cmd)
