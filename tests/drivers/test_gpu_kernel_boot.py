"""``open_for_kernel`` (the dual boot's gpu_drv): what ``describe()`` says about why the target
and backend were chosen."""
from __future__ import annotations

from ggmk.device.targets import resolve_name
from ggmk.drivers.gpu import open_for_kernel


def test_auto_says_auto_chose_the_target_not_that_cpu_was_requested():
    kd = open_for_kernel("auto")
    try:
        d = kd.describe()
    finally:
        kd.close()
    assert d["target"] == resolve_name("auto")
    assert d["backend_reason"].startswith(f"device='auto' chose the {d['target']!r} target")
    assert "requested" not in d["backend_reason"]


def test_an_explicit_cpu_target_is_a_request():
    kd = open_for_kernel("cpu")
    try:
        assert kd.describe()["backend_reason"] == "backend='cpu' requested"
    finally:
        kd.close()
