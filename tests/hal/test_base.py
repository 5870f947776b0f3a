"""Both HALs implement the written contract (ggmk.hal.base.Hal)."""
import inspect

import numpy as np
import pytest

import ggmk
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


def test_sim_never_hands_a_handler_more_than_the_booted_max_batch():
    """sim draws each step's batch limit (1, 2, 7, 32, 256) to vary interleavings, capped at
    boot's ``max_batch``: booted with 4, a batch handler saw batches of 7, 32 and 256."""
    sizes = []
    m = ggmk.Module("m")

    @m.handler("B", batch=True)
    def b(ctx, batch):
        sizes.append(len(batch))

    with ggmk.boot([m], hal="sim", workers=2, max_batch=4, seed=1) as s:
        for _ in range(20):
            s.submit("B", meta0=np.arange(300))
        assert s.run(timeout=60)
    assert sum(sizes) == 6000 and max(sizes) == 4
