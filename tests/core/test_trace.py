"""Tests of ggmk.core.trace: levels, forcing, sampling, rings, drain, hashing, stripping."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core import trace as tr_mod
from ggmk.core.trace import (NullTracer, Tracer, TraceHasher, make_tracer, parse_level,
                             scaled_counts, trace_hash)
from ggmk.events import SAMPLED_BIT, TRACE_DTYPE, EventType as E, Level

A_TYPE, B_TYPE, OTHER_TYPE = 3, 9, 20


class Tick:
    """A deterministic clock: 1, 2, 3, ..."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        self.t += 1
        return self.t


def two_modules(**kw) -> Tracer:
    tr = Tracer(2, capacity=1024, clock=Tick(), **kw)
    tr.register_type(A_TYPE, "A")
    tr.register_type(B_TYPE, "B")
    tr.set_level("A", Level.ERROR)
    tr.set_level("B", "all")
    return tr


def events_of(ev, code):
    return ev[(ev["event"] & ~SAMPLED_BIT) == int(code)]


# -- levels ------------------------------------------------------------------------------------

def test_level_filtering_per_module_batch():
    tr = two_modules()
    types = np.array([A_TYPE, B_TYPE, OTHER_TYPE] * 10)
    recs = T.make(30, type=types, seq=np.arange(30), tenant=np.arange(30) % 4)
    assert tr.emit_batch(0, E.TASK_START, recs) == 10     # only module B is at ALL
    ev = tr.drain()
    assert set(ev["task_type"]) == {B_TYPE}
    assert list(ev["arg0"]) == list(range(1, 30, 3))      # arg0 defaults to seq, order kept
    assert list(ev["tenant"]) == [i % 4 for i in range(1, 30, 3)]
    # TASK_FAIL is an ERROR event: A (ERROR), B (ALL) and the default WARN type all keep it
    assert tr.emit_batch(0, E.TASK_FAIL, recs) == 30
    # TASK_RETRY is WARN: A drops it, B and the unregistered type (default WARN) keep it
    assert tr.emit_batch(1, E.TASK_RETRY, recs) == 20
    assert set(tr.drain()["task_type"][-20:]) == {B_TYPE, OTHER_TYPE}
    st = tr.stats()
    assert st["total"]["filtered"] == 20 + 0 + 10
    assert st["workers"][0]["emitted"] == 40 and st["workers"][1]["emitted"] == 20


def test_level_filtering_per_module_scalar():
    tr = two_modules()
    assert not tr.emit(0, E.TASK_START, 0, A_TYPE)
    assert tr.emit(0, E.TASK_START, 0, B_TYPE, 5, 6)
    assert tr.emit(0, E.TASK_FAIL, 0, A_TYPE)
    assert not tr.emit(0, E.TASK_YIELD, 0, OTHER_TYPE)     # INFO > default WARN
    assert tr.emit(0, E.CHAN_FULL, 0, 10 ** 6)              # a type beyond the table: default
    ev = tr.drain()
    assert [(int(e["event"]), int(e["task_type"])) for e in ev] == [
        (E.TASK_START, B_TYPE), (E.TASK_FAIL, A_TYPE), (E.CHAN_FULL, 10 ** 6)]
    assert (int(ev[0]["arg0"]), int(ev[0]["arg1"])) == (5, 6)


def test_level_changes_apply_and_module_level_may_precede_registration():
    tr = Tracer(1, capacity=64)
    tr.set_level("late", "all")
    recs = T.make(4, type=50)
    assert tr.emit_batch(0, E.TASK_START, recs) == 0
    tr.register_type(50, "late")
    assert tr.level_of(50) == Level.ALL
    assert tr.emit_batch(0, E.TASK_START, recs) == 4
    tr.set_level("late", "off")
    assert tr.emit_batch(0, E.TASK_FAIL, recs) == 0
    tr.set_default_level("all")
    assert tr.level_of(51) == Level.ALL and tr.level_of(50) == Level.OFF


