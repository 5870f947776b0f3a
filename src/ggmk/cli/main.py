"""The ``ggmk`` command line. Subcommands are at most two levels deep; common ones are one word.

``demo``, ``hw`` (PCI discovery) and ``version`` work on their own. The live-system commands talk
to a running system over its control socket (``ggmk.control``)::

    ggmk boot examples/demo_app.py      # detaches; prints where the control socket is
    ggmk emit WORK --count 100 --meta0 5000
    ggmk ps                             # state, uptime, workers, tick, tasks done, errors
    ggmk top --once                     # one frame of the live view (``ggmk top``: q quits)
    ggmk trace --level all --seconds 1 --perfetto trace.json
    ggmk halt                           # prints the halt accounting

Every listing takes ``--json``. Exit codes (``EXIT_*`` below): 0 ok, 1 the command failed (the
system answered with an error: bad payload, unknown type/channel/module...), 2 usage error,
3 no system is running at the state dir, 4 ``boot``: a system is already running there, 5 not
allowed (socket permissions or another uid), 6 protocol error (the system did not answer);
141 stdout's reader went away (``ggmk chan ls | head -1``), 128 + N signal N stopped ``boot`` (and
the system it was booting) or ``test`` (and its pytest run); SIGTERM / SIGHUP end ``top`` (terminal
restored) with 128 + N too.
The state dir is ``$XDG_RUNTIME_DIR/ggmk`` (else ``/tmp/ggmk-$UID``), or ``--state-dir`` /
``$GGMK_STATE_DIR``.
"""
from __future__ import annotations

import json
import sys

import click

import ggmk
from ggmk.cli.params import FiniteFloatRange, IntRange

SECONDS = FiniteFloatRange(min=0)
WORKERS = IntRange(min=1)
SEED = IntRange(min=0)                  # numpy's default_rng takes non-negative seeds only


@click.group(help="ggmk: two peer microkernels (CPU and GPU) driven from Python.")
def cli() -> None:
    pass


@cli.command(help="Print the ggmk version.")
def version() -> None:
    click.echo(ggmk.__version__)


@cli.command(help="Run the demo workload and print its summary.")
@click.option("--seconds", type=SECONDS, default=3.0, show_default=True,
              help="How long the source submits work.")
@click.option("--workers", type=WORKERS, default=2, show_default=True,
              help="Worker threads.")
@click.option("--seed", type=SEED, default=1, show_default=True, help="Random seed.")
def demo(seconds: float, workers: int, seed: int) -> None:
    from ggmk.demo.workload import main as demo_main
    demo_main(["--seconds", str(seconds), "--workers", str(workers), "--seed", str(seed)])


@cli.command(help="List PCI functions (GPUs and virtio devices named) from the OS, then what "
                  "the GPU driver (gpu_drv) found: backend, device, GPUs with each fact's "
                  "source, NVML, displays.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Capabilities and BARs too.")
@click.option("--gpu-drv", "gpu_drv_json", is_flag=True,
              help="With --json: print {\"pci\": [...], \"gpu_drv\": {...}} instead of the "
                   "PCI list alone.")
def hw(as_json: bool, verbose: bool, gpu_drv_json: bool) -> None:
    if gpu_drv_json and not as_json:     # (the text output has the gpu_drv section already)
        raise click.UsageError("--gpu-drv goes with --json: ggmk hw --json --gpu-drv")
    from ggmk.drivers import pci
    try:
        fns = pci.list_functions()
    except Exception as e:   # e.g. sysfs unreadable: a clear message (exit 1), no traceback
        raise click.ClickException(f"PCI discovery failed: {type(e).__name__}: {e}") from None
    if as_json and not gpu_drv_json:
        click.echo(json.dumps([f.to_dict() for f in fns], indent=2))   # the shape scripts use
        return
    gpu_info = _gpu_drv_info()
    if as_json:
        click.echo(json.dumps({"pci": [f.to_dict() for f in fns], "gpu_drv": gpu_info},
                              indent=2))
        return
    from ggmk.drivers.gpu import format_info
    click.echo(pci.lspci_like(fns, verbose=verbose))
    click.echo("")
    click.echo(format_info(gpu_info) if "error" not in gpu_info
               else f"gpu_drv:\n  error: {gpu_info['error']}")


def _gpu_drv_info() -> dict:
    """What gpu_drv found; a driver failure is reported, never a traceback."""
    from ggmk.drivers import gpu
    try:
        return gpu.probe()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


# the live-system commands (boot, halt, ps, stats, emit, chan, mod, kern, log, trace, top)
from ggmk.cli import control_cmds  # noqa: E402

control_cmds.register(cli)


@cli.command("new", help="Write a new module directory: handler file, module.toml, types "
                         "fragment and a test that passes (run it with `ggmk test DIR`).")
@click.argument("name")
@click.option("--target", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="The kernel the module runs on.")
@click.option("--dest", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where the module directory goes.")
def new(name: str, target: str, dest: str) -> None:
    from ggmk import scaffold
    try:
        path = scaffold.new_module(name, target, dest)
    except (ValueError, FileExistsError) as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:        # under a file, not writable, ...: the destination is unusable
        where = f": {e.filename}" if e.filename else ""
        raise click.BadParameter(f"{dest!r}: cannot create the module directory there "
                                 f"({e.strerror or e}{where}; allowed: a directory you can "
                                 "write, created if missing)", param_hint="'--dest'") from None
    click.echo(f"wrote {path} (run its test: ggmk test {path})")


@cli.command("test", help="Run a module's tests (a directory made by `ggmk new`, or a test "
                          "file) in a sandbox: no kernel threads needed. The pytest run is "
                          "stopped whole at --timeout, Ctrl-C or SIGTERM (exit code 1 for the "
                          "timeout, 128 + the signal for a signal).")
@click.argument("path", type=click.Path(exists=True), default=".")
@click.option("--timeout", type=FiniteFloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds the tests may take; then they are stopped.")
def test_cmd(path: str, timeout: float) -> None:
    import signal

    from ggmk.testing import TestsTimedOut, run_module_tests

    class Stopped(BaseException):
        pass

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(signum, frame):
        for sig in stop_signals:       # stopping the run must not be cut short by a second one
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)
    old = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    try:
        rc, out = run_module_tests(path, timeout=timeout)
    except TestsTimedOut as e:
        click.echo(e.output, nl=False)
        control_cmds._fail(f"test: the tests in {path} did not finish within --timeout "
                           f"{e.timeout:g} s: stopped them (a longer --timeout lets them run "
                           "longer)", control_cmds.EXIT_ERROR)
    except Stopped as e:
        control_cmds._fail(f"test: stopped by {signal.Signals(e.args[0]).name}: stopped the "
                           f"tests in {path}", 128 + e.args[0])
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    click.echo(out, nl=False)
    # pytest's own codes clash with ggmk's table (5 = refused, 4 = already running): 0 passed,
    # 2 pytest's usage error, 1 anything else (tests failed, none found, interrupted)
    if rc == 5:
        click.echo(f"ggmk: no tests found in {path}", err=True)
    sys.exit({0: 0, 4: 2}.get(rc, 1))


def main() -> None:
    # what the commands print is written whole or the command fails (the server's stdout is
    # its log file: left as it is)
    if sys.argv[1:2] != ["_serve"]:
        control_cmds.check_stdout_writes()
    cli()


if __name__ == "__main__":
    main()
