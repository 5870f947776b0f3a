"""Both HALs implement the written contract (ggmk.hal.base.Hal)."""
import inspect

import pytest

from ggmk.hal import make_hal
from ggmk.hal.base import Hal


@pytest.mark.parametrize("name", ["threads", "sim"])
def test_each_hal_implements_every_method_of_the_contract(name):
    hal = make_hal(name)
    assert isinstance(hal, Hal) and hal.name == name
    for meth, _ in inspect.getmembers(Hal, inspect.isfunction):
        if not meth.startswith("_"):
            assert callable(getattr(hal, meth)), meth


def test_sim_sleep_advances_virtual_time_only():
    class Idle:
        max_batch = 1
        steps = 0

        def step(self):
            self.steps += 1
            return False

    hal = make_hal("sim")
    hal.start([Idle()])
    hal.sleep(2.0)
    assert hal.clock_ns() >= 2_000_000_000 and hal.cpu_clock_ns() == hal.clock_ns()
