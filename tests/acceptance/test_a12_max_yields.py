"""SPEC §14.12: a handler past max_yields goes to sys.error; yield_count lives in the header."""
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.typereg import TypeRegistry


def test_past_max_yields_goes_to_sys_error(hal):
    reg = TypeRegistry()
    reg.register("SPIN", max_yields=5)
    m = Module("spin")
    calls = []

    @m.handler("SPIN")
    def spin(ctx):
        calls.append(ctx.task.yield_count)
        return ctx.yield_()

    with boot([m], types=reg, workers=2, hal=hal) as s:
        s.submit("SPIN", meta0=7)
        assert s.run(timeout=5)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()["types"]["SPIN"]
    assert calls == [0, 1, 2, 3, 4, 5]
    assert len(recs) == 1 and codes[0] == T.MAX_YIELDS
    assert recs["yield_count"][0] == 6 and recs["meta0"][0] == 7   # the header carries the count
    assert st["fail"] == 1 and st["dropped"] == 0     # a failure (counted once), not a drop


def test_default_max_yields_is_16(hal):
    m = Module("spin")

    @m.handler("SPIN2")
    def spin(ctx):
        return ctx.yield_()

    with boot([m], workers=1, hal=hal) as s:
        s.submit("SPIN2")
        assert s.run(timeout=5)
        recs, codes = s.dead_letters()
    assert codes.tolist() == [T.MAX_YIELDS] and recs["yield_count"][0] == 17
