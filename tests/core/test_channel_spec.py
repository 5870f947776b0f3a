"""Channel specs (ggmk.core.channel_spec): the one home of the channel modes, guarantees and
limits, their validation (one exception type: ChannelError with CHAN_UNKNOWN), shared by the
CPU kernel and the device kernel's declarations."""
import pytest

from ggmk import task as T
from ggmk.core import channel_spec as spec
from ggmk.core.kernel import boot
from ggmk.errors import ChannelError


def test_modes_guarantees_and_limits():
    assert spec.MODES == ("p2p", "fanout") and spec.GUARANTEES == ("lossy", "lossless")
    assert spec.max_subscribers("p2p") == 1 and spec.max_subscribers("fanout") == spec.MAX_FANOUT
    assert spec.MAX_FANOUT == 32
    assert [spec.ring_capacity(c) for c in (0, 1, 8, 9, 100, 4096)] == [8, 8, 8, 16, 128, 4096]
    assert [spec.priority_reserve(c) for c in (8, 16, 128, 4096)] == [1, 1, 12, 409]


def test_the_device_declarations_use_the_same_names():
    from ggmk.device import module as dmod
    assert dmod.CHAN_MODES is spec.MODES and dmod.CHAN_GUARANTEES is spec.GUARANTEES
    assert dmod.MAX_FANOUT == spec.MAX_FANOUT


@pytest.mark.parametrize("mode", spec.MODES)
@pytest.mark.parametrize("guarantee", spec.GUARANTEES)
def test_every_valid_spec_passes(mode, guarantee):
    spec.validate_channel_spec("data.in", mode, guarantee)
    spec.validate_channel_spec("data.in", mode, guarantee, replay=64)


@pytest.mark.parametrize("args,kw,words", [
    (("data.in", "bus", "lossless"), {}, ("'data.in'", "mode", "'bus'")),
    (("data.in", "p2p", "exact"), {}, ("'data.in'", "guarantee", "'exact'")),
    (("data.in", "p2p", "lossless"), {"replay": 8, "deterministic": True},
     ("'data.in'", "deterministic", "replay")),
    (("", "p2p", "lossless"), {}, ("''", "namespace.verb")),
    ((None, "p2p", "lossless"), {}, ("None",)),
    # a run-time open took any string before; declarations were checked by this rule already
    (("c", "p2p", "lossless"), {}, ("'c'", "namespace.verb", "counter.in")),
    (("Data.In", "p2p", "lossless"), {}, ("'Data.In'", "lowercase dotted")),
])
def test_an_invalid_spec_is_one_channel_error_naming_what(args, kw, words):
    with pytest.raises(ChannelError) as e:
        spec.validate_channel_spec(*args, **kw)
    assert e.value.code == T.CHAN_UNKNOWN
    for w in words:
        assert w in str(e.value)


def test_the_cpu_kernel_validates_with_it():
    with boot([], hal="sim") as s:
        for kw, word in (({"mode": "bus"}, "'bus'"), ({"guarantee": "exact"}, "'exact'")):
            with pytest.raises(ChannelError) as e:
                s.open("data.in", "MSG", **kw)
            assert e.value.code == T.CHAN_UNKNOWN and word in str(e.value)
        assert "data.in" not in s.channels          # nothing was opened
        fan = s.open("data.fan", "MSG", mode="fanout")
        for _ in range(spec.MAX_FANOUT):
            fan.subscribe()
        with pytest.raises(ChannelError) as e:
            fan.subscribe()
        assert e.value.code == T.CHAN_ALREADY_BOUND and str(spec.MAX_FANOUT) in str(e.value)


@pytest.mark.parametrize("bad", [0, -5, 2.7, True, float("nan"), "8", 2**40])
def test_a_bad_capacity_is_refused_by_name(bad):
    # (0, -5, 2.7 and True were taken as 8; nan gave a bare ValueError; 2**40 failed later,
    # when a subscriber's ring was allocated. None is the default, as for window and ordered:
    # test_channel_registry's reopen tests)
    with boot([], hal="sim") as s:
        with pytest.raises(ChannelError) as e:
            s.open("data.in", "MSG", capacity=bad)
        assert e.value.code == T.CHAN_UNKNOWN
        assert "data.in" in str(e.value) and f"capacity={bad!r}" in str(e.value)


@pytest.mark.parametrize("bad", [-3, 2.5, "16", True])
def test_a_bad_replay_is_refused_by_name(bad):
    with boot([], hal="sim") as s:
        with pytest.raises(ChannelError) as e:
            s.open("data.in", "MSG", replay=bad)
        assert e.value.code == T.CHAN_UNKNOWN and f"replay={bad!r}" in str(e.value)


def test_replay_on_a_lossy_channel_is_refused():
    # (it was ignored without a word, and reopening the channel with replay= then attached
    # a log the constructor refuses)
    with boot([], hal="sim") as s:
        with pytest.raises(ChannelError, match="lossy"):
            s.open("data.in", "MSG", guarantee="lossy", replay=64)
        s.open("data.in", "MSG", guarantee="lossy")
        with pytest.raises(ChannelError, match="lossy"):
            s.open("data.in", "MSG", guarantee="lossy", replay=64)
        assert s.channel("data.in").log is None


def test_good_capacities_and_replays_open():
    import numpy as np
    with boot([], hal="sim") as s:
        assert s.open("a.x", "MSG", capacity=3).capacity == 8
        assert s.open("b.x", "MSG", capacity=np.int64(100)).capacity == 128
        assert s.open("c.x", "MSG", replay=np.int32(16)).log is not None
