"""The bridge's GPU -> CPU order restore (``ggmk.bridge.flow.Reorder``): the device forwards a
channel's messages out of order, in batches; the host hands them on in channel-sequence order,
each once, with messages that died on the device closing their gap (never delivered), all as
NumPy columns. Random arrival orders against the plain answer."""
import numpy as np

from ggmk import task as T
from ggmk.bridge.flow import Reorder


def _run(order, dead, chunk_sizes):
    ro = Reorder()
    nxt = 1
    out = []
    pos = 0
    for k in chunk_sizes:
        seqs = np.asarray(order[pos:pos + k], np.int64)
        pos += k
        recs = T.make(len(seqs), type=7, meta0=seqs.astype(np.uint64))
        live = np.array([s not in dead for s in seqs.tolist()], bool)
        ro.add(recs, seqs, live)
        run, nxt = ro.pop_run(nxt)
        if run is not None:
            out.extend(run["meta0"].tolist())
    return out, nxt, len(ro)


def test_random_arrival_orders_come_out_in_sequence_each_once():
    rng = np.random.default_rng(12)
    for trial in range(200):
        n = int(rng.integers(1, 400))
        order = (rng.permutation(n) + 1).tolist()
        if trial % 3 == 0:          # nearly in order: blocks of a few swapped neighbours
            order = sorted(order, key=lambda s: s + rng.integers(0, 4))
        dead = set(rng.choice(n, size=int(rng.integers(0, max(1, n // 10))), replace=False)
                   .tolist()) if trial % 2 else set()
        dead = {d + 1 for d in dead}
        sizes = []
        left = n
        while left:
            k = int(rng.integers(1, 70))
            k = min(k, left)
            sizes.append(k)
            left -= k
        out, nxt, held = _run(order, dead, sizes)
        assert out == [s for s in range(1, n + 1) if s not in dead]
        assert nxt == n + 1 and held == 0


def test_a_gap_holds_everything_behind_it_until_it_closes():
    ro = Reorder()
    recs = T.make(3, type=7, meta0=np.array([2, 3, 4], np.uint64))
    ro.add(recs, np.array([2, 3, 4]))
    run, nxt = ro.pop_run(1)
    assert run is None and nxt == 1 and len(ro) == 3 and ro
    recs1 = T.make(1, type=7, meta0=np.array([1], np.uint64))
    ro.add(recs1, np.array([1]), np.zeros(1, bool))          # seq 1 died on the device
    run, nxt = ro.pop_run(1)
    assert run["meta0"].tolist() == [2, 3, 4] and nxt == 5 and len(ro) == 0 and not ro
    merged = ro.merged()
    assert len(merged[0]) == 0
