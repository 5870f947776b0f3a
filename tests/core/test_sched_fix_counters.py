"""The u16 counters in the task header at their limits: ``yield_count`` with ``max_yields`` =
65535 (the documented upper limit) and ``_pad`` (the retry counter) with ``max_retries`` =
65535. Both were bumped before the compare, so at 65535 they wrapped to 0 and the limit never
came: a task that always yields (or retries) ran forever. And ``boot(max_retries=...)`` was not
checked: "8" or None booted, then the first RETRY crashed the worker and lost the task."""
import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.errors import BootError
from ggmk.typereg import TypeRegistry


def _accounted(st: dict, n: int) -> None:
    """Every run of the type counted once by its outcome; ``n`` tasks entered."""
    assert st["dequeued"] == st["ok"] + st["fail"] + st["retry"] + st["yield"] + st["wait"]
    assert st["enqueued"] == st["dequeued"] + st["dropped"]
    assert st["ok"] + st["fail"] + st["dropped"] == n


def _always(code_of, *, hal="threads", types=None, start=None, field="yield_count",
            timeout=20.0, **boot_kw):
    """One task of type SPIN whose handler returns ``code_of(ctx)`` every time, submitted as a
    prepared record whose ``field`` starts at ``start``; run until idle. Returns (counter seen at
    each run, sys.error records, codes, the type's stats, halt report)."""
    m = ggmk.Module("m")
    seen = []

    @m.handler("SPIN")
    def spin(ctx):
        seen.append(ctx.task.yield_count if field == "yield_count" else ctx.task.retries)
        return code_of(ctx)

    s = ggmk.boot([m], types=types, workers=2, hal=hal, **boot_kw)
    try:
        rec = T.make(1, type=s.type_id("SPIN"), meta0=9)
        if start is not None:
            rec[field] = start
        assert s.submit_batch(rec) == 1
        idle = s.run(timeout=timeout)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()["types"]["SPIN"]
    finally:
        rep = s.halt(timeout=0)
    assert idle, f"never finished: counter went {seen[:4]} ... {seen[-4:]}"
    return seen, recs, codes, st, rep


def _types(max_yields: int) -> TypeRegistry:
    reg = TypeRegistry()
    reg.register("SPIN", max_yields=max_yields)
    return reg


# -- max_yields ------------------------------------------------------------------------------
@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_max_yields_65535_fails_the_task_after_its_65535th_yield(hal):
    """(before: yield_count wrapped 65535 -> 0 and the task yielded forever)"""
    seen, recs, codes, st, rep = _always(lambda ctx: ctx.yield_(), hal=hal,
                                         types=_types(0xFFFF), start=0xFFFD)
    assert seen == [0xFFFD, 0xFFFE, 0xFFFF]
    assert codes.tolist() == [T.MAX_YIELDS] and recs["meta0"].tolist() == [9]
    assert recs["yield_count"].tolist() == [0xFFFF]      # the counter saturates, never wraps
    assert (st["yield"], st["fail"], st["ok"], st["dequeued"]) == (2, 1, 0, 3)
    _accounted(st, 1)
    assert rep["outstanding"] == 0 and rep["halted"] == 0


def test_max_yields_65535_from_zero_on_real_threads():
    """The whole way: 65535 yields run, the 65536th attempt fails with MAX_YIELDS."""
    seen, recs, codes, st, rep = _always(lambda ctx: ctx.yield_(), types=_types(0xFFFF),
                                         timeout=120)
    assert len(seen) == 0x10000 and seen[0] == 0 and seen[-1] == 0xFFFF
    assert seen == list(range(0x10000))
    assert codes.tolist() == [T.MAX_YIELDS] and recs["yield_count"].tolist() == [0xFFFF]
    assert (st["yield"], st["fail"]) == (0xFFFF, 1)
    _accounted(st, 1)
    assert rep["outstanding"] == 0


@pytest.mark.parametrize("limit", [0, 5, 16])
def test_smaller_max_yields_keep_their_count_in_the_dead_letter(limit):
    seen, recs, codes, st, rep = _always(lambda ctx: ctx.yield_(), types=_types(limit))
    assert seen == list(range(limit + 1))
    assert codes.tolist() == [T.MAX_YIELDS] and recs["yield_count"].tolist() == [limit + 1]
    assert (st["yield"], st["fail"]) == (limit, 1)
    _accounted(st, 1)


def test_a_record_submitted_at_the_counters_top_fails_at_its_first_yield():
    seen, recs, codes, st, _ = _always(lambda ctx: ctx.yield_(), types=_types(0xFFFF),
                                       start=0xFFFF)
    assert seen == [0xFFFF] and codes.tolist() == [T.MAX_YIELDS]
    assert recs["yield_count"].tolist() == [0xFFFF] and (st["yield"], st["fail"]) == (0, 1)


# -- max_retries -----------------------------------------------------------------------------
@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_max_retries_65535_exhausts_after_the_65535th_retry(hal):
    """(before: _pad wrapped 65535 -> 0 and RETRY_EXHAUSTED never came)"""
    seen, recs, codes, st, rep = _always(lambda ctx: ggmk.RETRY, hal=hal, start=0xFFFD,
                                         field="_pad", max_retries=0xFFFF, tick_hz=20000)
    assert seen == [0xFFFD, 0xFFFE, 0xFFFF]
    assert codes.tolist() == [T.RETRY_EXHAUSTED] and recs["_pad"].tolist() == [0xFFFF]
    assert (st["retry"], st["fail"], st["dequeued"]) == (2, 1, 3)
    _accounted(st, 1)
    assert rep["outstanding"] == 0 and rep["halted"] == 0


@pytest.mark.parametrize("limit", [0, 3])
def test_smaller_max_retries_keep_their_count_in_the_dead_letter(limit):
    seen, recs, codes, st, _ = _always(lambda ctx: ggmk.RETRY, field="_pad",
                                       max_retries=limit, tick_hz=20000)
    assert seen == list(range(limit + 1))
    assert codes.tolist() == [T.RETRY_EXHAUSTED] and recs["_pad"].tolist() == [limit + 1]
    assert (st["retry"], st["fail"]) == (limit, 1)
    _accounted(st, 1)


@pytest.mark.parametrize("bad", ["8", None, -1, 2.5, True, 0x10000, 1 << 20, float("nan")])
def test_bad_max_retries_fail_the_boot_by_name(bad):
    """(before: "8" and None booted, then the first RETRY crashed the worker thread and the
    task was lost: halt said outstanding 1, nothing on sys.error; -1 and 2.5 were taken)"""
    with pytest.raises(BootError) as e:
        ggmk.boot([], workers=2, max_retries=bad)
    assert f"max_retries={bad!r}: allowed an int 0..65535" in str(e.value)


def test_numpy_max_retries_is_taken_as_an_int():
    with ggmk.boot([], workers=2, max_retries=np.int64(3)) as s:
        assert s.max_retries == 3 and type(s.max_retries) is int
