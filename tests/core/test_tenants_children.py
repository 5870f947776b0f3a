"""Children a handler emits and the tenant policy (issue 6, step 3).

``ctx.emit`` goes through the enqueue core on ``Route.EMIT``. Without a tenant policy the
children go to the emitting worker's *local* queue, which a worker pops on 3 of every 4 gathers;
with a policy (core/sched.py ``Scheduler._route``) they go to their tenant's ready queue, so
the policy chooses every batch. Before that change, a tenant running 64 self-feeding chains got
~76% of the handler time against an equal-weight flood on the ``sim`` HAL below; now 50%.

The benchmark (bench/tenants.py) does not hit this: neither of its tenants emits.
"""
from __future__ import annotations

import pytest

from ggmk.core.kernel import boot
from ggmk.core.module import Module

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
