"""SPEC §14 item 3 on the device kernel: a mixed batch is grouped by type before dispatch, and
scalar, warp and block handlers all run correctly in one worker."""

import pytest

import workloads as W

CUDA = pytest.mark.cuda


def _check(r):
    order = r["order"]
    assert len(order) == 240
    runs = 1 + sum(1 for a, b in zip(order, order[1:]) if a != b)
    # one spawner emitted 240 children of 12 types into its local queue: one mixed batch,
    # dispatched as 12 homogeneous sub-batches (without the sort it would be 240 runs)
    assert runs == 12, order
    assert set(order) == set(W.all_mixed_types().tolist())
    # warp (phase-0 smem of 32 lanes summed in phase 1) and block (every lane) results are
    # right for every task, as are the scalar ones
    assert r["values_ok"]


def test_a03_cpu():
    _check(W.run("spawn", "cpu", children=240, workers=2))


def test_a03_sim():
    _check(W.run("spawn", "sim", children=240, workers=2, threads=32, batch=256))


@CUDA
def test_a03_cuda():
    _check(W.run("spawn", "cuda", children=240))
