"""Columns of the rich tables ``ggmk top`` and the demo print."""
from __future__ import annotations

from rich.table import Table


def column(table: Table, name: str, *, right: bool = True, min_width: int | None = None) -> None:
    """Add a column that never cuts a value short: a console too narrow for the table (a pipe
    is 80 columns to rich) wraps a figure or a name inside its cell ("fold") instead of
    ending it with an ellipsis. ``right``: a column of figures. ``min_width``: for names
    that must stay whole (a channel a user will type): the figures around them fold first.
    Only for those: a table whose minimum is wider than the console is cropped at its edge,
    whole columns gone."""
    table.add_column(name, justify="right" if right else "left", overflow="fold",
                     min_width=min_width)
