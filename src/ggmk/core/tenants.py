"""Which tenant's work a worker takes next: EEVDF with BORE's burst penalty (SPEC §3, issue 6).

The scheduler keeps one ready queue per tenant. In its gather step a worker asks the tenant
policy which tenant to serve (:meth:`TenantPolicy.pick`), pops a batch from that tenant's queue,
runs it, and reports the measured handler time (:meth:`TenantPolicy.account`). That is handler
*CPU* time: the worker thread's CPU clock on the ``threads`` HAL (the virtual clock on ``sim``),
so a worker that the OS preempts, or a handler blocked off CPU, does not bill its tenant for
the wait (``System.account``; wall time would put a 20 µs task 100 ms in debt on a busy box). The scheduler
also reports queue transitions (:meth:`wake` when a tenant's queue goes empty -> non-empty,
:meth:`sleep` when it goes empty) and the queueing latency of each popped batch
(:meth:`observe_latency`). All calls are made under the scheduler's lock, once per *batch*, so a
policy is not thread-safe and keeps its per-call work O(number of tenants); tenants are few.

Two policies implement the same small interface, so they can be swapped for comparison and the
GPU kernel can adopt either later:

``EevdfBorePolicy`` (``make_policy("eevdf")``)
    Earliest Eligible Virtual Deadline First, as in Linux >= 6.6, with the BORE burst penalty.

    * **Virtual runtime.** A tenant of weight ``w`` that runs ``t`` ns of handler time advances
      its virtual runtime ``v`` by ``t * 1024 / w`` (virtual ns).
    * **Lag.** ``V`` is the weight-averaged virtual runtime of the tenants in competition;
      a tenant's lag is ``V - v`` (virtual ns; positive = the system owes it service).
    * **Eligibility.** A runnable tenant is eligible when its lag is not negative.
    * **Deadline.** Each tenant holds a virtual deadline ``vd``; whenever ``v`` passes it, it
      asks for a new slice: ``vd = v + slice * 1024 / w``. Among eligible tenants the earliest
      (BORE-penalised, see below) deadline wins; ties go to the lower tenant id.
    * **Waking.** A tenant whose queue goes non-empty is placed with a lag of
      ``-min_slice / 2`` (virtual, at its weight), *or its remaining debt if that is larger*:
      sleeping never banks credit, and a tenant cannot shed the debt of an overlong batch by
      letting its queue run dry (see "debt" below). The wake lag is what a light tenant waits
      on when it wakes against a flood: with ``n`` equal tenants it becomes eligible once the
      others have run ``n * min_slice / 2`` more (2 x 150 µs with the earlier default of 300
      µs: two of bench/tenants.py's 250 µs flood batches, where one does at 100 µs).
    * **Debt (delayed dequeue).** A tenant that goes to sleep with negative lag stays in the
      average ``V`` (not pickable) until ``V`` has caught up with it, like Linux's
      DELAY_DEQUEUE. A batch accounted after its tenant went to sleep (the scheduler calls
      ``sleep`` when it pops the last task, ``account`` after the batch ran) is charged from
      where the tenant left; if that puts it ahead of the others (they ran less meanwhile), it
      rejoins the average in debt. Without this, a tenant that empties its queue with every
      batch could run huge batches and be re-placed near ``V`` each time, taking far more
      than its share (the test suite has that case: 95% instead of 50%).
    * **Weights** at run time: ``set_weight`` keeps the tenant's lag in real terms
      (``w * (V - v)``) and rescales its remaining request, as Linux's ``reweight_entity``.

    BORE, the "Burst-Oriented Response Enhancer" that the Ghost Kernel seed builds its
    scheduler on ("intelligent burst detection for interactive workloads"), rates each tenant by
    how long it runs without a break and pushes back the ones that run long:

    * **Burst.** ``burst`` is the weight-normalised handler time (``t * 1024 / w``) the tenant
      has run since it last woke from an empty queue. It only resets on wake, so a tenant that
      floods (its queue never drains) has one ever-growing burst, and a tenant that sends a
      little work often has many short ones.
    * **Score.** As in BORE, the score is counted in *bits*: after each batch,
      ``raw = log2(1 + burst / burst_unit)``. If ``raw`` is at least the score, the score rises
      to it at once (a long burst is punished without delay); otherwise the tenant just ran
      briefly and the score decays geometrically towards ``raw``:
      ``score = raw + (score - raw) * decay``. While a tenant sleeps its score decays by
      ``decay`` per ``slice`` of wall time asleep (applied when it wakes). So one burst costs
      a point per doubling, and a tenant that turns interactive forgets its past in a few runs.
      BORE uses bits of *nanoseconds*; with the default ``burst_unit_us = 0.001`` (1 ns) the
      points are exactly BORE's, and the default threshold of 20 points means a burst of
      ``2**20`` ns ~ 1.05 ms of handler time at nice 0 (``w/1024`` times that at weight ``w``).
      :attr:`EevdfBorePolicy.burst_threshold_us` gives the threshold in µs.
    * **Penalty.** Above the threshold each point adds ``bore_penalty / 8`` of the tenant's
      virtual slice to its virtual runtime *as seen by the deadline* (capped at 39 points, BORE's
      ``MAX_BURST_PENALTY``): default 8, one slice per doubling of the burst; the ``gentle``
      preset uses 4, half a slice. ``bore_penalty = 0`` turns BORE off (plain EEVDF).

    Why the penalty goes on the deadline and not on the weight: BORE proper re-weights a bursty
    task, which changes throughput shares. Here weights alone decide shares (the lag/eligibility
    rule is untouched, so two floods of weights 2:1 still split 2:1), and a tenant back from
    sleep cannot turn its low score into a *rate* advantage, which would be banking credit by
    another name. What the penalty changes is the order among eligible tenants: once a light
    tenant is eligible, its deadline beats any flood's, so a flood cannot push a light tenant's
    queueing latency much past one in-flight batch plus its half-min-slice wake lag. An
    in-flight batch is short because of its size: with more than one tenant added, the
    scheduler pops at most :meth:`~EevdfBorePolicy.batch_limit` tasks of a tenant, about
    ``min_slice`` of its handler time at its recent cost per task (``max_batch`` tasks of 200
    µs each held both workers ~50 ms).

``WeightedRoundRobinPolicy`` (``make_policy("rr")``)
    Deficit round robin in handler time, for comparison: runnable tenants take turns in wake
    order; a turn lasts while the tenant's deficit is positive, and each turn adds
    ``quantum * w / 1024`` to it, so handler time is shared in proportion to weight. A tenant
    that wakes joins the end of the rotation; nothing looks at latency. Credit is dropped when a
    tenant's queue empties (debt is kept).

Parameters (all times are microseconds of *handler* time, i.e. measured ``runtime_ns / 1000``,
at nice 0 = weight 1024; a tenant of weight ``w`` sees them scaled by ``1024 / w`` in virtual
time):

=================  =========  ==============================================================
parameter          default    meaning
=================  =========  ==============================================================
``slice_us``       3000       EEVDF request size: the deadline is ``v + slice * 1024 / w``
                              (Linux's 0.75 ms base slice x (1 + log2 8 CPUs)); also the
                              time unit of the sleep decay of the burst score
``min_slice_us``   100        a woken tenant starts at lag ``-min_slice / 2``
``bore_threshold`` 20         burst score (bits of ``burst_unit``) above which the penalty
                              applies; 20 bits of 1 ns ~ 1.05 ms of uninterrupted burst
``bore_penalty``   8          penalty per point over the threshold, in eighths of a slice
                              (``gentle``: 4; 0 disables BORE)
``burst_unit_us``  0.001      what one unit of burst is (1 ns, as BORE's bits of ns)
``decay``          0.5        geometric decay factor of the score on brief runs and per
                              ``slice`` of sleep, in [0, 1)
``quantum_us``     3000       (round robin) handler time per turn at weight 1024
=================  =========  ==============================================================

Tenant weights follow the Linux nice scale (:data:`NICE_TO_WEIGHT`, nice 0 = 1024, each step
about 1.25x). Example::

    from ggmk.core.tenants import make_policy

    pol = make_policy("eevdf")                 # or "eevdf-gentle", "rr"
    pol.add_tenant(0)                          # nice 0, weight 1024
    pol.add_tenant(1, nice=-5)                 # weight 3121
    pol.wake(0, now_ns=0); pol.wake(1, now_ns=0)
    t = pol.pick(now_ns=0)                     # -> the tenant to pop a batch from
    pol.account(t, runtime_ns=250_000, ntasks=32, now_ns=250_000)
    pol.set_weight(1, nice=0)                  # at run time
    pol.stats()[1]["vruntime"]

Errors are :class:`TenantError` (a ``ValueError``); an unknown tenant raises
:class:`UnknownTenantError` (also a ``LookupError``), naming the tenant and the call.
"""
from __future__ import annotations

