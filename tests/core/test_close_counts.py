"""``Channel.close()`` returns how many records it put on sys.dropped (one per subscriber copy
not delivered), and halt's ``channel_dropped`` adds those up: the same unit on every channel.

Before the fix a deterministic channel holding messages for the tick boundary counted each
message once while one copy per subscriber went to sys.dropped (a fan-out channel with two
subscribers: close() said 10, sys.dropped held 20; halt reported 40 for 80 records)."""
import numpy as np
import pytest

import ggmk
from ggmk import OK
from ggmk import task as T
from ggmk.typereg import load_types

TYPES = ("[types.GEN]\nid = 100\ndeterministic = true\n"
         "[types.EV]\nid = 101\ndeterministic = true\n")


def _mods(det, nsubs, res):
    a = ggmk.Module("a")
    out = a.produces("tick.out", "EV", mode="fanout")

    @a.handler("GEN", deterministic=det)
    def gen(ctx):
        # (at once: ctx.emit would buffer them to the handler's end, after the close)
        assert ctx.emit_batch(out, meta0=np.arange(10, dtype=np.uint64)) == 10
        res["close"] = ctx.system.channels.close("tick.out")
        return OK

    mods = [a]
    for i in range(nsubs):
        m = ggmk.Module(f"c{i}")

        @m.handler(f"S{i}", deterministic=det, consumes="tick.out", message="EV")
        def h(ctx):
            res.setdefault("ran", 0)
            res["ran"] += 1
        mods.append(m)
    return mods


@pytest.mark.parametrize("det", [False, True])
@pytest.mark.parametrize("nsubs", [1, 2, 3])
def test_close_returns_the_records_it_put_on_sys_dropped(det, nsubs):
    res = {}
    kw = {"deterministic": True, "types": load_types(TYPES)} if det else {}
    with ggmk.boot(_mods(det, nsubs, res), workers=1, hal="sim", **kw) as s:
        s.submit("GEN", deterministic=det)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.dropped")
        st = s.stats()["channels"]["tick.out"]
    assert st["emitted"] == 10 and set(codes.tolist()) <= {T.CHAN_CLOSED}
    # every copy ran or is on sys.dropped; close() counted what it put there
    assert res.get("ran", 0) + len(recs) == 10 * nsubs
    assert res["close"] == len(recs) == st["dropped"]
    if det:                               # held for the boundary: nothing ran
        assert len(recs) == 10 * nsubs


@pytest.mark.parametrize("nsubs", [0, 2])
def test_halt_channel_dropped_matches_sys_dropped_on_a_det_channel(nsubs):
    # host publishes wait for run(); halt releases them to the channel, which then holds them
    # (no worker steps on sim with timeout 0) and drops them at the close: one record a copy,
    # one for a message without a subscriber (CHAN_NO_SUBSCRIBER)
    res = {}
    s = ggmk.boot(_mods(True, nsubs, res), workers=2, hal="sim", deterministic=True,
                  types=load_types(TYPES))
    ch = s.channel("tick.out")
    assert ch.det
    assert ch.publish(meta0=np.arange(7, dtype=np.uint64), count=7) == 7
    rep = s.halt(timeout=0)
    recs, codes = s.dead_letters("sys.dropped")
    want = T.CHAN_CLOSED if nsubs else T.CHAN_NO_SUBSCRIBER
    assert set(codes.tolist()) == {want}
    assert rep["channel_dropped"] == len(recs) == 7 * max(1, nsubs)
    assert "ran" not in res
