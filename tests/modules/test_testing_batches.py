"""ggmk.testing.Sandbox runs fed tasks in the batches the kernel would: at most ``max_batch``
per handler call (boot's option and default), cut further to a handler's own ``max_batch=``."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import ggmk
from ggmk.core.kernel import System
from ggmk.testing import Sandbox

BOOT_MAX_BATCH = inspect.signature(System.__init__).parameters["max_batch"].default


def _module(seen: dict):
    """Batch handlers that note (type, meta0 column) per call; BS_CAP caps itself at 3;
    BS_CODES fails the tasks whose meta0 is a multiple of 3 (one code per task)."""
    m = ggmk.Module("bs")

    @m.handler("BS_PLAIN", batch=True)
    def plain(ctx, batch):
        seen.setdefault("BS_PLAIN", []).append(batch.meta0.tolist())

    @m.handler("BS_CAP", batch=True, max_batch=3)
    def capped(ctx, batch):
        seen.setdefault("BS_CAP", []).append(batch.meta0.tolist())

    @m.handler("BS_CODES", batch=True)
    def codes(ctx, batch):
        return np.where(batch.meta0 % 3 == 0, ggmk.FAIL, ggmk.OK).astype(np.int32)
    return m


def _kernel_batches(n: int, **boot_kw) -> tuple[dict, dict]:
    """The batches a booted kernel's handlers got for ``n`` tasks of each type submitted at
    once, and the failures (meta0 -> code) on sys.error."""
    seen: dict = {}
    with ggmk.boot([_module(seen)], workers=2, **boot_kw) as s:
        for t in ("BS_PLAIN", "BS_CAP", "BS_CODES"):
            s.submit(t, meta0=list(range(n)))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        failed = dict(zip(recs["meta0"].tolist(), codes.tolist()))
    return seen, failed


def _chunks(xs: list, size: int) -> list:
    return [xs[i:i + size] for i in range(0, len(xs), size)]


@pytest.mark.parametrize("max_batch", [None, 4])
def test_fed_batches_are_cut_as_the_kernel_cuts_them(max_batch):
    """A feed of more than max_batch tasks reached a batch handler in one call (600 at once,
    past the kernel's 256); a handler's own max_batch was ignored too."""
    kw = {} if max_batch is None else {"max_batch": max_batch}
    limit = BOOT_MAX_BATCH if max_batch is None else max_batch
    n = 2 * limit + 7                     # two full batches and a short one
    kernel, kfailed = _kernel_batches(n, **kw)
    # the kernel's rule: no call past the limit, and the limit is reached (tasks all queued)
    assert max(map(len, kernel["BS_PLAIN"])) == limit
    assert max(map(len, kernel["BS_CAP"])) == min(3, limit)
    assert sorted(sum(kernel["BS_PLAIN"], [])) == list(range(n))
    seen: dict = {}
    with Sandbox(_module(seen), **kw) as sb:
        assert sb.feed("BS_PLAIN", list(range(n))) == [ggmk.OK] * n
        sb.feed("BS_CAP", list(range(n)))
        codes = sb.feed("BS_CODES", list(range(n)))
        failed = {m0: c for _, m0, _, c in sb.errors}
    # what a worker does with n queued tasks: pops of `limit`, each cut to the handler's 3
    assert seen["BS_PLAIN"] == _chunks(list(range(n)), limit)
    assert seen["BS_CAP"] == sum((_chunks(p, 3) for p in _chunks(list(range(n)), limit)), [])
    # per-task codes of every batch land on the right tasks, as the kernel's do
    assert failed == kfailed == {m0: ggmk.FAIL for m0 in range(0, n, 3)}
    assert codes == [ggmk.FAIL if m0 % 3 == 0 else ggmk.OK for m0 in range(n)]


def test_each_batch_is_finished_before_the_next_runs():
    """Outcomes are handled per batch (Worker._finish), so a one-task batch's list is
    BAD_RETURN (the kernel's _batch_codes) and the trace closes a batch before the next."""
    m = ggmk.Module("per")

    @m.handler("PER_LIST", batch=True)
    def as_list(ctx, batch):
        return [ggmk.OK] * len(batch)     # fine for 2+ tasks, not for a batch of one

    @m.handler("PER_TASK")
    def per_task(ctx):
        return ggmk.OK

    with Sandbox(m, max_batch=2, raise_exceptions=False) as sb:
        assert sb.feed("PER_LIST", [1, 2, 3]) == [ggmk.OK, ggmk.OK, ggmk.task.BAD_RETURN]
        assert [e[1:] for e in sb.errors] == [(3, 0, ggmk.task.BAD_RETURN)]
        assert [(ev, m0, x) for ev, _, m0, x in sb.trace] == [
            ("start", 1, 2), ("end", 1, 0), ("end", 2, 0),
            ("start", 3, 1), ("end", 3, ggmk.task.BAD_RETURN)]
        sb.trace.clear()
        assert sb.feed("PER_TASK", [1, 2, 3]) == [ggmk.OK] * 3
        assert [ev for ev, *_ in sb.trace] == ["start", "start", "end", "end", "start", "end"]


def test_max_batch_default_and_bad_values():
    """The default is boot's; values boot would hang (0) or crash a worker on are refused."""
    with Sandbox(ggmk.Module("d")) as sb:
        assert sb.max_batch == BOOT_MAX_BATCH
    for bad in (0, -1, True, 2.5, "4", None):
        with pytest.raises(ValueError, match="max_batch"):
            Sandbox(ggmk.Module("d"), max_batch=bad)


def test_channel_messages_reach_a_batch_consumer_in_order_within_the_limit():
    """Queued channel messages run one per call: within any limit, in channel order (what an
    ordered subscriber guarantees)."""
    m = ggmk.Module("cons")
    seqs: list = []

    @m.handler("C_IN", batch=True, consumes="c.in")
    def take(ctx, batch):
        seqs.append(batch.seq.tolist())

    with Sandbox(m, max_batch=2) as sb:
        for i in range(5):
            assert sb.publish("c.in", i) == ggmk.OK
        sb.run()
    assert all(1 <= len(b) <= 2 for b in seqs)
    assert sum(seqs, []) == [1, 2, 3, 4, 5]
