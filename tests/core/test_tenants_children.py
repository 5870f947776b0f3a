"""Children a handler emits and the tenant policy (issue 6, step 3).

``ctx.emit`` goes through the enqueue core on ``Route.EMIT``. Without a tenant policy the
children go to the emitting worker's *local* queue, which a worker pops on 3 of every 4 gathers;
with a policy (core/sched.py ``Scheduler._route``) they go to their tenant's ready queue, so
the policy chooses every batch. Before that change, a tenant running 64 self-feeding chains got
~76% of the handler time against an equal-weight flood on the ``sim`` HAL below; now 50%.

The benchmark (bench/tenants.py) does not hit this: neither of its tenants emits.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.tenants import EevdfBorePolicy

# CPU shares between real threads: `make test` runs this file after the parallel pass, alone
pytestmark = pytest.mark.serial

US = 1_000
CHAINS = 64      # chains in flight: enough that the tenant's queue never runs dry


def _chain_vs_flood(workers: int, seconds: float = 0.5) -> tuple[dict, float]:
    m = Module("chains")

    @m.handler("CHAIN")
    def chain(ctx):
        ctx.system.hal.now += 100 * US                 # 100 µs of (virtual) work
        ctx.emit("CHAIN", meta0=ctx.task.meta0)        # and a child: the tenant feeds itself

    @m.handler("PLAIN")
    def plain(ctx):
        ctx.system.hal.now += 100 * US

    with boot([m], hal="sim", workers=workers, seed=3, tenants={0: 0, 1: 0}) as s:
        s.hal.max_batch_choices = (1, 2, 4)
        s.submit("CHAIN", tenant=0, count=CHAINS)
        s.submit("PLAIN", tenant=1, count=int(seconds * 1e6 / 100) * workers + 100)
        s.run(seconds, until_idle=False)
        st = s.stats()["tenants"]
    a, b = st[0]["handler_time_ns"], st[1]["handler_time_ns"]
    return st, a / (a + b)


@pytest.mark.parametrize("workers", [1, 2])
def test_emitted_children_are_billed_to_their_tenant(workers):
    """What holds today: every batch, local-queue ones included, is billed to its tenant."""
    st, _ = _chain_vs_flood(workers)
    assert st[0]["tasks"] > 1000 and st[1]["tasks"] > 1000
    assert st[0]["handler_time_ns"] == st[0]["tasks"] * 100 * US
    assert st[1]["handler_time_ns"] == st[1]["tasks"] * 100 * US


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tenant_that_feeds_itself_gets_only_its_share(workers):
    _, share = _chain_vs_flood(workers)
    assert share == pytest.approx(0.5, abs=0.05), share


# -- yields -------------------------------------------------------------------------------------
# A task that yields is re-queued on ``Route.YIELD``. Without a policy it goes back to the
# worker's local queue (its reserve, then the overflow queue); with one it used to go there too,
# and the gather serves the local queue before the ready queue 3 gathers in 4, so a yielding
# tenant ran its yields without the policy being asked (an audit: an interactive tenant's p50
# latency 370-670 µs against a plain flood, 1056-1186 µs against one that yields 15 times per
# task). Now, as emits, yields go to their tenant's ready queue and the policy picks them.

YIELDS = 15


class CountingPolicy(EevdfBorePolicy):
    """EEVDF+BORE that counts, per tenant, the batches popped on its pick (``pop_ready``
    reports each one's queueing latencies, once per popped batch)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.popped: dict[int, int] = {}
        self.popped_tasks: dict[int, int] = {}

    def observe_latency(self, tenant, latencies_ns):
        self.popped[tenant] = self.popped.get(tenant, 0) + 1
        self.popped_tasks[tenant] = self.popped_tasks.get(tenant, 0) + len(latencies_ns)
        super().observe_latency(tenant, latencies_ns)


def _yield_module(runs: dict) -> Module:
    m = Module("yielders")
    lock = threading.Lock()

    @m.handler("STEP")
    def step(ctx):
        t = ctx.task
        with lock:
            runs[t.tenant] = runs.get(t.tenant, 0) + 1
        if t.tenant == 0 and t.yield_count < YIELDS:
            return ctx.yield_()            # tenant 0 does its work in YIELDS + 1 phases

    return m


@pytest.mark.parametrize("max_batch", [1, 4])
def test_every_batch_of_a_yielding_tenant_is_picked_by_the_policy(max_batch):
    """Real threads, 2 workers: tenant 0's 40 tasks yield 15 times each against tenant 1's
    plain flood. Every batch that runs, yields included, was popped on the policy's pick: as
    many picks as batches and as popped tasks as handler runs, per tenant (before: tenant 0 had
    40 popped tasks for 640 runs; its yields came from the local queue, never picked)."""
    runs: dict[int, int] = {}
    pol = CountingPolicy()
    with boot([_yield_module(runs)], hal="threads", workers=2, max_batch=max_batch,
              policy=pol, tenants={0: 0, 1: 0}) as s:
        n0, n1 = 40, 400
        tenants = np.array([0] * n0 + [1] * n1, dtype=np.uint16)
        s.submit_batch(T.make(len(tenants), type=s.type_id("STEP"), tenant=tenants))
        assert s.run(timeout=60)
        st = s.stats()
        ten = st["tenants"]
        assert st["sched"]["routes"]["yield"] == n0 * YIELDS
        assert st["types"]["STEP"]["yield"] == n0 * YIELDS
    assert runs == {0: n0 * (YIELDS + 1), 1: n1}
    for t in (0, 1):
        assert pol.popped_tasks[t] == runs[t], (t, pol.popped_tasks, runs)
        assert ten[t]["picks"] == pol.popped[t] == ten[t]["batches"], (t, ten[t])
        assert ten[t]["tasks"] == ten[t]["latency_count"] == runs[t]     # all billed
        assert ten[t]["handler_time_ns"] > 0
    # nothing went through a worker's local queue or the overflow queue
    assert [q["pushed"] for q in st["sched"]["local"]] == [0, 0]
    assert st["sched"]["overflow"]["pushed"] == 0


def test_without_a_policy_yields_still_stay_on_the_worker():
    """(the local queue, as before: no tenant to ask, and a yield runs again soon, cache-warm)"""
    runs: dict[int, int] = {}
    with boot([_yield_module(runs)], hal="sim", workers=1, seed=1) as s:
        s.submit("STEP", tenant=0, count=3)
        assert s.run(timeout=60)
        st = s.stats()["sched"]
    assert runs == {0: 3 * (YIELDS + 1)}
    assert st["routes"]["yield"] == 3 * YIELDS and st["local"][0]["pushed"] >= 3 * YIELDS
