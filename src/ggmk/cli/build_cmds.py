"""The ``ggmk`` commands that need no running system: ``build`` (the GPU kernel's build
report) and ``typegen`` (typed payload classes from types.toml)."""
from __future__ import annotations

import sys

import click

from ggmk.cli.common import (AppArg, EXIT_ERROR, OutFile, _call, _client_errors, _echo_json, _fail,
                             _write_file, json_option, state_dir_option)


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
            res = _call(state_dir, "kern_info", {"report": True, "kernel": whole},
                        timeout=900)
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
