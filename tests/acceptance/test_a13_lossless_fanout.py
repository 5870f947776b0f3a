"""SPEC §14.13 Lossless fan-out, 1M messages, 3 subscribers: all receive all in sequence; the
replay buffer evicts once all subscribers have passed a sequence number.

CI runs 100,000 messages (1M with GGMK_LONG=1). A randomized test on the sim HAL (200 seeds)
mixes emits, payloads, priorities, subscriber speeds and closes: every message accepted by emit
reaches every subscriber exactly once with its channel sequence number, in sequence within its
priority (priority 0 overtakes the others in the ready queue), or is on sys.dropped with a reason; every payload is freed exactly once
(debug arena: a second release raises); arena free bytes return to their start value."""
import os
import random

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module

LONG = os.environ.get("GGMK_LONG") == "1"
SUBS = ("SUB_A", "SUB_B", "SUB_C")


def _lossless_fanout(hal, n, replay):
    seqs = {t: [] for t in SUBS}
    c = Module("subs")
    for t in SUBS:
        @c.handler(t, consumes="data.fan", message="MSG", batch=True, name=t.lower())
        def f(ctx, batch, t=t):
            seqs[t].append(batch.seq.copy())

    p = Module("src")
    p.produces("data.fan", "MSG", mode="fanout", capacity=16384, replay=replay)
    # one worker: handler calls happen in delivery order, so "in sequence" is checked exactly
    with boot([p, c], hal=hal, workers=1, max_batch=2048) as s:
        ch = s.channel("data.fan")
        tid = s.type_id("MSG")
        off = fulls = 0
        while off < n:
            m = min(8192, n - off)
            k = ch.emit(T.make(m, type=tid, meta0=np.arange(off, off + m)))
            off += k
            if k < m:                       # lossless: refused, not lost; wait for drain
                fulls += 1
                assert s.run(timeout=60)
        assert s.run(timeout=120)
        st = ch.stats()
        assert len(s.dead_letters("sys.dropped")[0]) == 0
    for t in SUBS:
        got = np.concatenate(seqs[t]).astype(np.int64)
        assert len(got) == n and (got == np.arange(1, n + 1)).all(), t     # all, in sequence
    assert st["emitted"] == n and st["dropped"] == 0
    if replay:   # everyone passed every sequence: the log evicted all of it
        assert st["replay"]["depth"] == 0 and st["replay"]["first_seq"] == n + 1
        assert st["replay"]["evicted"] == n
    return fulls


def test_lossless_fanout_100k_3_subscribers_in_sequence(hal):
    _lossless_fanout(hal, 100_000, replay=4096)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long form: set GGMK_LONG=1")
def test_lossless_fanout_1m_3_subscribers_in_sequence(hal):
    _lossless_fanout(hal, 1_000_000, replay=4096)


def test_replay_evicts_only_once_all_subscribers_passed(hal):
    with boot([], hal=hal) as s:
        ch = s.open("data.fan", "MSG", mode="fanout", replay=256)
        subs = [ch.subscribe(name=n) for n in ("a", "b", "c")]
        tid = s.type_id("MSG")
        assert ch.emit(T.make(100, type=tid)) == 100
        assert ch.stats()["replay"]["depth"] == 100
        subs[0].take(60)
        subs[1].take(80)
        assert ch.stats()["replay"]["first_seq"] == 1          # c has passed nothing yet
        subs[2].take(50)
        st = ch.stats()["replay"]
        assert st["first_seq"] == 51 and st["depth"] == 50     # below the slowest ack (50)
        subs[0].take(), subs[2].take()
        assert ch.stats()["replay"]["first_seq"] == 81         # b acked 80
        subs[1].take()
        assert ch.stats()["replay"]["depth"] == 0


# -- randomized invariant check --------------------------------------------------------------

def _one_seed(seed: int) -> None:
    rng = random.Random(seed)
    log = {t: [] for t in SUBS}
    c = Module("subs")
    for t in SUBS:
        @c.handler(t, name=t.lower())
        def f(ctx, t=t):
            m0 = ctx.task.meta0
            if ctx.task.payload_ptr:   # shared payload is intact (debug arena: not freed)
                v = ctx.arena.view(ctx.task.payload_ptr, ctx.task.payload_len)
                assert (v == (m0 & 0xFF)).all()
            log[t].append((ctx.chan_seq, m0))

    with boot([c], hal="sim", workers=rng.choice((1, 2, 3)), seed=seed, debug=True) as s:
        free0 = s.arena.stats()["total"]["free_bytes"]
        replay = rng.choice((0, 0, 16, 64))
        ch = s.open("data.fan", "MSG", mode="fanout", capacity=rng.choice((8, 16, 64)),
                    replay=replay)
        nsubs = rng.randint(1, 3)
        for t in SUBS[:nsubs]:
            ch.subscribe(t, window=rng.choice((1, 2, 8, 64)))   # subscriber speed
        tid = s.type_id("MSG")
        accepted = []
        prio = {}
        next_id = 0
        close_at = rng.choice((None, rng.randint(5, 40)))
        for step in range(rng.randint(10, 60)):
            if step == close_at:
                s.close("data.fan")
            act = rng.random()
            if act < 0.6:
                m = rng.randint(1, 24)
                ids = np.arange(next_id, next_id + m)
                next_id += m
                ptrs = np.zeros(m, dtype=np.uint64)
                plen = 0
                if rng.random() < 0.5:
                    plen = rng.choice((8, 100))
                    ptrs = s.arena.alloc_many(plen, m)
                    for q, i in zip(ptrs.tolist(), ids.tolist()):
                        s.arena.view(q, plen)[:] = i & 0xFF
                pr = rng.choice((0, 0, 0, 1, 3))
                k = ch.emit(T.make(m, type=tid, meta0=ids, payload_ptr=ptrs, payload_len=plen,
                                   priority=pr))
                accepted.extend(ids[:k].tolist())
                prio.update((i, pr) for i in ids[:k].tolist())
                if plen and k < m:
                    s.arena.release_many(ptrs[k:])          # refused: still ours
            else:
                for _ in range(rng.randint(1, 30)):        # let some workers run
                    s.hal.step()
        assert s.run(timeout=60), f"seed {seed}: not idle"
        recs, codes = s.dead_letters("sys.dropped")
        assert s.arena.live_count() == 0, f"seed {seed}: leaked payloads"
        assert s.arena.stats()["total"]["free_bytes"] == free0, f"seed {seed}"
    allowed = {T.CHAN_CLOSED} | ({T.CHAN_REPLAY_OVERFLOW} if replay else set())
    assert set(codes.tolist()) <= allowed, (seed, set(codes.tolist()))
    pos = {v: i + 1 for i, v in enumerate(accepted)}          # id -> channel seq
    for t in SUBS[:nsubs]:
        got = log[t]
        ids = [m0 for _, m0 in got]
        assert [q for q, _ in got] == [pos[i] for i in ids], f"seed {seed} {t}: seq mismatch"
        # FIFO per priority (the ready queue serves priority 0 ahead of the others)
        for p_ in set(prio.values()):
            mine = [i for i in ids if prio[i] == p_]
            assert mine == sorted(mine, key=pos.get), f"seed {seed} {t}: out of sequence"
        dropped = recs["meta0"][recs["type"] == s.type_id(t)].tolist()
        both = sorted(ids + dropped, key=pos.get)
        assert both == accepted, f"seed {seed} {t}: lost or duplicated"


@pytest.mark.parametrize("block", range(4))
def test_randomized_lossless_fanout_invariant_200_seeds(block):
    for seed in range(block * 50, block * 50 + 50):
        _one_seed(seed)
