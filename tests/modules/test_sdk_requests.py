"""``sdk.Requests``: timed-out tags do not stay for good, a late reply is refused whenever it
comes, and a poll of a tag that is not awaited says so (ValueError), not TIMEOUT. The clock is
a system's ``wall_tick`` (here one the test moves; the kernel round trip is in test_sdk.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ggmk import sdk


def _ctx():
    tick = [0]
    return SimpleNamespace(system=SimpleNamespace(wall_tick=lambda: tick[0])), tick


def test_tags_whose_waiters_never_poll_time_out_on_the_next_start():
    """(before: 1000 tags of waiters gone stayed in pending() for good, timeouts 0)"""
    ctx, tick = _ctx()
    req = sdk.Requests(timeout=100)
    tags = [req.start(ctx) for _ in range(1000)]
    tick[0] = 10_000
    assert req.pending() == 0 and req.timeouts == 1000
    t = req.start(ctx)
    assert req.pending() == 1 and req.timeouts == 1000
    # an expired tag's waiter, if it polls after all, hears TIMEOUT once
    assert req.poll(ctx, tags[0]) == sdk.TIMEOUT
    with pytest.raises(ValueError, match=rf"Requests.poll: tag={tags[0]}: not awaited here"):
        req.poll(ctx, tags[0])
    # outcomes nobody takes are forgotten a timeout later: the 999 others' now, t's next
    tick[0] = 10_201
    u = req.start(ctx)
    assert list(req._done) == [t] and req.timeouts == 1001 and req.pending() == 1
    tick[0] = 10_500
    assert req.complete(12345, 1) is False          # (an unknown tag: late)
    assert list(req._done) == [u] and req.timeouts == 1002 and req.late == 1
    with pytest.raises(ValueError, match="not awaited here"):
        req.poll(ctx, t)


def test_a_reply_after_the_timeout_is_refused_and_counted():
    """(before: a reply 10000 ticks late was accepted, late 0, and kept for nobody)"""
    ctx, tick = _ctx()
    req = sdk.Requests(timeout=100)
    tag = req.start(ctx)
    tick[0] = 101
    assert req.complete(tag, 5) is False
    assert (req.late, req.timeouts, req.pending()) == (1, 1, 0)
    assert req.poll(ctx, tag) == sdk.TIMEOUT
    assert req.complete(tag, 6) is False and req.late == 2 and req.timeouts == 1
    tag = req.start(ctx)
    tick[0] = 201                                   # in time: the value, once
    assert req.complete(tag, 7) is True and req.poll(ctx, tag) == 7


def test_a_late_reply_is_refused_behind_a_tag_still_in_time():
    """Tags of two systems (two clocks): the expiry sweep stops at the first tag in time,
    the reply's own age is checked all the same."""
    ctx1, _ = _ctx()
    ctx2, tick2 = _ctx()
    req = sdk.Requests(timeout=100)
    a = req.start(ctx1)                             # its clock stands still
    b = req.start(ctx2)
    tick2[0] = 500
    assert req.complete(b, 1) is False and req.late == 1 and req.timeouts == 1
    assert req.poll(ctx2, b) == sdk.TIMEOUT
    assert req.complete(a, 2) is True and req.poll(ctx1, a) == 2


def test_poll_of_a_tag_not_awaited_raises():
    """(before: TIMEOUT at once, for a tag never started or already answered)"""
    ctx, _ = _ctx()
    req = sdk.Requests(timeout=100)
    with pytest.raises(ValueError, match=r"Requests.poll: tag=123456789: not awaited here: "
                                         r"allowed a tag from this Requests' start\(\)"):
        req.poll(ctx, 123456789)
    tag = req.start(ctx)
    assert req.poll(ctx, tag) is None
    assert req.complete(tag, 0) is True
    assert req.poll(ctx, tag) == 0
    with pytest.raises(ValueError, match=rf"tag={tag}: not awaited here"):
        req.poll(ctx, tag)                          # already taken
    assert req.timeouts == 0 and req.late == 0