import math
import types
import weakref
from collections import deque
from typing import Protocol, runtime_checkable

import numpy as np

from ggmk.errors import GgmkError

__all__ = [
    "NICE_TO_WEIGHT", "NICE_0_WEIGHT", "MAX_TENANT", "TenantError", "UnknownTenantError",
    "TenantPolicy", "EevdfBorePolicy", "WeightedRoundRobinPolicy", "make_policy",
    "nice_to_weight", "POLICIES", "check_tenant_id", "tenant_weight", "tenant_spec",
]

NICE_0_WEIGHT = 1024
MAX_TENANT = 0xFFFF            # the task record's tenant field is a u16

# Linux kernel/sched/core.c sched_prio_to_weight[], nice -20 .. 19.
_PRIO_TO_WEIGHT = (
    88761, 71755, 56483, 46273, 36291,
    29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906,
    3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423,
    335, 272, 215, 172, 137,
    110, 87, 70, 56, 45,
    36, 29, 23, 18, 15,
)
NICE_TO_WEIGHT: types.MappingProxyType = types.MappingProxyType(
    {nice: w for nice, w in zip(range(-20, 20), _PRIO_TO_WEIGHT)})
"""Read-only mapping nice (-20..19) -> weight, Linux's ``sched_prio_to_weight``."""

_WEIGHT_TO_NICE = {w: n for n, w in NICE_TO_WEIGHT.items()}
_MAX_WEIGHT = 1 << 24
_MAX_PENALTY_POINTS = 39       # BORE's MAX_BURST_PENALTY, in points (bits)

