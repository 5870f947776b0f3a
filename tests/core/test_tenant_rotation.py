"""Without a tenant policy (the default boot) the scheduler still keeps one ready queue per
tenant id; ``pop_ready`` serves those queues in turn, one pop each. It used to serve the first
queue with work, in creation order, so one tenant's flood starved every later tenant (even a
priority-0 task of another type) for as long as the flood lasted."""
from __future__ import annotations

import threading

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.sched import AGING_INTERVAL, Route, Scheduler
from ggmk.task import OK


def _sched() -> Scheduler:
    s = Scheduler(1)
    s.known[:10] = True
    return s


def test_tenant_queues_take_turns_one_pop_each():
    s = _sched()
    s.enqueue(T.make(1000, type=1, tenant=0), Route.SUBMIT)
    s.enqueue(T.make(10, type=2, tenant=1), Route.SUBMIT)
    s.enqueue(T.make(3, type=3, tenant=2), Route.SUBMIT)
    order = []
    while s.ready_len():
        b = s.pop_ready(4)
        t = int(b["tenant"][0])
        assert (b["tenant"] == t).all()
        order.append((t, len(b)))
    assert order[:7] == [(0, 4), (1, 4), (2, 3), (0, 4), (1, 4), (0, 4), (1, 2)]
    assert all(t == 0 for t, _ in order[7:])
    assert sum(n for _, n in order) == 1013 and s.outstanding == 1013


def test_a_priority_0_task_of_another_tenant_goes_ahead_of_a_priority_3_flood():
    s = _sched()
    s.enqueue(T.make(5000, type=1, tenant=0, priority=3), Route.SUBMIT)
    s.enqueue(T.make(1, type=2, tenant=1, priority=0), Route.SUBMIT)
    got = [int(s.pop_ready(256)["tenant"][0]) for _ in range(2)]
    assert sorted(got) == [0, 1]


def test_per_type_aging_still_holds_inside_a_tenant_while_the_tenants_take_turns():
    """Tenant 0: a hot type at priority 0 and one cold task at priority 3; tenant 1 floods.
    Tenant 0's queue ages over its own pops: the cold task runs within two aging intervals
    of them."""
    s = _sched()
    s.enqueue(T.make(1, type=9, tenant=0, priority=3), Route.SUBMIT)
    s.enqueue(T.make(10 * AGING_INTERVAL, type=2, tenant=1), Route.SUBMIT)
    pops0 = 0
    for _ in range(4 * AGING_INTERVAL):
        s.enqueue(T.make(1, type=1, tenant=0), Route.SUBMIT)    # the hot type stays queued
        b = s.pop_ready(1)
        if b["tenant"][0] == 0:
            pops0 += 1
            if b["type"][0] == 9:
                break
    else:
        raise AssertionError("the cold type of tenant 0 was never served")
    assert pops0 <= 2 * AGING_INTERVAL


def test_a_flood_submitted_first_does_not_starve_a_later_tenant_on_real_workers():
    """2 workers, no policy: 20,000 tasks of tenant 0, then 100 of tenant 1. Every handler
    waits (bounded) until both submissions are in, so the workers start with the whole flood
    queued. Tenant 1's 100 tasks must all have run while most of the flood is still queued;
    then everything runs, nothing lost."""
    flood, light = 20_000, 100
    gate = threading.Event()
    lock = threading.Lock()
    ran = {0: 0, 1: 0}
    flood_ran_when_light_done = []
    m = Module("rotation")

    @m.handler("W")
    def w(ctx):
        assert gate.wait(30)
        t = int(ctx.task.tenant)
        with lock:
            ran[t] += 1
            if t == 1 and ran[1] == light:
                flood_ran_when_light_done.append(ran[0])
        return OK

    with boot([m], workers=2) as s:
        assert s.sched.policy is None
        assert s.submit("W", tenant=0, count=flood) == flood
        assert s.submit("W", tenant=1, count=light) == light
        gate.set()
        assert s.run(timeout=120)
        st = s.stats()
        assert len(s.sys_error) == 0 and len(s.sys_dropped) == 0
    assert ran == {0: flood, 1: light}
    assert st["types"]["W"]["ok"] == flood + light, st["types"]["W"]
    # (the flood's share by then: the batches the workers held at the gate and a few turns)
    assert len(flood_ran_when_light_done) == 1
    assert flood_ran_when_light_done[0] < flood // 2, flood_ran_when_light_done