def test_bad_configuration_is_refused_with_names():
    with pytest.raises(ValueError, match="power of two"):
        Tracer(1, capacity=1000)
    with pytest.raises(ValueError, match="sample_rate"):
        Tracer(1, sample_rate=0)
    tr = Tracer(2, capacity=16)
    with pytest.raises(ValueError, match="'kv'.*'loud'"):
        tr.set_level("kv", "loud")
    with pytest.raises(ValueError, match="module"):
        tr.register_type(1, "")
    with pytest.raises(IndexError, match="worker 2"):
        tr.emit(2, E.TASK_FAIL, 0, 0)
    with pytest.raises(IndexError, match="worker -1"):
        tr.emit_batch(-1, E.TASK_FAIL, T.make(1))
    with pytest.raises(TypeError, match="TASK_DTYPE"):
        tr.emit_batch(0, E.TASK_FAIL, np.zeros(3, TRACE_DTYPE))
    with pytest.raises(ValueError, match="event code"):
        tr.emit(0, 0x9000, 0, 0, force=True)
    assert parse_level(3) == Level.INFO and parse_level(" Warn ") == Level.WARN


def test_batch_array_arguments_follow_the_surviving_records():
    tr = two_modules(sample_rate=3)
    flags = np.where(np.arange(60) % 7 == 0, T.FLAG_EMIT_TRACE, 0)
    types = np.array([A_TYPE, B_TYPE] * 30)
    recs = T.make(60, type=types, flags=flags, seq=np.arange(60))
    i = np.arange(60)
    n = tr.emit_batch(1, E.TASK_START, recs, arg0=1000 + i, arg1=2000 + i, ts=5000 + i)
    ev = tr.drain()
    assert len(ev) == n > 0
    pos = ev["arg0"].astype(np.int64) - 1000
    assert (ev["arg1"] == 2000 + pos).all() and (ev["ts"] == 5000 + pos).all()
    assert (types[pos] == ev["task_type"]).all()
    # module A is at ERROR: its TASK_STARTs are there only when flagged
    assert (flags[pos][ev["task_type"] == A_TYPE] != 0).all()
    sampled = (ev["event"] & SAMPLED_BIT) != 0
    assert (flags[pos][sampled] == 0).all() and (flags[pos][~sampled] != 0).all()
    assert tr.emit_batch(1, E.TASK_END, recs[:0]) == 0


# -- forced tracing ----------------------------------------------------------------------------

def test_emit_trace_flag_forces_tracing_whatever_the_level_and_sampling():
    tr = Tracer(1, capacity=4096, default_level="off", sample_rate=1000, clock=Tick())
    flags = np.where(np.arange(100) % 10 == 0, T.FLAG_EMIT_TRACE, 0)
    recs = T.make(100, type=1, flags=flags, seq=np.arange(100))
    assert tr.emit_batch(0, E.TASK_START, recs) == 10
    assert tr.emit(0, E.TASK_END, 0, 1, arg0=7, force=True)
    assert not tr.emit(0, E.TASK_END, 0, 1)
    ev = tr.drain()
    assert list(ev["arg0"]) == list(range(0, 100, 10)) + [7]
    assert not (ev["event"] & SAMPLED_BIT).any()            # forced events are never sampled
    tr.set_default_level("all")
    # at ALL with rate 1000 the flagged ones still all come through, unflagged are sampled
    tr.emit_batch(0, E.TASK_START, np.concatenate([recs] * 10))
    ev = tr.drain()
    forced = ev[(ev["event"] & SAMPLED_BIT) == 0]
    assert len(forced) == 100 and set(forced["arg0"] % 10) == {0}


# -- sampling ----------------------------------------------------------------------------------

