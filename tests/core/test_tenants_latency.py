"""The tenant policies' queueing-latency histogram (``observe_latency``), called once per
popped batch: the per-value path for small batches and the vectorised one for large batches
must fill exactly the same buckets, which are 8 per octave of ns (bucket 0 holds 0)."""
from __future__ import annotations

import numpy as np
import pytest

from ggmk.core.tenants import TenantError, make_policy


def _ref_buckets(lat) -> np.ndarray:
    """Bucket counts by the definition: 1 + 8 floor(log2 v) + floor(8 (v / 2**floor(log2 v) - 1))."""
    out = np.zeros(513, dtype=np.int64)
    for v in lat:
        v = max(int(v), 0)
        if v == 0:
            out[0] += 1
            continue
        o = v.bit_length() - 1
        out[1 + 8 * o + (8 * v) // (1 << o) - 8] += 1
    return out


@pytest.mark.parametrize("chunk", [1, 3, 16, 17, 256, 10_000])
def test_small_and_large_batches_fill_the_same_buckets(chunk):
    rng = np.random.default_rng(7)
    lat = np.concatenate([
        rng.integers(-50, 5000, 2000),                                  # dense low range
        (1 << rng.integers(0, 60, 2000)) + rng.integers(-2, 3, 2000),   # octave edges
        [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 257],
    ]).astype(np.int64)
    pol = make_policy("eevdf")
    pol.add_tenant(0)
    for i in range(0, len(lat), chunk):
        pol.observe_latency(0, lat[i:i + chunk])
    t = pol._t[0]
    assert (t.hist == _ref_buckets(lat)).all()
    clipped = np.maximum(lat, 0)
    assert t.lat_n == len(lat)
    assert t.lat_sum == sum(clipped.tolist())      # Python ints: the reference must not wrap
    assert t.lat_max == int(clipped.max())


@pytest.mark.parametrize("n", [1, 40])
def test_float_and_unsigned_latencies_count_like_integers(n):
    lat = np.linspace(0, 3e6, n)
    a, b = make_policy("rr"), make_policy("rr")
    a.add_tenant(1), b.add_tenant(1)
    a.observe_latency(1, lat)
    b.observe_latency(1, lat.astype(np.int64).astype(np.uint64))
    assert (a._t[1].hist == b._t[1].hist).all()
    assert a.stats()[1]["latency_p99_ns"] == b.stats()[1]["latency_p99_ns"]


def test_bad_latency_arrays_are_refused_naming_the_call():
    pol = make_policy("eevdf")
    pol.add_tenant(2)
    with pytest.raises(TenantError, match=r"observe_latency\(2\).*1-D numeric"):
        pol.observe_latency(2, np.zeros((2, 2)))
    with pytest.raises(TenantError, match="1-D numeric"):
        pol.observe_latency(2, np.array(["a"]))
    pol.observe_latency(2, [5, 6])                 # a plain list is accepted
    assert pol.stats()[2]["latency_count"] == 2


@pytest.mark.parametrize("n", [1, 20])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, 2.0**63, np.uint64(2**63),
                                 np.uint64(2**64 - 1)])
def test_non_finite_or_huge_latencies_are_refused_naming_the_argument(bad, n):
    """(NaN and inf were counted as 0 ns with a RuntimeWarning; 1e30 was a raw IndexError.)"""
    pol = make_policy("eevdf")
    pol.add_tenant(3)
    lat = np.full(n, bad)
    with pytest.raises(TenantError, match=r"eevdf.observe_latency\(3\): latencies_ns holds "
                                          r".*: allowed finite values < 2\*\*63 ns"):
        pol.observe_latency(3, lat)
    assert pol.stats()[3]["latency_count"] == 0
    pol.observe_latency(3, np.full(n, 2.0**63 - 1024))          # the largest float below
    pol.observe_latency(3, np.full(n, 2**63 - 1, dtype=np.uint64))
    assert pol.stats()[3]["latency_count"] == 2 * n
