"""Audit (bridge): a fan-out channel takes at most 32 subscribers (SPEC §5) counted over both
kernels, as ``p2p``'s one is: each kernel counted only its own, so 31 CPU + 2 GPU subscribers
booted one channel with 33. Now a boot error naming the channel and the counts."""
import pytest

import ggmk
import ggmk.device as gd
from ggmk.bridge.plan import plan
from ggmk.errors import BootError
from ggmk.typereg import TypeRegistry


def _noop(ctx, task):
    return 0


def _modules(n_cpu, n_gpu):
    reg = TypeRegistry()
    reg.register("FAN_MSG", id=551)
    c = ggmk.Module("fan_cpu")
    c.produces("fan.x", "FAN_MSG", mode="fanout")
    for i in range(n_cpu):
        reg.register(f"FAN_C{i}", id=600 + i)
        c.handler(f"FAN_C{i}", consumes="fan.x", message="FAN_MSG")(lambda ctx: ggmk.OK)
    g = gd.Module("fan_gpu")
    for i in range(n_gpu):
        reg.register(f"FAN_G{i}", id=700 + i)
        g.handler(f"FAN_G{i}", consumes="fan.x", message="FAN_MSG")(_noop)
    return [c], [g], reg


@pytest.mark.parametrize("n_cpu, n_gpu", [(31, 2), (1, 32)])
def test_a_fanout_channel_with_more_than_32_subscribers_over_both_kernels_is_refused(n_cpu, n_gpu):
    c, g, reg = _modules(n_cpu, n_gpu)
    with pytest.raises(BootError, match=rf"channel 'fan.x' is fanout with 33 subscribers across "
                                        rf"kernels \({n_cpu} CPU, {n_gpu} GPU\): fan-out allows "
                                        rf"at most 32"):
        plan(c, g, reg, types_given=True)


def test_32_subscribers_over_both_kernels_are_allowed():
    c, g, reg = _modules(30, 2)
    (bc,) = plan(c, g, reg, types_given=True)
    assert bc.name == "fan.x" and len(bc.consumers) == 32
