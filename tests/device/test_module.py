"""``ggmk.device.module``: what a device handler declaration accepts (type, max_yields)."""
import pytest

import ggmk.device as gd
from ggmk.errors import BootError


def _h(ctx, task):
    return 0


@pytest.mark.parametrize("bad", [0, -1, 2**32, True, 1.5, None])
def test_handler_type_must_be_a_type_id_or_name(bad):
    """0 is never a type (a zeroed record has type 0): refused like ids out of u32 range."""
    with pytest.raises(BootError, match=r"type must be a u32 id 1\.\.2\*\*32-1 \(0 is never"):
        gd.Module("mt").handler(bad)


def test_handler_type_range_ends():
    m = gd.Module("mt")
    m.handler(1)(_h)
    m.handler(2**32 - 1)(_h)
    m.handler("NAMED")(_h)
    assert [h.type for h in m.handlers] == [1, 2**32 - 1, "NAMED"]


@pytest.mark.parametrize("bad", [-1, 65536, True, 2.0, "4"])
def test_max_yields_must_be_none_or_an_int_in_range(bad):
    with pytest.raises(BootError, match=r"max_yields=.*: allowed None or an int 0\.\.65535"):
        gd.Module("mt").handler(1, max_yields=bad)


def test_max_yields_may_be_65535_as_in_types_toml():
    """The top of the u16 count (the kernel saturates it: tests/device/test_kernel_src_max_yields)."""
    m = gd.Module("mt")
    m.handler(1, max_yields=65535)(_h)
    assert m.handlers[0].max_yields == 65535


def test_max_yields_unset_is_none_until_resolved():
    m = gd.Module("mt")
    m.handler(1)(_h)
    m.handler(2, max_yields=0)(_h)
    assert [h.max_yields for h in m.handlers] == [None, 0]
