"""``DualSystem.push_device`` (ggmk/dual.py) refuses, with nothing pushed, a record type that
would only get lost or do harm on the GPU kernel: one that no handler of either kernel takes
(it used to land in ``device_records()`` unnoticed: accepted, then nowhere) and the bridge's own
service types (a pushed CREDIT changed the bridge's credit counters)."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.bridge import device_side as ds
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot


@pytest.fixture(scope="module")
def system():
    s = boot()
    try:
        yield s
    finally:
        s.halt()


def test_a_type_no_handler_takes_is_refused_and_nothing_is_pushed(system):
    recs = T.make(2, type=np.array([W.TYPES["GEN"], 9999], np.uint32), meta0=0, meta1=0)
    with pytest.raises(ValueError, match=r"push_device: no handler of either kernel takes "
                                         r"type 9999 \(not registered\); nothing was pushed"):
        system.push_device(recs)
    assert system.run(timeout=60)
    assert system.kernel.metrics()["types"][W.TYPES["GEN"]]["enqueued"] == 0
    assert len(system.device_records()) == 0


@pytest.mark.parametrize("t", [ds.CREDIT, ds.RELEASE, ds.ALLOC, ds.RX(0)])
def test_the_bridge_types_are_refused(system, t):
    with pytest.raises(ValueError, match=rf"push_device: type {t:#x} is reserved for the "
                                         r"bridge's own records"):
        system.push_device(T.make(1, type=t, meta0=ds.limit_word(0), meta1=1 << 20))


def test_a_type_of_a_device_or_a_cpu_handler_goes(system):
    system.push_device(T.make(1, type=W.TYPES["GEN"], meta0=0, meta1=3))
    assert system.run(timeout=60)
    assert system.kernel.metrics()["types"][W.TYPES["GEN"]]["ok"] >= 1
