import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.sched import AGING_INTERVAL, EventQueue, ReadyQueue, Route, Scheduler


def test_ready_pop_is_homogeneous_and_fifo_per_bucket():
    rq = ReadyQueue(8)
    rq.push(T.make(6, type=np.array([1, 2, 1, 2, 1, 3]), seq=np.arange(6)))
    seen = {}
    while len(rq):
        b = rq.pop(10)
        assert len(set(b["type"])) == 1
        seen.setdefault(int(b["type"][0]), []).extend(b["seq"])
    assert seen == {1: [0, 2, 4], 2: [1, 3], 3: [5]}


def test_weighted_priority_popping_8_4_2_1():
    rq = ReadyQueue(1 << 12)
    for p in range(4):
        rq.push(T.make(2000, type=p + 1, priority=p))
    counts = np.zeros(4)
    for _ in range(1500):
        b = rq.pop(1)
        counts[T.priority_of(int(b["flags"][0]))] += 1
    share = counts / counts.sum()
    assert np.allclose(share, np.array([8, 4, 2, 1]) / 15, atol=0.02), share


def test_grows_instead_of_losing():
    rq = ReadyQueue(4)
    assert rq.push(T.make(100, type=1)) == 100 and len(rq) == 100


def test_aging_serves_cold_low_priority_type_under_hot_flood():
    rq = ReadyQueue(1 << 10)
    rq.push(T.make(1, type=99, priority=3))     # one cold task at the lowest priority
    served_at = None
    for i in range(1, 10 * AGING_INTERVAL):
        rq.push(T.make(1, type=1, priority=0))  # hot type keeps the top priority busy
        b = rq.pop(1)
        if b["type"][0] == 99:
            served_at = i
            break
    assert served_at is not None and served_at <= 2 * AGING_INTERVAL


def test_event_queue_orders_by_due_and_bounds_drain():
    eq = EventQueue(capacity=1000)
    eq.push(T.make(300, type=1, meta0=5), due=5)
    eq.push(T.make(2, type=1, meta0=3), due=3)
    assert len(eq.pop_due(2)) == 0
    got = eq.pop_due(10, max_n=256)
    assert len(got) == 256 and list(got["meta0"][:3]) == [3, 3, 5]
    assert len(eq.pop_due(10)) == 46 and len(eq) == 0
    assert eq.push(T.make(2000, type=1), due=1) == 1000   # bounded: caller told


def test_event_queue_withdraw_takes_back_only_the_named_records():
    eq = EventQueue(capacity=1000)
    eq.push(T.make(3, type=7, meta0=[1, 2, 3], meta1=[0, 0, 0]), due=10)
    eq.push(T.make(2, type=8, meta0=[1, 2], meta1=[0, 0]), due=10)
    eq.push(T.make(1, type=7, meta0=[4], meta1=[1]), due=20)
    eq.push(T.make(1, type=7, meta0=[5], meta1=[0]), due=5)
    # (1, 0) and (3, 0) of type 7 at tick 10, and the whole tick-20 batch; not type 8's (1, 0)
    assert eq.withdraw(7, {10: {(1, 0), (3, 0)}, 20: {(4, 1)}, 99: {(5, 0)}}) == 3
    assert len(eq) == 4
    got = eq.pop_due(100)
    assert list(zip(got["type"].tolist(), got["meta0"].tolist())) == \
        [(7, 5), (7, 2), (8, 1), (8, 2)]                      # due order kept
    assert len(eq) == 0


def _sched(nworkers=2, **kw):
    dead = []
    s = Scheduler(nworkers, dead=lambda r, c: dead.append((r.copy(), c)), **kw)
    s.known[:100] = True
    return s, dead


def test_enqueue_core_assigns_fresh_seqs_and_routes_unknown_and_poisoned():
    s, dead = _sched()
    s.poisoned[7] = True
    n = s.enqueue(T.make(4, type=np.array([1, 7, 1, 5000])), Route.SUBMIT)
    assert n == 2 and s.ready_len() == 2
    codes = sorted(c for _, c in dead)
    assert codes == sorted([T.POISONED, T.UNKNOWN_TYPE])
    b = s.pop_ready(10)
    assert list(b["seq"]) == [1, 2]
    assert s.outstanding == 2


def test_local_queue_keeps_25_percent_for_yields_then_overflow_then_error():
    s, dead = _sched(local_capacity=8, overflow_capacity=4)
    assert s.enqueue(T.make(8, type=1), Route.EMIT, worker=0) == 8
    assert len(s.local[0]) == 6 and s.ready_len() == 2      # emits stop at 75%
    assert s.enqueue(T.make(8, type=1), Route.YIELD, worker=0) == 6
    assert len(s.local[0]) == 8 and len(s.overflow) == 4     # reserve used, then overflow
    assert dead and dead[-1][1] == T.YIELD_OVERFLOW and len(dead[-1][0]) == 2


