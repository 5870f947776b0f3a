"""SPEC §14 item 11 on the device kernel: a worker popping a type bucket gets only that type,
and the aging scan keeps a hot-type flood from starving a cold type."""
import pytest

import workloads as W


def _check(on, off):
    for r in (on, off):
        assert r["cold_received"] == 8 and r["bucket_mixed"] == 0 and r["gather_bucket"] > 0
    total = on["total_hot"]
    # with aging, the cold tasks ran while most of the flood still to come after their arrival
    # was still to come (measured from the push: the host may wake late on a busy machine) ...
    left = total - on["hot_at_push"]
    assert max(on["cold_seen_at"]) - on["hot_at_push"] < 0.5 * left, on
    assert on["aging_picks"] >= 1
    # ... without it (the control), they waited for nearly all of it
    assert min(off["cold_seen_at"]) > 0.9 * total, off


def test_a11_cpu():
    kw = dict(hot=4096, length=100, workers=2, aging_interval=16)
    _check(W.run("aging", "cpu", **kw), W.run("aging", "cpu", **dict(kw, aging_interval=0)))


def test_a11_sim():
    kw = dict(hot=128, length=40, workers=2, threads=32, batch=32, aging_interval=4)
    _check(W.run("aging", "sim", **kw), W.run("aging", "sim", **dict(kw, aging_interval=0)))


@pytest.mark.cuda
def test_a11_cuda():
    kw = dict(hot=1 << 16, length=100, aging_interval=16)
    _check(W.run("aging", "cuda", **kw), W.run("aging", "cuda", **dict(kw, aging_interval=0)))
