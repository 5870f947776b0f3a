"""The NVFS state machines (SPEC §12; the NVFS developer guide's ``nvfs_block_state`` and
``nvfs_io_state``), each in one transition table.

Block states (one per 4 KiB block of an I/O's destination)::

    FREE -> ALLOC -> INIT -> QUEUED -> DMA_START -> DONE
                                              \\-> DMA_ERROR

Every legal transition is listed in :data:`BLOCK_TRANSITIONS` / :data:`IO_TRANSITIONS`; any
other pair is rejected with :class:`IllegalTransition`, whose message names the machine, both
states and (for blocks) the first offending block. Blocks are tracked as a NumPy ``uint8``
array per I/O and moved a range at a time (:meth:`Blocks.move`), so a 1 GiB read (262144
blocks) costs one vectorised check per chunk, not a Python call per block.

Block transitions (why each exists):

================  ===========  ==================================================================
from              to           when
================  ===========  ==================================================================
FREE              ALLOC        the destination range is claimed for an I/O
ALLOC             INIT         the I/O is set up (file, offset, path chosen)
ALLOC             FREE         setup failed before anything was queued (destination given back)
INIT              QUEUED       the block's read/write is queued (a bounce chunk or a direct read)
INIT              DONE         a hole: zero-filled without any read (sparse files)
INIT              FREE         the I/O was cancelled or failed before the block was queued
QUEUED            DMA_START    the transfer (read into a bounce buffer / the copy) started
QUEUED            FREE         cancelled while queued
DMA_START         DONE         the block's bytes are in the destination
DMA_START         DMA_ERROR    the read or the copy failed (or hit end of file: a short read)
DONE              FREE         the I/O completed and its blocks are released
DONE              INIT         the block is reused for another I/O (re-armed)
DMA_ERROR         FREE         the failed I/O is released
DMA_ERROR         INIT         retry after an error
================  ===========  ==================================================================

I/O transitions:

================  ===============  ==============================================================
from              to               when
================  ===============  ==============================================================
FREE              INIT             a request is accepted
INIT              READY            validated, resources reserved, handed to the scheduler
INIT              FREE             refused at setup (bad request, destination too small ...)
READY             IN_PROGRESS      a worker starts it
READY             TERMINATE_REQ    cancelled while queued
IN_PROGRESS       CALLBACK_REQ     finished (complete, short or failed): completion runs
IN_PROGRESS       TERMINATE_REQ    cancelled mid-flight (seen at the next chunk boundary)
TERMINATE_REQ     TERMINATED       the worker stopped it (destination released if it was ours)
TERMINATED        CALLBACK_REQ     the completion of a cancelled I/O runs
CALLBACK_REQ      CALLBACK_END     completion callbacks ran, waiters woken
CALLBACK_END      FREE             the I/O record is retired
================  ===============  ==============================================================
"""
from __future__ import annotations

import threading
from enum import IntEnum

import numpy as np

from ggmk.errors import GgmkError

__all__ = ["BlockState", "IoState", "BLOCK_TRANSITIONS", "IO_TRANSITIONS", "IllegalTransition",
           "Blocks", "IoStateCell", "StateVector", "BLOCK_SIZE", "legal_block", "legal_io"]

BLOCK_SIZE = 4096           # NVFS_BLOCK_SIZE


class IllegalTransition(GgmkError):
    """A state machine was asked for a transition its table does not allow."""


class BlockState(IntEnum):
    FREE = 0
    ALLOC = 1
    INIT = 2
    QUEUED = 3
    DMA_START = 4
    DONE = 5
    DMA_ERROR = 6


class IoState(IntEnum):
    FREE = 0
    INIT = 1
    READY = 2
    IN_PROGRESS = 3
    TERMINATE_REQ = 4
    TERMINATED = 5
    CALLBACK_REQ = 6
    CALLBACK_END = 7


B, I = BlockState, IoState

BLOCK_TRANSITIONS: dict[BlockState, frozenset[BlockState]] = {
    B.FREE: frozenset({B.ALLOC}),
    B.ALLOC: frozenset({B.INIT, B.FREE}),
    B.INIT: frozenset({B.QUEUED, B.DONE, B.FREE}),
    B.QUEUED: frozenset({B.DMA_START, B.FREE}),
    B.DMA_START: frozenset({B.DONE, B.DMA_ERROR}),
    B.DONE: frozenset({B.FREE, B.INIT}),
    B.DMA_ERROR: frozenset({B.FREE, B.INIT}),
}

