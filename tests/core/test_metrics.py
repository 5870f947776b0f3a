"""Tests of ggmk.core.metrics: shards, per-type counters, gauges, histograms, snapshots."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.metrics import (NBUCKETS, TYPE_COUNTERS, Metrics, TypeCounter, bucket_bounds,
                               bucket_of, percentile_from_buckets)


def test_type_counter_names():
    assert TYPE_COUNTERS == ("enqueued", "dequeued", "ok", "fail", "retry", "yield", "dropped",
                              "wait")


def test_shards_sum_correctly():
    rng = np.random.default_rng(0)
    m = Metrics(4, max_types=64)
    expect = np.zeros((len(TypeCounter), 64), np.int64)
    for w in range(4):
        s = m.shard(w)
        for _ in range(50):
            c = int(rng.integers(len(TypeCounter)))
            types = rng.integers(0, 64, rng.integers(0, 200)).astype(np.uint32)
            s.add_types(c, types)
            np.add.at(expect[c], types, 1)
            t, n = int(rng.integers(64)), int(rng.integers(1, 5))
            s.add_type(c, t, n)
            expect[c, t] += n
    for c in TypeCounter:
        assert (m.type_counts(c) == expect[c]).all()
        assert (m.type_counts(c.name.lower()) == expect[c]).all()
    snap = m.snapshot()
    for c in TypeCounter:
        assert snap["types"][c.name.lower()] == {
            str(t): int(expect[c, t]) for t in np.flatnonzero(expect[c])}


def test_add_types_from_task_records_with_weights():
    m = Metrics(1, max_types=16)
    recs = T.make(6, type=np.array([1, 1, 2, 3, 3, 3]))
    m.shard(0).add_types(TypeCounter.DEQUEUED, recs["type"])
    m.shard(0).add_types(TypeCounter.OK, recs["type"], np.array([1, 2, 3, 4, 5, 6]))
    assert m.snapshot(type_names={1: "KV_GET"})["types"]["dequeued"] == {
        "KV_GET": 2, "2": 1, "3": 3}
    assert list(m.type_counts(TypeCounter.OK)[:4]) == [0, 3, 3, 15]


def test_bad_types_and_names_are_refused_clearly():
    m = Metrics(2, max_types=8, max_names=2)
    s = m.shard(1)
    with pytest.raises(ValueError, match=r"worker 1.*0\.\.7.*8\.\.9"):
        s.add_types(TypeCounter.OK, np.array([8, 9], np.uint32))
    with pytest.raises(ValueError, match="max_types"):
        s.add_type(TypeCounter.OK, 8)
    with pytest.raises(ValueError, match="unknown type counter 9"):
        s.add_types(9, np.array([1]))
    with pytest.raises(IndexError, match="worker 2"):
        m.shard(2)
    assert m.counter("a") == 0 and m.counter("b") == 1 and m.counter("a") == 0
    with pytest.raises(ValueError, match="'c'.*2 counter slots"):
        m.counter("c")
    with pytest.raises(KeyError, match="no counter named 'zz'"):
        s.inc("zz")
    m.gauge("g", agg="max")
    with pytest.raises(ValueError, match="agg='max'"):
        m.gauge("g")
    with pytest.raises(ValueError, match="agg must be"):
        m.gauge("h", agg="avg")
    with pytest.raises(TypeError, match="numeric"):
        s.observe_many(m.histogram("x"), np.array(["a"]))


def test_named_counters_and_gauges_aggregate_across_shards():
    m = Metrics(3)
    full = m.counter("chan.full")
    depth = m.gauge("ready.depth")                 # per-worker depth: sums to the total
    hwm = m.gauge("ready.depth.hwm", agg="max")    # high watermark: max over workers
    rate = m.gauge("emit.rate")
    for w, s in enumerate(m._shards):
        s.inc(full, w + 1)
        s.inc("chan.full")
        s.set(depth, 10 * w)
        for v in (5, 40 + w, 7):
            s.max(hwm, v)
    m.shard(0).set(rate, 2.5)
    snap = m.snapshot()
    assert snap["counters"] == {"chan.full": 1 + 2 + 3 + 3}
    assert snap["gauges"] == {"ready.depth": 30, "ready.depth.hwm": 42, "emit.rate": 2.5}
    assert m.counter_value("chan.full") == 9 and m.gauge_value("ready.depth.hwm") == 42
    m.shard(1).set("ready.depth", 0)
    assert m.gauge_value("ready.depth") == 20
    json.dumps(snap)


EDGES = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 2 ** 40 - 1, 2 ** 40, 2 ** 52 + 1]


def test_histogram_buckets_are_log2_and_vectorized_matches_scalar():
    for k in range(NBUCKETS):
        lo, hi = bucket_bounds(k)
        assert bucket_of(lo) == k and bucket_of(hi - 1) == k
    m = Metrics(2)
    h = m.histogram("lat_ns")
    for v in EDGES + [-5, 3.7]:
        m.shard(0).observe(h, v)
    m.shard(1).observe_many(h, np.array(EDGES + [-5], np.int64))
    m.shard(1).observe_many(h, np.array([3.7]))
    assert (m._shards[0].hist[h] == m._shards[1].hist[h]).all()
    assert m._shards[0].hist_sum[h] == m._shards[1].hist_sum[h] == sum(EDGES) + 3
    snap = m.snapshot()["histograms"]["lat_ns"]
    assert snap["count"] == 2 * (len(EDGES) + 2)
    assert snap["max"] == 2 ** 52 + 1
    expect = {}
    for v in EDGES + [0, 3]:
        expect[bucket_of(v)] = expect.get(bucket_of(v), 0) + 2
    assert {bucket_of(lo): n for lo, hi, n in snap["buckets"]} == expect
    json.dumps(snap)


def test_percentile_estimate_within_bucket_resolution():
    rng = np.random.default_rng(5)
    values = rng.lognormal(mean=10, sigma=1.5, size=50_000).astype(np.int64)
    m = Metrics(2)
    h = m.histogram("d")
    m.shard(0).observe_many(h, values[:20_000])
    m.shard(1).observe_many(h, values[20_000:])
    for q in (1, 50, 90, 99, 99.9):
        true = np.percentile(values, q)
        est = m.percentile("d", q)
        assert true / 2 <= est <= true * 2, (q, est, true)   # one log2 bucket of error
    assert m.percentile("d", 100) == values.max()
    assert percentile_from_buckets(np.zeros(NBUCKETS), 50) == 0.0
    with pytest.raises(ValueError, match="0..100"):
        m.percentile("d", 101)


def test_threads_hammer_shards_while_another_snapshots():
    nworkers, rounds = 4, 1500
    m = Metrics(nworkers, max_types=32)
    cid = m.counter("ops")
    hid = m.histogram("ns")
    gid = m.gauge("hwm", agg="max")
    types = (np.arange(10, dtype=np.uint32) * 3) % 32
    vals = np.array([1, 10, 100, 1000], np.int64)
    start = threading.Barrier(nworkers + 1)
    done = threading.Event()
    errors, snaps = [], []

    def worker(w):
        try:
            s = m.shard(w)
            start.wait(timeout=30)
            for i in range(rounds):
                s.add_types(TypeCounter.DEQUEUED, types)
                s.add_type(TypeCounter.OK, w, 2)
                s.inc(cid)
                s.observe_many(hid, vals)
                s.observe(hid, i)
                s.max(gid, i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def snapshotter():
        try:
            start.wait(timeout=30)
            while not done.is_set():
                snaps.append(m.snapshot())
            snaps.append(m.snapshot())
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(nworkers)]
    reader = threading.Thread(target=snapshotter)
    for t in threads + [reader]:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    done.set()
    reader.join(timeout=60)
    assert not reader.is_alive() and not errors
    assert len(snaps) >= 2
    # counters only grow between snapshots, and the last one is exact
    ops = [s["counters"]["ops"] for s in snaps]
    cnt = [s["histograms"]["ns"]["count"] for s in snaps]
    assert ops == sorted(ops) and cnt == sorted(cnt)
    final = snaps[-1]
    assert final["counters"]["ops"] == nworkers * rounds
    assert final["histograms"]["ns"]["count"] == nworkers * rounds * 5
    assert final["histograms"]["ns"]["sum"] == nworkers * (rounds * 1111 + sum(range(rounds)))
    assert final["gauges"]["hwm"] == rounds - 1
    deq = final["types"]["dequeued"]
    assert deq == {str(t): nworkers * rounds for t in types.tolist()}
    assert final["types"]["ok"] == {str(w): 2 * rounds for w in range(nworkers)}


def test_an_added_shard_is_summed_by_every_reader():
    """``add_shard``: a writer that is no worker (the call lanes of one reply channel) keeps its
    own shard; every reader sums it with the workers'."""
    m = Metrics(2)
    h = m.histogram("h")
    m.shard(0).add_type(TypeCounter.OK, 5, 2)
    extra = m.add_shard()
    extra.add_type(TypeCounter.OK, 5, 3)
    extra.observe_int(h, 7)
    assert int(m.type_counts(TypeCounter.OK)[5]) == 5
    assert int(m.histogram_buckets("h").sum()) == 1
    assert m.snapshot()["histograms"]["h"]["count"] == 1
