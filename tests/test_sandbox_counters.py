"""The Sandbox's u16 task counters at their limits, as the CPU kernel now handles them
(``Worker._yield`` / ``Worker._retry``, see tests/core/test_sched_fix_counters.py):
``yield_count`` with ``max_yields`` = 65535 and ``_pad`` (the retry counter) with
``max_retries`` = 65535. The Sandbox bumped both before the compare, so at 65535 they wrapped
to 0 and the limit never came (a task yielded or retried forever), and its ``max_retries``
had no upper bound (65536 and up could never be reached by a u16)."""
import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.testing import Sandbox

TOP = 0xFFFF


def _module(code_of):
    """Type SPIN whose handler returns ``code_of(ctx)`` every time; ``seen`` gets (yield_count,
    retries, tick) at each run, ``last`` the live record of the last run (the failed task's record,
    what the kernel puts on sys.error)."""
    m = ggmk.Module("spin")
    seen, last = [], []

    @m.handler("SPIN")
    def spin(ctx):
        seen.append((ctx.task.yield_count, ctx.task.retries, ctx.tick))
        last[:] = [ctx.task.record()]
        return code_of(ctx)

    return m, seen, last


def _types(max_yields: int):
    reg = ggmk.TypeRegistry()
    reg.register("SPIN", max_yields=max_yields)
    return reg


def _start_at(sb, field: str, value: int) -> None:
    """Queue one SPIN task (meta0 9) whose ``field`` starts at ``value`` (a prepared record,
    as the CPU kernel's test submits one)."""
    rec = T.make(1, type=sb.type_id("SPIN"), meta0=9)
    rec[field] = value
    sb._push(rec, sb.tick)


# -- max_yields ------------------------------------------------------------------------------
def test_max_yields_65535_fails_the_task_after_its_65535th_yield():
    """(before: yield_count wrapped 65535 -> 0 and the task yielded until max_steps)"""
    m, seen, last = _module(lambda ctx: ctx.yield_())
    with Sandbox(m, types=_types(TOP)) as sb:
        _start_at(sb, "yield_count", TOP - 2)
        sb.run()
        assert sb.pending() == 0
        assert sb.errors == [("SPIN", 9, 0, T.MAX_YIELDS)]
    assert [y for y, _, _ in seen] == [TOP - 2, TOP - 1, TOP]
    assert int(last[0]["yield_count"]) == TOP          # saturates, never wraps


def test_max_yields_65535_from_zero():
    """The whole way: 65535 yields run, the 65536th attempt fails with MAX_YIELDS."""
    m, seen, last = _module(lambda ctx: ctx.yield_())
    with Sandbox(m, types=_types(TOP), max_steps=0x20000) as sb:
        assert sb.feed("SPIN", 9) == ggmk.YIELD
        sb.run()
        assert sb.pending() == 0
        assert sb.errors == [("SPIN", 9, 0, T.MAX_YIELDS)]
    assert [y for y, _, _ in seen] == list(range(0x10000))
    assert int(last[0]["yield_count"]) == TOP


@pytest.mark.parametrize("limit", [0, 5, 16])
def test_smaller_max_yields_keep_their_count(limit):
    """As the kernel's dead letter: yield_count = limit + 1 on the failed task."""
    m, seen, last = _module(lambda ctx: ctx.yield_())
    with Sandbox(m, types=_types(limit)) as sb:
        sb.feed("SPIN", 9)
        sb.run()
        assert sb.errors == [("SPIN", 9, 0, T.MAX_YIELDS)]
    assert [y for y, _, _ in seen] == list(range(limit + 1))
    assert int(last[0]["yield_count"]) == limit + 1


def test_a_task_at_the_yield_counters_top_fails_at_its_first_yield():
    m, seen, last = _module(lambda ctx: ctx.yield_())
    with Sandbox(m, types=_types(TOP)) as sb:
        _start_at(sb, "yield_count", TOP)
        sb.run()
        assert sb.errors == [("SPIN", 9, 0, T.MAX_YIELDS)]
    assert seen == [(TOP, 0, 0)] and int(last[0]["yield_count"]) == TOP


# -- max_retries -----------------------------------------------------------------------------
def test_max_retries_65535_exhausts_after_the_65535th_retry():
    """(before: _pad wrapped 65535 -> 0 and RETRY_EXHAUSTED never came)"""
    m, seen, last = _module(lambda ctx: ggmk.RETRY)
    with Sandbox(m, max_retries=TOP) as sb:
        _start_at(sb, "_pad", TOP - 2)
        sb.advance(1000)
        assert sb.pending() == 0
        assert sb.errors == [("SPIN", 9, 0, T.RETRY_EXHAUSTED)]
    assert [r for _, r, _ in seen] == [TOP - 2, TOP - 1, TOP]
    assert int(last[0]["_pad"]) == TOP


@pytest.mark.parametrize("limit", [0, 3, 8])
def test_smaller_max_retries_keep_their_count_and_backoff(limit):
    m, seen, last = _module(lambda ctx: ggmk.RETRY)
    with Sandbox(m, max_retries=limit) as sb:
        sb.feed("SPIN", 9)
        sb.advance(1000)
        assert sb.pending() == 0
        assert sb.errors == [("SPIN", 9, 0, T.RETRY_EXHAUSTED)]
    assert [r for _, r, _ in seen] == list(range(limit + 1))
    assert int(last[0]["_pad"]) == limit + 1
    # backoff_ticks: 1, 2, 4, ... capped at 64
    assert [t for _, _, t in seen] == [0, 1, 3, 7, 15, 31, 63, 127, 191][:limit + 1]


@pytest.mark.parametrize("bad", ["8", None, -1, 2.5, True, 0x10000, 1 << 20, float("nan")])
def test_bad_max_retries_are_refused_by_name(bad):
    """As boot: an int 0..65535 (65536 and up: the u16 counter can never pass it)."""
    m, _, _ = _module(lambda ctx: ggmk.RETRY)
    with pytest.raises(ValueError) as e:
        Sandbox(m, max_retries=bad)
    assert f"max_retries={bad!r}: allowed an int 0..65535" in str(e.value)


def test_numpy_max_retries_is_taken_as_an_int():
    m, _, _ = _module(lambda ctx: ggmk.RETRY)
    sb = Sandbox(m, max_retries=np.int64(3))
    assert sb.max_retries == 3 and type(sb.max_retries) is int
