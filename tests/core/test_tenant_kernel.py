"""Tenant scheduling through the real kernel (issue 6), on the ``threads`` and ``sim`` HALs.

``tests/core/test_tenants.py`` checks the policies against a simulated worker; here the same
properties are checked end to end: ``boot(tenants=..., policy=...)``, submissions into the
per-tenant ready queues, ``Scheduler.pop_ready`` asking the policy, and ``System.account``
charging the measured handler time.

Handlers do real timed work: the ``WORK`` handler burns ``meta0`` µs per task. On ``threads``
it busy-waits on the HAL clock; the kernel bills tenants the handler's thread CPU time, which
the handler also measures itself. On ``sim`` the clock is virtual, so the handler advances it
by the same amount, which the kernel bills the same way. Every handler logs (tenant, start,
end, tasks, CPU ns) of its batch, an account independent of the policy's.
"""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.core.tenants import EevdfBorePolicy, TenantError
from test_tenants import KeepVruntime  # the shared control policy

# CPU shares between real threads: `make test` runs this file after the parallel pass, alone
pytestmark = pytest.mark.serial

US = 1_000
MS = 1_000_000
THREADS = "threads"


class Log:
    """(tenant, start ns, end ns, tasks, CPU ns) of every WORK batch, in HAL clock time (CPU:
    the worker thread's CPU clock on threads, the HAL clock on sim)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int, int]] = []
        self.done = [0, 0, 0]                 # tasks finished per tenant (0, 1, 2)
        self.lock = threading.Lock()          # += on a list item is not atomic across threads

    def add(self, tenant: int, start: int, end: int, n: int, cpu: int) -> None:
        with self.lock:
            self.rows.append((tenant, start, end, n, cpu))
            self.done[tenant] += n

    def array(self) -> np.ndarray:
        return np.array(self.rows, dtype=np.int64).reshape(-1, 5)

    def cpu_time(self, tenant: int) -> int:
        """Handler CPU ns of ``tenant`` (what the kernel bills)."""
        a = self.array()
        return int(a[a[:, 0] == tenant, 4].sum())

    def handler_time(self, tenant: int, start: int = 0, end: int | None = None) -> int:
        """Handler ns of ``tenant`` inside [start, end] (batches clipped to the window)."""
        a = self.array()
        a = a[a[:, 0] == tenant]
        end = np.iinfo(np.int64).max if end is None else end
        return int(np.maximum(0, np.minimum(a[:, 2], end) - np.maximum(a[:, 1], start)).sum())

    def last_end(self, tenant: int, before: int | None = None) -> int:
        """End of ``tenant``'s last batch that started before ``before``."""
        a = self.array()
        a = a[a[:, 0] == tenant]
        if before is not None:
            a = a[a[:, 1] < before]
        return int(a[:, 2].max())


def work_module(log: Log) -> Module:
    m = Module("tenantwork")

    @m.handler("WORK", batch=True)
    def work(ctx, batch):
        k = ctx.system
        t0 = k.clock()
        ns = int(batch.meta0.sum()) * US
        c0 = time.thread_time_ns()
        if k.hal.name == "sim":
            k.hal.now += ns                   # virtual time: the work takes ns of HAL clock
        else:
            # busy for ns of HAL clock; sleep(0) drops the GIL on every turn, as native work
            # would, so two workers really run in parallel instead of taking 5 ms GIL turns
            end = t0 + ns
            while k.clock() < end:
                time.sleep(0)
        cpu = ns if k.hal.name == "sim" else time.thread_time_ns() - c0   # sim: virtual = CPU
        log.add(int(batch.tenant[0]), t0, k.clock(), len(batch), cpu)

    return m


def flood(system, n: dict[int, int], task_us: int) -> None:
    """Backlogs of ``n[tenant]`` tasks, interleaved in one submission so that every tenant's
    queue fills at the same instant (a second submit would give the first a head start)."""
    tenants = np.concatenate([np.full(k, t, dtype=np.uint16) for t, k in n.items()])
    order = np.argsort(np.arange(len(tenants)) % max(n.values()), kind="stable")
    system.submit_batch(T.make(len(tenants), type=system.type_id("WORK"), meta0=task_us,
                               tenant=tenants[order]))