IO_TRANSITIONS: dict[IoState, frozenset[IoState]] = {
    I.FREE: frozenset({I.INIT}),
    I.INIT: frozenset({I.READY, I.FREE}),
    I.READY: frozenset({I.IN_PROGRESS, I.TERMINATE_REQ}),
    I.IN_PROGRESS: frozenset({I.CALLBACK_REQ, I.TERMINATE_REQ}),
    I.TERMINATE_REQ: frozenset({I.TERMINATED}),
    I.TERMINATED: frozenset({I.CALLBACK_REQ}),
    I.CALLBACK_REQ: frozenset({I.CALLBACK_END}),
    I.CALLBACK_END: frozenset({I.FREE}),
}


def _matrix(table, n):
    m = np.zeros((n, n), dtype=bool)
    for a, tos in table.items():
        for b in tos:
            m[a, b] = True
    return m


_BLOCK_LEGAL = _matrix(BLOCK_TRANSITIONS, len(BlockState))
_IO_LEGAL = _matrix(IO_TRANSITIONS, len(IoState))
_BLOCK_NAMES = [s.name for s in BlockState]
_COUNT_LOCK = threading.Lock()      # transition counters (segments of one I/O run in parallel)
_BLOCK_KEYS = [[f"{a.name}->{b.name}" for b in BlockState] for a in BlockState]
_IO_KEYS = [[f"{a.name}->{b.name}" for b in IoState] for a in IoState]
_IO_STATES = list(IoState)


def legal_block(a, b) -> bool:
    return bool(_BLOCK_LEGAL[int(a), int(b)])


def legal_io(a, b) -> bool:
    return bool(_IO_LEGAL[int(a), int(b)])


class Blocks:
    """Per-block states of one I/O (``nblocks`` 4 KiB blocks, all FREE at first).

    ``move(first, last, new)`` moves blocks ``[first, last)``; ``move_all(new)`` every block.
    Each call checks every block's current state against the table and changes nothing if one
    is illegal (:class:`IllegalTransition` naming the block, both states and ``what``).
    ``counts`` (a shared dict, optional) counts transitions as ``"FROM->TO"``."""

    __slots__ = ("states", "what", "counts")

    def __init__(self, nblocks: int, what: str = "", counts: dict | None = None):
        self.states = np.zeros(max(int(nblocks), 0), dtype=np.uint8)
        self.what = what
        self.counts = counts

    def __len__(self) -> int:
        return len(self.states)

    def move(self, first: int, last: int, new: BlockState) -> None:
        s = self.states[first:last]
        if not len(s):
            return
        new = int(new)
        cur = int(s[0])
        if len(s) == 1 or (s == cur).all():          # the common case: one state in the range
            if not _BLOCK_LEGAL[cur, new]:
                self._illegal(first, cur, new)
            s[:] = new
            self._count(cur, new, len(s))
            return
        ok = _BLOCK_LEGAL[s, new]
        if not ok.all():
            i = int(np.argmin(ok))
            self._illegal(first + i, int(s[i]), new)
        for st, c in zip(*np.unique(s, return_counts=True)):
            self._count(int(st), new, int(c))
        s[:] = new

    def move_all(self, new: BlockState) -> None:
        self.move(0, len(self.states), new)

    def advance(self, first: int, last: int, old: BlockState, new: BlockState) -> int:
        """Move the blocks of ``[first, last)`` that are in ``old`` to ``new`` (others stay:
        a block shared by two chunks is moved by the first); returns how many moved."""
        if not _BLOCK_LEGAL[int(old), int(new)]:
            self._illegal(first, int(old), int(new))
        s = self.states[first:last]
        m = s == int(old)
        n = int(m.sum()) if len(s) > 1 else int(bool(len(s)) and bool(m[0]))
        if n:
            s[m] = int(new)
            self._count(int(old), int(new), n)
        return n

    def _count(self, old: int, new: int, n: int) -> None:
        if self.counts is not None:
            k = _BLOCK_KEYS[old][new]
            with _COUNT_LOCK:
                self.counts[k] = self.counts.get(k, 0) + n

    def move_where(self, old: BlockState, new: BlockState) -> int:
        """Move every block currently in ``old`` to ``new``; returns how many moved."""
        old, new = int(old), int(new)
        if len(self.states) <= 8:                  # small I/Os: no NumPy reductions
            lst = self.states.tolist()
            if old not in lst:
                return 0
            m = self.states == old
            n = lst.count(old)
        else:
            m = self.states == old
            n = int(m.sum())
        if n:
            if not _BLOCK_LEGAL[int(old), int(new)]:
                self._illegal(int(np.argmax(m)), int(old), int(new))
            self.states[m] = int(new)
            self._count(int(old), int(new), n)
        return n

    def count(self, state: BlockState) -> int:
        return int((self.states == int(state)).sum())

    def _illegal(self, block: int, cur: int, new: int):
        raise IllegalTransition(
            f"block state machine{' of ' + self.what if self.what else ''}: illegal transition "
            f"{_BLOCK_NAMES[cur]} -> {_BLOCK_NAMES[new]} (block {block}, bytes "
            f"{block * BLOCK_SIZE}..{(block + 1) * BLOCK_SIZE})")


