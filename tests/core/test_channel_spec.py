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
    (("", "p2p", "lossless"), {}, ("non-empty",)),
    ((None, "p2p", "lossless"), {}, ("None",)),
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
