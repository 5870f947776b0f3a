"""``DeviceConfig.validate``: a size that is not an int (a string, a float, a bool) is a
BootError naming the field, the value and what is allowed; it was a raw TypeError from the
range checks (``'<' not supported between instances of 'str' and 'int'``)."""
import numpy as np
import pytest

import ggmk.device as gd
from ggmk.device import layout
from ggmk.errors import BootError
from ggmk.modules import reduce


@pytest.mark.parametrize("field, value", [("blocks", "2"), ("threads", 32.0),
                                          ("tx_cap", "8"), ("arena_bytes", True),
                                          ("tick_ns", None), ("rx_cap", -4)])
def test_validate_names_the_field_and_value(field, value):
    with pytest.raises(BootError, match=rf"device config: {field}={value!r}: allowed an int"):
        layout.DeviceConfig(**{field: value}).validate()


def test_device_kernel_names_a_bad_size():
    mods = [reduce.device_module(n=2)]
    # (checked before the cpu target's resolve_config compares blocks with host_threads:
    # that was a raw TypeError)
    with pytest.raises(BootError, match=r"blocks='2': allowed an int >= 0"):
        gd.DeviceKernel(mods, target="cpu", blocks="2")
    with pytest.raises(BootError, match=r"tx_cap=2.5: allowed an int >= 0"):
        gd.DeviceKernel(mods, target="cpu", tx_cap=2.5)


def test_numpy_ints_are_taken_as_plain_ints():
    c = layout.DeviceConfig(blocks=np.int64(4), tx_cap=np.uint32(1 << 12)).validate()
    assert (c.blocks, c.tx_cap) == (4, 1 << 12)
    assert type(c.blocks) is int and type(c.tx_cap) is int     # compile-time constants
