"""reduce: a custom fold that fails does not jam its group id, and groups fold in seq order
across the 32-bit seq wrap."""
import pytest

import ggmk
from ggmk import task as T
from ggmk.modules import reduce


def _collector(name, channel, msg, payload=False):
    m = ggmk.Module(name)
    m.got = []

    @m.handler(f"{name.upper()}_IN", consumes=channel, message=msg)
    def got(ctx):
        m.got.append((ctx.task.meta0, bytes(ctx.payload) if payload else ctx.task.meta1))
    return m


@pytest.mark.parametrize("bad", ["not a number", None, ZeroDivisionError])
def test_a_failed_custom_fold_is_reported_once_and_its_group_id_reopens(bad):
    """The first fold of group 1 fails (a result that is no int | float | bytes, or a raise).
    It left the group open at n partials, which no later partial could complete: every later
    partial of group 1 vanished until halt, and the failed batch's partials were on sys.error
    and again in the halt report. Now: one REDUCE_RESULT record on sys.error with
    HANDLER_EXCEPTION, and later rounds of the id give their results."""
    calls = []

    def fold(vals):
        calls.append(list(vals))
        if len(calls) == 1:
            if bad is ZeroDivisionError:
                return 1 // 0
            return bad
        return sum(vals)
    red = reduce.module(n=2, op=fold)
    out = _collector("res", "reduce.out", "REDUCE_RESULT")
    with ggmk.boot([red, out], workers=2) as system:
        ch = system.channel("reduce.in")
        ch.publish(meta0=[1, 1, 2], meta1=[10, 20, 5])          # group 2 stays open (1 of 2)
        assert system.run(timeout=10)
        err, codes = system.dead_letters("sys.error")
        assert [(system.type_name(int(r["type"])), int(r["meta0"]), int(r["meta1"]), int(c))
                for r, c in zip(err, codes)] == [("REDUCE_RESULT", 1, 2, T.HANDLER_EXCEPTION)]
        assert system.stats()["exceptions"] == 1
        for k in range(3):                                      # later rounds of group 1
            ch.publish(meta0=[1, 1], meta1=[k, 100])
            assert system.run(timeout=10)
        ch.publish(meta0=2, meta1=6)                            # group 2's second partial
        assert system.run(timeout=10)
        assert sorted(out.got) == [(1, 100), (1, 101), (1, 102), (2, 11)]
        assert len(system.dead_letters("sys.error")[0]) == 0      # (taken above) none since
        st = red.reduce.stats()
        assert (st["partials"], st["results"], st["failed"], st["open"]) == (10, 4, 1, 0)
    # 10 partials = 2 (failed once, on sys.error) + 6 (3 results) + 2 (group 2): none left
    # for sys.dropped at halt
    assert len(system.dead_letters("sys.dropped")[0]) == 0


def test_a_failed_fold_does_not_fail_the_rest_of_its_batch():
    """The fold ran inside the batch handler: its exception failed the whole batch, so the
    partials of other groups already folded were on sys.error too (counted twice)."""
    red = reduce.module(n=1, op=lambda vals: "bad" if vals == [7] else vals[0] * 2)
    out = _collector("res", "reduce.out", "REDUCE_RESULT")
    with ggmk.boot([red, out], workers=1, max_batch=16) as system:
        system.channel("reduce.in").publish(meta0=[1, 2, 3, 4], meta1=[1, 2, 7, 4])
        assert system.run(timeout=10)
        err, codes = system.dead_letters("sys.error")
        assert [(int(r["meta0"]), int(c)) for r, c in zip(err, codes)] == \
            [(3, T.HANDLER_EXCEPTION)]
        assert sorted(out.got) == [(1, 2), (2, 4), (4, 8)]


@pytest.mark.parametrize("max_batch", [16, 3])
def test_concat_folds_in_seq_order_across_the_seq_wrap(max_batch):
    """A record's seq is the low 32 bits of the channel's sequence; sorted as plain numbers,
    the partials after the wrap (0, 1, ...) came before those just below it."""
    cat = reduce.module(n=8, op="concat")
    out = _collector("res", "reduce.out", "REDUCE_RESULT", payload=True)
    with ggmk.boot([cat, out], workers=2, max_batch=max_batch) as system:
        ch = system.channel("reduce.in")
        ch.seq = 2**32 - 4                   # (as after 2**32 - 4 messages on reduce.in)
        for i in range(8):
            ch.publish(meta0=1, payload=bytes([i]))
        assert system.run(timeout=10)
        assert out.got == [(1, bytes(range(8)))]
