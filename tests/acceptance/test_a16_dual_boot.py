"""SPEC §14 item 16: dual-kernel boot (CPU kernel, gpu_drv finds the device, GPU kernel,
wiring, ready); cross-kernel type mismatches are caught at boot with a clear message."""
import logging

import pytest

import ggmk
import ggmk.device as gd
import ggmk.dual
from ggmk.bridge.plan import plan as bridge_plan
from tests.bridge import bridge_workloads as W
from ggmk.device import api as g
from ggmk.errors import BootError
from tests.bridge.dualkit import TARGETS, boot


@pytest.mark.parametrize("target", TARGETS)
def test_boot_order_driver_and_ready(caplog, target):
    with caplog.at_level(logging.INFO, logger="ggmk"):
        s = boot(device=target)
    try:
        steps = [b[0] for b in s.boot_log]
        assert steps == ["check", "cpu_kernel", "gpu_drv", "gpu_kernel", "wiring", "ready"]
        assert s.device_info["target"] == target and s.device_info["devices"]
        assert s.kernel.alive()
        assert any("system ready" in r.getMessage() for r in caplog.records)
        st = s.stats()
        assert st["boot"] == steps and st["gpu"]["target"] == target
        assert set(st["bridge"]["channels"]) == {"cpu.in", "gpu.back", "gpu.lossy", "gpu.out"}
    finally:
        rep = s.halt()
    assert not s.kernel.alive() and rep["outstanding"] == 0


def _mismatch_modules():
    gm = gd.Module("gsrc")
    out = gm.channel("x.out", message="READING")

    @gm.handler("GEN")
    def gen(ctx, task):
        g.emit_chan(ctx, out, 1, 0)
        return 0

    cm = ggmk.Module("csink")

    @cm.handler("SINK", consumes="x.out", message="WORK")
    def sink(ctx):
        return ggmk.OK
    return cm, gm


def test_cross_kernel_type_mismatch_is_a_boot_error_naming_both():
    cm, gm = _mismatch_modules()
    with pytest.raises(BootError) as ei:
        ggmk.dual.boot([cm, gm], device="cpu", types=W.registry())
    msg = str(ei.value)
    for part in ("x.out", "gsrc", "csink", "READING", "WORK", "GPU", "CPU", "CHAN_TYPE_MISMATCH"):
        assert part in msg, (part, msg)


def test_unknown_type_on_a_bridge_channel():
    gm = gd.Module("gsrc2")
    gm.channel("y.out", message="NOPE")
    cm = ggmk.Module("csink2")
    cm.consumes("y.out", "NOPE")
    with pytest.raises(BootError, match=r"y\.out.*unknown type 'NOPE'"):
        bridge_plan([cm], [gm], W.registry(), types_given=True)


def test_p2p_with_subscribers_on_both_kernels():
    cm = ggmk.Module("c1")
    cm.produces("z.in", "WORK")

    @cm.handler("SINK", consumes="z.in", message="WORK")
    def s1(ctx):
        return ggmk.OK
    gm = gd.Module("g1")

    @gm.handler("ECHO", consumes="z.in")
    def e(ctx, task):
        return 0
    with pytest.raises(BootError, match="CHAN_ALREADY_BOUND"):
        bridge_plan([cm], [gm], W.registry(), types_given=True)


def test_device_none_is_the_cpu_kernel_alone_and_bad_targets_are_named():
    s = ggmk.dual.boot([W.cpu], device=None, types=W.registry())
    try:
        assert isinstance(s, ggmk.System)
    finally:
        s.halt()
    with pytest.raises(BootError, match="GPU modules"):
        ggmk.dual.boot(W.modules(), device=None)
    with pytest.raises(BootError, match="'tpu'"):
        ggmk.dual.boot(W.modules(), device="tpu", types=W.registry())
