"""Commands of a batch (``Context.submit``). Each names its memory by :class:`GpuMemory` and a
byte range; the driver checks every one (owner, freed, bounds) before anything is queued, and the
batch runs in order. GhostNV's raw words are accepted too: ``0x1`` NOP, ``0x2`` FENCE (a batch
always ends in its fence, so FENCE is a no-op marker)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

OP_NOP = 0x1
OP_FENCE = 0x2


@dataclass(frozen=True)
class Nop:
    """Does nothing (a fence on an empty batch)."""


@dataclass(frozen=True)
class Fill:
    """Set ``nbytes`` bytes of ``mem`` from ``offset`` (all the rest by default) to ``value``."""

    mem: Any
    value: int
    offset: int = 0
    nbytes: int | None = None


@dataclass(frozen=True)
class Write:
    """Copy host bytes (bytes, or any C-contiguous array) into ``mem`` at ``offset``. The data is
    copied when the batch is submitted, so the caller may reuse it at once."""

    mem: Any
    data: Any
    offset: int = 0


@dataclass(frozen=True)
class Read:
    """Copy ``out.nbytes`` bytes of ``mem`` from ``offset`` into the writable host array ``out``;
    it holds them once the batch's fence has signalled (after ``wait`` / ``done()``)."""

    mem: Any
    out: Any
    offset: int = 0


@dataclass(frozen=True)
class Copy:
    """Copy ``nbytes`` (default: all of ``src`` from ``src_offset``) from ``src`` to ``dst``."""

    dst: Any
    src: Any
    nbytes: int | None = None
    dst_offset: int = 0
    src_offset: int = 0


@dataclass(frozen=True)
class Call:
    """Run ``fn(*args)`` in order with the batch (``cpu`` backend only: host-side work)."""

    fn: Callable
    args: tuple = ()


COMMANDS = (Nop, Fill, Write, Read, Copy, Call)
