"""SPEC §14.14 A retained payload survives auto-release; an unretained one is freed on return; the
debug canary detects use-after-free. Payloads travel over a fan-out channel, so the reference
count is the number of deliveries and the last release frees."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import UseAfterFree


def _system(hal, keep):
    """Two subscribers on one fan-out channel; KEEPER retains what ``keep`` says, PEEKER never."""
    kept, peeked = [], []
    m = Module("owners")

    @m.handler("KEEPER", consumes="blobs.out", message="BLOB")
    def keeper(ctx):
        if keep(ctx.task.meta0):
            ctx.retain()
            kept.append(ctx.task.payload_ptr)

    @m.handler("PEEKER", consumes="blobs.out", message="BLOB")
    def peeker(ctx):
        peeked.append((ctx.task.payload_ptr, bytes(ctx.payload)))

    p = Module("src")
    p.produces("blobs.out", "BLOB", mode="fanout")
    s = boot([p, m], hal=hal, workers=2, debug=True)
    return s, kept, peeked


def test_retained_payload_survives_auto_release(hal):
    s, kept, peeked = _system(hal, keep=lambda i: i % 2 == 0)
    with s:
        ch = s.channel("blobs.out")
        for i in range(10):
            assert ch.publish(meta0=i, payload=bytes([i]) * 32) == T.OK
        assert s.run(timeout=10)
        assert len(kept) == 5 and len(peeked) == 10
        for ptr in kept:                       # both handlers returned; still alive, intact
            assert s.arena.refcount(ptr) == 1
            v = s.arena.view(ptr, 32)
            assert (v == v[0]).all() and v[0] % 2 == 0
        assert s.arena.live_count() == 5       # the odd ones were freed on return
        s.arena.release_many(np.array(kept, dtype=np.uint64))
        assert s.arena.live_count() == 0


def test_unretained_payload_freed_on_return_after_last_delivery(hal):
    s, kept, peeked = _system(hal, keep=lambda i: False)
    with s:
        free0 = s.arena.stats()["total"]["free_bytes"]
        ch = s.channel("blobs.out")
        for i in range(50):
            assert ch.publish(meta0=i, payload=bytes([i]) * 100) == T.OK
        assert s.run(timeout=10)
        assert {b for _, b in peeked} == {bytes([i]) * 100 for i in range(50)}
        assert s.arena.live_count() == 0
        assert s.arena.stats()["total"]["free_bytes"] == free0
        st = s.arena.stats()["total"]
        assert st["allocs"] == st["frees"] == 50          # one allocation each, freed once


def test_debug_canary_detects_use_after_free(hal):
    late = []
    m = Module("late")

    @m.handler("LATE_READ")
    def late_read(ctx):
        ptr = ctx.task.meta0
        late.append(bytes(ctx.arena.view(ptr, 8)))       # a stale pointer: must raise

    peek = []
    m2 = Module("owners")

    @m2.handler("PEEKER", consumes="blobs.out", message="BLOB")
    def peeker(ctx):
        peek.append(ctx.task.payload_ptr)                 # keeps the address, not the payload

    p = Module("src")
    p.produces("blobs.out", "BLOB", mode="fanout")
    with boot([p, m2, m], hal=hal, workers=1, debug=True) as s:
        assert s.channel("blobs.out").publish(payload=b"secret!!") == T.OK
        assert s.run(timeout=10) and len(peek) == 1
        with pytest.raises(UseAfterFree):
            s.arena.view(peek[0], 8)
        s.submit("LATE_READ", meta0=peek[0])              # a handler touching freed memory
        assert s.run(timeout=10)
        assert late == []
        recs, codes = s.dead_letters("sys.error")
        assert codes.tolist() == [T.HANDLER_EXCEPTION]
        assert "UseAfterFree" in s.exceptions[-1][2]
        assert s.channel("blobs.out").publish(payload=b"still ok") == T.OK   # keeps running
        assert s.run(timeout=10) and len(peek) == 2
