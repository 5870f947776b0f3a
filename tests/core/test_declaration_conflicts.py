"""Conflicting declarations and options are errors, not "the first one wins" (SPEC §6):
producers of one channel disagreeing on an option, a run-time reopen with another option, one
module consuming a channel twice as two types or with two handlers of a p2p channel, handler
flags that are not bools, and handler declarations checked even when no module declares a
channel."""
import numpy as np
import pytest

import ggmk
from ggmk import OK
from ggmk import task as T
from ggmk.core.module import Handler
from ggmk.errors import BootError, ChannelError

TOML = """
[types.STRICT]
id = 10
lossy = false
[types.LOOSE]
id = 11
"""


def _sink(name="sink", t="MSG", channel="data.out", **kw):
    m = ggmk.Module(name)
    m.handler(t, consumes=channel, **kw)(lambda ctx: OK)
    return m


# --------------------------------------------------------------------- producers' options
@pytest.mark.parametrize("a, b, option", [
    ({"capacity": 8}, {"capacity": 4096, "replay": 64}, "capacity"),
    ({"replay": 16}, {"replay": 64}, "replay"),
    ({"window": 2}, {"window": 4}, "window"),
    ({"ordered": True}, {"ordered": False}, "ordered"),
    ({"error_handler": lambda r, c: None}, {"error_handler": lambda r, c: None},
     "error_handler"),
])
def test_producers_disagreeing_on_an_option_fail_the_boot_naming_both(a, b, option):
    """(the first producer's value was taken without a word: capacity 8, no replay log)"""
    alpha, beta = ggmk.Module("alpha"), ggmk.Module("beta")
    alpha.produces("data.out", "MSG", **a)
    beta.produces("data.out", "MSG", **b)
    with pytest.raises(BootError) as e:
        ggmk.boot([alpha, beta, _sink()], workers=1)
    msg = str(e.value)
    assert f"channel 'data.out': conflicting {option}: module 'alpha' declares {option}=" in msg
    assert f"module 'beta' declares {option}=" in msg


def test_producers_agreeing_or_leaving_an_option_out_boot_with_it():
    alpha, beta, gamma = ggmk.Module("alpha"), ggmk.Module("beta"), ggmk.Module("gamma")
    alpha.produces("data.out", "MSG")                        # leaves them to the others
    beta.produces("data.out", "MSG", capacity=16, replay=32)
    gamma.produces("data.out", "MSG", capacity=16, window=None)
    with ggmk.boot([alpha, beta, gamma, _sink()], workers=1) as s:
        ch = s.channel("data.out")
        assert (ch.capacity, ch.replay, ch.window) == (16, 32, None)
        assert ch.publish(meta0=1) == T.OK
        assert s.run(timeout=30)
        assert [x.delivered for x in ch.subs] == [1] and ch.dropped == 0


# --------------------------------------------------------------------- reopening at run time
def test_reopen_with_another_option_raises_and_changes_nothing():
    """(capacity=4096 returned the 8-slot channel; replay=64 bolted a log on, unchecked)"""
    failed = []

    def on_fail(recs, codes):
        failed.append(codes)

    with ggmk.boot([ggmk.Module("m")], workers=1) as s:
        ch = s.open("rt.chan", "MSG", capacity=8, window=2, error_handler=on_fail)
        for kw, word in (({"capacity": 4096}, "capacity=4096"), ({"replay": 64}, "replay=64"),
                         ({"window": 3}, "window=3"),
                         ({"error_handler": lambda r, c: None}, "error_handler=")):
            with pytest.raises(ChannelError) as e:
                s.open("rt.chan", "MSG", **kw)
            assert e.value.code == T.CHAN_TYPE_MISMATCH
            assert "'rt.chan'" in str(e.value) and word in str(e.value), str(e.value)
        assert (ch.capacity, ch.replay, ch.log, ch.window, ch.error_handler) == (
            8, 0, None, 2, on_fail)
        # the same options, options left out, or a capacity with the same ring: the channel
        assert s.open("rt.chan", "MSG") is ch
        assert s.channels.open("rt.chan", "MSG", capacity=5, replay=0, window=2,
                               error_handler=on_fail) is ch
        sub = ch.subscribe()
        assert ch.publish(meta0=3) == T.OK and sub.take()["meta0"].tolist() == [3]


def test_a_lossless_type_cannot_be_opened_lossy_at_run_time():
    """(a module declaring it was a boot error; system.open accepted it)"""
    with ggmk.boot([ggmk.Module("m")], workers=1, types=ggmk.load_types(TOML)) as s:
        with pytest.raises(ChannelError) as e:
            s.open("rt.strict", "STRICT", guarantee="lossy")
        assert e.value.code == T.CHAN_TYPE_MISMATCH
        assert "'rt.strict'" in str(e.value) and "STRICT" in str(e.value) \
            and "lossy = false" in str(e.value)
        assert "rt.strict" not in s.channels
        assert s.open("rt.strict", "STRICT").guarantee == "lossless"
        assert s.open("rt.loose", "LOOSE", guarantee="lossy").guarantee == "lossy"