class Recorder(EevdfBorePolicy):
    """EEVDF+BORE that also records who wins the picks made while tenant ``watch`` has queued
    work (it learns that from the scheduler's own wake/sleep calls) and is eligible (not
    behind on service: EEVDF's lag >= 0), i.e. the picks where deadlines, and so BORE, decide."""

    def __init__(self, watch: int, **kw) -> None:
        super().__init__(**kw)
        self.watch = watch
        self.queued: set[int] = set()
        self.contested: list[int] = []

    def wake(self, tenant, now_ns):
        self.queued.add(tenant)
        super().wake(tenant, now_ns)

    def sleep(self, tenant, now_ns):
        self.queued.discard(tenant)
        super().sleep(tenant, now_ns)

    def pick(self, now_ns):
        w = self.watch
        eligible = (w in self.queued and len(self.queued) > 1
                    and self._t[w].v <= self._avg()[0] + 1.0)
        t = super().pick(now_ns)
        if eligible and t is not None:
            self.contested.append(t)
        return t


# -- weights ---------------------------------------------------------------------------------------

def test_two_saturating_tenants_with_weights_2_to_1_get_2_to_1_handler_time(hal):
    """Both tenants keep a backlog for the whole run; their handler time splits 2:1 (5%)."""
    secs = 4.0 if hal == THREADS else 10.0
    log = Log()
    pol = EevdfBorePolicy()
    # (batch_limit: max_batch decides, 8 tasks a batch, as the overhead bound below assumes;
    # at the default 100 us a batch holds one 100 us task, and the Python around it is ~30%)
    pol.batch_ns = 2 * MS
    with boot([work_module(log)], hal=hal, workers=2, max_batch=8, policy=pol,
              tenants={0: {"weight": 2048}, 1: {"weight": 1024}}) as s:
        per_tenant = int(secs * 2 * 1e6 / 100)        # more than 2 workers can do in secs
        flood(s, {0: per_tenant, 1: per_tenant}, task_us=100)
        s.run(secs, until_idle=False)
        st = s.stats()["tenants"]     # before halt, which would drain the backlog
        s.halt(timeout=0)
    # saturating: neither queue ran dry, so the split is the policy's doing, not demand's
    assert st[0]["state"] == st[1]["state"] == "active"
    assert log.done[0] < per_tenant and log.done[1] < per_tenant
    t0, t1 = log.handler_time(0), log.handler_time(1)
    # the run was busy (sim steps one worker at a time: its workers share one virtual clock)
    assert t0 + t1 > (0.5 if hal == THREADS else 0.9) * secs * 1e9
    # the policy shares what it is billed, handler CPU time, 2:1
    c0, c1 = log.cpu_time(0), log.cpu_time(1)
    assert c0 / c1 == pytest.approx(2.0, rel=0.05)
    # the kernel's own measure (what it charged the policy) agrees with the handlers'; on
    # threads the kernel's window also holds the Python around the handler body (batch view,
    # call, log), ~10% of these mostly GIL-waiting batches' CPU (up to ~31% seen on a slow,
    # loaded 2-core VM: the bound allows 50%)
    k0, k1 = st[0]["handler_time_ns"], st[1]["handler_time_ns"]
    assert k0 / k1 == pytest.approx(2.0, rel=0.05)
    if hal == THREADS:
        assert c0 <= k0 <= 1.5 * c0 and c1 <= k1 <= 1.5 * c1
    else:
        assert k0 == c0 and k1 == c1
    assert st[0]["weight"] == 2048 and st[1]["weight"] == 1024


# -- sleeping does not bank credit ------------------------------------------------------------------

