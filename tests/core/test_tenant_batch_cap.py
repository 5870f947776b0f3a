"""With a tenant policy and more than one tenant, a batch a worker pops is sized by handler
time, not by ``max_batch``: at most ``policy.batch_limit(tenant)`` tasks, about the policy's
``batch_ns`` (EEVDF: ``min_slice``) of the tenant's recent handler time per task. A light
tenant whose task arrives while a flood's batch runs waits for that batch, so 256 tasks of
200 µs each (both workers held ~50 ms) made its latency ~500x what it is without the flood.
Checked here as the batch sizes popped, not as latencies."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.sched import SHARED_BATCH, Route, Scheduler
from ggmk.core.tenants import MAX_BATCH_LIMIT, make_policy

US = 1_000


@pytest.mark.parametrize("name", ["eevdf", "rr"])
def test_batch_limit_is_the_batch_time_at_the_recent_cost_per_task(name):
    pol = make_policy(name)
    pol.add_tenant(0)
    assert pol.batch_limit(0) == MAX_BATCH_LIMIT          # one tenant: nothing to share
    pol.add_tenant(1)
    assert pol.batch_ns == 100 * US
    assert pol.batch_limit(0) == 1                        # nothing measured yet
    pol.account(0, 8 * US, 8, 0)                          # 1 µs a task
    assert pol.batch_limit(0) == 100
    pol.account(0, 200 * US, 1, 0)                        # a costly batch: at once
    assert pol.batch_limit(0) == 1
    for _ in range(40):                                   # cheap again: back within a few dozen
        pol.account(0, 8 * US, 8, 0)
    assert 50 <= pol.batch_limit(0) <= 100
    pol.account(1, 0, 5, 0)                               # 0 ns a task (a virtual clock)
    assert pol.batch_limit(1) == MAX_BATCH_LIMIT
    assert make_policy("eevdf", min_slice_us=400).batch_ns == 400 * US


def _flood_pops(policy, cost_ns: int, tenants=(0, 1), max_n: int = 256) -> list[int]:
    """Sizes of the flood tenant's (1) batches popped from a Scheduler while tenant 0 has one
    task queued now and then; each batch is accounted at ``cost_ns`` a task."""
    clock = iter(range(0, 10**15, 1000)).__next__
    s = Scheduler(1, policy=policy, clock=clock)
    s.known[:10] = True
    for t in tenants:
        if t not in policy and hasattr(policy, "add_tenant"):
            policy.add_tenant(t)
    s.enqueue(T.make(60_000, type=1, tenant=1), Route.SUBMIT)
    sizes = []
    for i in range(200):
        if i % 10 == 0 and len(tenants) > 1:
            s.enqueue(T.make(1, type=2, tenant=0), Route.SUBMIT)
        b = s.pop_ready(max_n)
        t = int(b["tenant"][0])
        if t == 1:
            sizes.append(len(b))
        policy.account(t, cost_ns * len(b), len(b), clock())
    return sizes


@pytest.mark.parametrize("name", ["eevdf", "eevdf-gentle", "rr"])
def test_a_floods_batches_are_sized_by_time_while_another_tenant_shares_the_workers(name):
    sizes = _flood_pops(make_policy(name), cost_ns=200 * US)
    assert sizes[0] == 1 and max(sizes) == 1              # 200 µs a task: one per batch
    sizes = _flood_pops(make_policy(name), cost_ns=2 * US)
    assert sizes[0] == 1 and max(sizes[1:]) == 50 and min(sizes[1:]) == 50
    # a lone tenant keeps max_batch
    assert set(_flood_pops(make_policy(name), cost_ns=200 * US, tenants=(1,))) == {256}


def test_a_policy_without_batch_limit_pops_a_small_count_once_a_second_tenant_has_work():
    class NoLimit:
        """The tenant policy calls the scheduler makes, and no batch_limit."""
        name = "fifo"

        def __init__(self):
            self.seen = []

        def __contains__(self, t):
            return t in self.seen

        def add_tenant(self, t, **kw):
            self.seen.append(t)

        def wake(self, t, now):
            pass

        def sleep(self, t, now):
            pass

        def pick(self, now):
            return 1

        def account(self, t, ns, n, now):
            pass

        def observe_latency(self, t, lat):
            pass

    assert set(_flood_pops(NoLimit(), cost_ns=1, tenants=(1,))) == {256}
    pol = NoLimit()
    clock = iter(range(0, 10**15, 1000)).__next__
    s = Scheduler(1, policy=pol, clock=clock)
    s.known[:10] = True
    s.enqueue(T.make(500, type=1, tenant=1), Route.SUBMIT)
    s.enqueue(T.make(1, type=2, tenant=0), Route.SUBMIT)
    assert len(s.pop_ready(256)) == SHARED_BATCH


def test_on_real_workers_a_cpu_flood_runs_one_200us_task_a_batch_next_to_a_light_tenant():
    """``boot(tenants={0: 0, 1: 0})``, 2 workers, max_batch 256: tenant 1 floods tasks that
    burn 200 µs of CPU each, tenant 0 sends a few; every batch handler call logs its size.
    Every flood batch holds one task (the policy's 100 µs over the measured >= 200 µs a task;
    before the first measurement, 1), and every task runs."""
    flood, light = 400, 20
    sizes = {0: [], 1: []}
    lock = threading.Lock()
    m = Module("batchcap")

    @m.handler("BURN", batch=True)
    def burn(ctx, batch):
        end = time.thread_time_ns() + 200 * US * len(batch)
        while time.thread_time_ns() < end:
            pass
        with lock:
            sizes[int(batch.tenant[0])].append(len(batch))

    with boot([m], workers=2, max_batch=256, policy="eevdf", tenants={0: 0, 1: 0}) as s:
        assert s.submit("BURN", tenant=1, count=flood) == flood
        for _ in range(light):
            assert s.submit("BURN", tenant=0) == 1
        assert s.run(timeout=120)
        st = s.stats()
        assert len(s.sys_error) == 0 and len(s.sys_dropped) == 0
    assert sum(sizes[1]) == flood and sum(sizes[0]) == light
    assert set(sizes[1]) == {1}, np.unique(sizes[1], return_counts=True)
    assert st["tenants"][1]["tasks"] == flood and st["tenants"][0]["tasks"] == light
