"""The ``ggmk`` commands that drive a running system over its control socket, registered on the
``ggmk`` group by :func:`register`.

See ``ggmk.cli.main`` for the exit codes and ``ggmk.control`` for the socket and protocol. The
commands live by concern: ``boot_cmds`` (boot, _serve), ``state_cmds`` (halt, ps, stats, emit,
chan, mod, kern, kv), ``observe_cmds`` (log, trace, top), ``build_cmds`` (build, typegen);
what they share (exit codes, output writers, options, the socket call) in ``common``.
"""
from __future__ import annotations

import click

from ggmk.cli.boot_cmds import _wait_booted, boot, serve_cmd
from ggmk.cli.build_cmds import build, typegen
from ggmk.cli.common import (EXIT_ALREADY, EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_OK, EXIT_PIPE,
                             EXIT_PROTOCOL, EXIT_REFUSED, EXIT_USAGE, _fail,
                             check_stdout_writes)
from ggmk.cli.observe_cmds import log, top, trace
from ggmk.cli.state_cmds import chan, emit, halt, kern, kv, mod, ps, stats

# (what main.py and the tests take from here)
__all__ = ["register", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NOT_RUNNING", "EXIT_ALREADY",
           "EXIT_REFUSED", "EXIT_PROTOCOL", "EXIT_PIPE", "_fail", "check_stdout_writes",
           "_wait_booted"]


def register(cli: click.Group) -> None:
    for cmd in (boot, serve_cmd, halt, ps, stats, emit, chan, mod, kern, kv, log, trace, top,
                build, typegen):
        cli.add_command(cmd)
