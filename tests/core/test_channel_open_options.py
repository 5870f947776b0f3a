"""Channels.open (``system.channels.open`` and a module's ``produces(...)`` options) refuses
options it does not know: a typo such as ``capcity=16`` is a ChannelError naming the channel,
the option, its value, the close match and the allowed options, not a silently ignored key."""
import pytest

import ggmk
from ggmk import task as T
from ggmk.errors import BootError, ChannelError


def _allowed_named(msg):
    allowed = msg.split("allowed options: ", 1)[1].split(", ")
    for word in ("type", "mode", "guarantee", "capacity", "replay", "error_handler", "window",
                 "ordered"):
        assert word in allowed, (word, msg)


def test_a_misspelt_option_at_run_time_is_a_clear_error_and_nothing_opens():
    with ggmk.boot([], workers=2) as s:
        with pytest.raises(ChannelError) as e:
            s.channels.open("data.in", "MSG", capcity=16)
        msg = str(e.value)
        assert e.value.code == T.CHAN_UNKNOWN
        assert "'data.in'" in msg and "capcity=16" in msg and "did you mean 'capacity'" in msg
        _allowed_named(msg)
        assert "data.in" not in s.channels                   # nothing was opened
        # several unknown ones are all named; one with no close match has no suggestion
        with pytest.raises(ChannelError) as e:
            s.channels.open("data.in", "MSG", guarantee_="lossy", flavour="x")
        msg = str(e.value)
        assert "unknown options" in msg and "guarantee_='lossy'" in msg
        assert "did you mean 'guarantee'" in msg and "flavour='x'" in msg
        assert "flavour='x' (did" not in msg
        _allowed_named(msg)
        # an already open channel is not returned either when the call has a typo
        ch = s.channels.open("data.in", "MSG", mode="fanout")
        with pytest.raises(ChannelError, match=r"'data.in': unknown option windw=4 "
                                               r"\(did you mean 'window'\?\)"):
            s.channels.open("data.in", "MSG", mode="fanout", windw=4)
        assert s.channels.get("data.in") is ch


def test_a_misspelt_produces_option_fails_the_boot_naming_it():
    m = ggmk.Module("prod")
    m.produces("prod.out", "MSG", mode="fanout", capcity=16)
    with pytest.raises(ChannelError) as e:
        ggmk.boot([m], workers=2)
    msg = str(e.value)
    assert "'prod.out'" in msg and "capcity=16" in msg and "did you mean 'capacity'" in msg
    _allowed_named(msg)


def test_the_allowed_options_still_work():
    failed = []
    m = ggmk.Module("prod")
    m.produces("prod.out", "MSG", mode="fanout", capacity=64, window=8, ordered=False)
    with ggmk.boot([m], workers=2) as s:
        out = s.channel("prod.out")
        assert (out.capacity, out.window, out.ordered) == (64, 8, False)
        ch = s.channels.open("data.in", "MSG", mode="p2p", guarantee="lossless", capacity=32,
                             replay=16, error_handler=lambda r, c: failed.append(c),
                             window=4, ordered=True)
        assert (ch.mode, ch.guarantee, ch.capacity, ch.replay, ch.window, ch.ordered) == (
            "p2p", "lossless", 32, 16, 4, True)
        assert s.channels.open("data.in", "MSG", mode="p2p", capacity=32) is ch
        assert s.open("data.more", "MSG", capacity=16, window=2).window == 2
        sub = ch.subscribe(name="reader")
        assert ch.publish(meta0=7) == T.OK
        assert sub.take()["meta0"].tolist() == [7]


def test_consumes_takes_window_and_ordered_and_names_anything_else():
    """``consumes(...)`` options other than handler were ignored without a word (a
    ``capcity=3`` there did nothing); now window and ordered reach the subscription and any
    other option is a boot error naming the module, the channel and the option."""
    from ggmk.errors import BootError

    def mod(**opts):
        m = ggmk.Module("sink")

        @m.handler("MSG")
        def sink(ctx):
            return T.OK
        m.consumes("data.in", "MSG", **opts)
        return m

    with pytest.raises(BootError) as e:
        ggmk.boot([mod(capcity=3)], workers=2)
    msg = str(e.value)
    assert "module 'sink' consumes channel 'data.in'" in msg and "capcity=3" in msg
    assert "handler, window, ordered" in msg
    with ggmk.boot([mod(window=2, ordered=False)], workers=2) as s:
        sub = s.channel("data.in").subs[0]
        assert sub.window == 2 and sub.ordered is False
        assert s.channel("data.in").publish(meta0=1) == 0
        assert s.run(timeout=30)


def test_handler_on_produces_or_open_is_an_error_naming_it():
    """``handler`` belongs to ``consumes``: on ``produces`` it was taken off the channel's
    options before their check and ignored without a word; ``System.open`` raised a bare
    TypeError."""
    m = ggmk.Module("prod")
    m.produces("prod.out", "MSG", handler="NOSUCH")
    with pytest.raises(BootError) as e:
        ggmk.boot([m], workers=2)
    assert "'prod'" in str(e.value) and "'prod.out'" in str(e.value) \
        and "handler='NOSUCH'" in str(e.value) and "consumes" in str(e.value)
    with ggmk.boot([ggmk.Module("x")], workers=2) as s:
        with pytest.raises(ChannelError) as e:
            s.open("data.in", "MSG", handler="MSG")
        assert "handler='MSG'" in str(e.value)
        _allowed_named(str(e.value))


@pytest.mark.parametrize("call, match", [
    (lambda s: s.open("x.o", "Y", ordered="no"),
     r"channel 'x.o': ordered='no' is not allowed: True, False or None \(the default\)"),
    (lambda s: s.open("x.o", "Y", error_handler=5),
     r"channel 'x.o': error_handler=5 is not allowed: a callable \(called with \(records, "
     r"codes\) of failed messages\) or None"),
    (lambda s: s.open("x.o", None),
     r"channel 'x.o': type=None is not allowed: a channel carries one task type"),
    (lambda s: s.open("x.o", 0), r"channel 'x.o': type=0 is not allowed"),
    (lambda s: s.open("x.s", "Y").subscribe("T", ordered="x"),
     r"channel 'x.s': ordered='x' is not allowed: True, False or None"),
    (lambda s: s.open("x.s", "Y").subscribe(notify=5),
     r"channel 'x.s': notify=5 is not allowed: a callable"),
])
def test_bad_open_and_subscribe_options_are_named(call, match):
    """(before: ordered='no' turned ordering on, error_handler=5 and notify=5 were kept and
    failed at use, open(name, None) opened a user channel of any type ('*', the system
    channels' wildcard, with no type check).) Nothing is opened or subscribed."""
    m = ggmk.Module("m")

    @m.handler("T")
    def t(ctx):
        pass

    with ggmk.boot([m], workers=2) as s:
        with pytest.raises(ChannelError, match=match) as e:
            call(s)
        assert e.value.code == T.CHAN_UNKNOWN
        assert "x.o" not in s.channels
        assert "x.s" not in s.channels or not s.channel("x.s").subs
        # the system's untyped channels still open and reopen as before
        assert s.open("host.rx", None, mode="fanout", guarantee="lossy") is s.channel("host.rx")
        assert s.open("x.ok", "Y", ordered=False, error_handler=lambda r, c: None).ordered is False
