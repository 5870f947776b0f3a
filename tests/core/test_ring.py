import threading

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.ring import CodeRing, Ring


def recs(start, n):
    return T.make(n, type=1, seq=np.arange(start, start + n))


def test_capacity_rounds_to_power_of_two():
    assert Ring(5).capacity == 8 and Ring(8).capacity == 8
    with pytest.raises(ValueError):
        Ring(0)


def test_fifo_with_wraparound_and_counters():
    r = Ring(8)
    assert r.push(recs(0, 6)) == 6
    assert list(r.pop(4)["seq"]) == [0, 1, 2, 3]
    assert r.push(recs(6, 6)) == 6          # wraps
    assert r.push(recs(12, 1)) == 0          # full: nothing silently lost, caller told 0
    assert list(r.pop(100)["seq"]) == list(range(4, 12))
    s = r.stats()
    assert s["high_watermark"] == 8 and s["pushed"] == 12 and s["popped"] == 12 and s["rejected"] == 1


def test_partial_push_and_push_all_and_limit():
    r = Ring(8)
    assert r.push(recs(0, 10)) == 8
    r2 = Ring(8)
    assert not r2.push_all(recs(0, 10)) and len(r2) == 0
    assert r2.push(recs(0, 8), limit=6) == 6    # a reserve above the limit stays free
    assert r2.push(recs(0, 2)) == 2


def test_peek_does_not_consume():
    r = Ring(4)
    r.push(recs(0, 3)); r.pop(1); r.push(recs(3, 2))
    assert list(r.peek()["seq"]) == [1, 2, 3, 4] and len(r) == 4


def test_code_ring_keeps_codes_aligned():
    r = CodeRing(4)
    r.push_coded(recs(0, 3), [-1, -2, -3]); r.pop_coded(2)
    r.push_coded(recs(3, 3), -9)
    got, codes = r.pop_coded(10)
    assert list(got["seq"]) == [2, 3, 4, 5] and list(codes) == [-3, -9, -9, -9]


def test_mpmc_many_producers_and_consumers_lose_nothing():
    r = Ring(256)
    P, N = 4, 20_000
    seen = []
    done = threading.Event()

    def produce(p):
        i = 0
        while i < N:
            b = T.make(min(64, N - i), type=p, seq=np.arange(i, min(i + 64, N)))
            i += r.push(b)

    def consume():
        local = []
        while not (done.is_set() and len(r) == 0):
            b = r.pop(50)
            if len(b):
                local.append(b.copy())
        seen.append(np.concatenate(local) if local else T.empty(0))

    cs = [threading.Thread(target=consume) for _ in range(3)]
    ps = [threading.Thread(target=produce, args=(p,)) for p in range(P)]
    for t in cs + ps:
        t.start()
    for t in ps:
        t.join()
    done.set()
    for t in cs:
        t.join()
    allrec = np.concatenate(seen)
    assert len(allrec) == P * N
    for p in range(P):
        s = np.sort(allrec["seq"][allrec["type"] == p])
        assert np.array_equal(s, np.arange(N))


def test_grow_keeps_order_and_contents():
    r = Ring(4)
    r.push(recs(0, 3)); r.pop(2); r.push(recs(3, 3))   # wrapped: seqs 2..5
    assert r.grow(10, max_capacity=64) and r.capacity == 16
    assert r.push(recs(6, 10)) == 10
    assert list(r.pop(100)["seq"]) == list(range(2, 16))
    assert not Ring(4).grow(10, max_capacity=8)


def test_head_view_is_in_place_stops_at_the_wrap_and_consume_frees():
    r = Ring(8)
    r.push(T.make(6, meta0=np.arange(6)))
    r.consume(len(r.head_view(6)))                    # head now at 6
    r.push(T.make(5, meta0=np.arange(10, 15)))            # slots 6, 7, then wraps to 0..2
    v = r.head_view(100)
    assert v["meta0"].tolist() == [10, 11]            # stops at the buffer's end
    assert np.shares_memory(v, r.buf)                 # no copy
    r.consume(len(v))
    assert r.head_view(100)["meta0"].tolist() == [12, 13, 14]
    assert len(r) == 3 and r.popped == 8


def test_a_waking_ring_hook_that_raises_is_reported_and_the_push_stands():
    """A hook runs after the records are in the ring: one that raised escaped into the
    pusher (a publish that had accepted looked failed) and into ``signal`` (a close)."""
    from ggmk.core.ring import WakingRing
    r = WakingRing(8, name="r")
    failed = []
    r.hook_failed = lambda h, e: failed.append((h, repr(e)))
    seen = []

    def bad():
        raise RuntimeError("hook bug")

    r.hooks = (bad, lambda: seen.append(1))          # the next hook still runs
    assert r.push(recs(0, 3)) == 3
    assert r.push1(recs(3, 1).tobytes()) is True
    r.signal()
    assert len(r) == 4 and r.ready.is_set() and seen == [1, 1, 1]
    assert failed == [(bad, "RuntimeError('hook bug')")] * 3
    assert list(r.pop(8)["seq"]) == [0, 1, 2, 3]
