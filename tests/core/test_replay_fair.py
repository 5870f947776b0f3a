"""The replay log's "far behind" decision on real threads (ggmk.core.replay): subscribers that
are equally fast are never degraded, even with more subscribers than workers and rings small
enough that one of them always waits for a worker; a stalled handler subscriber alone is
degraded (CHAN_REPLAY_OVERFLOW) and the others go on.

Before the fix "far behind" was one snapshot of the acknowledgements (the slowest half a log
behind while every other one had acknowledged everything), so a subscriber whose batch waited
in the ready queue behind the others', or whose worker was descheduled for a moment, was taken
for far behind: 3 identical subscribers on 2 workers lost copies to CHAN_REPLAY_OVERFLOW in
most runs, often on two or three subscribers in one run."""
import threading
import time

import numpy as np
import pytest

import ggmk
from ggmk import CHAN_FULL, OK
from ggmk import task as T
from ggmk.core.replay import STALL_NS

N, PRODUCERS = 400, 4          # messages per producer task
DEADLINE = 120.0


def _spin(us):
    # a handler's work (CPU), not a wait
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def _run(nsubs, spin_us, *, capacity=16, replay=64, workers=2):
    prod = ggmk.Module("prod")
    out = prod.produces("data.out", "MSG", mode="fanout", capacity=capacity, replay=replay)

    @prod.handler("PROD")
    def p(ctx):
        i = ctx.task.meta1
        while i < N:
            if ctx.emit(out, meta0=ctx.task.meta0 * N + i) == CHAN_FULL:
                return ctx.wait_(meta1=i)
            i += 1
        return OK

    got = {f"C{k}": [] for k in range(nsubs)}
    mods = [prod]
    for name in got:
        m = ggmk.Module(name.lower())

        @m.handler(name, consumes="data.out", message="MSG")
        def c(ctx, name=name):
            got[name].append(ctx.chan_seq)
            _spin(spin_us)
        mods.append(m)

    with ggmk.boot(mods, workers=workers, hal="threads") as s:
        s.submit("PROD", meta0=np.arange(PRODUCERS, dtype=np.uint64))
        assert s.run(timeout=DEADLINE)
        st = s.channel("data.out").stats()
        recs, codes = s.dead_letters("sys.dropped")
        assert len(s.dead_letters("sys.error")[0]) == 0
    return st, recs, codes, got


@pytest.mark.parametrize("spin_us", [0, 150])
def test_equally_fast_subscribers_are_never_degraded(spin_us):
    n = N * PRODUCERS
    for run in range(4):
        st, recs, codes, got = _run(4, spin_us)          # 4 subscribers on 2 workers
        lost = {s["name"]: s["replay_overflows"] for s in st["subs"]}
        assert len(recs) == 0, (run, spin_us, lost, set(codes.tolist()))
        assert st["full"] > 0                             # the producers did wait
        for name, seqs in got.items():
            assert seqs == list(range(1, n + 1)), (run, name, len(seqs))
        assert st["replay"]["depth"] == 0 and st["replay"]["first_seq"] == n + 1


def test_a_stalled_handler_subscriber_alone_degrades_and_the_others_go_on():
    """One handler subscriber blocks (its worker held) until the host producer has emitted
    everything: past STALL_NS without progress it is degraded, the producer goes on, the
    others get every message; released, it catches up and what it missed is on sys.dropped
    for it with CHAN_REPLAY_OVERFLOW, each message once."""
    n = 2000
    release = threading.Event()
    got = {"FAST_A": [], "FAST_B": [], "STUCK": []}
    c = ggmk.Module("subs")
    for name in got:
        @c.handler(name, batch=True, name=name.lower())
        def f(ctx, batch, name=name):
            got[name].extend(batch.seq.tolist())
            if name == "STUCK":
                assert release.wait(DEADLINE)
            return OK

    with ggmk.boot([c], workers=2, hal="threads", dead_letter_capacity=1 << 14) as s:
        ch = s.open("data.fan", "MSG", mode="fanout", capacity=16, replay=64)
        for name in got:
            ch.subscribe(name, name=name.lower())
        tid = s.type_id("MSG")
        t0 = time.monotonic()
        off = 0
        while off < n:
            m = min(32, n - off)
            off += ch.emit(T.make(m, type=tid, meta0=np.arange(off, off + m)))
            if off < n:
                assert ch.wait_room(timeout=DEADLINE), f"no room at {off} of {n}"
        took = time.monotonic() - t0
        release.set()
        assert s.run(timeout=DEADLINE)
        st = ch.stats()
        recs, codes = s.dead_letters("sys.dropped")
    subs = {x["name"]: x for x in st["subs"]}
    assert took >= STALL_NS / 1e9                       # it waited for the stall first
    for name in ("FAST_A", "FAST_B"):
        assert got[name] == list(range(1, n + 1)), name
        assert subs[name.lower()]["replay_overflows"] == 0
    stuck = s.type_id("STUCK")
    assert set(codes.tolist()) == {T.CHAN_REPLAY_OVERFLOW} and (recs["type"] == stuck).all()
    assert subs["stuck"]["replay_overflows"] == len(recs) > 0
    assert got["STUCK"] == sorted(got["STUCK"])
    assert sorted(got["STUCK"] + recs["seq"].tolist()) == list(range(1, n + 1))
    assert not subs["stuck"]["degraded"] and st["replay"]["depth"] == 0
