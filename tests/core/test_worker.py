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
