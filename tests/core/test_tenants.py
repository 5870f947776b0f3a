"""Tenant policies (EEVDF + BORE, weighted round robin), driven by a simulated worker.

The simulator is deterministic: one worker, a virtual clock in ns, tenants with FIFO queues of
task durations. Its loop is the scheduler's gather step: ``t = pick(); pop a batch; sleep(t) if
the queue emptied; run (advance the clock); account(...)``. Arrivals that fall inside a batch
are enqueued (and ``wake`` called) at their own time, before the batch is accounted, as they
would be on a real system where producers run while a worker is busy.
"""
from __future__ import annotations

import heapq
from collections import deque

import numpy as np
import pytest

from ggmk.core.tenants import (
    NICE_TO_WEIGHT, POLICIES, EevdfBorePolicy, TenantError, TenantPolicy, UnknownTenantError,
    WeightedRoundRobinPolicy, make_policy, nice_to_weight,
)
from ggmk.errors import GgmkError

US = 1_000
MS = 1_000_000


class Sim:
    """``workers`` workers serving tenant queues under ``policy``, on a virtual clock (ns)."""

    def __init__(self, policy, max_batch: int = 4, workers: int = 1):
        self.pol = policy
        self.max_batch = max_batch
        self.idle = list(range(workers))
        self.inflight: list = []                       # heap (end, seq, worker, tid, ns, n)
        self.now = 0
        self.queues: dict[int, deque] = {}
        self.floods: dict[int, tuple[int, int]] = {}   # tid -> (task ns, backlog depth)
        self.closed: dict[int, tuple[int, int]] = {}   # tid -> (task ns, tasks per round)
        self.arrivals: list = []                       # heap (at, seq, tid, dur)
        self._seq = 0
        self.runs: list[tuple[int, int, int]] = []     # (start, end, tid) of each batch
        self.lat: dict[int, list] = {}
        self.contested: list[tuple[frozenset, int]] = []

    def tenant(self, tid: int, **kw) -> "Sim":
        self.pol.add_tenant(tid, **kw)
        self.queues[tid] = deque()
        self.lat[tid] = []
        return self

    def _push(self, tid: int, at: int, dur: int, n: int = 1) -> None:
        q = self.queues[tid]
        was_empty = not q
        q.extend([(at, dur)] * n)
        if was_empty:
            self.pol.wake(tid, at)

    def flood(self, tid: int, task_ns: int, depth: int = 16) -> "Sim":
        """A tenant whose queue never drains (refilled after every pop)."""
        self.floods[tid] = (task_ns, depth)
        self._push(tid, self.now, task_ns, depth)
        return self

    def closed_loop(self, tid: int, task_ns: int, n: int) -> "Sim":
        """A tenant that submits ``n`` tasks, and the next ``n`` as soon as those finish."""
        self.closed[tid] = (task_ns, n)
        self._push(tid, self.now, task_ns, n)
        return self

    def arrive(self, tid: int, at: int, dur: int, n: int = 1) -> None:
        for _ in range(n):
            heapq.heappush(self.arrivals, (at, self._seq, tid, dur))
            self._seq += 1

    def _deliver(self, upto: int) -> None:
        while self.arrivals and self.arrivals[0][0] <= upto:
            at, _, tid, dur = heapq.heappop(self.arrivals)
            self._push(tid, at, dur)

    def run(self, until: int) -> "Sim":
        """Serve until the clock passes ``until``: idle workers pick and pop at ``now``; then
        the clock moves to the next arrival or batch completion, arrivals first on ties."""
        pol = self.pol
        while self.now < until:
            while self.idle:
                t = pol.pick(self.now)
                if t is None:
                    break
                self._start(t, self.idle.pop())
            next_done = self.inflight[0][0] if self.inflight else None
            next_arr = self.arrivals[0][0] if self.arrivals else None
            if next_done is None and next_arr is None:
                break
            if next_done is None or (next_arr is not None and next_arr <= next_done):
                self.now = max(self.now, next_arr)
                self._deliver(self.now)
                continue
            end, _, wid, t, runtime, n = heapq.heappop(self.inflight)
            self.now = end
            pol.account(t, runtime, n, self.now)
            self.idle.append(wid)
            if t in self.closed and not self.queues[t]:
                dur, k = self.closed[t]
                self._push(t, self.now, dur, k)
        return self

    def _start(self, t: int, wid: int) -> None:
        q = self.queues[t]
        assert q, f"policy picked tenant {t} whose queue is empty"
        busy = frozenset(k for k, v in self.queues.items() if v)
        if len(busy) > 1:
            self.contested.append((busy, t))
        batch = [q.popleft() for _ in range(min(self.max_batch, len(q)))]
        if t in self.floods:
            dur, depth = self.floods[t]
            q.extend([(self.now, dur)] * (depth - len(q)))
        elif not q:
            self.pol.sleep(t, self.now)
        lat = np.array([self.now - at for at, _ in batch], dtype=np.int64)
        self.pol.observe_latency(t, lat)
        self.lat[t].extend(lat.tolist())
        runtime = sum(d for _, d in batch)
        self.runs.append((self.now, self.now + runtime, t))
        heapq.heappush(self.inflight, (self.now + runtime, self._seq, wid, t, runtime, len(batch)))
        self._seq += 1

    def handler_time(self, tid: int, start: int = 0, end: int | None = None) -> int:
        end = self.now if end is None else end
        return sum(max(0, min(e, end) - max(s, start)) for s, e, t in self.runs if t == tid)

    def wins(self, tid: int, among: int) -> float:
        """Share of the contested picks involving ``among`` that went to ``tid``."""
        rel = [w for busy, w in self.contested if among in busy and tid in busy]
        return sum(w == tid for w in rel) / len(rel)


