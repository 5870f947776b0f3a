"""What the ``ggmk`` commands share: exit codes, argument types, the output writers that
survive a closed or full stdout, the state-dir and --json options, and calling a running
system over its control socket (``_call``, ``_show``, ``listing``)."""
from __future__ import annotations

import errno
import functools
import importlib.util
import io
import json
import os
import select
import stat
import sys
import tempfile

import click

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
