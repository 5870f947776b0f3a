"""Columns of the rich tables ``ggmk top`` and the demo print."""
from __future__ import annotations

from rich.table import Table


def column(table: Table, name: str, *, right: bool = True) -> None:
    """Add a column that never cuts a value short: a console too narrow for the table (a pipe
    is 80 columns to rich) wraps a figure or a name inside its cell ("fold") instead of
    ending it with an ellipsis. (No ``min_width``: a table wider than the console at its
    minimum is cropped at the edge, whole columns gone.) ``right``: a column of figures."""
    table.add_column(name, justify="right" if right else "left", overflow="fold")
