"""A channel past 2**32 messages: a record's ``seq`` column holds the low 32 bits of the
channel's sequence, which wraps; the channel's own bookkeeping (``committed``, a subscriber's
``next``/``acked``/in-flight batch, the replay log's first seq) counts on without bound.

Before, the bookkeeping took the column as it was: an ordered subscriber whose in-flight batch
straddled the wrap and finished in pieces (some of its messages yield) never saw it finish, so
the channel stopped delivering for good; a replay log took the wrap for 4 billion messages of
room. At 4 M messages/s a channel gets there in 18 minutes.

The channel starts a few messages before the wrap (``_start_near_wrap``: the state that 2**32
messages would leave; emitting them would take too long for a test)."""
import threading
import time

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from tests.core.test_channel_order import _emit_all

DEADLINE = 120.0
WRAP = 1 << 32


def _start_near_wrap(ch, before=300):
    """As if the channel had carried ``WRAP - before`` messages, each acknowledged."""
    with ch.lock:
        start = WRAP - before
        ch.seq = ch.committed = start
        for sub in ch.subs:
            sub.next, sub.acked = start + 1, start
        if ch.log is not None:
            ch.log.first = start + 1
    return start


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_an_ordered_subscriber_goes_on_past_the_wrap_when_batches_finish_in_pieces(hal):
    """Odd messages yield once: every batch finishes in two pieces (the evens, then the odds
    when they come back), including the batch that straddles the wrap."""
    n = 2000
    seen = []
    lock = threading.Lock()
    m = Module("sink")

    @m.handler("MSG", consumes="data.wrap")
    def sink(ctx):
        t = ctx.task
        if t.meta0 % 2 and t.yield_count == 0:
            return ctx.yield_()
        with lock:
            seen.append(t.meta0)
        return T.OK

    p = Module("src")
    p.produces("data.wrap", "MSG", capacity=64)
    kw = {"seed": 3} if hal == "sim" else {}
    with boot([p, m], hal=hal, workers=2, max_batch=16, **kw) as s:
        ch = s.channel("data.wrap")
        start = _start_near_wrap(ch)
        _emit_all(s, ch, T.make(n, type=s.type_id("MSG"), meta0=np.arange(n)), chunk=64)
        assert s.run(timeout=DEADLINE), "the ordered subscriber stopped at the wrap"
        st = ch.stats()
        assert len(s.dead_letters("sys.error")[0]) == 0
        assert len(s.dead_letters("sys.dropped")[0]) == 0
    assert sorted(seen) == list(range(n))                   # each exactly once
    assert st["seq"] == start + n and st["subs"][0]["in_flight"] == 0


def test_a_replay_log_keeps_its_limits_past_the_wrap():
    """Fan-out with a replay log across the wrap, a slow subscriber among two fast ones:
    each message reaches each subscriber once or is on sys.dropped for it with
    CHAN_REPLAY_OVERFLOW; the fast ones get everything, in order; the log ends empty."""
    n = 6000
    subs = ("FAST_A", "FAST_B", "SLOW")
    got = {t: [] for t in subs}
    c = Module("subs")
    for t in subs:
        @c.handler(t, batch=True, name=t.lower())
        def f(ctx, batch, t=t):
            got[t].append(batch.meta0.copy())
            if t == "SLOW":
                time.sleep(0.0005)
            return T.OK

    with boot([c], hal="threads", workers=2, dead_letter_capacity=1 << 16) as s:
        ch = s.open("data.fan", "MSG", mode="fanout", capacity=64, replay=256)
        for t in subs:
            ch.subscribe(t, name=t.lower())
        start = _start_near_wrap(ch, before=1000)
        _emit_all(s, ch, T.make(n, type=s.type_id("MSG"), meta0=np.arange(n)), chunk=64)
        assert s.run(timeout=DEADLINE)
        st = ch.stats()
        drop, codes = s.dead_letters("sys.dropped")
        assert len(s.dead_letters("sys.error")[0]) == 0
    assert set(np.asarray(codes).tolist()) <= {T.CHAN_REPLAY_OVERFLOW}
    for t in subs:
        g = np.concatenate(got[t]) if got[t] else np.zeros(0, np.int64)
        d = drop["meta0"][drop["type"] == s.type_id(t)]
        bad = np.flatnonzero(np.diff(g.astype(np.int64)) <= 0)
        assert not len(bad), f"{t}: not in order at {[g[i:i + 3].tolist() for i in bad[:5]]}"
        assert sorted(np.concatenate([g, d]).tolist()) == list(range(n)), \
            f"{t}: {len(g)} delivered + {len(d)} dropped of {n}"
        if t != "SLOW":
            assert len(g) == n, f"{t} kept up but lost {n - len(g)}"
    assert st["replay"]["depth"] == 0 and st["replay"]["first_seq"] == start + n + 1
