"""``ctx.emit(priority=...)`` takes an int 0..3, as submit and publish do: True was taken as 1,
1.0 and np.bool_ failed later with errors naming nothing."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import EmitError
from ggmk.testing import Sandbox

BAD = [True, False, 1.0, np.bool_(True), "1", 4, -1]
GOOD = [0, 3, np.int64(2)]


def _module(values):
    m = Module("m")
    out = m.produces("p.out", "P_MSG")
    got = []

    @m.handler("P_MSG", consumes="p.out")
    def p_msg(ctx):
        got.append(("chan", ctx.task.priority))

    @m.handler("SEND")
    def send(ctx):
        v = values[ctx.task.meta0 >> 1]
        ctx.emit(out if ctx.task.meta0 & 1 else "SINK", 1, priority=v)

    @m.handler("SINK")
    def sink(ctx):
        got.append(("type", ctx.task.priority))

    return m, got


def test_a_bad_priority_fails_the_emitting_task_naming_it(hal):
    m, got = _module(BAD + GOOD)
    with boot([m], hal=hal, workers=2) as s:
        s.submit("SEND", meta0=np.arange(2 * len(BAD + GOOD)))
        assert s.run(timeout=10)
        recs, codes = s.dead_letters("sys.error")
        assert sorted(recs["meta0"].tolist()) == list(range(2 * len(BAD)))
        assert set(codes.tolist()) == {T.HANDLER_EXCEPTION}
        msgs = [e[2] for e in s.exceptions]
        for v in BAD:
            assert sum(f"priority={v!r}: allowed 0 (highest)" in e for e in msgs) == 2, v
    assert sorted(got) == sorted((k, int(v)) for v in GOOD for k in ("chan", "type"))


@pytest.mark.parametrize("bad", BAD)
def test_the_sandbox_refuses_the_same_priorities(bad):
    m, _ = _module([bad])
    with Sandbox(m) as sb:
        with pytest.raises(EmitError, match="priority="):
            sb.feed("SEND", 0)