N_SAMPLE, RATE = 100_000, 10
# Each block of RATE consecutive candidates keeps one at a uniform position (stratified
# sampling), so a type making up a fraction p of every block is kept with variance
# (N/RATE) p (1-p) blocks; scaled by RATE its sd is sqrt(N*RATE*p(1-p)) = 500 events for p=1/2,
# i.e. 1% of 50,000. 3% is 3 sd: the check fails for a sampler that is biased or aliased, not
# by chance (and the seeds are fixed, so it is deterministic).
TOL = 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_scales_back_within_tolerance_scalar_alternating(seed):
    # START/END alternating: "keep every 10th" would keep only STARTs (or only ENDs)
    tr = Tracer(1, capacity=1 << 16, default_level="all", sample_rate=RATE, seed=seed,
                clock=Tick())
    for i in range(N_SAMPLE // 2):
        tr.emit(0, E.TASK_START, 0, 1, i)
        tr.emit(0, E.TASK_END, 0, 1, i)
    ev = tr.drain()
    assert ((ev["event"] & SAMPLED_BIT) != 0).all()
    counts = tr.scaled_counts(ev)
    for code in (E.TASK_START, E.TASK_END):
        assert abs(counts[code] - N_SAMPLE / 2) <= TOL * N_SAMPLE / 2, counts
    st = tr.stats()["total"]
    assert st["emitted"] + st["sampled_out"] == N_SAMPLE
    assert abs(st["emitted"] * RATE - N_SAMPLE) <= RATE      # one per block of RATE


@pytest.mark.parametrize("seed", [0, 7])
def test_sampling_scales_back_within_tolerance_batches_mixed_types(seed):
    rng = np.random.default_rng(100 + seed)
    tr = Tracer(2, capacity=1 << 17, sample_rate=RATE, seed=seed, clock=Tick())
    tr.register_type(1, "m1")
    tr.register_type(2, "m2")
    tr.set_level("m1", "all")
    tr.set_level("m2", "all")
    types = rng.choice([1, 2], size=N_SAMPLE, p=[0.3, 0.7])
    sizes = rng.integers(1, 300, size=2000)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    bounds = bounds[bounds < N_SAMPLE].tolist() + [N_SAMPLE]
    recs = T.make(N_SAMPLE, type=types, seq=np.arange(N_SAMPLE))
    for a, b in zip(bounds[:-1], bounds[1:]):           # uneven batches cross block borders
        tr.emit_batch(a % 2, E.TASK_START, recs[a:b])
    ev = tr.drain()
    assert ((ev["event"] & SAMPLED_BIT) != 0).all()
    for t in (1, 2):
        true = int((types == t).sum())
        scaled = scaled_counts(ev[ev["task_type"] == t], RATE)[E.TASK_START]
        assert abs(scaled - true) <= TOL * true, (t, scaled, true)
    # the kept ones are the right records: arg0 (= seq) points at a record of that type
    assert (types[ev["arg0"]] == ev["task_type"]).all()


@pytest.mark.parametrize("rate", [2, 3, 10, 64])
def test_sampling_keeps_exactly_one_per_block_across_any_batch_split(rate):
    rng = np.random.default_rng(rate)
    tr = Tracer(1, capacity=1 << 14, default_level="all", sample_rate=rate, seed=rate)
    total = 0
    while total < 6000:
        m = int(rng.integers(1, 3 * rate))
        if rng.random() < 0.2:
            for j in range(m):          # scalar and batch calls share one sampler per worker
                tr.emit(0, E.TASK_START, 0, 1, arg0=total + j)
        else:
            tr.emit_batch(0, E.TASK_START, T.make(m, type=1, seq=np.arange(total, total + m)))
        total += m
    blocks = tr.drain()["arg0"].astype(np.int64) // rate
    assert len(np.unique(blocks)) == len(blocks)               # never two in one block
    assert set(range(total // rate)) <= set(blocks.tolist())    # every full block has one


def test_sampling_is_deterministic_per_seed():
    def run(seed):
        tr = Tracer(1, capacity=1 << 14, default_level="all", sample_rate=8, seed=seed,
                    clock=Tick())
        recs = T.make(5000, type=1, seq=np.arange(5000))
        for a in range(0, 5000, 37):
            tr.emit_batch(0, E.TASK_START, recs[a:a + 37])
            tr.emit(0, E.TASK_END, 0, 1, a)
        return trace_hash(tr.drain())
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_rate_one_sets_no_sampled_bit():
    tr = Tracer(1, capacity=64, default_level="all")
    tr.emit_batch(0, E.TASK_START, T.make(10))
    tr.emit(0, E.TASK_END, 0, 0)
    ev = tr.drain()
    assert len(ev) == 11 and not (ev["event"] & SAMPLED_BIT).any()
    assert scaled_counts(ev, 1) == {E.TASK_START: 10.0, E.TASK_END: 1.0}


# -- rings and drain ---------------------------------------------------------------------------

def test_overwrite_when_full_keeps_newest_and_counts():
    tr = Tracer(1, capacity=16, default_level="all")
    for i in range(40):
        tr.emit(0, E.TASK_START, 0, 1, arg0=i, ts=1000 + i)
    assert tr.stats()["workers"][0]["overwritten"] == 24      # before any drain
    ev = tr.drain()
    assert list(ev["arg0"]) == list(range(24, 40))
    assert tr.stats()["total"] == {"emitted": 40, "sampled_out": 0, "filtered": 0,
                                   "overwritten": 24}
    # one batch bigger than the ring: only its newest `capacity` survive, wrapping the ring
    tr.emit(0, E.TASK_START, 0, 1, arg0=99, ts=2000)
    recs = T.make(50, type=1, seq=np.arange(50))
    tr.emit_batch(0, E.TASK_START, recs, ts=np.arange(3000, 3050))
    ev = tr.drain()
    assert list(ev["arg0"]) == list(range(34, 50))
    assert tr.stats()["total"]["overwritten"] == 24 + 1 + 34
    assert len(tr.drain()) == 0


def test_drain_merges_workers_sorted_by_ts_and_respects_max_events():
    tr = Tracer(3, capacity=64, default_level="all")
    for i in range(30):
        tr.emit(i % 3, E.TASK_START, 0, 1, arg0=i, ts=(i * 7) % 30)
    part = tr.drain(max_events=10)
    assert len(part) == 10 and (np.diff(part["ts"].astype(np.int64)) >= 0).all()
    rest = tr.drain()
    assert len(rest) == 20
    assert sorted(np.concatenate([part, rest])["arg0"].tolist()) == list(range(30))
    # ties on ts keep ring order (stable)
    tr.emit(1, E.TASK_END, 0, 1, arg0=1, ts=5)
    tr.emit(0, E.TASK_END, 0, 1, arg0=0, ts=5)
    tr.emit(0, E.TASK_END, 0, 1, arg0=2, ts=4)
    assert list(tr.drain()["arg0"]) == [2, 0, 1]
    assert len(tr.drain(max_events=0)) == 0


def test_ring_discards_slots_a_writer_is_rewriting():
    """A writer announces `reserved` before touching slots: what a drain copied from those slots
    may be torn, so the drain drops them and counts them as overwritten."""
    tr = Tracer(1, capacity=8, default_level="all")
    for i in range(8):
        tr.emit(0, E.TASK_START, 0, 1, arg0=i, ts=i)
    ring = tr._rings[0]
    ring.reserved = ring.tail + 3      # a writer is mid-way through a 3-record batch
    ring.buf["arg0"][:3] = 0xDEAD      # ...and has already scribbled over slots 0..2
    ev = tr.drain()
    assert list(ev["arg0"]) == [3, 4, 5, 6, 7]
    assert tr.stats()["total"]["overwritten"] == 3
    ring.buf["arg0"][:3] = [100, 101, 102]
    ring.tail = ring.reserved          # the writer publishes
    assert list(tr.drain()["arg0"]) == [100, 101, 102]


class _WriterStepsInDuringCopy(np.ndarray):
    """The ring's buffer, but copying a slice of it first lets a writer run: the exact
    interleaving "drain snapshots tail, writer laps the ring, drain copies" made deterministic."""
    hook = None

    def copy(self, *a, **k):
        hook, type(self).hook = type(self).hook, None
        if hook:
            hook()
        return np.asarray(self).copy(*a, **k)


def test_drain_drops_slots_rewritten_while_it_copied():
    tr = Tracer(1, capacity=8, default_level="all")
    for i in range(8):
        tr.emit(0, E.TASK_START, 0, 1, arg0=i, ts=i)
    ring = tr._rings[0]
    ring.raw = ring.raw.view(_WriterStepsInDuringCopy)
    _WriterStepsInDuringCopy.hook = lambda: [
        tr.emit(0, E.TASK_START, 0, 1, arg0=100 + j, ts=100 + j) for j in range(3)]
    ev = tr.drain()                    # copied slots 0..2 already hold positions 8..10
    assert list(ev["arg0"]) == [3, 4, 5, 6, 7]
    assert list(tr.drain()["arg0"]) == [100, 101, 102]
    assert tr.stats()["total"]["overwritten"] == 3


def test_drain_concurrent_with_writer_thread_no_torn_or_duplicated_records():
    # every field is a function of arg0, so a record mixing two writes shows
    total, batch = 200_000, 97
    tr = Tracer(2, capacity=512, default_level="all")
    stop = threading.Event()
    errors = []

    def writer(worker):
        try:
            base = worker << 28
            for a in range(0, total, batch):
                ids = np.arange(a, min(a + batch, total), dtype=np.int64) + base
                recs = T.make(len(ids), type=ids % 1000, tenant=ids % 65000, seq=ids)
                tr.emit_batch(worker, E.TASK_START, recs, arg1=ids * 3, ts=ids)
                if a % (batch * 50) == 0:
                    tr.emit(worker, E.TASK_END, int(ids[0] % 65000), int(ids[0] % 1000),
                            arg0=int(ids[0]) | (1 << 27), arg1=int(ids[0] * 3), ts=int(ids[0]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    got = []
    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    drainer_done = threading.Event()

    def drainer():
        while not stop.is_set():
            got.append(tr.drain(max_events=300))
        got.append(tr.drain())
        drainer_done.set()

    d = threading.Thread(target=drainer)
    d.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    stop.set()
    assert drainer_done.wait(timeout=60)
    d.join(timeout=10)
    assert not errors
    ev = np.concatenate(got)
    key = ev["arg0"].astype(np.int64) & ~(1 << 27)
    assert len(np.unique(ev["arg0"])) == len(ev), "duplicated records"
    assert (ev["ts"].astype(np.int64) == key).all()
    assert (ev["arg1"].astype(np.int64) == (key * 3) & 0xFFFFFFFF).all()
    assert (ev["task_type"].astype(np.int64) == key % 1000).all()
    assert (ev["tenant"].astype(np.int64) == key % 65000).all()
    st = tr.stats()["total"]
    assert st["overwritten"] + len(ev) == st["emitted"]
    assert len(ev) > 0


# -- hashing -----------------------------------------------------------------------------------

def random_events(n, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, TRACE_DTYPE)
    ev["ts"] = rng.integers(0, 20, n)
    ev["event"] = rng.integers(1, 18, n)
    ev["tenant"] = rng.integers(0, 3, n)
    ev["task_type"] = rng.integers(0, 5, n)
    ev["arg0"] = rng.integers(0, 4, n)
    ev["arg1"] = rng.integers(0, 4, n)
    return ev


def test_trace_hash_is_permutation_invariant_and_field_sensitive():
    ev = random_events(500)
    h = trace_hash(ev)
    assert len(h) == 32
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert trace_hash(ev[rng.permutation(len(ev))]) == h
    for field in TRACE_DTYPE.names:
        for i in (0, 250, 499):
            changed = ev.copy()
            changed[field][i] += 1
            assert trace_hash(changed) != h, (field, i)
    assert trace_hash(ev[:-1]) != h
    assert trace_hash(np.concatenate([ev, ev[:1]])) != h       # multiset, not set
    assert trace_hash(ev[:0]) == trace_hash(np.zeros(0, TRACE_DTYPE))
    with pytest.raises(TypeError, match="TRACE_DTYPE"):
        trace_hash(np.zeros(3, np.uint64))


def test_trace_hash_same_run_different_worker_interleavings():
    def run(order):
        tr = Tracer(2, capacity=256, default_level="all")
        recs = T.make(10, type=1, seq=np.arange(10))
        for tick in range(5):
            for w in order:
                tr.emit_batch(w, E.TASK_START, recs[w * 5:(w + 1) * 5], ts=tick)
        return tr.drain()
    a, b = run((0, 1)), run((1, 0))
    assert trace_hash(a) == trace_hash(b)


def test_trace_hasher_is_chunking_invariant_and_sensitive():
    ev = random_events(2000, seed=3)
    whole = TraceHasher()
    whole.update(ev)
    ref = whole.hexdigest()
    # by tick, sealing as we go, chunks in scrambled order within the unsealed window
    h = TraceHasher()
    order = np.argsort(ev["ts"], kind="stable")
    evs = ev[order]
    for tick in range(20):
        chunk = evs[evs["ts"] == tick]
        rng = np.random.default_rng(tick)
        chunk = chunk[rng.permutation(len(chunk))]
        h.update(chunk[: len(chunk) // 2])
        h.update(chunk[len(chunk) // 2:], complete_through=tick)
    assert h.hexdigest() == ref
    assert h.events == 2000 and h.ticks == 20
    changed = ev.copy()
    changed["arg1"][17] ^= 1
    h2 = TraceHasher()
    h2.update(changed)
    assert h2.hexdigest() != ref
    # moving an event to another tick changes the identity even if the multiset of other
    # fields is the same
    moved = ev.copy()
    moved["ts"][5] = (moved["ts"][5] + 1) % 20
    h3 = TraceHasher()
    h3.update(moved)
    assert h3.hexdigest() != ref


def test_trace_hasher_refuses_events_for_sealed_ticks():
    h = TraceHasher()
    ev = random_events(10)
    ev["ts"] = 5
    h.update(ev, complete_through=5)
    with pytest.raises(ValueError, match="tick 3 .*<= 5"):
        h.update(np.array([(3, 1, 0, 0, 0, 0)], TRACE_DTYPE))


# -- stripping ---------------------------------------------------------------------------------

def public_api(cls):
    return {n: v for n, v in inspect.getmembers(cls) if not n.startswith("_")}


def test_null_tracer_has_the_whole_tracer_api():
    real, null = public_api(Tracer), public_api(NullTracer)
    missing = set(real) - set(null)
    assert not missing, f"NullTracer lacks {missing}"
    for name, member in real.items():
        if callable(member):
            assert (list(inspect.signature(member).parameters)
                    == list(inspect.signature(null[name]).parameters)), name
    nt = NullTracer(2)
    assert nt.enabled is False and Tracer.enabled is True
    assert nt.emit(0, E.TASK_FAIL, 0, 0, force=True) is False
    assert nt.emit_batch(0, E.TASK_START, T.make(3)) == 0
    assert nt.drain().dtype == TRACE_DTYPE and len(nt.drain()) == 0
    assert nt.stats()["total"] == {"emitted": 0, "sampled_out": 0, "filtered": 0,
                                   "overwritten": 0}
    assert len(nt.stats()["workers"]) == 2


def test_make_tracer_switch():
    assert isinstance(make_tracer(False, nworkers=2), NullTracer)
    t = make_tracer(True, nworkers=2, capacity=32, default_level="all")
    assert isinstance(t, Tracer) and t.capacity == 32
    assert tr_mod.ENABLED == (os.environ.get("GGMK_TRACE", "1") != "0")


@pytest.mark.parametrize("value,stripped", [("0", True), ("1", False)])
def test_env_var_strips_tracing_in_a_fresh_process(value, stripped):
    code = ("from ggmk.core.trace import make_tracer, ENABLED;"
            "t = make_tracer(True, nworkers=1);"
            "print(type(t).__name__, ENABLED, t.enabled)")
    env = dict(os.environ, GGMK_TRACE=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == (["NullTracer", "False", "False"] if stripped else ["Tracer", "True", "True"])


def _hammer(tr, ring, nthreads=4, per=20000):
    """``nthreads`` threads write ``per`` events each to ``ring`` (half one by one, half in
    batches of 10), with thread switches as frequent as the interpreter allows."""
    go = threading.Barrier(nthreads)

    def writer(i):
        go.wait()
        base = i * per
        for j in range(0, per // 2):
            tr.emit(ring, E.TASK_FAIL, 0, A_TYPE, arg0=base + j)
        for j in range(per // 2, per, 10):
            tr.emit_batch(ring, E.TASK_FAIL, T.make(10, type=A_TYPE),
                          arg0=np.arange(base + j, base + j + 10))
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ths = [threading.Thread(target=writer, args=(i,)) for i in range(nthreads)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return nthreads * per


def test_a_shared_ring_keeps_every_event_of_concurrent_writers():
    tr = Tracer(3, capacity=1 << 17, default_level="all", shared=(2,))
    total = _hammer(tr, 2)
    ev = tr.drain()
    st = tr.stats()["workers"][2]
    assert st["emitted"] == total and st["overwritten"] == 0
    assert len(ev) == total and len(np.unique(ev["arg0"])) == total


def test_a_shared_ring_has_one_writer_at_a_time():
    """The ring write itself is single-producer (read tail, write, publish): two threads inside
    it at once lose records. A shared ring lets one in at a time: the first writer holds the
    ring open until a second one gets in or 0.5 s pass; none may get in."""
    tr = Tracer(2, capacity=1024, default_level="all", shared=(1,))
    inside, most = [0], [0]
    second_in = threading.Event()

    class Watched:
        """The ring, counting the writers inside its write at once."""

        def __init__(self, ring):
            self.ring = ring

        def __getattr__(self, name):
            return getattr(self.ring, name)

        def _in(self, real, data):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] > 1:
                second_in.set()
            elif not second_in.is_set():
                second_in.wait(0.5)       # (the second writer, if it could get in)
            real(data)
            inside[0] -= 1

        def write_one(self, rec):
            self._in(self.ring.write_one, rec)

        def write(self, data):
            self._in(self.ring.write, data)
    tr._rings[1] = Watched(tr._rings[1])
    ths = [threading.Thread(target=tr.emit, args=(1, E.TASK_FAIL, 0, A_TYPE)),
           threading.Thread(target=tr.emit_batch, args=(1, E.TASK_FAIL, T.make(3)))]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert most[0] == 1 and len(tr.drain()) == 4


def test_shared_rings_are_checked():
    with pytest.raises(ValueError, match="shared ring"):
        Tracer(2, shared=(2,))


def test_kernel_traces_failures_and_channel_drops_on_the_workers_own_ring():
    """TASK_FAIL (a handler's failure) and CHAN_DROP (a lossy channel's full subscriber), both
    on the worker that ran the handler: its ring, its Perfetto track; the host ring (shared by
    every other thread) gets none of them."""
    import ggmk
    from ggmk import FAIL
    prod = ggmk.Module("prod")
    out = prod.produces("c.lossy", "MSG", mode="fanout", guarantee="lossy", capacity=4)

    @prod.handler("GEN")
    def gen(ctx):
        for i in range(20):
            ctx.emit(out, meta0=i)
        return FAIL

    sink = ggmk.Module("sink")

    @sink.handler("SINK", consumes="c.lossy", message="MSG", batch=True)
    def sinkh(ctx, batch):
        pass

    with ggmk.boot([prod, sink], workers=2, hal="threads", host_helps=False,
                   poison_threshold=10**9) as s:
        s.submit("GEN", meta0=np.arange(200))
        assert s.run(timeout=30)
        nw = s.nworkers
        per_ring = [r.read(None) for r in s.tracer._rings]
        dropped = s.stats()["channels"]["c.lossy"]["dropped"]
        assert s.tracer.stats()["total"]["overwritten"] == 0
    code = lambda ev: (ev["event"] & (SAMPLED_BIT - 1)) if ev is not None else np.empty(0)  # noqa: E731
    host = code(per_ring[nw])
    assert not np.isin(host, [E.TASK_FAIL, E.CHAN_DROP]).any()
    workers = np.concatenate([code(r) for r in per_ring[:nw]])
    assert int((workers == E.TASK_FAIL).sum()) == 200
    assert dropped > 0 and int((workers == E.CHAN_DROP).sum()) == dropped


def test_a_tally_is_added_to_its_slot_in_stats():
    """``tally``: counts kept under another lock (the call lanes of one reply channel) are
    added to their slot's by ``stats``, as if the slot had counted them."""
    from ggmk.core.trace import Tracer
    tr = Tracer(nworkers=3, capacity=64, shared=(2,))
    tr.skipped(2, 1)
    t = tr.tally(2)
    t[2] += 4
    st = tr.stats()
    assert st["workers"][2]["filtered"] == 5 and st["total"]["filtered"] == 5
    assert st["workers"][0]["filtered"] == 0
    with pytest.raises(IndexError, match="Tracer.tally: worker 3 out of range 0..2"):
        tr.tally(3)
