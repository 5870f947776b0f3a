"""``ggmk.device.codegen.resolve``: handlers and channels resolved and validated before
anything is generated (more channel declaration errors: test_channels)."""
import pytest

import ggmk.device as gd
from ggmk.device.codegen import resolve
from ggmk.device.module import ChannelBootError
from ggmk.errors import BootError
from ggmk.task import CHAN_UNKNOWN


def _h(ctx, task):
    return 0


def _blk(ctx, task, lane, nlanes, smem, phase):
    return 0


def test_handlers_in_registration_order_with_names_resolved():
    a, b = gd.Module("ra"), gd.Module("rb")
    a.handler(7)(_h)
    a.handler("named")(_h)
    b.handler(3, granularity="warp", shared_bytes=64)(_blk)
    hs = resolve.resolve_handlers([a, b], {"named": 9})
    assert [(h.type, h.module.name) for h in hs] == [(7, "ra"), (9, "ra"), (3, "rb")]
    with pytest.raises(BootError, match="needs DeviceKernel\\(types=...\\)"):
        resolve.resolve_handlers([a])
    with pytest.raises(BootError, match="unknown type name 'named'"):
        resolve.resolve_handlers([a], {})


def test_handler_errors():
    a, b = gd.Module("da"), gd.Module("db")
    a.handler(1)(_h)
    b.handler(1)(_h)
    with pytest.raises(BootError, match="type 1: handled by both da._h and db._h"):
        resolve.resolve_handlers([a, b])
    with pytest.raises(BootError, match="no device handlers"):
        resolve.resolve_handlers([gd.Module("empty")])
    with pytest.raises(BootError, match="is not a ggmk.device.Module"):
        resolve.resolve_handlers(["nope"])


def test_channels_get_ids_subscribers_and_slots():
    src, dst = gd.Module("csrc"), gd.Module("cdst")
    src.channel("x.one", 30, "p2p", "lossless", 16)
    src.channel("x.fan", 30, "fanout", "lossy", 32)
    src.handler(1)(_h)
    dst.handler(2, consumes=("x.one", "x.fan"))(_h)
    dst.handler(3, consumes=("x.fan",))(_h)
    hs = resolve.resolve_handlers([src, dst])
    ch = resolve.resolve_channels([src, dst], hs)
    assert [(c.id, c.name, c.message, c.subs, c.slot0) for c in ch] == [
        (1, "x.one", 30, [1], 0), (2, "x.fan", 30, [1, 2], 1)]
    assert ch[0].capacity == 16 and ch[1].mode == "fanout" and ch[1].guarantee == "lossy"


def test_unknown_consumed_channel_is_named():
    m = gd.Module("lonely")
    m.handler(1, consumes=("ghost",))(_h)
    hs = resolve.resolve_handlers([m])
    with pytest.raises(ChannelBootError, match="consumes unknown device channel 'ghost'") as ei:
        resolve.resolve_channels([m], hs)
    assert ei.value.code == CHAN_UNKNOWN


def test_smem_words():
    m = gd.Module("smem")
    m.handler(1)(_h)
    m.handler(2, granularity="warp", shared_bytes=16)(_blk)
    m.handler(3, granularity="block", shared_bytes=80)(_blk)
    hs = resolve.resolve_handlers([m])
    assert resolve.smem_words(hs[:1], 64) == 1
    assert resolve.smem_words(hs[:2], 64) == 2 * (64 // 32)      # per warp x warps
    assert resolve.smem_words(hs, 32) == 10


def _registry():
    from ggmk.typereg import TypeRegistry
    reg = TypeRegistry()
    reg.register("STEP", 10, max_yields=4, deterministic=True)
    reg.register("MSG", 11, lossy=False)
    return reg


def test_max_yields_is_the_handlers_else_the_types_policy_else_16():
    reg = _registry()
    m = gd.Module("my")
    m.handler("STEP", deterministic=True)(_h)
    m.handler(12)(_h)                                   # no policy: not registered
    m.handler("MSG", max_yields=7)(_h)
    hs = resolve.resolve_handlers([m], reg)
    assert [(h.type, h.max_yields) for h in hs] == [(10, 4), (12, 16), (11, 7)]
    # a plain {name: id} map has no policies
    assert [h.max_yields for h in resolve.resolve_handlers([m], {"STEP": 10, "MSG": 11})] == \
        [16, 16, 7]


def test_types_policies_are_checked_like_the_cpu_kernels():
    """A deterministic type on a handler not declared deterministic, a lossless type on a
    lossy device channel: boot errors (one BootError naming both), as on the CPU kernel;
    types the registry does not know (plain ids) are left alone."""
    reg = _registry()
    m = gd.Module("pol")
    m.channel("pol.c", message="MSG", mode="p2p", guarantee="lossy", capacity=8)
    m.handler("STEP")(_h)
    m.handler(12, consumes="pol.c")(_h)
    hs = resolve.resolve_handlers([m], reg)
    with pytest.raises(BootError) as e:
        resolve.check_type_policies([m], hs, reg)
    assert len(e.value.problems) == 2
    assert "handler '_h' handles deterministic type STEP but is not declared" in str(e.value)
    assert "channel 'pol.c' is lossy (declared by module 'pol') but type MSG needs lossless" \
        in str(e.value)
    resolve.check_type_policies([m], hs, {"STEP": 10, "MSG": 11})      # no policies: fine
    ok = gd.Module("pol2")
    ok.channel("pol2.c", message="MSG", guarantee="lossless", capacity=8)
    ok.handler("STEP", deterministic=True)(_h)
    ok.handler(12, consumes="pol2.c")(_h)
    resolve.check_type_policies([ok], resolve.resolve_handlers([ok], reg), reg)
    # and the DeviceKernel applies them when it is made (nothing compiles)
    with pytest.raises(BootError, match="2 problems"):
        gd.DeviceKernel([m], target="cpu", types=reg)
    k = gd.DeviceKernel([ok], target="cpu", types=reg)
    assert [h.max_yields for h in k.handlers] == [4, 16]