def _sleep_wake_run(hal, policy, cycles=2):
    """Tenant 0 floods; tenant 1 (equal weight) sleeps ``nap`` while 0 runs alone, then wakes
    with ``work`` of 500 µs tasks, ``cycles`` times. Returns the log and the wake times."""
    nap, work = (0.4, 400 * MS) if hal == THREADS else (1.0, 1000 * MS)
    log = Log()
    wakes = []
    with boot([work_module(log)], hal=hal, workers=2, max_batch=8, policy=policy,
              tenants={0: 0, 1: 0}) as s:
        secs = cycles * (nap + 2.5 * work / 1e9)
        flood(s, {0: int(secs * 2e6 / 100)}, task_us=100)
        want = 0
        for _ in range(cycles):
            s.run(nap, until_idle=False)                      # tenant 1 asleep
            wakes.append(s.clock())
            k = work // (500 * US)
            want += k
            s.submit("WORK", meta0=500, tenant=1, count=k)
            assert s.hal.wait(lambda: log.done[1] >= want, timeout=30), "tenant 1 never drained"
        assert s.stats()["tenants"][0]["state"] == "active"    # 0 flooded throughout
    return log, wakes, work


def test_a_tenant_that_sleeps_and_wakes_gets_no_more_than_its_share(hal):
    """While tenant 1 sleeps, tenant 0 has both workers. Each time 1 wakes with a backlog it
    gets its equal share (half the handler time) until it drains, never a catch-up burst for
    the time it slept."""
    log, wakes, work = _sleep_wake_run(hal, "eevdf")
    # banking would give tenant 1 nearly all of both workers (share ~1.0, > 0.8 in the control
    # below) until drained; on threads allow for preemption on a loaded 2-core machine
    # (windows are ~0.5 s; a slow 2-core VM gave 0.60-0.62, the tree before and after alike)
    tol = 0.15 if hal == THREADS else 0.03
    got = total = 0
    for i, at in enumerate(wakes):
        # tenant 1's busy period after this wake: up to its last batch before the next wake
        end = log.last_end(1, before=wakes[i + 1] if i + 1 < len(wakes) else None)
        b = log.handler_time(1, at, end)
        a = log.handler_time(0, at, end)
        assert b / (a + b) <= 0.5 + tol, f"tenant 1 banked credit while asleep (wake {i})"
        got, total = got + b, total + a + b
        if hal == "sim":    # exact clock: all it asked for, at half the pace of 2 workers
            assert b == pytest.approx(work, rel=0.01)
            assert end - at >= 0.95 * 2 * work / 2
    assert got / total == pytest.approx(0.5, abs=tol)


def test_sleep_wake_test_detects_banked_credit():
    """Control: a policy that keeps a sleeper's old virtual runtime (banks credit) fails the
    share check above by a wide margin, so that check measures what it claims."""

    log, wakes, work = _sleep_wake_run("sim", KeepVruntime(), cycles=2)
    at, end = wakes[-1], log.last_end(1)
    b, a = log.handler_time(1, at, end), log.handler_time(0, at, end)
    assert b / (a + b) > 0.8


# -- BORE: a bursty tenant against a short-burst tenant --------------------------------------------

def _bursty_run(hal, bore_penalty):
    """Tenants 0 and 2 flood 100 µs tasks without a break; tenant 1 (equal weight) sends 2
    tasks of 50 µs every 3 ms (deferred submissions, released by the kernel's timer at their
    tick). Batches are at most 4 tasks, so picks come every 0.4 ms of flood work or so.

    Two floods, not one: with exactly two tenants EEVDF's eligibility rule alone decides every
    contested pick (one of two is always behind the average, the other ahead), so the virtual
    deadline, which is where BORE's penalty acts, only matters with three or more."""
    secs = 1.5 if hal == THREADS else 3.0
    pol = Recorder(1, bore_penalty=bore_penalty)
    pol.batch_ns = 400 * US      # (batch_limit: up to 4 flood tasks a batch, as max_batch)
    log = Log()
    with boot([work_module(log)], hal=hal, workers=2, max_batch=4, policy=pol,
              tenants={0: 0, 1: 0, 2: 0}, tick_hz=1000) as s:
        if hal == "sim":
            s.hal.max_batch_choices = (1, 2, 4)     # sim draws each step's batch limit
        n = int(secs * 2e6 / 100)
        flood(s, {0: n, 2: n}, task_us=100)
        for tick in range(3, int(secs * 1000), 3):
            s.submit("WORK", meta0=50, tenant=1, count=2, due=tick)
        s.run(secs / 3, until_idle=False)
        early = s.stats()["tenants"]
        s.run(2 * secs / 3, until_idle=False)
        late = s.stats()["tenants"]
        # (the short-burst tenant's tasks done when ``late`` was taken: the halt at the end
        # of ``with`` runs those still due: 34 in a gate run here)
        log.done_late = log.done[1]
    return pol, early, late, log