def test_retry_and_defer_go_to_event_queue():
    s, _ = _sched()
    s.enqueue(T.make(3, type=1), Route.RETRY, due=4)
    assert s.ready_len() == 0 and len(s.events) == 3 and s.outstanding == 3


def test_tenant_policy_picks_tenant_and_reports_queueing_latency():
    from ggmk.core.tenants import make_policy
    clock = iter(range(0, 10**12, 1000)).__next__
    pol = make_policy("eevdf")
    s = Scheduler(1, policy=pol, clock=clock)
    s.known[:10] = True
    s.enqueue(T.make(4, type=1, tenant=0), Route.SUBMIT)
    s.enqueue(T.make(4, type=2, tenant=1), Route.SUBMIT)
    got = set()
    while s.ready_len():
        b = s.pop_ready(2)
        got.add(int(b["tenant"][0]))
        pol.account(int(b["tenant"][0]), 1000, len(b), clock())
    st = pol.stats()
    assert got == {0, 1} and st[0]["latency_count"] == 4 and st[1]["latency_count"] == 4
    assert st[0]["latency_p50_ns"] > 0


def test_ready_queue_past_its_cap_sends_the_excess_to_sys_error_not_nowhere():
    s, dead = _sched(ready_capacity=4, ready_max_capacity=8)
    assert s.enqueue(T.make(10, type=1, meta0=np.arange(10)), Route.SUBMIT) == 8
    assert s.ready_len() == 8 and s.outstanding == 8
    assert len(dead) == 1 and dead[0][1] == T.READY_FULL
    assert list(dead[0][0]["meta0"]) == [8, 9]


def test_with_a_tenant_policy_yields_go_to_their_tenants_ready_queue():
    """As emits: the policy must pick every batch, so a yield may not wait in the worker's local
    queue (served before the ready queue 3 gathers in 4). A yield keeps its seq (the same task),
    is counted on the YIELD route and in ``outstanding``, wakes a parked worker, and is not held
    to the local queue's capacity (no overflow: the ready queue grows)."""
    from ggmk.core.tenants import make_policy
    clock = iter(range(0, 10**12, 1000)).__next__
    pol = make_policy("eevdf")
    dead, woke, counted = [], [], []
    s = Scheduler(2, policy=pol, clock=clock, local_capacity=8, overflow_capacity=4,
                  dead=lambda r, c: dead.append((r.copy(), c)), wake=woke.append)
    s.known[:10] = True
    s.on_enqueued = lambda types, w: counted.append((len(types), w))
    recs = T.make(20, type=1, tenant=np.arange(20) % 2, seq=np.arange(100, 120))
    assert s.enqueue(recs, Route.YIELD, worker=1) == 20
    assert not dead and len(s.local[1]) == 0 and len(s.overflow) == 0
    assert s.ready_len() == 20 and s.outstanding == 20 and woke == [1]
    assert s.stats()["routes"]["yield"] == 20 and counted == [(20, 1)]
    got = {0: [], 1: []}
    while s.ready_len():
        b = s.pop_ready(4)
        t = int(b["tenant"][0])
        assert (b["tenant"] == t).all()
        got[t] += b["seq"].tolist()
        pol.account(t, 1000, len(b), clock())
    assert got == {0: list(range(100, 120, 2)), 1: list(range(101, 120, 2))}   # seq, FIFO
    st = pol.stats()
    assert st[0]["picks"] == st[0]["batches"] and st[0]["latency_count"] == 10
    assert st[1]["picks"] == st[1]["batches"] and st[1]["latency_count"] == 10


def test_with_a_tenant_policy_a_yield_past_the_ready_queues_cap_is_a_yield_overflow():
    from ggmk.core.tenants import make_policy
    s, dead = _sched(policy=make_policy("eevdf"), clock=iter(range(10**9)).__next__,
                     ready_capacity=4, ready_max_capacity=8)
    assert s.enqueue(T.make(10, type=1, meta0=np.arange(10)), Route.YIELD, worker=0) == 8
    assert s.ready_len() == 8 and s.outstanding == 8 and len(s.local[0]) == 0
    assert len(dead) == 1 and dead[0][1] == T.YIELD_OVERFLOW
    assert list(dead[0][0]["meta0"]) == [8, 9]
