"""Worker dispatch details: a handler's max_batch, the retry count a handler sees."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import BootError


def test_a_batch_handler_never_gets_more_than_its_max_batch(hal):
    sizes, seen = [], []
    m = Module("m")

    @m.handler("SMALL", batch=True, max_batch=10)
    def small(ctx, batch):
        sizes.append(len(batch))
        seen.extend(batch.meta0.tolist())

    with boot([m], hal=hal, workers=2, max_batch=256) as s:
        s.submit_batch(T.make(1000, type=s.type_id("SMALL"), meta0=np.arange(1000)))
        assert s.run(timeout=30)
    assert max(sizes) <= 10 and sorted(seen) == list(range(1000))


def test_max_batch_keeps_each_tasks_own_return_code(hal):
    m = Module("m")
    sizes = []

    @m.handler("ODD_FAILS", batch=True, max_batch=3)
    def odd_fails(ctx, batch):
        sizes.append(len(batch))
        return np.where(batch.meta0 % 2 == 1, -9, T.OK).astype(np.int32)

    with boot([m], hal=hal, workers=1) as s:
        s.submit("ODD_FAILS", meta0=np.arange(20))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
    assert sorted(recs["meta0"].tolist()) == list(range(1, 20, 2))
    assert set(codes.tolist()) == {-9} and max(sizes) <= 3 and sum(sizes) == 20


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_batch_must_be_a_positive_int(bad):
    m = Module("m")
    with pytest.raises(BootError, match="max_batch must be a positive int"):
        m.handler("X", batch=True, max_batch=bad)


def test_a_handler_sees_how_often_its_task_was_retried(hal):
    seen = []
    m = Module("m")

    @m.handler("FLAKY")
    def flaky(ctx):
        seen.append(ctx.task.retries)
        return T.RETRY if ctx.task.retries < 2 else T.OK

    with boot([m], hal=hal, workers=1) as s:
        s.submit("FLAKY")
        assert s.run(timeout=30)
    assert seen == [0, 1, 2]


# -- handler mistakes: reported against the handler, the worker goes on ------------------------

BAD_EMITS = {
    "negative": lambda ctx: ctx.emit("SINK", meta0=-1),
    "too_big": lambda ctx: ctx.emit("SINK", meta0=2**64),
    "string": lambda ctx: ctx.emit("SINK", meta0="abc"),
    "float": lambda ctx: ctx.emit("SINK", meta1=1.5),
    "np_negative": lambda ctx: ctx.emit("SINK", meta0=np.int64(-5)),
    "priority": lambda ctx: ctx.emit("SINK", meta0=1, priority=7),
    "chan_second_emit": lambda ctx: (ctx.emit("m.out", meta0=1), ctx.emit("m.out", meta0=-1)),
    "chan_meta1": lambda ctx: (ctx.emit("m.out", meta0=1), ctx.emit("m.out", 2, meta1=-3)),
    "emitter": lambda ctx: ctx.emitter("m.out")(-1),
}
BAD_RETURNS = {"string": "ok", "list": [0], "bool": True, "float": 0.0, "big": 7}


def _mistake_system(hal, bad, workers=2):
    m = Module("m")
    got = []
    m.produces("m.out", "OUT")

    @m.handler("WORK")
    def work(ctx):
        if ctx.task.meta0 % 10 == 3:
            return bad(ctx)
        ctx.emit("SINK", meta0=ctx.task.meta0)
        return T.OK

    @m.handler("SINK", batch=True)
    def sink(ctx, batch):
        got.extend(batch.meta0.tolist())

    @m.handler("OUT", batch=True, consumes="m.out")
    def out(ctx, batch):
        pass

    return boot([m], hal=hal, workers=workers), got


@pytest.mark.parametrize("name", sorted(BAD_EMITS))
def test_a_bad_emit_fails_only_the_task_that_made_it(hal, name):
    s, got = _mistake_system(hal, BAD_EMITS[name])
    with s:
        for _ in range(2):                       # the system keeps working after the mistake
            s.submit("WORK", meta0=np.arange(100))
            assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert sorted(recs["meta0"].tolist()) == sorted([i for i in range(100) if i % 10 == 3] * 2)
        assert set(codes.tolist()) == {T.HANDLER_EXCEPTION}
        assert sorted(got) == sorted([i for i in range(100) if i % 10 != 3] * 2)
        mod, handler, exc, tb = s.exceptions[-1]
        assert (mod, handler) == ("m", "work") and "EmitError" in exc
        assert "test_worker.py" in tb                 # the handler's own frame, not "NoneType"


@pytest.mark.parametrize("name", sorted(BAD_RETURNS))
def test_a_bad_return_value_is_a_bad_return_code(hal, name):
    value = BAD_RETURNS[name]
    s, got = _mistake_system(hal, lambda ctx: value)
    with s:
        s.submit("WORK", meta0=np.arange(100))
        assert s.run(timeout=30)
        s.submit("WORK", meta0=np.arange(100, 200))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert len(recs) == 20 and set(codes.tolist()) == {T.BAD_RETURN}
        assert len(got) == 180
        assert "BadReturn" in s.exceptions[-1][2] and repr(value) in s.exceptions[-1][2]


@pytest.mark.parametrize("value", ["ok", [0, "x"], np.array([0.5]), 2**40, True])
def test_a_batch_handler_bad_return_fails_its_batch_with_bad_return(hal, value):
    m = Module("m")

    @m.handler("B", batch=True)
    def b(ctx, batch):
        return value if batch.meta0[0] == 0 else None

    with boot([m], hal=hal, workers=2) as s:
        s.submit("B", meta0=0)
        assert s.run(timeout=30)
        s.submit("B", meta0=1)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert recs["meta0"].tolist() == [0] and codes.tolist() == [T.BAD_RETURN]
        assert s.stats()["types"]["B"]["ok"] == 1


def test_a_batch_handler_may_return_one_code_per_task(hal):
    m = Module("m")

    @m.handler("B", batch=True)
    def b(ctx, batch):
        return np.where(batch.meta0 % 2 == 1, T.FAIL, T.OK)

    with boot([m], hal=hal, workers=2) as s:
        s.submit("B", meta0=np.arange(10))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert sorted(recs["meta0"].tolist()) == [1, 3, 5, 7, 9]
        assert set(codes.tolist()) == {T.FAIL}
