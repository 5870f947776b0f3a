"""``ggmk.bridge.plan``: a bridge channel's CPU producer declared with a capacity the CPU kernel
refuses is a boot error naming the module, the channel, the value and what is allowed, the
CPU kernel's own words (before: a bare ValueError / TypeError from ``int()`` in the plan, or
8.5 taken as 8)."""
import re

import pytest

import ggmk
import ggmk.device as gd
import ggmk.dual
from ggmk.bridge.plan import DEFAULT_DEVICE_CAPACITY, plan
from ggmk.errors import BootError
from tests.bridge import bridge_workloads as W


def _echo(ctx, task):
    return 0


def _modules(**produces):
    c = ggmk.Module("feeder")
    c.produces("cpu.in", "WORK", **produces)
    g = gd.Module("echo")
    g.handler("ECHO", consumes="cpu.in", message="WORK")(_echo)
    return c, g


@pytest.mark.parametrize("bad", ["big", [64], 8.5, 0, -8, True, 2**31])
def test_a_bad_capacity_of_a_bridge_channels_cpu_producer_is_named(bad):
    c, g = _modules(capacity=bad)
    with pytest.raises(BootError, match=rf"CPU module 'feeder': channel 'cpu.in': "
                                        rf"capacity={re.escape(repr(bad))} is not allowed: "
                                        rf"an int 1\.\.1073741824"):
        plan([c], [g], W.registry(), types_given=True)


def test_the_boot_names_it_before_anything_boots():
    c, g = _modules(capacity="big")
    with pytest.raises(BootError, match=r"cross-kernel channel wiring failed:\n  CPU module "
                                        r"'feeder': channel 'cpu.in': capacity='big'"):
        ggmk.dual.boot([c, g], device="cpu", types=W.registry())


@pytest.mark.parametrize("given,device_side", [
    ({}, DEFAULT_DEVICE_CAPACITY), ({"capacity": 100}, 100), ({"capacity": 1 << 20}, 4096)])
def test_a_good_capacity_sizes_the_device_side(given, device_side):
    c, g = _modules(**given)
    bc, = plan([c], [g], W.registry(), types_given=True)
    assert bc.direction == "c2g" and bc.capacity == device_side
