"""Audit (bridge): bad input to a dual boot and to ``reset_device`` gets a clear error naming it.

* option dicts (``bridge=``, ``device_config=``, ``watchdog=``) with a name that is not a
  string: a BootError naming it (a TypeError from sorting the names before, or Python's
  "keywords must be strings");
* ``reset_device(graceful="no")`` (any non-bool ``graceful`` / ``hung``, a non-str ``reason``)
  is refused before anything is reset (it was taken as ``graceful=True``).
"""
import pytest

import ggmk.dual
from ggmk.errors import BootError
from tests.bridge import watchdog_workloads as WW


def _boot(**kw):
    return ggmk.dual.boot(WW.modules(), device="cpu", types=WW.registry(), workers=2, **kw)


@pytest.mark.parametrize("kw, named", [
    (dict(bridge={1: 2, "x": 3}), "bridge"),
    (dict(device_config={1: 2, "x": 3}), "device_config"),
    (dict(watchdog={1: 2, "x": 3}), "1"),
])
def test_an_option_name_that_is_not_a_string_is_a_boot_error_naming_it(kw, named):
    with pytest.raises(BootError) as e:
        _boot(device_process=True, **kw)
    assert named in str(e.value) and "1" in str(e.value)


@pytest.mark.parametrize("kw", [dict(graceful="no"), dict(hung=1), dict(reason=5)])
def test_reset_device_refuses_a_bad_argument_before_resetting(kw):
    s = _boot(device_process=True)
    try:
        pid = s.process.pid
        with pytest.raises(ValueError) as e:
            s.reset_device(**kw)
        name, value = next(iter(kw.items()))
        assert f"{name}={value!r}" in str(e.value)
        assert s.resets["resets"] == 0 and s.process.pid == pid
    finally:
        s.halt()
