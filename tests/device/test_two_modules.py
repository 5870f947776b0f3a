"""Two device modules defined in one Python file (one of them with a device channel) boot
separately and together: the build rebinds only the channel references a handler's code uses,
not every channel object in the handler's module globals. A channel a handler does use but no
module of the kernel declares is still a build error naming module, handler and channel."""
import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.device.module import ChannelBootError
from ggmk.task import CHAN_UNKNOWN, OK

# ---- module 1: a producer and a consumer joined by a device channel
pipe = gd.Module("pipe")
PIPE_OUT = pipe.channel("pipe.out", message=61, capacity=64)


@pipe.handler(60)
def pipe_produce(ctx, task):
    if g.emit_chan(ctx, PIPE_OUT, g.meta0(task), 0) != OK:
        return -9
    return OK


@pipe.handler(62, consumes="pipe.out")
def pipe_consume(ctx, task):
    g.emit_host(ctx, 63, g.meta0(task), g.seq(task))
    return OK


# ---- module 2: no channel, in the same file (its handler's globals hold PIPE_OUT too)
plain = gd.Module("plain")


@plain.handler(70)
def plain_double(ctx, task):
    g.emit_host(ctx, 71, g.meta0(task) * 2, 0)
    return OK


# ---- a handler that emits on a channel no module of its kernel declares
stray = gd.Module("stray")
NOWHERE = gd.chan("nowhere.out")


@stray.handler(80)
def stray_emit(ctx, task):
    g.emit_chan(ctx, NOWHERE, 1, 0)
    return OK


def _run_plain(k):
    k.push(taskmod.make(3, type=70, meta0=np.array([1, 2, 3])))
    out = k.pull_until(3, timeout=60)
    assert sorted(out["meta0"].tolist()) == [2, 4, 6] and set(out["type"].tolist()) == {71}


def _run_pipe(k):
    k.push(taskmod.make(4, type=60, meta0=np.array([5, 6, 7, 8])))
    out = k.pull_until(4, timeout=60)
    assert sorted(out["meta0"].tolist()) == [5, 6, 7, 8] and set(out["type"].tolist()) == {63}
    assert sorted(out["meta1"].tolist()) == [1, 2, 3, 4]      # channel sequence numbers


def test_module_without_channel_boots_alone():
    with gd.DeviceKernel([plain], target="cpu", workers=1) as k:
        _run_plain(k)


def test_module_with_channel_boots_alone():
    with gd.DeviceKernel([pipe], target="cpu", workers=1) as k:
        _run_pipe(k)


def test_both_modules_boot_together():
    with gd.DeviceKernel([pipe, plain], target="cpu", workers=2) as k:
        _run_pipe(k)
        _run_plain(k)
        assert k.channels == {"pipe.out": 1}


def test_a_used_unknown_channel_is_a_clear_build_error():
    with pytest.raises(ChannelBootError) as ei:
        gd.DeviceKernel([stray], target="cpu", workers=1)
    msg = str(ei.value)
    assert "'stray'" in msg and "'stray_emit'" in msg and "'nowhere.out'" in msg
    assert ei.value.code == CHAN_UNKNOWN


def test_rebind_names_only_what_the_code_uses():
    """The unit under the boot tests: a channel the handler does not reference is left alone
    even when unknown; a referenced one becomes its id; a referenced unknown one is an error
    naming the handler and the channel."""
    from ggmk.device.codegen import compiler
    import types as pytypes
    view = pytypes.SimpleNamespace()
    new = compiler._rebind(plain_double, view, None, {}, {})          # PIPE_OUT unknown: unused
    assert new.__globals__["PIPE_OUT"] is PIPE_OUT
    new = compiler._rebind(pipe_produce, view, None, {}, {"pipe.out": 7})
    assert new.__globals__["PIPE_OUT"] == 7
    with pytest.raises(ChannelBootError, match="pipe_produce.*'pipe.out'"):
        compiler._rebind(pipe_produce, view, None, {}, {})