def test_a_bursty_tenants_score_rises_and_its_share_drops_against_a_short_burst_tenant(hal):
    """The floods run without a break, so their BORE scores climb past the threshold and keep
    climbing; the short-burst tenant's stays below it. With the penalty on, the floods win a
    smaller share of the picks they contend for with the short-burst tenant than under plain
    EEVDF (penalty 0), so it waits less; their shares of handler time stay equal."""
    pol, early, late, log = _bursty_run(hal, bore_penalty=8)
    thr = pol.bore_threshold
    for f in (0, 2):
        assert thr < early[f]["burst_score"] < late[f]["burst_score"]
        assert late[f]["penalty"] > 0
    for st in (early, late):
        if hal == "sim":
            assert st[1]["burst_score"] < thr and st[1]["penalty"] == 0
        else:   # a worker preempted for a ms or two on a loaded machine looks like a burst
            assert st[1]["burst_score"] < min(st[0]["burst_score"], st[2]["burst_score"]) - 3
    # each of its tasks' latency counted once: the count and the handler's tally, read one
    # after the other while the workers run, differ at most by a batch or two in between
    assert log.done_late > 200 and abs(late[1]["latency_count"] - log.done_late) <= 4
    plain, _, plain_late, _ = _bursty_run(hal, bore_penalty=0)
    assert plain_late[0]["penalty"] == plain_late[2]["penalty"] == 0
    shares = []
    for p in (pol, plain):
        assert len(p.contested) > 200
        shares.append(sum(t != 1 for t in p.contested) / len(p.contested))
    # once the short-burst tenant is eligible, the penalised floods (almost) never beat it;
    # without the penalty they win about half of those picks on their earlier deadlines. On
    # a loaded machine a preempted batch leaves one flood owed more than its penalty (lag
    # beats the penalty, as it should), so there the drop is smaller and less regular.
    assert shares[1] >= 0.25, shares
    assert shares[0] <= (0.02 if hal == "sim" else 0.75 * shares[1]), shares
    if hal == "sim":      # exact clock: the effects on waiting and on shares, undisturbed
        assert late[1]["latency_mean_ns"] < 0.8 * plain_late[1]["latency_mean_ns"]
        assert log.handler_time(0) / log.handler_time(2) == pytest.approx(1.0, rel=0.01)


# -- determinism mode with tenants ----------------------------------------------------------------

