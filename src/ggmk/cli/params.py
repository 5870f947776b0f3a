"""Parameter types shared by the ``ggmk`` commands (``main`` and ``control_cmds``; here so that
neither imports the other: ``_serve`` runs as ``python -m ggmk.cli.main``)."""
from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass a range check:
    every comparison with nan is false)."""

    name = "float"          # in messages: "'x' is not a valid float."

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number (allowed: {self._describe_range()}).",
                      param, ctx)
        return rv


# Numeric options are range-checked here, so a bad value is a usage error naming the option and
# the allowed range (exit code 2), never a traceback from deep inside the kernel.
class IntRange(click.IntRange):
    name = "integer"        # in messages: "'x' is not a valid integer." (not "integer range")