def interactive(sim: Sim, tid: int, until: int, *, every: int = 4 * MS, task: int = 20 * US,
                seed: int = 1) -> None:
    """``tid`` sends 1-2 short tasks at exponential intervals (mean ``every``)."""
    rng = np.random.default_rng(seed)
    at = int(rng.exponential(every))
    while at < until:
        sim.arrive(tid, at, task, n=int(rng.integers(1, 3)))
        at += int(rng.exponential(every)) + 1


def build(name: str, **kw):
    return make_policy(name, **kw)


# -- the nice table and argument checks --------------------------------------------------------

def test_nice_table_is_linux_sched_prio_to_weight():
    assert NICE_TO_WEIGHT[-20] == 88761
    assert NICE_TO_WEIGHT[0] == 1024
    assert NICE_TO_WEIGHT[19] == 15
    assert sorted(NICE_TO_WEIGHT) == list(range(-20, 20))
    ws = [NICE_TO_WEIGHT[n] for n in range(-20, 20)]
    assert all(a > b for a, b in zip(ws, ws[1:]))
    # each nice step is ~10% of CPU: ~1.25x weight
    assert all(1.19 < a / b < 1.31 for a, b in zip(ws, ws[1:]))
    assert nice_to_weight(-5) == 3121 and nice_to_weight(5) == 335
    with pytest.raises(TypeError):
        NICE_TO_WEIGHT[0] = 1  # read-only