class IoStateCell:
    """The state of one I/O, changed under a lock; illegal transitions raise."""

    __slots__ = ("state", "what", "_lock", "counts")

    def __init__(self, what: str = "", counts: dict | None = None, lock=None):
        self.state = IoState.FREE
        self.what = what
        self._lock = lock if lock is not None else threading.Lock()
        self.counts = counts

    def to(self, new: IoState) -> None:
        with self._lock:
            self._to(new)

    def _to(self, new: IoState) -> None:
        cur = self.state
        new = _IO_STATES[new]
        if not _IO_LEGAL[cur, new]:
            raise IllegalTransition(
                f"I/O state machine{' of ' + self.what if self.what else ''}: illegal transition "
                f"{cur.name} -> {new.name}")
        self.state = new
        c = self.counts
        if c is not None:
            k = _IO_KEYS[cur][new]
            c[k] = c.get(k, 0) + 1

    def to_if(self, allowed: tuple, new: IoState) -> bool:
        """Atomically: if the state is one of ``allowed``, move to ``new`` and return True."""
        with self._lock:
            if self.state in allowed:
                self._to(new)
                return True
            return False

    def __repr__(self) -> str:
        return f"IoStateCell({self.state.name})"


class StateVector:
    """The states of many I/Os (``machine="io"``) or blocks (``"block"``) of one fast batch, in
    one ``uint8`` array, moved together: ``move(new, mask)`` checks every selected entry
    against the machine's table in one vectorized step and changes nothing if one is illegal
    (:class:`IllegalTransition` naming the entry and both states). ``counts`` accumulates
    ``"FROM->TO"`` transition counts (merged into the storage statistics per batch)."""

    __slots__ = ("machine", "states", "counts", "_legal", "_names")

    def __init__(self, machine: str, n: int):
        if machine not in ("io", "block"):
            raise ValueError(f"machine must be 'io' or 'block', got {machine!r}")
        self.machine = machine
        self.states = np.zeros(max(int(n), 0), dtype=np.uint8)     # FREE
        self.counts: dict = {}
        self._legal = _IO_LEGAL if machine == "io" else _BLOCK_LEGAL
        self._names = _IO_KEYS if machine == "io" else _BLOCK_KEYS

    def __len__(self) -> int:
        return len(self.states)

    def move(self, new, mask: np.ndarray | None = None) -> int:
        """Move the entries selected by ``mask`` (all if None) to ``new``; returns how many."""
        new = int(new)
        s = self.states if mask is None else self.states[mask]
        if not len(s):
            return 0
        ok = self._legal[s, new]
        if not ok.all():
            j = int(np.argmin(ok))
            idx = j if mask is None else int(np.flatnonzero(mask)[j])
            cur = int(s[j])
            names = [x.name for x in (IoState if self.machine == "io" else BlockState)]
            raise IllegalTransition(
                f"{'I/O' if self.machine == 'io' else 'block'} state machine of fast-batch "
                f"entry {idx}: illegal transition {names[cur]} -> {names[new]}")
        hist = np.bincount(s, minlength=len(self._legal))
        for cur in np.flatnonzero(hist):
            k = self._names[int(cur)][new]
            self.counts[k] = self.counts.get(k, 0) + int(hist[cur])
        if mask is None:
            self.states[:] = new
        else:
            self.states[mask] = new
        return len(s)

    def count(self, state) -> int:
        return int((self.states == int(state)).sum())
