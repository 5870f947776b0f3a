"""``System.withdraw_deferred`` (a timer's cancel) finishes the deferred tasks it takes back as
no-ops: their payload references must be released as a finished task's are (they leaked: arena
``live`` stayed 1 after halt)."""
import numpy as np
import pytest

import ggmk


def _live(s) -> int:
    return s.arena.stats()["total"]["live"]


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_withdrawn_tasks_release_their_payloads(hal):
    m = ggmk.Module("m")
    ran = []

    @m.handler("D")
    def d(ctx):
        ran.append((ctx.task.meta0, bytes(ctx.payload)))

    with ggmk.boot([m], workers=2, hal=hal) as s:
        due = s.wall_tick() + 100_000
        assert s.submit("D", meta0=7, meta1=1, payload=b"x" * 100, due=due) == 1
        # one payload shared by three tasks (a reference each)
        assert s.submit("D", meta0=np.array([1, 2, 3]), payload=b"abc", due=due) == 3
        soon = s.wall_tick() + 1
        assert s.submit("D", meta0=9, payload=b"kept", due=soon) == 1
        assert _live(s) == 3
        assert s.withdraw_deferred("D", {due: {(7, 1), (1, 0), (2, 0)}}) == 3
        assert _live(s) == 2                      # 7's freed; the shared one has a reference
        assert s.withdraw_deferred("D", {due: {(3, 0)}}) == 1
        assert s.run(timeout=30)                  # the one not withdrawn ran
        assert ran == [(9, b"kept")] and _live(s) == 0
        st = s.stats()["types"]["D"]
        assert (st["enqueued"], st["dequeued"], st["ok"], st["dropped"]) == (5, 5, 5, 0)
        recs, _ = s.dead_letters("sys.error")
        assert len(recs) == 0
        rep = s.halt()
    assert rep["outstanding"] == 0 and rep["halted"] == 0 and _live(s) == 0
    a = s.arena.stats()["total"]
    assert a["allocs"] == a["frees"] == 3