@pytest.mark.parametrize("name", POLICIES)
def test_bad_input_gets_clear_errors(name):
    pol = build(name)
    for bad in (20, -21, 1.5, True, "0"):
        with pytest.raises(TenantError, match="nice"):
            pol.add_tenant(1, nice=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(TenantError, match="weight"):
            pol.add_tenant(1, weight=bad)
    with pytest.raises(TenantError, match="0..65535"):
        pol.add_tenant(70000)
    with pytest.raises(TenantError, match="not both"):
        pol.add_tenant(1, nice=1, weight=100)
    pol.add_tenant(1)
    with pytest.raises(TenantError, match="already added"):
        pol.add_tenant(1)
    for call in (lambda: pol.wake(9, 0), lambda: pol.sleep(9, 0),
                 lambda: pol.account(9, 10, 1, 0), lambda: pol.set_weight(9, nice=1),
                 lambda: pol.observe_latency(9, np.zeros(1))):
        with pytest.raises(UnknownTenantError, match=r"unknown tenant 9.*add_tenant") as ei:
            call()
        assert isinstance(ei.value, (LookupError, GgmkError, ValueError))
    with pytest.raises(TenantError, match="nice"):
        pol.set_weight(1, nice=40)
    with pytest.raises(TenantError, match="give nice= or weight="):
        pol.set_weight(1)
    with pytest.raises(TenantError, match="runtime_ns"):
        pol.account(1, -5, 1, 0)
    with pytest.raises(TenantError, match="ntasks"):
        pol.account(1, 5, -1, 0)
    with pytest.raises(TenantError, match="1-D"):
        pol.observe_latency(1, np.zeros((2, 2)))


def test_parameters_are_checked_and_factory_names():
    with pytest.raises(TenantError, match="slice_us"):
        EevdfBorePolicy(slice_us=0)
    with pytest.raises(TenantError, match="decay"):
        EevdfBorePolicy(decay=1.0)
    with pytest.raises(TenantError, match="burst_unit_us"):
        EevdfBorePolicy(burst_unit_us=-1)
    with pytest.raises(TenantError, match="quantum_us"):
        WeightedRoundRobinPolicy(quantum_us=float("nan"))
    with pytest.raises(TenantError, match="unknown policy 'fifo'.*eevdf"):
        make_policy("fifo")
    assert isinstance(make_policy("eevdf"), EevdfBorePolicy)
    assert make_policy("eevdf").bore_penalty == 8
    assert make_policy("eevdf-gentle").bore_penalty == 4
    assert EevdfBorePolicy.gentle().bore_penalty == 4
    assert isinstance(make_policy("rr"), WeightedRoundRobinPolicy)
    assert make_policy("eevdf", slice_us=2000).params["slice_us"] == 2000
    # the default threshold is BORE's: 2**20 ns ~ 1.05 ms of uninterrupted burst
    assert make_policy("eevdf").burst_threshold_us == pytest.approx(1048.575)
    for name in POLICIES:
        assert isinstance(make_policy(name), TenantPolicy)


@pytest.mark.parametrize("name", POLICIES)
def test_pick_none_when_idle_and_transitions_idempotent(name):
    pol = build(name)
    assert pol.pick(0) is None
    pol.add_tenant(4, nice=3)
    assert 4 in pol and pol.known == {4}
    assert pol.pick(0) is None
    pol.wake(4, 0)
    pol.wake(4, 0)
    assert pol.pick(0) == 4
    pol.sleep(4, 10)
    pol.sleep(4, 10)
    pol.account(4, 1000, 2, 10)
    assert pol.pick(10) is None
    s = pol.stats()[4]
    assert s["weight"] == 526 and s["nice"] == 3 and s["tasks"] == 2
    assert s["handler_time_ns"] == 1000


# -- fairness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("tasks", [(100 * US, 100 * US), (40 * US, 700 * US)])
def test_two_floods_share_handler_time_by_weight(name, tasks):
    sim = Sim(build(name)).tenant(0, weight=2048).tenant(1, weight=1024)
    sim.flood(0, tasks[0]).flood(1, tasks[1]).run(2000 * MS)
    ratio = sim.handler_time(0) / sim.handler_time(1)
    assert ratio == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("name", POLICIES)
def test_nice_weights_and_weight_change_at_run_time(name):
    pol = build(name)
    sim = Sim(pol).tenant(0).tenant(1, nice=0)
    sim.flood(0, 50 * US).flood(1, 120 * US).run(1000 * MS)
    assert sim.handler_time(0, 0, 1000 * MS) / sim.handler_time(1, 0, 1000 * MS) \
        == pytest.approx(1.0, rel=0.05)
    pol.set_weight(1, nice=-5)                       # 3121 : 1024
    assert pol.stats()[1]["weight"] == 3121 and pol.stats()[1]["nice"] == -5
    sim.run(2000 * MS)
    r = sim.handler_time(1, 1000 * MS, 2000 * MS) / sim.handler_time(0, 1000 * MS, 2000 * MS)
    assert r == pytest.approx(3121 / 1024, rel=0.05)
    pol.set_weight(1, weight=512)
    assert pol.stats()[1]["nice"] is None
    sim.run(3000 * MS)
    r = sim.handler_time(1, 2000 * MS, 3000 * MS) / sim.handler_time(0, 2000 * MS, 3000 * MS)
    assert r == pytest.approx(0.5, rel=0.05)


def test_reweight_keeps_lag_in_real_terms():
    pol = EevdfBorePolicy()
    sim = Sim(pol).tenant(0).tenant(1).tenant(2)
    sim.flood(0, 100 * US).flood(1, 300 * US).flood(2, 200 * US).run(50 * MS)
    before = pol.stats()[1]
    pol.set_weight(1, weight=4096)
    after = pol.stats()[1]
    assert before["lag"] != 0
    assert after["lag"] * 4096 == pytest.approx(before["lag"] * 1024, rel=1e-6, abs=1e-3)


def _wake_cycles(sim: Sim, tid: int, *, period: int, work: int, task: int, until: int):
    """``tid`` receives ``work`` ns of tasks at the start of each ``period``."""
    wakes = list(range(period, until, period))
    for at in wakes:
        sim.arrive(tid, at, task, n=work // task)
    return wakes


@pytest.mark.parametrize("name", POLICIES)
def test_sleeping_does_not_bank_credit(name):
    """B sleeps most of the time, then wakes with a big backlog: while A floods, B gets about
    its (equal) share while it has work, never a catch-up burst for the time it slept."""
    until = 2000 * MS
    sim = Sim(build(name)).tenant(0).tenant(1)
    sim.flood(0, 250 * US)
    wakes = _wake_cycles(sim, 1, period=200 * MS, work=40 * MS, task=500 * US, until=until)
    sim.run(until)
    for at in wakes[:-1]:
        first = sim.handler_time(1, at, at + 20 * MS)
        assert first <= 0.5 * 20 * MS + 2 * MS, f"B banked credit while asleep (wake at {at})"
        # B needs ~80 ms to get its 40 ms of work done at an equal share
        busy_end = max(e for s, e, t in sim.runs if t == 1 and at <= s < at + 200 * MS)
        assert busy_end - at >= 2 * 40 * MS * 0.95
    total_b = sim.handler_time(1)
    assert total_b == pytest.approx(40 * MS * len(wakes), rel=0.02)


class KeepVruntime(EevdfBorePolicy):
    """A broken policy for control tests: a waking tenant keeps its old virtual runtime (banks
    credit while asleep) instead of starting near the average."""

    def wake(self, tenant, now_ns):
        t = self._t[tenant]
        old = t.v
        super().wake(tenant, now_ns)
        if self._avg()[0] > old:
            t.v, t.vd = old, old + self._vslice(t)


def test_sleeping_banks_credit_without_the_wake_rule():
    """Control for the test above: keeping the old vruntime on wake would bank credit."""
    sim = Sim(KeepVruntime()).tenant(0).tenant(1)
    sim.flood(0, 250 * US)
    wakes = _wake_cycles(sim, 1, period=200 * MS, work=40 * MS, task=500 * US, until=1000 * MS)
    sim.run(1000 * MS)
    at = wakes[2]
    assert sim.handler_time(1, at, at + 20 * MS) > 0.9 * 20 * MS


@pytest.mark.parametrize("name", POLICIES)
def test_tenant_that_empties_its_queue_every_batch_gets_only_its_share(name):
    """B submits a batch's worth of long tasks and the next as soon as they finish, so its
    queue empties at every pop and it is re-woken after every batch. Its overlong batches are
    kept as debt (delayed dequeue); it must not win more than its share against a flood."""
    sim = Sim(build(name), max_batch=4).tenant(0).tenant(1)
    sim.flood(0, 100 * US).closed_loop(1, 2 * MS, n=4).run(2000 * MS)
    share_b = sim.handler_time(1) / sim.now
    assert share_b == pytest.approx(0.5, abs=0.03)


def test_wake_lag_is_half_a_min_slice_and_debt_survives_sleep():
    pol = EevdfBorePolicy(min_slice_us=300)
    pol.add_tenant(0)
    pol.add_tenant(1, weight=2048)
    pol.wake(0, 0)
    assert pol.stats()[0]["lag"] == 0                       # alone: lag is 0 by definition
    pol.account(pol.pick(0), 5 * MS, 4, 5 * MS)
    pol.wake(1, 5 * MS)
    st = pol.stats()
    assert st[1]["lag"] == pytest.approx(-150 * US * 1024 / 2048)   # -min_slice/2, virtual
    assert st[1]["eligible"] is False and st[0]["eligible"] is True
    assert pol.pick(5 * MS) == 0
    # tenant 1 overruns (say on another worker), then its queue empties: it keeps its debt
    pol.account(1, 20 * MS, 8, 6 * MS)
    debt = pol.stats()[1]["lag"]
    assert debt < -3 * MS                                     # 20 ms at 2x weight, 1 of 3 shares
    pol.sleep(1, 6 * MS)
    assert pol.stats()[1]["state"] == "delayed"
    pol.wake(1, 6 * MS)
    assert pol.stats()[1]["lag"] == pytest.approx(debt)       # not reset to -min_slice/2
    # it is not served until tenant 0 has had the time it is owed
    served0 = 0
    while pol.pick(0) == 0:
        pol.account(0, 100 * US, 1, 0)
        served0 += 100 * US
    assert served0 == pytest.approx(-debt * (1024 + 2048) / 1024, abs=200 * US)
    # a delayed tenant whose debt is paid off while it sleeps leaves the competition
    pol.sleep(1, 0)
    pol.account(1, 2 * MS, 1, 0)
    assert pol.stats()[1]["state"] == "delayed"
    for _ in range(200):
        pol.account(pol.pick(0), 100 * US, 1, 0)
    assert pol.stats()[1]["state"] == "idle"
    pol.wake(1, 0)
    assert pol.stats()[1]["lag"] == pytest.approx(-150 * US * 1024 / 2048)


@pytest.mark.parametrize("workers", [2, 4])
def test_many_workers_keep_weights_and_debts(workers):
    """With batches in flight on several workers, accounting arrives after later picks and
    after sleeps; weights still hold, and a one-batch closed-loop tenant gets a whole worker
    (it can use no more) without being charged for the floods' time."""
    sim = Sim(EevdfBorePolicy(), workers=workers).tenant(0, weight=2048).tenant(1)
    sim.flood(0, 40 * US).flood(1, 700 * US).run(1000 * MS)
    assert sim.handler_time(0) / sim.handler_time(1) == pytest.approx(2.0, rel=0.05)
    sim = Sim(EevdfBorePolicy(), workers=workers).tenant(0).tenant(1)
    sim.flood(0, 100 * US).closed_loop(1, 2 * MS, n=4).run(1000 * MS)
    assert sim.handler_time(1) / sim.now == pytest.approx(1.0, rel=0.02)


# -- BORE and latency ------------------------------------------------------------------------------

def _flood_vs_interactive(name, until=3000 * MS, floods=1, workers=1, **kw):
    sim = Sim(build(name, **kw), max_batch=4, workers=workers)
    for f in range(floods):
        sim.tenant(f).flood(f, (250 + 50 * f) * US)
    b = floods
    sim.tenant(b)
    interactive(sim, b, until)
    sim.run(until)
    return sim, b


def test_bore_score_rises_for_a_flood_and_stays_low_for_an_interactive_tenant():
    sim, b = _flood_vs_interactive("eevdf", until=500 * MS, floods=2)
    st = sim.pol.stats()
    for f in (0, 1):
        assert st[f]["burst_score"] > 20
        assert st[f]["penalty"] > 0
    assert st[b]["burst_score"] < 20
    assert st[b]["penalty"] == 0


def test_score_decays_when_a_flood_turns_interactive():
    pol = EevdfBorePolicy()
    pol.add_tenant(0)
    pol.wake(0, 0)
    now = 0
    for _ in range(100):                  # 100 ms without a break
        now += MS
        pol.account(0, MS, 4, now)
    high = pol.stats()[0]["burst_score"]
    assert high > 26
    for _ in range(3):                    # now: sleep 5 ms, wake, run 20 µs
        pol.sleep(0, now)
        now += 5 * MS
        pol.wake(0, now)
        now += 20 * US
        pol.account(0, 20 * US, 1, now)
    low = pol.stats()[0]["burst_score"]
    assert low < 20 and low == pytest.approx(np.log2(1 + 20_000), abs=1.0)


def test_bore_cuts_an_interactive_tenants_latency_among_floods():
    """Two floods and one tenant that sends a little work often, equal weights. Without BORE
    the light tenant, once eligible, still waits for a flood's slice to run out; with BORE its
    deadline beats the floods', so it waits about one in-flight batch."""
    runs = {}
    for label, kw in (("bore", {}), ("gentle", {"bore_penalty": 4}),
                      ("plain", {"bore_penalty": 0})):
        sim, b = _flood_vs_interactive("eevdf", floods=2, **kw)
        lat = np.array(sim.lat[b])
        runs[label] = (np.mean(lat), np.percentile(lat, 99), sim.wins(0, b) + sim.wins(1, b), sim)
    mean_bore, p99_bore, flood_wins_bore, sim = runs["bore"]
    mean_plain, p99_plain, flood_wins_plain, _ = runs["plain"]
    assert mean_bore * 1.5 < mean_plain
    assert p99_bore * 1.5 < p99_plain
    # the floods win fewer of the picks the light tenant competes in
    assert flood_wins_bore < 0.8 * flood_wins_plain
    assert runs["gentle"][0] < mean_plain
    # the light tenant's latency is about one in-flight flood batch (<= 1.4 ms here)
    assert p99_bore < 2.5 * MS
    # the policy's own histogram agrees with the simulator's exact numbers
    b = 2
    st = sim.pol.stats()[b]
    assert st["latency_count"] == len(sim.lat[b])
    assert st["latency_p99_ns"] == pytest.approx(p99_bore, rel=0.1)
    # shares between the floods are untouched by BORE
    assert sim.handler_time(0) / sim.handler_time(1) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("floods,workers", [(1, 1), (3, 1), (3, 2)])
def test_interactive_latency_much_lower_than_weighted_round_robin(floods, workers):
    """The benchmark's shape: floods of long-task batches plus a light, frequent tenant, the same
    workload under EEVDF+BORE and under weighted round robin."""
    ev, b = _flood_vs_interactive("eevdf", floods=floods, until=2000 * MS, workers=workers)
    rr, _ = _flood_vs_interactive("rr", floods=floods, until=2000 * MS, workers=workers)
    ev_lat, rr_lat = np.array(ev.lat[b]), np.array(rr.lat[b])
    assert len(ev_lat) == len(rr_lat) > 300
    assert np.mean(ev_lat) * 2.5 < np.mean(rr_lat)
    assert np.percentile(ev_lat, 99) * 2 < np.percentile(rr_lat, 99)
    # ... and the floods still share equally and keep the worker busy under both
    for sim in (ev, rr):
        ht = [sim.handler_time(f) for f in range(floods)]
        assert max(ht) / min(ht) == pytest.approx(1.0, abs=0.06)


# -- metrics ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", POLICIES)
def test_stats_report_every_metric(name):
    pol = build(name)
    pol.add_tenant(0, nice=-20)
    pol.add_tenant(1, weight=77)
    pol.wake(0, 0)
    assert pol.pick(0) == 0
    lat = np.arange(1, 10_001, dtype=np.int64) * 1000     # 1 µs .. 10 ms, uniform
    pol.observe_latency(0, lat)
    pol.observe_latency(0, np.array([], dtype=np.int64))
    pol.observe_latency(0, np.array([-5]))                   # clock skew counts as 0
    pol.account(0, 123_456, 7, 123_456)
    st = pol.stats()
    assert set(st) == {0, 1}
    s0 = st[0]
    for key in ("vruntime", "lag", "burst_score", "tasks", "handler_time_ns", "latency_p50_ns",
                "latency_p99_ns", "weight", "nice", "picks", "state", "latency_count",
                "latency_mean_ns", "latency_max_ns", "penalty", "batches"):
        assert key in s0, key
    assert s0["weight"] == 88761 and s0["nice"] == -20
    assert s0["tasks"] == 7 and s0["handler_time_ns"] == 123_456 and s0["picks"] == 1
    assert s0["latency_count"] == 10_001
    assert s0["latency_p50_ns"] == pytest.approx(5 * MS, rel=0.07)
    assert s0["latency_p99_ns"] == pytest.approx(9.9 * MS, rel=0.07)
    assert s0["latency_max_ns"] == 10 * MS
    assert s0["vruntime"] == pytest.approx(123_456 * 1024 / 88761, rel=1e-6)
    assert st[1]["weight"] == 77 and st[1]["nice"] is None and st[1]["latency_p99_ns"] == 0
    upper, counts = pol.latency_histogram(0)
    assert counts.sum() == 10_001 and len(upper) == len(counts)
    assert np.all(np.diff(upper) > 0)
