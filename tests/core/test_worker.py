"""Worker dispatch details: a handler's max_batch, the retry count a handler sees."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import BootError


def test_a_batch_handler_never_gets_more_than_its_max_batch(hal):
    sizes, seen = [], []
    m = Module("m")

    @m.handler("SMALL", batch=True, max_batch=10)
    def small(ctx, batch):
        sizes.append(len(batch))
        seen.extend(batch.meta0.tolist())

    with boot([m], hal=hal, workers=2, max_batch=256) as s:
        s.submit_batch(T.make(1000, type=s.type_id("SMALL"), meta0=np.arange(1000)))
        assert s.run(timeout=30)
    assert max(sizes) <= 10 and sorted(seen) == list(range(1000))


def test_max_batch_keeps_each_tasks_own_return_code(hal):
    m = Module("m")
    sizes = []

    @m.handler("ODD_FAILS", batch=True, max_batch=3)
    def odd_fails(ctx, batch):
        sizes.append(len(batch))
        return np.where(batch.meta0 % 2 == 1, -9, T.OK).astype(np.int32)

    with boot([m], hal=hal, workers=1) as s:
        s.submit("ODD_FAILS", meta0=np.arange(20))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
    assert sorted(recs["meta0"].tolist()) == list(range(1, 20, 2))
    assert set(codes.tolist()) == {-9} and max(sizes) <= 3 and sum(sizes) == 20


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_batch_must_be_a_positive_int(bad):
    m = Module("m")
    with pytest.raises(BootError, match="max_batch must be a positive int"):
        m.handler("X", batch=True, max_batch=bad)


def test_a_handler_sees_how_often_its_task_was_retried(hal):
    seen = []
    m = Module("m")

    @m.handler("FLAKY")
    def flaky(ctx):
        seen.append(ctx.task.retries)
        return T.RETRY if ctx.task.retries < 2 else T.OK

    with boot([m], hal=hal, workers=1) as s:
        s.submit("FLAKY")
        assert s.run(timeout=30)
    assert seen == [0, 1, 2]


# -- handler mistakes: reported against the handler, the worker goes on ------------------------

BAD_EMITS = {
    "negative": lambda ctx: ctx.emit("SINK", meta0=-1),
    "too_big": lambda ctx: ctx.emit("SINK", meta0=2**64),
    "string": lambda ctx: ctx.emit("SINK", meta0="abc"),
    "float": lambda ctx: ctx.emit("SINK", meta1=1.5),
    "np_negative": lambda ctx: ctx.emit("SINK", meta0=np.int64(-5)),
    "priority": lambda ctx: ctx.emit("SINK", meta0=1, priority=7),
    "chan_second_emit": lambda ctx: (ctx.emit("m.out", meta0=1), ctx.emit("m.out", meta0=-1)),
    "chan_meta1": lambda ctx: (ctx.emit("m.out", meta0=1), ctx.emit("m.out", 2, meta1=-3)),
    "emitter": lambda ctx: ctx.emitter("m.out")(-1),
}
BAD_RETURNS = {"string": "ok", "list": [0], "bool": True, "float": 0.0, "big": 7}


def _mistake_system(hal, bad, workers=2):
    m = Module("m")
    got = []
    m.produces("m.out", "OUT")

    @m.handler("WORK")
    def work(ctx):
        if ctx.task.meta0 % 10 == 3:
            return bad(ctx)
        ctx.emit("SINK", meta0=ctx.task.meta0)
        return T.OK

    @m.handler("SINK", batch=True)
    def sink(ctx, batch):
        got.extend(batch.meta0.tolist())

    @m.handler("OUT", batch=True, consumes="m.out")
    def out(ctx, batch):
        pass

    return boot([m], hal=hal, workers=workers), got


@pytest.mark.parametrize("name", sorted(BAD_EMITS))
def test_a_bad_emit_fails_only_the_task_that_made_it(hal, name):
    s, got = _mistake_system(hal, BAD_EMITS[name])
    with s:
        for _ in range(2):                       # the system keeps working after the mistake
            s.submit("WORK", meta0=np.arange(100))
            assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert sorted(recs["meta0"].tolist()) == sorted([i for i in range(100) if i % 10 == 3] * 2)
        assert set(codes.tolist()) == {T.HANDLER_EXCEPTION}
        assert sorted(got) == sorted([i for i in range(100) if i % 10 != 3] * 2)
        mod, handler, exc, tb = s.exceptions[-1]
        assert (mod, handler) == ("m", "work") and "EmitError" in exc
        assert "test_worker.py" in tb                 # the handler's own frame, not "NoneType"


@pytest.mark.parametrize("name", sorted(BAD_RETURNS))
def test_a_bad_return_value_is_a_bad_return_code(hal, name):
    value = BAD_RETURNS[name]
    s, got = _mistake_system(hal, lambda ctx: value)
    with s:
        s.submit("WORK", meta0=np.arange(100))
        assert s.run(timeout=30)
        s.submit("WORK", meta0=np.arange(100, 200))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert len(recs) == 20 and set(codes.tolist()) == {T.BAD_RETURN}
        assert len(got) == 180
        assert "BadReturn" in s.exceptions[-1][2] and repr(value) in s.exceptions[-1][2]


@pytest.mark.parametrize("value", ["ok", [0, "x"], np.array([0.5]), 2**40, True])
def test_a_batch_handler_bad_return_fails_its_batch_with_bad_return(hal, value):
    m = Module("m")

    @m.handler("B", batch=True)
    def b(ctx, batch):
        return value if batch.meta0[0] == 0 else None

    with boot([m], hal=hal, workers=2) as s:
        s.submit("B", meta0=0)
        assert s.run(timeout=30)
        s.submit("B", meta0=1)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert recs["meta0"].tolist() == [0] and codes.tolist() == [T.BAD_RETURN]
        assert s.stats()["types"]["B"]["ok"] == 1


def test_a_batch_handler_may_return_one_code_per_task(hal):
    m = Module("m")

    @m.handler("B", batch=True)
    def b(ctx, batch):
        return np.where(batch.meta0 % 2 == 1, T.FAIL, T.OK)

    with boot([m], hal=hal, workers=2) as s:
        s.submit("B", meta0=np.arange(10))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert sorted(recs["meta0"].tolist()) == [1, 3, 5, 7, 9]
        assert set(codes.tolist()) == {T.FAIL}


# -- per-task handlers: plain-value task rows, follow-ons run in the same step -----------------

def _chain_module(log, length=6, fail_at=None, yield_at=None, retry_at=None):
    m = Module("chain")

    @m.handler("HOP")
    def hop(ctx):
        t = ctx.task
        m0 = t.meta0
        if m0 == yield_at and t.yield_count == 0:
            return ctx.yield_()
        if m0 == retry_at and t.retries == 0:
            return T.RETRY
        if m0 == fail_at:
            return -7
        log.append((t.meta1, m0, t.tenant, t.priority, t.yield_count, t.retries))
        if m0 < length:
            ctx.emit("HOP", meta0=m0 + 1, meta1=t.meta1)
        return T.OK

    return m


@pytest.mark.parametrize("max_batch", [1, 4, 256])
def test_a_chain_of_per_task_emits_keeps_every_hop_and_its_header(hal, max_batch):
    log = []
    with boot([_chain_module(log)], hal=hal, workers=2, max_batch=max_batch) as s:
        s.submit("HOP", meta0=1, meta1=np.arange(5), priority=2, tenant=3)
        assert s.run(timeout=30)
        st = s.stats()["types"]["HOP"]
        assert s.sched.outstanding == 0
    assert sorted(log) == sorted((lane, hop, 3, 2, 0, 0) for lane in range(5)
                                 for hop in range(1, 7))
    assert st["ok"] == st["dequeued"] == st["enqueued"] == 30


def test_follow_ons_run_in_the_same_step_and_count_like_queued_tasks():
    """One step runs the seed and its follow-ons (up to the batch budget): the rest go through
    the local queue. Counters, seqs and the trace see every hop."""
    log = []
    with boot([_chain_module(log, length=100)], hal="sim", workers=1, max_batch=256,
              trace_level="all") as s:
        s.hal.max_batch_choices = (256,)
        s.submit("HOP", meta0=1)
        w = s.workers[0]
        assert w.step()
        assert len(log) == 100 and s.sched.outstanding == 0
        assert s.run(timeout=30)
        st = s.stats()
        assert st["types"]["HOP"]["ok"] == st["types"]["HOP"]["enqueued"] == 100
        assert st["sched"]["routes"]["emit"] == 99
        ev = s.tracer.drain()
    assert [x[1] for x in log] == list(range(1, 101))
    from ggmk.events import EventType
    for e in (EventType.TASK_START, EventType.TASK_END):
        assert sorted(ev["arg0"][ev["event"] == e].tolist()) == sorted(set(
            ev["arg0"][ev["event"] == EventType.TASK_START].tolist())), e
        assert (ev["event"] == e).sum() == 100, e


def test_follow_ons_get_fresh_increasing_seqs():
    seqs = []
    m = Module("m")

    @m.handler("S")
    def s_(ctx):
        seqs.append(ctx.task.seq)
        if ctx.task.meta0 < 50:
            ctx.emit("S", meta0=ctx.task.meta0 + 1)

    with boot([m], hal="sim", workers=1) as s:
        s.submit("S", meta0=1)
        s.submit("S", meta0=50)
        assert s.run(timeout=30)
    assert len(seqs) == 51 and len(set(seqs)) == 51


@pytest.mark.parametrize("max_batch", [1, 256])
def test_follow_ons_yield_retry_and_fail_like_any_task(hal, max_batch):
    log = []
    m = _chain_module(log, length=8, yield_at=3, retry_at=5, fail_at=8)
    with boot([m], hal=hal, workers=2, max_batch=max_batch) as s:
        s.submit("HOP", meta0=1, meta1=np.arange(3))
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        st = s.stats()["types"]["HOP"]
    assert sorted(recs["meta0"].tolist()) == [8, 8, 8] and set(codes.tolist()) == {-7}
    by_hop = {(lane, hop): (yc, rt) for lane, hop, _, _, yc, rt in log}
    assert len(by_hop) == 21
    assert all(by_hop[(lane, 3)] == (1, 0) and by_hop[(lane, 5)] == (0, 1) for lane in range(3))
    assert st["yield"] == 3 and st["retry"] == 3 and st["fail"] == 3


def test_a_handler_exception_in_a_follow_on_fails_only_that_hop(hal):
    log = []
    m = Module("m")

    @m.handler("H")
    def h(ctx):
        n = ctx.task.meta0
        if n == 4:
            raise ValueError("hop 4")
        log.append(n)
        ctx.emit("H", meta0=n + 1)

    with boot([m], hal=hal, workers=1) as s:
        s.submit("H", meta0=1)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert codes.tolist() == [T.HANDLER_EXCEPTION] and recs["meta0"].tolist() == [4]
        assert "hop 4" in s.exceptions[-1][2]
    assert log == [1, 2, 3]


def test_meta_written_by_a_per_task_handler_is_kept_on_yield_and_wait(hal):
    got = []
    m = Module("m")

    @m.handler("P")
    def p(ctx):
        t = ctx.task
        if t.yield_count == 0:
            t.meta1 = t.meta0 * 10
            return ctx.yield_(phase=t.meta0 + 1000)
        if t.meta1 % 10 == 0:
            return ctx.wait_(meta1=t.meta1 + 1)
        got.append((t.meta0, t.meta1, t.yield_count, int(t.record()["meta0"])))

    with boot([m], hal=hal, workers=2) as s:
        s.submit("P", meta0=np.arange(1, 4))
        assert s.run(timeout=30)
    assert sorted(got) == [(1000 + i, 10 * i + 1, 1, 1000 + i) for i in range(1, 4)]


def test_a_tenant_policy_or_determinism_keeps_follow_ons_out_of_the_step():
    """With a tenant policy, emits go to their tenant's ready queue (the policy picks every
    batch); in determinism mode they run next tick: nothing is run in the emitting step."""
    for kw in ({"tenants": {0: 0}}, {"deterministic": True}):
        log = []
        with boot([_chain_module(log, length=20)], hal="sim", workers=1, **kw) as s:
            s.hal.max_batch_choices = (256,)
            s.submit("HOP", meta0=1, deterministic="deterministic" in kw)
            if "deterministic" in kw:
                s.det.release_input()
            w = s.workers[0]
            while not w.step():
                pass
            assert len(log) == 1, kw
            assert s.run(timeout=30)
        assert [x[1] for x in log] == list(range(1, 21))


def test_follow_ons_past_the_budget_keep_their_emit_order():
    """Past the step's budget the batch's sender queues meta0-only follow-ons apart from other
    buffered emits (one template fill at the batch's end); the two kinds must still reach the
    queue in the order they were emitted. max_batch 2: the seed and child 1 run in the step;
    child 2 is queued by the fast sender, then 3..10 alternately by the general path and the
    sender (which then queues behind the general path's emits)."""
    log = []
    m = Module("order")

    @m.handler("O")
    def o(ctx):
        v = ctx.task.meta0
        log.append(v)
        if v == 0:
            for c in range(1, 11):
                if c > 2 and c % 2:
                    ctx.emit("O", meta0=c, tenant=0)     # a keyword: the general path
                else:
                    ctx.emit("O", meta0=c)               # the batch's sender

    with boot([m], hal="sim", workers=1, max_batch=2) as s:
        s.hal.max_batch_choices = (2,)
        s.submit("O", meta0=0)
        assert s.run(timeout=30)
        st = s.stats()["types"]["O"]
    assert log == list(range(11))
    assert st["ok"] == st["enqueued"] == 11


def test_ctx_task_meta0_in_a_batch_handler_is_a_clear_error(hal):
    """A batch handler has no current task: using ``ctx.task.meta0`` fails its batch with the
    reason, and the worker carries on."""
    m = Module("b")
    seen = []

    @m.handler("B", batch=True)
    def b(ctx, batch):
        return ctx.task.meta0 + 1

    @m.handler("P")
    def p(ctx):
        seen.append(ctx.task.meta0)

    with boot([m], hal=hal, workers=2) as s:
        s.submit("B", meta0=5)
        s.submit("P", meta0=7)
        assert s.run(timeout=30)
        recs, codes = s.dead_letters("sys.error")
        assert codes.tolist() == [T.HANDLER_EXCEPTION] and recs["meta0"].tolist() == [5]
        assert "ctx.task.meta0: no current task" in s.exceptions[-1][2]
    assert seen == [7]


def test_a_step_grows_its_follow_on_budget_while_nothing_else_waits():
    """Past the budget, a step runs another budget's worth of follow-ons when nothing else
    waits (what the next step would run anyway), up to GROW_ROUNDS times; seqs stay unique
    and contiguous, counts as for queued tasks."""
    from ggmk.core.worker import GROW_ROUNDS
    log, seqs = [], []
    m = Module("grow")

    @m.handler("G")
    def g(ctx):
        log.append(ctx.task.meta0)
        seqs.append(ctx.task.seq)
        if ctx.task.meta0 < 5000:
            ctx.emit("G", meta0=ctx.task.meta0 + 1)

    with boot([m], hal="sim", workers=1, max_batch=256) as s:
        s.hal.max_batch_choices = (256,)
        s.submit("G", meta0=1)
        assert s.workers[0].step()
        assert len(log) == 256 * (1 + GROW_ROUNDS)          # grown 7 times, then queued
        assert s.run(timeout=30)
        st = s.stats()["types"]["G"]
    assert log == list(range(1, 5001))
    assert len(set(seqs)) == 5000
    first = seqs[1:256 * (1 + GROW_ROUNDS)]                 # the step's follow-ons: one block
    assert first == list(range(first[0], first[0] + len(first)))
    assert st["ok"] == st["enqueued"] == st["dequeued"] == 5000


def test_a_step_does_not_grow_its_budget_while_other_work_waits():
    """Work that arrives meanwhile (a submit to the ready queue) ends the growing: the step
    stops at the end of the budget round it is in, and the other task runs before the chain
    is done."""
    log = []
    m = Module("nogrow")
    box = {}

    @m.handler("G")
    def g(ctx):
        v = ctx.task.meta0
        log.append(("G", v))
        if v == 300:                       # in the step's first grown round
            box["s"].submit("OTHER")
        if v < 3000:
            ctx.emit("G", meta0=v + 1)

    @m.handler("OTHER")
    def other(ctx):
        log.append(("OTHER", 0))

    with boot([m], hal="sim", workers=1, max_batch=256) as s:
        box["s"] = s
        s.hal.max_batch_choices = (256,)
        s.submit("G", meta0=1)
        assert s.workers[0].step()
        assert len(log) == 512                               # 256, one grown round, no more
        assert s.run(timeout=30)
    assert [v for t, v in log if t == "G"] == list(range(1, 3001))
    assert log.index(("OTHER", 0)) < len(log) - 1


def test_grown_steps_with_real_threads_and_host_submits_lose_nothing():
    """The grown budget on 2 real workers while the host keeps submitting other work and a
    second chain type: every task runs once, chain seqs are unique, counts add up."""
    import threading
    seen, others = [], []
    lock = threading.Lock()
    m = Module("growt")

    @m.handler("C")
    def c(ctx):
        v = ctx.task.meta0
        with lock:
            seen.append((v >> 20, ctx.task.seq))
        if v & 0xFFFFF < 2000:
            ctx.emit("C", meta0=v + 1)

    @m.handler("X")
    def x(ctx):
        with lock:
            others.append(ctx.task.meta0)

    with boot([m], hal="threads", workers=2, max_batch=64) as s:
        s.submit("C", meta0=np.arange(8, dtype=np.uint64) << np.uint64(20))
        for i in range(500):
            s.submit("X", meta0=i)
        assert s.run(timeout=60)
        st = s.stats()["types"]
    assert len(seen) == 8 * 2001 and len({q for _, q in seen}) == len(seen)
    assert sorted(others) == list(range(500))
    assert st["C"]["ok"] == st["C"]["enqueued"] == 8 * 2001 and st["X"]["ok"] == 500


# -- outcome accounting and trace closure (every task counted once; every START closed) ----------

FAIL_CODE = T.FAIL


def _mixed_module():
    """WORK by meta0 % 6: 0 FAIL, 1 yields forever (MAX_YIELDS), 2 RETRY forever
    (RETRY_EXHAUSTED), 3 waits once, 4 yields once, 5 OK."""
    from ggmk import FAIL, OK, RETRY
    m = Module("mix")

    @m.handler("WORK")
    def work(ctx):
        v = ctx.task.meta0 % 6
        if v == 0:
            return FAIL
        if v == 1:
            return ctx.yield_()
        if v == 2:
            return RETRY
        if v == 3 and ctx.task.meta1 == 0:
            return ctx.wait_(meta1=1)
        if v == 4 and ctx.task.yield_count == 0:
            return ctx.yield_()
        return OK
    return m


def _rings(s):
    """Each trace ring's undrained events (index = worker; the last one is the host's)."""
    from ggmk.events import TRACE_DTYPE
    out = []
    for ring in s.tracer._rings:
        r = ring.read(None)
        out.append(np.empty(0, TRACE_DTYPE) if r is None else r)
    return out


def test_every_task_outcome_counts_once_per_type():
    from ggmk.typereg import TypeRegistry
    reg = TypeRegistry()
    reg.register("WORK", max_yields=2)
    n = 600
    with boot([_mixed_module()], types=reg, hal="threads", workers=2, max_retries=2) as s:
        s.submit("WORK", meta0=np.arange(n))
        assert s.run(timeout=30)
        st = s.stats()["types"]["WORK"]
        recs, codes = s.dead_letters("sys.error")
    per = n // 6
    # tasks: 1 in 6 OK, 1 in 6 waits then OK, 1 in 6 yields then OK; 3 in 6 fail for good
    assert st["ok"] == 3 * per and st["fail"] == 3 * per and st["dropped"] == 0, st
    assert st["ok"] + st["fail"] + st["dropped"] == n, st
    assert len(recs) == st["fail"]
    assert set(codes.tolist()) == {FAIL_CODE, T.MAX_YIELDS, T.RETRY_EXHAUSTED}
    # a run that was re-enqueued (retry, yield, wait) is one outcome of its own: the attempts
    # that ended the task (too many retries / yields) count in fail only
    assert st["retry"] == 2 * per and st["yield"] == 2 * per + per and st["wait"] == per, st
    assert st["dequeued"] == st["ok"] + st["fail"] + st["retry"] + st["yield"] + st["wait"]
    assert st["enqueued"] == (st["ok"] + st["fail"] + st["dropped"]
                              + st["retry"] + st["yield"] + st["wait"]), st


def test_mixed_batches_close_every_task_start_on_the_workers_own_track():
    from ggmk.events import SAMPLED_BIT, EventType as E
    from ggmk.typereg import TypeRegistry
    reg = TypeRegistry()
    reg.register("WORK", max_yields=2)
    n = 1200
    with boot([_mixed_module()], types=reg, hal="threads", workers=2, max_retries=2,
              trace_level="all", host_helps=False) as s:
        s.submit("WORK", meta0=np.arange(n))
        assert s.run(timeout=30)
        st = s.stats()["types"]["WORK"]
        rings = _rings(s)
        tstats = s.tracer.stats()
        nw = s.nworkers
    assert tstats["total"]["overwritten"] == 0
    host = rings[nw]
    code = lambda ev: ev["event"] & (SAMPLED_BIT - 1)          # noqa: E731
    assert not np.isin(code(host), [E.TASK_START, E.TASK_END, E.TASK_FAIL]).any()
    ends = fails = 0
    for ev in rings[:nw]:
        c = code(ev)
        # what closes a run: END (OK, wait), YIELD, RETRY or FAIL (a task past max_yields /
        # max_retries is closed by its TASK_FAIL alone, as the metrics count it)
        closing = np.isin(c, [E.TASK_END, E.TASK_YIELD, E.TASK_RETRY, E.TASK_FAIL])
        su, sn = np.unique(ev["arg0"][c == E.TASK_START], return_counts=True)
        cu, cn = np.unique(ev["arg0"][closing], return_counts=True)
        assert np.array_equal(su, cu) and np.array_equal(sn, cn)
        ends += int((c == E.TASK_END).sum())
        fails += int((c == E.TASK_FAIL).sum())
    assert ends == st["ok"] + st["wait"], (ends, st)
    assert fails == st["fail"] == n // 2


def test_a_failure_a_channels_error_handler_takes_is_traced_on_the_workers_track():
    """A failed channel message that the channel's error handler takes (not sys.error) still
    gets its TASK_FAIL on the worker's own ring, closing its TASK_START; one that goes to
    sys.error gets exactly one."""
    from ggmk.core.module import Module
    from ggmk.events import SAMPLED_BIT, EventType as E
    m = Module("failing")

    @m.handler("MSG")
    def fails(ctx):
        return -7

    @m.handler("OTHER")
    def fails2(ctx):
        return -8

    seen = []
    with boot([m], hal="threads", workers=2, trace_level="all", host_helps=False) as s:
        a = s.open("with.handler", "MSG", error_handler=lambda r, c: seen.extend(c.tolist()))
        a.subscribe("MSG")
        b = s.open("without.handler", "OTHER")
        b.subscribe("OTHER")
        for i in range(50):
            assert a.publish(meta0=i) == 0 and b.publish(meta0=i) == 0
        assert s.run(timeout=30)
        rings = _rings(s)
        nw = s.nworkers
    assert seen == [-7] * 50
    code = lambda ev: ev["event"] & (SAMPLED_BIT - 1)          # noqa: E731
    fails = {-7 & 0xFFFFFFFF: 0, -8 & 0xFFFFFFFF: 0}
    for ev in rings[:nw]:
        c = code(ev)
        starts = int((c == E.TASK_START).sum())
        f = c == E.TASK_FAIL
        assert starts == int(f.sum())                  # every start closed by its failure
        for v in ev["arg1"][f].tolist():
            fails[v] += 1
    assert fails == {-7 & 0xFFFFFFFF: 50, -8 & 0xFFFFFFFF: 50}
    assert not (code(rings[nw]) == E.TASK_FAIL).any()
