"""``ggmk _serve``: boot an app and serve its control socket until halted."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys

from ggmk.control import app as app_mod
from ggmk.control.paths import StateDirError, StatePaths
from ggmk.control.server import ControlServer

EXIT_ALREADY = 4


class _MetricsFailed(Exception):
    pass


def boot_system(modules, options: dict, device: str):
    """Boot with ``ggmk.boot`` (device none) or ``ggmk.dual.boot``."""
    if device == "none":
        import ggmk
        from ggmk.control.buildinfo import split
        gpu = split(modules)[1]
        if gpu:      # (ggmk.boot's own message names its Python spelling, device='auto')
            raise app_mod.AppError(f"the app has GPU modules {[m.name for m in gpu]}: boot it "
                                   "with --device auto (or cpu, sim, cuda); --device none "
                                   "boots the CPU kernel alone")
        return ggmk.boot(modules, **options)
    try:
        import ggmk.dual as dual
    except ImportError as e:
        raise RuntimeError(f"--device {device} needs the dual-kernel system (ggmk.dual), which "
                           f"cannot be imported here: {e}; use --device none") from None
    return dual.boot(modules, device=device, **options)


def serve(app: str, paths: StatePaths, *, device: str = "none", workers=None, hal=None,
          deterministic=None, metrics_port=None, trace_tasks=False, out=sys.stdout,
          as_json: bool = False) -> int:
    """Returns the exit code. Holds the state dir's lock for the process's lifetime.
    ``trace_tasks``: the GPU kernel is built with task slices (``DeviceConfig.trace_tasks``).
    ``as_json`` (``ggmk boot --foreground --json``): the running and halted lines on ``out``
    are JSON objects, one a line (``"event": "running"`` with what a detached ``boot
    --json`` prints, then ``"event": "halted"`` with the halt accounting); errors stay text
    on stderr."""
    try:
        paths.ensure()
        lock_fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except StateDirError as e:
        print(f"ggmk: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ggmk: state dir {paths.dir}: cannot open the lock file {paths.lock} "
              f"({e.strerror or e})", file=sys.stderr)
        return 1
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"ggmk: a system is already running at {paths.dir}", file=sys.stderr)
        return EXIT_ALREADY
    os.set_inheritable(lock_fd, False)
    tmp = paths.pid.with_suffix(".pid.tmp")
    # the owner's only, as the socket, lock and log are (write_text made it 0644)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)               # (a stale tmp file keeps its mode through O_CREAT)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, paths.pid)
    server = None
    # SIGINT / SIGTERM: while the app boots they stop the boot (exit code 128 + the signal,
    # the pid file removed; SIGTERM used to kill the process there, leaving a stale pid file
    # and skipping the modules' fini); between the boot and the socket they are kept for
    # the halt; once the socket serves, they halt the system
    stage = ["boot"]
    caught: list = []

    def on_signal(signum, frame):
        if stage[0] == "serve":
            server.request_halt()
            return
        caught.append(signum)
        if stage[0] == "boot":
            raise _Interrupted(signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        modules, options = app_mod.load(app)
        if workers is not None:
            options["workers"] = workers
        if hal is not None:
            options["hal"] = hal
        if deterministic is not None:
            options["deterministic"] = deterministic
        if trace_tasks:
            if device == "none":
                raise ValueError("trace_tasks needs a GPU kernel (--device auto|cpu|sim|cuda)")
            options["device_config"] = {**(options.get("device_config") or {}),
                                        "trace_tasks": True}
        system = boot_system(modules, options, device)
        stage[0] = "wire"
    except BaseException as e:   # noqa: BLE001 - a boot failure is reported, not a traceback
        # (an app's sys.exit(4) or KeyboardInterrupt too: its code must not read as
        # EXIT_ALREADY, and the pid file must go)
        stage[0] = "stopped"
        _unlink(paths.pid)
        if caught:       # (an app's own import wraps the signal's exception: the signal tells)
            name = signal.Signals(caught[0]).name
            print(f"ggmk: boot of {app} interrupted by {name}: stopped it", file=sys.stderr)
            return 128 + caught[0]
        msg = str(e)
        print(f"ggmk: boot failed: {type(e).__name__}" + (f": {msg}" if msg else ""),
              file=sys.stderr)
        return 1
    try:
        server = ControlServer(system, paths, modules=modules, app=app, device=device,
                               options=options)
        if metrics_port is not None:     # before the socket: a ping then knows the port
            try:
                server.start_metrics(metrics_port)
            except Exception as e:   # noqa: BLE001 - taken since `ggmk boot` checked it
                raise _MetricsFailed(f"--metrics-port {metrics_port}: cannot serve /metrics "
                                     f"on 127.0.0.1:{metrics_port}: {type(e).__name__}: {e}; "
                                     "pick a free port, or 0 for any") from None
        server.start()
    except Exception as e:   # noqa: BLE001
        print(f"ggmk: {e}" if isinstance(e, _MetricsFailed) else
              f"ggmk: control socket failed: {type(e).__name__}: {e}", file=sys.stderr)
        system.halt(timeout=0)
        _unlink(paths.sock)
        _unlink(paths.pid)
        return 1
    stage[0] = "serve"
    if caught:           # a signal while the socket was set up: halt at once
        server.request_halt()
    if as_json:
        _json_line(out, {"event": "running", "pid": os.getpid(), "socket": str(paths.sock),
                         "state_dir": str(paths.dir), "log": None, "app": app,
                         "device": device, "metrics_port": server.metrics_port})
    else:
        print(f"ggmk: system running (pid {os.getpid()}); control socket {paths.sock}",
              file=out, flush=True)
    rep = server.serve()
    if as_json:
        _json_line(out, {"event": "halted", "report": rep})
    else:
        print(f"ggmk: halted: {rep}", file=out, flush=True)
    server._cleanup_files()
    return 0


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _json_line(out, obj) -> None:
    """One JSON object on one line (the control protocol's encoding: NumPy values too)."""
    from ggmk.control.protocol import dumps
    print(json.dumps(json.loads(dumps(obj))), file=out, flush=True)


class _Interrupted(BaseException):
    """A stop signal while the app boots (a BaseException: no ``except Exception`` takes it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