def _det_module(out: list) -> Module:
    m = Module("dettenants")

    @m.handler("STEP", deterministic=True)
    def step(ctx):
        t = ctx.task
        x = (t.meta0 * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        if t.meta1 > 0:
            ctx.emit("STEP", meta0=x, meta1=t.meta1 - 1)      # the child keeps the tenant
        else:
            out.append((t.tenant, x & 0xFFFF))

    @m.handler("WORK", batch=True)
    def work(ctx, batch):       # non-deterministic filler through the tenant policy
        pass

    return m


def _det_run(hal, workers, policy="eevdf", tenant_of=lambda i: i % 2, seed=5):
    out: list = []
    with boot([_det_module(out)], hal=hal, workers=workers, seed=seed, deterministic=True,
              policy=policy, tenants={0: 0, 1: {"weight": 2048}}) as s:
        rng = np.random.default_rng(seed)
        # one submission: on threads the workers run while the host submits, and a later
        # submission may land in a later tick (arrival time is part of the input stream)
        tenant = np.repeat([tenant_of(i) for i in range(6)], 20).astype(np.uint16)
        s.submit_batch(T.make(120, type=s.type_id("STEP"), flags=T.FLAG_DETERMINISTIC,
                              meta0=rng.integers(0, 2**62, 120, dtype=np.uint64), meta1=6,
                              tenant=tenant))
        for i in range(6):
            s.submit("WORK", count=64, tenant=i % 2)
        assert s.run(timeout=60)
        st = s.stats()["tenants"]
        # the policy picked both tenants' ready work alongside the deterministic stage
        assert st[0]["latency_count"] == st[1]["latency_count"] == 3 * 64
        return sorted(out), s.trace_hash()


def test_determinism_mode_gives_identical_trace_hashes_with_tenants():
    ref_out, ref = _det_run("sim", 1)
    assert len(ref_out) == 120 and {t for t, _ in ref_out} == {0, 1}
    for hal, workers, policy in [("sim", 1, "eevdf"), ("sim", 3, "eevdf"), ("sim", 2, "rr"),
                                 (THREADS, 1, "eevdf"), (THREADS, 2, "eevdf"),
                                 (THREADS, 2, "rr")]:
        out, h = _det_run(hal, workers, policy)
        assert out == ref_out, (hal, workers, policy)
        assert h == ref, (hal, workers, policy)
    # the hash covers the tenant: moving the same work to other tenants changes it
    _, other = _det_run("sim", 2, tenant_of=lambda i: (i + 1) % 2)
    assert other != ref


def test_a_batch_that_mixes_tenants_is_charged_to_each_tenant():
    """The deterministic stage hands out runs of one type in canonical order, whatever their
    tenants; each tenant must be charged for its own tasks."""
    log = Log()
    with boot([work_module(log)], hal="sim", workers=1, deterministic=True,
              tenants={0: 0, 1: 0}) as s:
        s.hal.max_batch_choices = (256,)
        s.submit_batch(T.make(100, type=s.type_id("WORK"), flags=T.FLAG_DETERMINISTIC,
                              meta0=100, tenant=np.arange(100) % 2))
        assert s.run(timeout=60)
        st = s.stats()["tenants"]
    assert log.done[0] + log.done[1] == 100
    assert st[0]["tasks"] == st[1]["tasks"] == 50
    assert st[0]["handler_time_ns"] == pytest.approx(st[1]["handler_time_ns"], rel=0.05)


# -- bad tenant input through boot and set_tenant -------------------------------------------------

@pytest.mark.parametrize("spec, what", [
    # (before: a raw TypeError from add_tenant)
    ({"wieght": 512}, r"boot: tenants\[0\]: unknown key 'wieght' \(value 512\): allowed "
                      r".*exactly one of 'nice' .* or 'weight'"),
    # (before: accepted as weight 512; set_tenant refuses the same pair)
    ({"nice": 0, "weight": 512}, r"boot: tenants\[0\]: \{'nice': 0, 'weight': 512\} gives both "
                                 r"nice and weight: allowed .*exactly one"),
    ({}, r"boot: tenants\[0\]: \{\} gives neither nice nor weight: allowed"),
    # (before: accepted as nice 0)
    (None, r"boot: tenants\[0\]: None: allowed .*'nice'.*'weight'"),
    ({"nice": None}, r"boot: tenants\[0\]: nice None: allowed"),
    ({"weight": 0}, r"boot: tenants\[0\]: weight 0 is out of range 1\.\.16777216"),
    ({"weight": 2.0}, r"boot: tenants\[0\]: weight must be a positive integer, got 2\.0"),
    (3.5, r"boot: tenants\[0\]: nice must be an integer in -20\.\.19, got 3\.5"),
    (True, r"boot: tenants\[0\]: nice must be an integer in -20\.\.19, got True"),
    ({"nice": -21}, r"boot: tenants\[0\]: nice -21 is out of range"),
])
def test_a_bad_tenant_spec_fails_the_boot_naming_the_entry(spec, what):
    with pytest.raises(TenantError, match=what):
        boot([], workers=1, tenants={0: spec})


@pytest.mark.parametrize("tid", [-1, 65536, 70000])
def test_a_tenant_id_out_of_range_fails_the_boot_naming_the_key(tid):
    with pytest.raises(TenantError, match=rf"boot: tenants key {tid}: allowed an int tenant "
                                          r"id 0\.\.65535"):
        boot([], workers=1, tenants={tid: 0})


def test_a_policy_object_serves_one_system_and_a_second_boot_says_so():
    """A policy holds one system's tenant state and is called under that system's lock: a
    second boot with it failed only at tenants= ("eevdf.add_tenant: tenant 0 is already
    added"), and without tenants= it booted, two systems sharing one policy."""
    pol = EevdfBorePolicy()
    with boot([], workers=1, policy=pol, tenants={0: 0}) as s:
        assert s.sched.policy is pol
        s.sched.policy = pol                  # its own system again: fine
    want = (r"boot: policy= \(a 'eevdf' policy object\) already serves another system \(its "
            r"tenants: \[0\]\): a policy object serves one system; pass a new one "
            r"\(make_policy\('eevdf', \.\.\.\)\) or the policy name \(policy='eevdf'\), "
            r"with its tenants in tenants=")
    for kw in ({"tenants": {0: 0}}, {}):
        with pytest.raises(TenantError, match=want):
            boot([], workers=1, policy=pol, **kw)
    with boot([], workers=1, policy="eevdf", tenants={0: 0}) as s:    # a name: a new policy
        assert s.sched.policy is not pol


@pytest.mark.parametrize("name", ["EEVDF", "", "fifo", " rr"])
def test_an_unknown_policy_name_fails_the_boot_naming_policy_and_every_name(name):
    with pytest.raises(TenantError, match=re.escape(
            f"boot's policy=: unknown policy {name!r}: allowed 'eevdf', 'eevdf-gentle', 'rr', "
            f"'wrr'")):
        boot([], workers=1, policy=name)


def test_good_tenant_specs_boot_with_their_weights():
    with boot([], workers=1, policy="rr",
              tenants={0: -5, np.uint16(1): {"weight": 512}, 2: {"nice": 3}, 3: np.int64(0),
                       65535: {"weight": np.int32(1024)}}) as s:
        st = s.stats()["tenants"]
    assert {t: (v["weight"], v["nice"]) for t, v in st.items()} == {
        0: (3121, -5), 1: (512, None), 2: (526, 3), 3: (1024, 0), 65535: (1024, 0)}


@pytest.mark.parametrize("bad", [True, 1.0, np.float64(1.0), "1", None, -1, 65536])
def test_set_tenant_wants_an_int_tenant_id(bad):
    """(before: True and 1.0 changed tenant 1, their hashes matching its dict key)"""
    with boot([], workers=1, tenants={0: 0, 1: 0}) as s:
        with pytest.raises(TenantError, match=rf"set_tenant: tenant={re.escape(repr(bad))}: "
                                              r"allowed an int tenant id 0\.\.65535"):
            s.set_tenant(bad, nice=5)
        st = s.stats()["tenants"]
    assert {t: v["weight"] for t, v in st.items()} == {0: 1024, 1: 1024}


@pytest.mark.parametrize("tenant", [0, 9])          # a known tenant, an unknown one
def test_set_tenant_wants_exactly_one_of_nice_or_weight_known_tenant_or_not(tenant):
    """(before: ``set_tenant(9)`` silently added tenant 9 at nice 0, ``set_tenant(8, nice=0,
    weight=100)`` added 8 at weight 100 while a known tenant refused it, and an unknown
    tenant's errors were labelled ``eevdf.add_tenant(7)``)"""
    with boot([], workers=1, tenants={0: 0, 1: 0}) as s:
        for kw, what in [({}, r"give nice= \(-20\.\.19\) or weight= \(1\.\.16777216\)"),
                         ({"nice": 0, "weight": 100}, r"give nice= or weight=, not both "
                                                      r"\(got nice=0, weight=100\)"),
                         ({"weight": 0}, r"weight 0 is out of range 1\.\.16777216"),
                         ({"weight": 2.5}, r"weight must be a positive integer, got 2\.5"),
                         ({"nice": 40}, r"nice 40 is out of range"),
                         ({"nice": True}, r"nice must be an integer in -20\.\.19, got True")]:
            with pytest.raises(TenantError, match=rf"^set_tenant\({tenant}\): {what}"):
                s.set_tenant(tenant, **kw)
        st = s.stats()["tenants"]
        assert {t: v["weight"] for t, v in st.items()} == {0: 1024, 1: 1024}   # none changed
        s.set_tenant(np.uint16(tenant), weight=100)
        s.set_tenant(tenant + 1, nice=5)
        st = s.stats()["tenants"]
    assert (st[tenant]["weight"], st[tenant]["nice"]) == (100, None)
    assert (st[tenant + 1]["weight"], st[tenant + 1]["nice"]) == (335, 5)
