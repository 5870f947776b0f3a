"""``ggmk.dual.boot``: every option is checked before anything starts (the CPU kernel, the
device driver, a device process), and a bad one is a BootError naming the argument, its value
and what is allowed. Before, ``transport_wrap=5`` was a raw ``TypeError: 'int' object is not
callable`` once the GPU kernel had been built and run; ``device=`` and ``device_config=``
were checked only after the CPU kernel booted (``blocks="2"``: a raw TypeError)."""
import re

import numpy as np
import pytest

import ggmk.dual
from ggmk.errors import BootError
from ggmk.modules import echo, registry


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if the boot gets as far as starting anything."""
    def started(*a, **kw):
        raise AssertionError("the boot started something before checking its options")
    monkeypatch.setattr(ggmk.dual, "System", started)
    monkeypatch.setattr(ggmk.dual, "open_driver", started)


@pytest.mark.parametrize("kw, named", [
    (dict(transport_wrap=5), "transport_wrap=5: allowed None or a callable"),
    (dict(transport_wrap="wrap"), "transport_wrap='wrap': allowed None or a callable"),
    (dict(device=5), "device=5: allowed 'auto', 'cpu', 'sim', 'cuda' or None"),
    (dict(device="gpu"), "device='gpu': allowed 'auto', 'cpu', 'sim', 'cuda' or None"),
    (dict(device_config={"blockz": 2}), "unknown device_config options ['blockz']; known: "),
    (dict(device_config={"blocks": "2"}), "device_config={...}: blocks='2': allowed an int"),
    (dict(device_config={"bucket_cap": 2.5}), "bucket_cap=2.5: allowed an int"),
    (dict(device_config={"rx_cap": True}), "rx_cap=True: allowed an int"),
    (dict(device_config={"workers": -1}), "workers=-1: allowed an int >= 0"),
    (dict(device_config={"trace": "no"}), "trace='no': allowed True or False"),
    (dict(device_config=5), "device_config=5: allowed None or a dict"),
    (dict(bridge={"window": True}), "window must be None or an int"),
    (dict(watchdog=5), "watchdog: config 5 must be True or a dict"),
    (dict(device_process="yes"), "device_process='yes' must be True"),
])
def test_a_bad_option_is_named_before_anything_starts(nothing_starts, kw, named):
    kw.setdefault("device", "cpu")
    with pytest.raises(BootError, match=re.escape(named)):
        ggmk.dual.boot([echo.device_module("e.out")], workers=2, types=registry("echo"), **kw)


def test_good_options_still_boot():
    wrapped = []

    def wrap(tr):
        wrapped.append(tr)
        return tr
    with ggmk.dual.boot([echo.device_module("e.out")], device="cpu", workers=2,
                        types=registry("echo"), device_process=False, transport_wrap=wrap,
                        device_config={"workers": np.int64(1), "rx_cap": 1 << 12,
                                       "trace": True}) as s:
        assert wrapped == [s.transport_base] and s.transport is s.transport_base
        assert s.kernel.config.rx_cap == 1 << 12