# --------------------------------------------------------------------- consumers
def test_consuming_one_channel_as_two_types_raises_naming_both():
    m = ggmk.Module("dup")
    d = m.consumes("x.y", "AAA")
    assert m.consumes("x.y", "AAA") is d                      # the same declaration again
    with pytest.raises(BootError, match=r"module 'dup' already consumes channel 'x.y' with "
                                        r"type 'AAA', cannot consume it again with type 'BBB'"):
        m.consumes("x.y", "BBB")
    with pytest.raises(BootError, match=r"'x.y' with window None, cannot consume it again "
                                        r"with window 4"):
        m.consumes("x.y", "AAA", window=4)
    assert m.channels == [d]


def test_two_handlers_of_one_module_on_a_p2p_channel_is_a_boot_error():
    """(a raw ChannelError from subscribe, naming neither the second handler nor its type)"""
    def two(mode):
        m = ggmk.Module("two")
        m.produces("p.q", "PQ", mode=mode)
        m.handler("H1", consumes="p.q", message="PQ", name="h1")(lambda ctx: OK)
        m.handler("H2", consumes="p.q", message="PQ", name="h2")(lambda ctx: OK)
        return m

    with pytest.raises(BootError) as e:
        ggmk.boot([two("p2p")], workers=1)
    msg = str(e.value)
    assert "channel 'p.q' is p2p" in msg and "'two.h1' (H1)" in msg and "'two.h2' (H2)" in msg
    with ggmk.boot([two("fanout")], workers=1) as s:                # fan-out takes both
        ch = s.channel("p.q")
        assert [x.name for x in ch.subs] == ["two.h1", "two.h2"]
        assert ch.publish(meta0=1) == T.OK
        assert s.run(timeout=30)
        assert [x.delivered for x in ch.subs] == [1, 1] and ch.dropped == 0


# --------------------------------------------------------------------- handler declarations
@pytest.mark.parametrize("flag", ["batch", "deterministic"])
@pytest.mark.parametrize("bad", ["no", 1, None])
def test_handler_flags_must_be_bools(flag, bad):
    """(batch="no" was true: the per-task function was called as a batch handler)"""
    m = ggmk.Module("flags")
    with pytest.raises(BootError, match=rf"module 'flags': handler 'F': {flag}={bad!r}: "
                                        r"allowed True or False"):
        m.handler("F", **{flag: bad})
    m.handler("G", **{flag: np.bool_(False)})(lambda ctx: OK)
    assert getattr(m.handlers[0], flag) is False


def test_handler_declarations_are_checked_without_any_channel():
    def boot_fails(mods, *words):
        with pytest.raises(BootError) as e:
            ggmk.boot(mods, workers=1)
        assert all(w in str(e.value) for w in words), str(e.value)

    names = ggmk.Module("names")
    names.handler("N1", name="same")(lambda ctx: OK)
    names.handler("N2", name="same")(lambda ctx: OK)
    boot_fails([names], "module 'names'", "handler name 'same' declared twice")
    # (nor were a module's without channels when another module declared some)
    prod = ggmk.Module("prod")
    prod.produces("prod.out", "P_OUT")
    boot_fails([prod, names], "module 'names'", "handler name 'same' declared twice")
    bad = ggmk.Module("Bad Name!")
    bad.handler("G1")(lambda ctx: OK)
    boot_fails([bad], "invalid module name 'Bad Name!'")
    raw = ggmk.Module("raw")             # a Handler made by hand skips Module.handler's check
    raw.handlers.append(Handler(type="R", fn=lambda ctx: OK, name="r", module=raw, batch="no"))
    boot_fails([raw], "module 'raw'", "handler 'r'", "batch must be true or false")


@pytest.mark.parametrize("bad", ["no", 1, None])
def test_boot_debug_must_be_a_bool(bad):
    """(debug="no" turned the arena's debug canary on)"""
    with pytest.raises(BootError, match=rf"debug={bad!r}: allowed True or False"):
        ggmk.boot([], workers=1, debug=bad)
    with ggmk.boot([], workers=1, debug=np.bool_(False)) as s:
        assert s.arena.debug is False


def test_handlers_made_in_a_loop_may_share_their_function_name():
    """Only names a user gave must differ: handlers a loop makes from one function (no name=)
    are told apart by type (with and without channels)."""
    m = ggmk.Module("loop")
    got = []
    for t in ("L1", "L2", "L3"):
        @m.handler(t)
        def h(ctx):
            got.append(ctx.task.meta0)
    m.handler("L4", consumes="loop.in", message="L_IN")(h)
    p = ggmk.Module("loop_p")
    p.produces("loop.in", "L_IN")
    for mods in ([m], [m, p]):
        got.clear()
        with ggmk.boot(mods, workers=2) as s:
            for i, t in enumerate(("L1", "L2", "L3")):
                s.submit(t, meta0=i)
            assert s.run(timeout=30)
        assert sorted(got) == [0, 1, 2]
