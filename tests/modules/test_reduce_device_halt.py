"""A device reduce group still open at halt is reported as the CPU version reports it: a
REDUCE_MISSING record (meta0 = group, meta1 = partials received) on sys.dropped with
CHAN_CLOSED, read from the stopped GPU kernel's user words by the module's host hook
``halt_records`` (in a device process: handed back with its stop reply). Before, the
partials folded into user words were gone with no trace."""
import threading

import pytest

import ggmk
import ggmk.dual
from ggmk import task as T
from ggmk.modules import reduce, registry, std_module


def _app(got, lock):
    app = std_module("app", "reduce")
    app.produces("reduce.in", "REDUCE_PART")

    def on(ctx, b):
        with lock:
            got.extend(zip(b.records["meta0"].tolist(), b.records["meta1"].tolist()))
    app.handler("APP_RES", batch=True, consumes="reduce.out", message="REDUCE_RESULT",
                name="res")(on)
    app.handler("APP_MISS", batch=True, consumes="reduce.missing", message="REDUCE_MISSING",
                name="miss")(lambda ctx, b: None)
    return app


@pytest.mark.parametrize("device_process", [False, True])
def test_open_device_groups_on_sys_dropped_at_halt(device_process):
    got, lock = [], threading.Lock()
    mods = [_app(got, lock), reduce.device_module(n=3, channels=True)]
    with ggmk.dual.boot(mods, device="cpu", workers=2, device_process=device_process,
                        types=registry("reduce")) as s:
        pub = s.channel("reduce.in").publish
        assert pub(meta0=[9, 9], meta1=[1, 2]) == 2            # open: 2 of 3
        assert pub(meta0=[5, 5, 5], meta1=[1, 2, 3]) == 3      # complete
        assert pub(meta0=7, meta1=4) == T.OK                   # open: 1 of 3 (one: a code)
        assert s.run(timeout=120)
        with lock:
            assert got == [(5, 6)]
        rep = s.halt(timeout=1)
        recs, codes = s.dead_letters("sys.dropped")
        err, _ = s.dead_letters("sys.error")
    dropped = sorted((s.cpu.type_name(int(t)), int(a), int(b), int(c))
                     for t, a, b, c in zip(recs["type"], recs["meta0"], recs["meta1"], codes))
    assert dropped == [("REDUCE_MISSING", 7, 1, T.CHAN_CLOSED),
                       ("REDUCE_MISSING", 9, 2, T.CHAN_CLOSED)], dropped
    assert rep["device_held"] == 2, rep
    assert len(err) == 0                      # (no timeout: no check task pending)
    assert (s.process is not None) == device_process


def test_halt_records_reads_open_slots_only():
    """The hook on its own: only slots in state 1 (open) are named, expired (2) and free (0)
    ones are not."""
    m = reduce.device_module(n=4, groups=4, base=100)
    lay = m.reduce_layout
    import numpy as np
    words = np.zeros(1 << 16, np.int64)
    t0 = lay["table"]
    for i, (st, gid, cnt) in enumerate([(1, 3, 2), (2, 8, 1), (0, 6, 3), (1, 11, 3)]):
        words[t0 + 6 * i:t0 + 6 * i + 3] = (st, gid, cnt)
    r = m.halt_records(words)
    ids = reduce.type_ids()
    assert r["type"].tolist() == [ids["REDUCE_MISSING"]] * 2
    assert list(zip(r["meta0"].tolist(), r["meta1"].tolist())) == [(3, 2), (11, 3)]
