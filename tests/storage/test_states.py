"""The block and I/O state machines: every pair of states, legal ones pass, the others are
rejected with an error naming both states."""
import itertools

import pytest

from ggmk.storage.states import (BLOCK_TRANSITIONS, IO_TRANSITIONS, Blocks, BlockState,
                                 IllegalTransition, IoState, IoStateCell)


@pytest.mark.parametrize("a,b", list(itertools.product(BlockState, BlockState)))
def test_block_every_pair(a, b):
    bl = Blocks(3, what="test")
    bl.states[:] = a
    if b in BLOCK_TRANSITIONS[a]:
        bl.move(0, 3, b)
        assert (bl.states == b).all()
    else:
        with pytest.raises(IllegalTransition) as ei:
            bl.move(0, 3, b)
        msg = str(ei.value)
        assert f"{a.name} -> {b.name}" in msg and "block 0" in msg
        assert (bl.states == a).all()                  # nothing changed


@pytest.mark.parametrize("a,b", list(itertools.product(IoState, IoState)))
def test_io_every_pair(a, b):
    c = IoStateCell("read f [0, 10)")
    c.state = a
    if b in IO_TRANSITIONS[a]:
        c.to(b)
        assert c.state is b
    else:
        with pytest.raises(IllegalTransition) as ei:
            c.to(b)
        assert f"{a.name} -> {b.name}" in str(ei.value)
        assert "read f [0, 10)" in str(ei.value)
        assert c.state is a


def test_tables_cover_every_state():
    assert set(BLOCK_TRANSITIONS) == set(BlockState)
    assert set(IO_TRANSITIONS) == set(IoState)
    # the seed's lifecycle is a path through each table
    life = [BlockState.FREE, BlockState.ALLOC, BlockState.INIT, BlockState.QUEUED,
            BlockState.DMA_START, BlockState.DONE, BlockState.FREE]
    assert all(b in BLOCK_TRANSITIONS[a] for a, b in zip(life, life[1:]))
    io = [IoState.FREE, IoState.INIT, IoState.READY, IoState.IN_PROGRESS,
          IoState.TERMINATE_REQ, IoState.TERMINATED, IoState.CALLBACK_REQ,
          IoState.CALLBACK_END, IoState.FREE]
    assert all(b in IO_TRANSITIONS[a] for a, b in zip(io, io[1:]))


def test_mixed_range_names_first_bad_block():
    bl = Blocks(4)
    bl.states[:] = [BlockState.INIT, BlockState.INIT, BlockState.DONE, BlockState.INIT]
    with pytest.raises(IllegalTransition, match=r"DONE -> QUEUED \(block 2"):
        bl.move(0, 4, BlockState.QUEUED)
    assert bl.states.tolist() == [2, 2, 5, 2]


def test_to_if_is_atomic_choice():
    c = IoStateCell()
    c.to(IoState.INIT)
    assert not c.to_if((IoState.READY,), IoState.IN_PROGRESS)
    c.to(IoState.READY)
    assert c.to_if((IoState.READY,), IoState.TERMINATE_REQ)
    assert c.state is IoState.TERMINATE_REQ
