"""The sim HAL: one seed, one run, in everything a user reads (audit s17, sim): a channel's
``emit_rate`` divided by wall time and trace timestamps came from the wall clock; a bad
``hal=`` was a ValueError from make_hal (or a TypeError) naming no argument. (A run that
reaches its timeout is another matter: ``submit_and_run(timeout=)`` gives ``run`` the wall
time left, so where such a run stops in virtual time depends on the wall clock.)"""
from __future__ import annotations

import pytest

import ggmk
from ggmk.errors import BootError


def _run(seed: int) -> dict:
    m = ggmk.Module("rep")
    out = m.produces("rep.out", "REP_OUT")

    @m.handler("REP_GEN")
    def gen(ctx):
        for i in range(20):
            ctx.emit(out, i)

    @m.handler("REP_SINK", consumes="rep.out", message="REP_OUT", batch=True)
    def sink(ctx, batch):
        pass

    with ggmk.boot([m], workers=2, hal="sim", seed=seed, trace=True, trace_level="all") as s:
        assert s.submit_and_run("REP_GEN", timeout=1.0)
        for i in range(5):
            s.submit("REP_GEN", meta0=i)
        assert s.run(timeout=1.0)
        ev = s.tracer.drain()
        return {"emit_rate": s.channel("rep.out").stats()["emit_rate"],
                "ts": ev["ts"].tolist(), "clock": s.clock(), "tick": s.tick}


def test_one_seed_gives_the_same_stats_trace_and_clock():
    a, b = _run(7), _run(7)
    assert a["ts"] and a == b


@pytest.mark.parametrize("bad", ["SIM", "sim ", None, ["sim"]])
def test_a_bad_hal_is_a_boot_error_naming_it(bad):
    with pytest.raises(BootError, match=r"hal=.*allowed 'threads' or 'sim'"):
        ggmk.boot([], workers=1, hal=bad)
