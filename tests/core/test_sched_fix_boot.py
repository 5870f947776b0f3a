"""Boot options that used to be taken and then misbehave: a tenant policy *class* (not an
instance) and a ``tick_hz`` the tick's whole nanoseconds could not hold; and the enqueue
core's count when the tenant policy raises (it counted tasks it never queued: phantom
outstanding tasks that kept ``run()`` from idling and ``halt`` from accounting)."""
import threading
from fractions import Fraction

import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.core.tenants import EevdfBorePolicy, TenantError, WeightedRoundRobinPolicy
from ggmk.errors import BootError


def _nop():
    m = ggmk.Module("m")

    @m.handler("D")
    def d(ctx):
        return ggmk.OK
    return m


# -- policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [EevdfBorePolicy, WeightedRoundRobinPolicy])
def test_a_policy_class_fails_the_boot_saying_to_pass_an_instance(cls):
    """(before: it booted, the workers crashed at their first pick, submit raised a raw
    TypeError with 3 tasks counted outstanding, halt reported them, nothing on sys.error)"""
    before = threading.active_count()
    with pytest.raises(TenantError) as e:
        ggmk.boot([_nop()], workers=2, policy=cls)
    msg = str(e.value)
    assert f"policy={cls!r}" in msg and "a class" in msg
    assert f"{cls.__name__}()" in msg and "'eevdf'" in msg
    assert threading.active_count() == before           # no worker was started


class _Refusing(EevdfBorePolicy):
    """A policy that raises when tenant 7 or 8 is added (``refuse='add'``) or woken
    (``refuse='wake'``)."""

    def __init__(self, refuse: str):
        super().__init__()
        self.refuse = refuse

    def add_tenant(self, tenant, **kw):
        if tenant in (7, 8) and self.refuse == "add":
            raise RuntimeError(f"tenant {tenant} refused")
        super().add_tenant(tenant, **kw)

    def wake(self, tenant, now_ns):
        if tenant in (7, 8) and self.refuse == "wake":
            raise RuntimeError(f"tenant {tenant} cannot wake")
        super().wake(tenant, now_ns)


def _accounted(s, rep, ran: int) -> None:
    st = s.stats()["types"].get("D", {"enqueued": 0, "ok": 0, "dropped": 0, "dequeued": 0})
    recs, codes = s.dead_letters("sys.error")
    assert st["ok"] == ran and st["dequeued"] == ran
    assert st["enqueued"] == ran + st["dropped"] == ran + len(recs)
    assert rep["outstanding"] == 0


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_a_policy_refusing_a_new_tenant_leaves_nothing_outstanding(hal):
    s = ggmk.boot([_nop()], workers=2, hal=hal, policy=_Refusing("add"))
    try:
        with pytest.raises(RuntimeError, match="tenant 7 refused"):
            s.submit("D", tenant=7)                            # one record: the scalar path
        assert s.sched.outstanding == 0
        with pytest.raises(RuntimeError, match="tenant 8 refused"):
            s.submit("D", meta0=np.arange(4), tenant=np.array([0, 8, 8, 0]))
        assert s.sched.outstanding == 0                 # nothing of that batch was queued
        assert s.submit("D", count=3, tenant=0) == 3
        assert s.run(timeout=30)
        assert not {7, 8} & (set(s.sched.tenants) | set(s.sched.policy.stats()))
    finally:
        rep = s.halt()
    _accounted(s, rep, 3)
    assert rep["halted"] == 0


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_a_policy_failing_to_wake_a_tenant_still_accounts_its_queued_tasks(hal):
    """The records were queued before the policy's wake raised: they count as enqueued and
    outstanding (the policy never picks tenants 7 and 8, so halt dead-letters them HALTED)."""
    s = ggmk.boot([_nop()], workers=2, hal=hal, policy=_Refusing("wake"))
    try:
        with pytest.raises(RuntimeError, match="tenant 7 cannot wake"):
            s.submit("D", tenant=7)
        assert s.sched.outstanding == 1
        with pytest.raises(RuntimeError, match="tenant 8 cannot wake"):
            s.submit("D", meta0=np.arange(4), tenant=np.array([0, 8, 8, 0]))
        assert s.sched.outstanding in (3, 4, 5)      # the tenant-0 pair may have run
        assert s.submit("D", count=2, tenant=0) == 2
        assert not s.run(timeout=0.5)               # tenants 7 and 8 are never picked
    finally:
        rep = s.halt(timeout=0.5)
    assert rep["halted"] == 3
    recs, codes = s.dead_letters("sys.error")
    assert len(recs) == 3 and codes.tolist() == [T.HALTED] * 3
    assert sorted(recs["tenant"].tolist()) == [7, 8, 8]
    st = s.stats()["types"]["D"]
    assert (st["enqueued"], st["ok"], st["dropped"]) == (7, 4, 3)
    assert rep["outstanding"] == 0


# -- tick_hz ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hz", [1.5e9, 1e12, 1_000_000_001, np.float64(2e9), float("inf")])
def test_tick_hz_above_a_gigahertz_fails_the_boot(hz):
    """(before: silently clamped to a 1 ns tick)"""
    with pytest.raises(BootError) as e:
        ggmk.boot([], workers=2, tick_hz=hz)
    assert f"tick_hz={hz!r}: allowed a number > 0 and <= 1e9" in str(e.value)


@pytest.mark.parametrize("hal", ["threads", "sim"])
@pytest.mark.parametrize("hz", [3e8, 60, 1024, 7, 0.3, 1e9, 1000])
def test_the_tick_runs_at_exactly_the_rate_asked_for(hal, hz):
    """(before: 1e9 // tick_hz whole ns: 3e8 Hz ran at 333 MHz, 60 Hz a little fast)"""
    rate = Fraction(str(float(hz)))
    with ggmk.boot([], workers=2, hal=hal, tick_hz=hz) as s:
        for _ in range(3):
            a = s.clock()
            w = s.wall_tick()
            b = s.clock()
            assert (a - s.t0) * rate // 10**9 <= w <= (b - s.t0) * rate // 10**9
        assert s.stats()["tick_duration"]["nominal_ns"] == s.tick_ns == \
            max(1, round(Fraction(10**9) / rate))


@pytest.mark.parametrize("hal", ["threads", "sim"])
def test_a_deferred_task_runs_no_earlier_than_its_exact_tick(hal):
    m = ggmk.Module("m")
    at = []

    @m.handler("D")
    def d(ctx):
        at.append((ctx.system.clock() - ctx.system.t0, ctx.system.wall_tick()))

    with ggmk.boot([m], workers=2, hal=hal, tick_hz=60) as s:
        due = s.wall_tick() + 3
        assert s.submit("D", due=due) == 1
        assert s.run(timeout=30)
        (ns, tick), = at
        assert tick >= due and ns * 60 >= due * 10**9
