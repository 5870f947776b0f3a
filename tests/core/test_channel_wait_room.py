"""``Channel.wait_room``: a host producer with a backlog blocks until the channel has room
instead of polling with sleeps (every pop from a subscriber ring wakes it), on real threads
with a consumer that stalls, and on sim (where waiting steps the workers)."""
import threading

import numpy as np
import pytest

import ggmk


def _sink(gate=None):
    got = []
    m = ggmk.Module("sink")

    @m.handler("MSG", consumes="data.in", batch=True)
    def sink(ctx, batch):
        if gate is not None:
            gate.wait(60)
        got.extend(batch.meta0.tolist())
    p = ggmk.Module("src")
    p.produces("data.in", "MSG", capacity=16)
    return [p, m], got


def _publish_all(ch, n):
    """The producer loop the docstring shows: publish what fits, wait for room, go on."""
    off, waits = 0, 0
    col = np.arange(n, dtype=np.uint64)
    while off < n:
        off += ch.publish(meta0=col[off:], count=n - off)
        if off < n:
            waits += 1
            assert ch.wait_room(timeout=60), f"no room for 60 s at {off} of {n}"
    return waits


def test_a_stalled_consumer_holds_the_producer_until_it_drains():
    gate = threading.Event()
    mods, got = _sink(gate)
    # (no caller runs: the publishing thread must not be the one running the stalled handler)
    with ggmk.boot(mods, workers=2, host_helps=False) as s:
        ch = s.channel("data.in")
        while ch.publish(meta0=1) == 0:
            pass                                      # full: the consumer is stalled
        assert ch.room() == 0
        assert ch.wait_room(timeout=0) is False        # no room, no wait
        res = []
        th = threading.Thread(target=lambda: res.append(ch.wait_room(timeout=60)))
        th.start()
        assert th.is_alive()
        gate.set()                                    # the consumer drains: room wakes it
        th.join(60)
        assert res == [True]
        # the ring's pops now wake a waiting host (what ended that wait)
        assert ch.subs[0].ring.on_free == s.hal.notify_host
        assert s.run(timeout=60)


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_a_backlog_goes_through_a_small_channel_with_every_message_once(hal):
    n = 20_000
    mods, got = _sink()
    kw = {"seed": 5} if hal == "sim" else {}
    with ggmk.boot(mods, hal=hal, workers=2, **kw) as s:
        waits = _publish_all(s.channel("data.in"), n)
        assert s.run(timeout=60)
        assert len(s.dead_letters("sys.error")[0]) == len(s.dead_letters("sys.dropped")[0]) == 0
    assert waits > 0                                  # the limit was hit
    assert sorted(got) == list(range(n)) and got == sorted(got)     # once each, in order


def test_closed_channel_and_bad_timeouts():
    mods, _ = _sink()
    with ggmk.boot(mods, workers=2) as s:
        ch = s.channel("data.in")
        for bad in (-1, "1", True, float("nan")):
            with pytest.raises(ValueError, match=r"'data.in': wait_room\(timeout=.*\): allowed "
                                                 r"None or a number of seconds >= 0"):
                ch.wait_room(timeout=bad)
        s.close("data.in")
        assert ch.wait_room(timeout=5) is False


def test_a_suspended_channel_is_waited_out_not_taken_for_closed():
    """The bridge suspends its CPU -> GPU channels while the GPU kernel is reset: a producer
    in wait_room gets room once the channel resumes (it got False at once: the loop above
    raised on every reset, and one that went on spun on CHAN_CLOSED)."""
    mods, got = _sink()
    with ggmk.boot(mods, workers=2) as s:
        ch = s.channel("data.in")
        assert ch.suspend()
        assert ch.wait_room(timeout=0) is False           # suspended, no wait: no room now
        started, res = threading.Event(), []

        def producer():
            started.set()
            res.append(ch.wait_room(timeout=60))
        th = threading.Thread(target=producer)
        th.start()
        assert started.wait(10)
        assert th.is_alive() or res == [True]
        assert ch.resume()
        th.join(60)
        assert res == [True]
        assert ch.publish(meta0=1) == 0 and s.run(timeout=60) and got == [1]
        # suspended, then closed for good: the waiter is told at once
        assert ch.suspend()
        th = threading.Thread(target=lambda: res.append(ch.wait_room(timeout=60)))
        th.start()
        s.close("data.in")
        th.join(60)
        assert res[-1] is False