# Latency histogram: bucket 0 holds 0 ns; then 8 log-spaced buckets per octave (~9% wide).
_SUB = 8
_NBUCKETS = 1 + 64 * _SUB
MAX_BATCH_LIMIT = 1 << 31      # batch_limit of a tenant whose tasks measured 0 ns (no limit)


class TenantError(GgmkError, ValueError):
    """A tenant call was given bad input (bad nice or weight, bad parameter, negative time)."""


class UnknownTenantError(TenantError, LookupError):
    """The tenant was never added to the policy."""


def nice_to_weight(nice: int) -> int:
    """Weight of a Linux nice value (-20..19): ``nice_to_weight(0) == 1024``."""
    if isinstance(nice, bool) or not isinstance(nice, (int, np.integer)):
        raise TenantError(f"nice must be an integer in -20..19, got {nice!r}")
    if not -20 <= int(nice) <= 19:
        raise TenantError(f"nice {int(nice)} is out of range: the Linux nice scale is -20..19")
    return NICE_TO_WEIGHT[int(nice)]


def _check_weight(weight, where: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
        raise TenantError(f"{where}: weight must be a positive integer, got {weight!r}")
    if not 1 <= int(weight) <= _MAX_WEIGHT:
        raise TenantError(f"{where}: weight {int(weight)} is out of range 1..{_MAX_WEIGHT}")
    return int(weight)


def _resolve(where: str, nice, weight) -> tuple[int, int | None]:
    """(weight, nice or None) from at most one of nice= / weight= (neither: nice 0)."""
    if nice is not None and weight is not None:
        raise TenantError(f"{where}: give nice= or weight=, not both "
                          f"(got nice={nice!r}, weight={weight!r})")
    if weight is not None:
        w = _check_weight(weight, where)
        return w, _WEIGHT_TO_NICE.get(w)
    n = 0 if nice is None else nice
    try:
        return nice_to_weight(n), int(n)
    except TenantError as e:
        raise TenantError(f"{where}: {e}") from None


def check_tenant_id(tenant, where: str, name: str = "tenant=") -> int:
    """``tenant`` as an int, if it is a tenant id: an integer (not a bool, not a float that
    hashes like one) in 0..65535, the task record's u16 field; else a TenantError that reads
    ``{where}: {name}{tenant!r}: allowed ...``."""
    if isinstance(tenant, bool) or not isinstance(tenant, (int, np.integer)) \
            or not 0 <= int(tenant) <= MAX_TENANT:
        raise TenantError(f"{where}: {name}{tenant!r}: allowed an int tenant id "
                          f"0..{MAX_TENANT} (the task record's u16 field)")
    return int(tenant)


def tenant_weight(where: str, *, nice=None, weight=None) -> tuple[int, int | None]:
    """(weight, nice or None) from exactly one of ``nice`` (-20..19) / ``weight``
    (1..2**24), checked; a TenantError naming ``where`` otherwise. What ``System.set_tenant``
    checks before it adds or changes a tenant."""
    if nice is None and weight is None:
        raise TenantError(f"{where}: give nice= (-20..19) or weight= (1..{_MAX_WEIGHT})")
    return _resolve(where, nice, weight)


_SPEC_ALLOWED = (f"allowed a nice value (an int -20..19) or a dict with exactly one of "
                 f"'nice' (-20..19) or 'weight' (1..{_MAX_WEIGHT}), e.g. {{'nice': -5}} or "
                 f"{{'weight': 2048}}")


def tenant_spec(where: str, spec) -> dict:
    """One entry of ``boot(tenants={id: spec})``: a nice value, or ``{'nice': n}`` /
    ``{'weight': w}``. Returns the checked keyword for ``add_tenant`` (``{'nice': n}`` or
    ``{'weight': w}``); a TenantError naming ``where``, the bad key or value and what is
    allowed otherwise."""
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k not in ("nice", "weight"):
                raise TenantError(f"{where}: unknown key {k!r} (value {v!r}): {_SPEC_ALLOWED}")
        if len(spec) != 1:
            how = "both nice and weight" if spec else "neither nice nor weight"
            raise TenantError(f"{where}: {spec!r} gives {how}: {_SPEC_ALLOWED}")
        (key, value), = spec.items()
        if value is None:
            raise TenantError(f"{where}: {key} None: {_SPEC_ALLOWED}")
    elif spec is None:
        raise TenantError(f"{where}: None: {_SPEC_ALLOWED}")
    else:
        key, value = "nice", spec
    w, n = _resolve(where, value if key == "nice" else None, value if key == "weight" else None)
    return {"nice": n} if key == "nice" else {"weight": w}


def _positive(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TenantError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise TenantError(f"{name} must be finite and {need}, got {value!r}")
    return v


@runtime_checkable
class TenantPolicy(Protocol):
    """What the scheduler calls (under its lock, once per popped batch).

    Two calls are optional (the built-in policies have them): ``bind(scheduler)`` when a
    scheduler takes the policy (it refuses a second one), and ``batch_limit(tenant)``, the most
    tasks of ``tenant`` one batch may take (without it: 16 once a second tenant has work).
    """

    name: str

    def add_tenant(self, tenant: int, *, nice: int = 0, weight: int | None = None) -> None:
        """Register ``tenant`` (0..65535) with a nice value or an explicit weight."""

    def set_weight(self, tenant: int, *, nice: int | None = None,
                   weight: int | None = None) -> None:
        """Change a tenant's weight at run time (exactly one of nice= / weight=)."""

    def wake(self, tenant: int, now_ns: int) -> None:
        """The tenant's queue went empty -> non-empty (idempotent)."""

    def sleep(self, tenant: int, now_ns: int) -> None:
        """The tenant's queue went empty (idempotent)."""

    def pick(self, now_ns: int) -> int | None:
        """The runnable tenant to pop the next batch from; None when none is runnable."""

    def account(self, tenant: int, runtime_ns: int, ntasks: int, now_ns: int) -> None:
        """A batch of ``ntasks`` of ``tenant`` ran for ``runtime_ns`` of handler time."""

    def observe_latency(self, tenant: int, latencies_ns: np.ndarray) -> None:
        """Queueing latencies (enqueue -> pop, ns) of the tasks of one popped batch."""

    def stats(self) -> dict[int, dict]:
        """Per tenant: weight, nice, vruntime, lag, burst_score, tasks, handler_time_ns, ..."""

    def __contains__(self, tenant: int) -> bool:
        """Whether ``tenant`` was added."""


class _Tenant:
    """One tenant's scheduling state and metrics (one object per tenant, not per task)."""

    __slots__ = ("id", "weight", "nice", "state", "v", "vd", "burst", "score", "slept_at",
                 "deficit", "tasks", "batches", "picks", "handler_ns", "cost", "hist",
                 "lat_n", "lat_sum", "lat_max")

    IDLE, ACTIVE, DELAYED = "idle", "active", "delayed"

    def __init__(self, tid: int, weight: int, nice: int | None):
        self.id = tid
        self.weight = weight
        self.nice = nice
        self.state = _Tenant.IDLE
        self.v = 0.0          # virtual runtime, virtual ns
        self.vd = 0.0         # virtual deadline, virtual ns
        self.burst = 0.0      # weight-normalised handler ns since the last wake
        self.score = 0.0      # BORE burst score, points (bits of burst_unit)
        self.slept_at = None  # now_ns of the last sleep
        self.deficit = 0.0    # round robin: handler ns left in the current turn
        self.tasks = 0
        self.batches = 0
        self.picks = 0
        self.handler_ns = 0
        self.cost = None      # recent handler ns per task (batch_limit); None: none measured
        self.hist = np.zeros(_NBUCKETS, dtype=np.int64)
        self.lat_n = 0
        self.lat_sum = 0
        self.lat_max = 0


_SMALL_BATCH = 16     # observe_latency: up to this many values, a plain integer loop


def _bucket(v: int) -> int:
    """Histogram bucket of a latency of ``v`` >= 0 ns: 0 for 0, else 1 + 8 * octave + sub, with
    the octave ``floor(log2 v)`` and sub the eighth of that octave ``v`` falls in (~9% wide)."""
    if v <= 0:
        return 0
    o = v.bit_length() - 1
    return 1 + _SUB * o + ((v << 3) >> o) - _SUB


# Lowest latency (ns) of each bucket, for a vectorised lookup (searchsorted, right, minus 1):
# the smallest v with _bucket(v) >= i. Buckets no integer falls in (low octaves) share their
# successor's bound, so the lookup lands past them. Octave 63 is beyond an int64.
_BUCKET_LOW = np.array([0] + [-((-(_SUB + sub) << o) // _SUB)
                              for o in range(63) for sub in range(_SUB)], dtype=np.int64)


def _bucket_mid(i: int) -> float:
    if i == 0:
        return 0.0
    octave, sub = divmod(i - 1, _SUB)
    return 2.0 ** octave * (1.0 + (sub + 0.5) / _SUB)


class _PolicyBase:
    """Tenant table, argument checks and the per-tenant metrics both policies share."""

    name = "base"
    #: the handler time (ns) a batch is sized to while tenants share the workers (batch_limit)
    batch_ns = 100_000.0

    def __init__(self) -> None:
        self._t: dict[int, _Tenant] = {}
        self._owner = None     # a weak reference to the scheduler served (bind)

    def bind(self, owner) -> None:
        """Serve ``owner``, the scheduler that takes this policy (``Scheduler.policy = ...``):
        a policy holds one system's tenant state and is called under that system's lock, so
        it serves one system. A second one is refused, even once the first has halted."""
        if self._owner is not None and self._owner() is not owner:
            raise TenantError(
                f"boot: policy= (a {self.name!r} policy object) already serves another system "
                f"(its tenants: {sorted(self._t)}): a policy object serves one system; pass a "
                f"new one (make_policy({self.name!r}, ...)) or the policy name "
                f"(policy={self.name!r}), with its tenants in tenants={{id: nice, ...}}")
        self._owner = weakref.ref(owner)

    # -- tenants ----------------------------------------------------------------------------------
    @property
    def known(self) -> frozenset[int]:
        """The ids of all added tenants."""
        return frozenset(self._t)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._t

    def _get(self, tenant, where: str) -> _Tenant:
        try:
            return self._t[tenant]
        except (KeyError, TypeError):
            raise UnknownTenantError(
                f"{self.name}.{where}: unknown tenant {tenant!r}; add it first with "
                f"add_tenant({tenant!r}, nice=...) (known: {sorted(self._t)})") from None

    def add_tenant(self, tenant: int, *, nice: int = 0, weight: int | None = None) -> None:
        """Register ``tenant`` (0..65535) at ``nice`` (default 0) or with an explicit ``weight``.

        >>> pol = make_policy("eevdf"); pol.add_tenant(3, nice=-20); pol.stats()[3]["weight"]
        88761
        """
        tenant = check_tenant_id(tenant, f"{self.name}.add_tenant")
        if tenant in self._t:
            raise TenantError(f"{self.name}.add_tenant: tenant {tenant} is already added; "
                              f"use set_weight() to change its weight")
        if weight is not None and not isinstance(nice, bool) and nice == 0:
            nice = None            # the default nice yields to an explicit weight
        w, n = _resolve(f"{self.name}.add_tenant({tenant})", nice, weight)
        self._t[tenant] = _Tenant(tenant, w, n)

    def set_weight(self, tenant: int, *, nice: int | None = None,
                   weight: int | None = None) -> None:
        """Change ``tenant``'s weight at run time; it takes effect from the next pick."""
        t = self._get(tenant, "set_weight")
        if nice is None and weight is None:
            raise TenantError(f"{self.name}.set_weight({tenant}): give nice= or weight=")
        w, n = _resolve(f"{self.name}.set_weight({tenant})", nice, weight)
        self._reweight(t, w)
        t.nice = n

    def _reweight(self, t: _Tenant, w: int) -> None:
        t.weight = w

    @staticmethod
    def _check_time(where: str, runtime_ns, ntasks) -> tuple[int, int]:
        if isinstance(runtime_ns, bool) or not isinstance(runtime_ns, (int, np.integer)) \
                or runtime_ns < 0:
            raise TenantError(f"{where}: runtime_ns must be an integer >= 0, got {runtime_ns!r}")
        if isinstance(ntasks, bool) or not isinstance(ntasks, (int, np.integer)) or ntasks < 0:
            raise TenantError(f"{where}: ntasks must be an integer >= 0, got {ntasks!r}")
        return int(runtime_ns), int(ntasks)

    def _count(self, t: _Tenant, runtime_ns: int, ntasks: int) -> None:
        t.tasks += ntasks
        t.batches += 1
        t.handler_ns += runtime_ns
        if ntasks:
            # rises at once, falls by 1/8 a batch: a batch of a tenant's costly tasks is not
            # sized by the cheap ones it ran just before
            c = runtime_ns / ntasks
            t.cost = c if t.cost is None or c >= t.cost else t.cost + (c - t.cost) / 8

    def batch_limit(self, tenant: int) -> int:
        """The most tasks of ``tenant`` one batch may take: with more than one tenant added,
        ``batch_ns`` of handler time at its recent cost per task, at least 1 (1 until a batch
        of it was measured); with one, no limit. The scheduler asks at each pop (``max_batch``
        bounds it too), so a tenant that wakes waits about one such batch for an in-flight
        one, whether the other tenants had work queued at that pop or not."""
        c = self._get(tenant, "batch_limit").cost
        if len(self._t) < 2 or c == 0:
            return MAX_BATCH_LIMIT
        return 1 if c is None else max(1, int(self.batch_ns / c))

    # -- latency ----------------------------------------------------------------------------------
    def observe_latency(self, tenant: int, latencies_ns: np.ndarray) -> None:
        """Add a popped batch's queueing latencies (ns, enqueue -> pop) to ``tenant``'s histogram.

        Negative values (clock skew between threads) count as 0; fractions of a ns are dropped;
        NaN, infinities and values of 2**63 ns or more raise TenantError.
        Called once per popped batch, so it is cheap: integer log2 on the few values of a small
        batch (~1 µs for one), a vectorised pass over only the buckets touched for a large one.
        """
        t = self._get(tenant, "observe_latency")
        lat = latencies_ns
        if type(lat) is not np.ndarray:
            lat = np.asarray(lat)
        if lat.ndim != 1 or lat.dtype.kind not in "iuf":
            raise TenantError(f"{self.name}.observe_latency({tenant}): latencies_ns must be a "
                              f"1-D numeric array, got shape {lat.shape} dtype {lat.dtype}")
        n = lat.shape[0]
        if n == 0:
            return
        if lat.dtype.kind != "i":
            # (a NaN or inf became 0 ns with a RuntimeWarning; 2**63 and up crashed the lookup)
            bad = (lat >= 2**63 if lat.dtype.kind == "u"
                   else ~np.isfinite(lat) | (lat >= 2.0**63))
            if bad.any():
                v = lat[bad][0].item()
                raise TenantError(f"{self.name}.observe_latency({tenant}): latencies_ns "
                                  f"holds {v!r}: allowed finite values < 2**63 ns")
        hist = t.hist
        if n <= _SMALL_BATCH:
            mx = t.lat_max
            total = 0
            for v in lat.tolist():
                v = int(v) if v > 0 else 0
                total += v
                if v > mx:
                    mx = v
                hist[_bucket(v)] += 1
            t.lat_max = mx
        else:
            v = lat.astype(np.int64)
            np.maximum(v, 0, out=v)
            mx = int(v.max())
            t.lat_max = max(t.lat_max, mx)
            # int64 sum unless it could wrap (latencies of centuries: exact in Python ints)
            total = int(v.sum()) if mx < (1 << 62) // n else sum(v.tolist())
            idx = np.searchsorted(_BUCKET_LOW, v, side="right")
            idx -= 1
            lo = int(idx.min())
            counts = np.bincount(idx - lo)
            hist[lo:lo + len(counts)] += counts
        t.lat_n += n
        t.lat_sum += total

    def latency_quantile(self, tenant: int, q: float) -> float:
        """Approximate ``q`` quantile (0..1) of ``tenant``'s queueing latency, ns (within ~5%).

        Returns 0.0 when nothing was observed.
        """
        t = self._get(tenant, "latency_quantile")
        if not 0.0 <= q <= 1.0:
            raise TenantError(f"latency_quantile: q must be in [0, 1], got {q!r}")
        if t.lat_n == 0:
            return 0.0
        rank = max(1, math.ceil(q * t.lat_n))
        i = int(np.searchsorted(np.cumsum(t.hist), rank))
        return min(_bucket_mid(i), float(t.lat_max))

    def latency_histogram(self, tenant: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket upper bounds in ns, counts) of ``tenant``'s queueing latency, empty tail cut."""
        t = self._get(tenant, "latency_histogram")
        last = int(np.flatnonzero(t.hist)[-1]) + 1 if t.lat_n else 0
        i = np.arange(last)
        octave, sub = np.divmod(np.maximum(i - 1, 0), _SUB)
        upper = np.where(i == 0, 0.0, 2.0 ** octave * (1.0 + (sub + 1) / _SUB))
        return upper, t.hist[:last].copy()

    # -- metrics ----------------------------------------------------------------------------------
    def stats(self) -> dict[int, dict]:
        """Per tenant: ``weight``, ``nice`` (None for a weight off the table), ``state``
        (idle/active/delayed), ``vruntime`` and ``lag`` (virtual ns), ``burst_score`` (points),
        ``penalty`` (virtual ns added to its deadline), ``tasks``, ``batches``, ``picks``,
        ``handler_time_ns``, and queueing latency ``latency_count``, ``latency_mean_ns``,
        ``latency_p50_ns``, ``latency_p99_ns``, ``latency_max_ns``."""
        out = {}
        for tid, t in self._t.items():
            out[tid] = {
                "weight": t.weight, "nice": t.nice, "state": t.state,
                "tasks": t.tasks, "batches": t.batches, "picks": t.picks,
                "handler_time_ns": t.handler_ns,
                "latency_count": t.lat_n,
                "latency_mean_ns": t.lat_sum / t.lat_n if t.lat_n else 0.0,
                "latency_p50_ns": self.latency_quantile(tid, 0.50),
                "latency_p99_ns": self.latency_quantile(tid, 0.99),
                "latency_max_ns": t.lat_max,
                **self._policy_stats(t),
            }
        return out

    def _policy_stats(self, t: _Tenant) -> dict:
        return {}


class EevdfBorePolicy(_PolicyBase):
    """EEVDF tenant selection with the BORE burst penalty (see the module docstring).

    >>> pol = EevdfBorePolicy()
    >>> pol.add_tenant(0); pol.add_tenant(1, weight=2048)
    >>> pol.wake(0, 0); pol.wake(1, 0)
    >>> t = pol.pick(0); pol.account(t, 100_000, 8, 100_000)
    """

    name = "eevdf"

    def __init__(self, *, slice_us: float = 3000, min_slice_us: float = 100,
                 bore_threshold: float = 20, bore_penalty: float = 8,
                 burst_unit_us: float = 0.001, decay: float = 0.5) -> None:
        super().__init__()
        self.slice_ns = _positive("slice_us", slice_us) * 1000.0
        self.min_slice_ns = _positive("min_slice_us", min_slice_us) * 1000.0
        self.batch_ns = self.min_slice_ns     # batch_limit: a batch of about min_slice
        self.bore_threshold = _positive("bore_threshold", bore_threshold, allow_zero=True)
        self.bore_penalty = _positive("bore_penalty", bore_penalty, allow_zero=True)
        self.burst_unit_ns = _positive("burst_unit_us", burst_unit_us) * 1000.0
        self.decay = _positive("decay", decay, allow_zero=True)
        if self.decay >= 1.0:
            raise TenantError(f"decay must be in [0, 1), got {decay!r}")
        self._members: dict[int, _Tenant] = {}   # in the average V: active and delayed
        self._clock = 0.0                        # last V (where a lone tenant is placed)

    @classmethod
    def gentle(cls, **kw) -> "EevdfBorePolicy":
        """The gentler BORE setting: penalty 4 (half a slice per point) instead of 8."""
        kw.setdefault("bore_penalty", 4)
        pol = cls(**kw)
        pol.name = "eevdf-gentle"
        return pol

    @property
    def burst_threshold_us(self) -> float:
        """The uninterrupted burst (µs of handler time at nice 0) at which the penalty starts."""
        return self.burst_unit_ns * (2.0 ** self.bore_threshold - 1.0) / 1000.0

    @property
    def params(self) -> dict:
        """The configuration, in the constructor's units."""
        return {"slice_us": self.slice_ns / 1000, "min_slice_us": self.min_slice_ns / 1000,
                "bore_threshold": self.bore_threshold, "bore_penalty": self.bore_penalty,
                "burst_unit_us": self.burst_unit_ns / 1000, "decay": self.decay}

    # -- the fair clock ----------------------------------------------------------------------------
    def _avg(self, exclude: _Tenant | None = None) -> tuple[float, int]:
        """(V, total weight) over the members, optionally leaving one out. Offsets from the last
        V keep the weighted sum small."""
        base = self._clock
        wsum = 0
        acc = 0.0
        for t in self._members.values():
            if t is not exclude:
                wsum += t.weight
                acc += t.weight * (t.v - base)
        return (base + acc / wsum, wsum) if wsum else (base, 0)

    def _place(self, t: _Tenant, lag: float) -> None:
        """Insert ``t`` into the average so that right after, ``V - t.v == lag``."""
        v_o, w_o = self._avg(exclude=t)
        # V' = (W_o V_o + w v) / (W_o + w)  =>  V' - v = W_o (V_o - v) / (W_o + w)
        t.v = v_o - lag * (w_o + t.weight) / w_o if w_o else v_o
        self._members[t.id] = t

    def _vslice(self, t: _Tenant) -> float:
        return self.slice_ns * NICE_0_WEIGHT / t.weight

    def _penalty(self, t: _Tenant) -> float:
        over = min(max(t.score - self.bore_threshold, 0.0), _MAX_PENALTY_POINTS)
        return over * self.bore_penalty / 8.0 * self._vslice(t)

    # -- queue transitions -------------------------------------------------------------------------
    def wake(self, tenant: int, now_ns: int) -> None:
        """Queue went non-empty: place the tenant at lag ``-min_slice/2`` (or its debt)."""
        t = self._get(tenant, "wake")
        if t.state == _Tenant.ACTIVE:
            return
        wake_lag = -0.5 * self.min_slice_ns * NICE_0_WEIGHT / t.weight
        if t.state == _Tenant.DELAYED:
            v_now, _ = self._avg()
            wake_lag = min(wake_lag, v_now - t.v)       # keep the debt; never bank credit
        if t.slept_at is not None and now_ns > t.slept_at:
            t.score *= self.decay ** ((now_ns - t.slept_at) / self.slice_ns)
        self._place(t, wake_lag)
        t.vd = t.v + self._vslice(t)
        t.burst = 0.0
        t.state = _Tenant.ACTIVE

    def sleep(self, tenant: int, now_ns: int) -> None:
        """Queue went empty: leave the competition, or stay in the average while in debt."""
        t = self._get(tenant, "sleep")
        if t.state != _Tenant.ACTIVE:
            return
        t.slept_at = now_ns
        v_now, _ = self._avg()
        if t.v > v_now:
            t.state = _Tenant.DELAYED
        else:
            t.state = _Tenant.IDLE
            del self._members[t.id]

    # -- picking ----------------------------------------------------------------------------------
    def pick(self, now_ns: int) -> int | None:
        """The eligible tenant with the earliest BORE-penalised virtual deadline."""
        v_now, wsum = self._avg()
        if not wsum:
            return None
        self._clock = v_now
        # delayed tenants whose debt is paid leave the average (delayed dequeue)
        paid = [t for t in self._members.values() if t.state == _Tenant.DELAYED and t.v <= v_now]
        if paid:
            for t in paid:
                t.state = _Tenant.IDLE
                del self._members[t.id]
            v_now, wsum = self._avg()
            if not wsum:
                return None
            self._clock = v_now
        best = None
        best_key = math.inf
        fallback = None
        for t in self._members.values():
            if t.state != _Tenant.ACTIVE:
                continue
            # eligible: lag >= 0, with a rounding allowance of a virtual nanosecond
            if t.v <= v_now + 1.0:
                key = t.vd + self._penalty(t)
                if key < best_key or (key == best_key and t.id < best.id):
                    best, best_key = t, key
            elif fallback is None or t.v < fallback.v:
                fallback = t
        best = best or fallback       # by construction someone is eligible; floats aside
        if best is None:
            return None
        best.picks += 1
        return best.id

    # -- accounting --------------------------------------------------------------------------------
    def account(self, tenant: int, runtime_ns: int, ntasks: int, now_ns: int) -> None:
        """Charge a finished batch: virtual runtime, deadline, burst and score."""
        t = self._get(tenant, "account")
        runtime_ns, ntasks = self._check_time(f"eevdf.account({tenant})", runtime_ns, ntasks)
        self._count(t, runtime_ns, ntasks)
        dv = runtime_ns * NICE_0_WEIGHT / t.weight
        t.v += dv
        if t.state == _Tenant.IDLE:
            # The batch ran after its tenant left (the scheduler calls sleep at the last pop,
            # account after the batch): charge it from where the tenant left. If that puts it
            # ahead of the others -- they did not run as much meanwhile -- the tenant rejoins
            # the average in debt (delayed); otherwise the batch only used time it was owed.
            v_o, w_o = self._avg(exclude=t)
            if w_o and t.v > v_o:
                self._members[t.id] = t
                t.state = _Tenant.DELAYED
        if t.v >= t.vd:
            t.vd = t.v + self._vslice(t)
        t.burst += dv
        raw = math.log2(1.0 + t.burst / self.burst_unit_ns)
        t.score = raw if raw >= t.score else raw + (t.score - raw) * self.decay

    def _reweight(self, t: _Tenant, w: int) -> None:
        if t.id not in self._members:
            t.weight = w
            return
        v_now, _ = self._avg()
        lag, rem, old = v_now - t.v, t.vd - t.v, t.weight
        del self._members[t.id]
        t.weight = w
        self._place(t, lag * old / w)      # keep w * lag, as Linux's reweight_entity
        t.vd = t.v + rem * old / w

    def _policy_stats(self, t: _Tenant) -> dict:
        if t.id in self._members:
            lag = self._avg()[0] - t.v
        else:
            lag = 0.0
        return {"vruntime": t.v, "lag": lag, "deadline": t.vd, "burst_score": t.score,
                "penalty": self._penalty(t), "eligible": t.state == _Tenant.ACTIVE and lag >= -1.0}


class WeightedRoundRobinPolicy(_PolicyBase):
    """Deficit round robin in handler time: turns proportional to weight, no latency awareness.

    >>> pol = WeightedRoundRobinPolicy(quantum_us=1000)
    >>> pol.add_tenant(0); pol.wake(0, 0); pol.pick(0)
    0
    """

    name = "rr"

    def __init__(self, *, quantum_us: float = 3000) -> None:
        super().__init__()
        self.quantum_ns = _positive("quantum_us", quantum_us) * 1000.0
        self._ring: deque[_Tenant] = deque()   # runnable tenants; [0] is the current/next one
        self._in_turn = False                  # _ring[0] holds the turn

    @property
    def params(self) -> dict:
        return {"quantum_us": self.quantum_ns / 1000}

    def _q(self, t: _Tenant) -> float:
        return self.quantum_ns * t.weight / NICE_0_WEIGHT

    def wake(self, tenant: int, now_ns: int) -> None:
        """Join the end of the rotation."""
        t = self._get(tenant, "wake")
        if t.state == _Tenant.ACTIVE:
            return
        t.state = _Tenant.ACTIVE
        self._ring.append(t)

    def sleep(self, tenant: int, now_ns: int) -> None:
        """Leave the rotation; unused credit is dropped, debt is kept."""
        t = self._get(tenant, "sleep")
        if t.state != _Tenant.ACTIVE:
            return
        t.state = _Tenant.IDLE
        t.deficit = min(t.deficit, 0.0)
        if self._ring and self._ring[0] is t:
            self._in_turn = False
        self._ring.remove(t)

    def pick(self, now_ns: int) -> int | None:
        """The tenant holding the turn, or the next one in rotation with credit."""
        ring = self._ring
        if not ring:
            return None
        if self._in_turn:
            if ring[0].deficit > 0:
                ring[0].picks += 1
                return ring[0].id
            ring.rotate(-1)
            self._in_turn = False
        # whole rounds every tenant would sit out in debt: add them at once (O(n), no spinning)
        rounds = min(math.floor(-t.deficit / self._q(t)) if t.deficit <= 0 else 0 for t in ring)
        if rounds:
            for t in ring:
                t.deficit += rounds * self._q(t)
        for _ in range(len(ring)):
            t = ring[0]
            t.deficit += self._q(t)
            if t.deficit > 0:
                self._in_turn = True
                t.picks += 1
                return t.id
            ring.rotate(-1)
        # unreachable: after `rounds` someone has deficit > -quantum
        t = ring[0]
        self._in_turn = True
        t.picks += 1
        return t.id

    def account(self, tenant: int, runtime_ns: int, ntasks: int, now_ns: int) -> None:
        """Spend the tenant's credit."""
        t = self._get(tenant, "account")
        runtime_ns, ntasks = self._check_time(f"rr.account({tenant})", runtime_ns, ntasks)
        self._count(t, runtime_ns, ntasks)
        t.deficit -= runtime_ns

    def _policy_stats(self, t: _Tenant) -> dict:
        # the same keys as EEVDF so dashboards need not branch; weight-normalised service
        return {"vruntime": t.handler_ns * NICE_0_WEIGHT / t.weight, "lag": 0.0,
                "deadline": 0.0, "burst_score": 0.0, "penalty": 0.0, "deficit": t.deficit,
                "eligible": t.state == _Tenant.ACTIVE}


POLICIES = ("eevdf", "eevdf-gentle", "rr")
_NAMES = POLICIES + ("wrr",)       # every name make_policy takes ("wrr": "rr")


def make_policy(name: str = "eevdf", **kw) -> EevdfBorePolicy | WeightedRoundRobinPolicy:
    """Build a tenant policy by name: ``"eevdf"`` (EEVDF + BORE), ``"eevdf-gentle"`` (BORE
    penalty 4), or ``"rr"`` / ``"wrr"`` (weighted round robin); ``kw`` go to the constructor.

    >>> make_policy("eevdf", slice_us=2000).params["slice_us"]
    2000.0
    """
    if name == "eevdf":
        return EevdfBorePolicy(**kw)
    if name == "eevdf-gentle":
        return EevdfBorePolicy.gentle(**kw)
    if name in ("rr", "wrr"):
        return WeightedRoundRobinPolicy(**kw)
    raise TenantError(f"make_policy / boot's policy=: unknown policy {name!r}: allowed "
                      f"{', '.join(map(repr, _NAMES))} (boot also takes a policy object)")
