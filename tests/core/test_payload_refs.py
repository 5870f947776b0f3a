"""Payload references a task hands on: a sender must own one per record it sends (emit_batch,
submit_batch), a bad one found at release never stops a worker or its batch's accounting, and
ctx.retain() gives the handler a reference of its own whatever the task's outcome."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import EmitError
from ggmk.testing import Sandbox


def _sender(target):
    """SEND allocates one payload and emit_batch-es it to 4 records of ``target``: meta0 = 1
    takes the 3 extra references first (right), meta0 = 0 does not (the mistake)."""
    ran = []
    m = Module("m")

    @m.handler("SEND")
    def send(ctx):
        p = ctx.alloc(64)
        ctx.arena.view(p)[:] = 7
        if ctx.task.meta0:
            ctx.arena.retain(p, 3)
        try:
            ctx.emit_batch(target, meta0=np.arange(4), payload_ptr=p, payload_len=64)
        except EmitError:
            ctx.arena.release(p)          # refused: the payload is still the handler's
            raise

    @m.handler("SINK")
    def sink(ctx):
        ran.append((ctx.task.meta0, bytes(ctx.payload[:2])))

    return m, ran


@pytest.mark.parametrize("helps", [True, False])
@pytest.mark.parametrize("to_channel", [False, True])
def test_emit_batch_refuses_a_payload_shared_without_a_reference_per_record(hal, helps,
                                                                            to_channel):
    # (it was accepted: the first consumer's release raised DoubleFree in the worker, which
    # died (or made the host's run() raise); the 4 tasks stayed outstanding for good)
    target = "sink.in" if to_channel else "SINK"
    m, ran = _sender(target)
    if to_channel:
        m.produces("sink.in", "SINK_MSG")
        m.consumes("sink.in", "SINK_MSG", handler="SINK")
    with boot([m], hal=hal, workers=2, host_helps=helps) as s:
        s.submit("SEND", meta0=0)
        assert s.run(timeout=10)
        recs, codes = s.dead_letters("sys.error")
        assert codes.tolist() == [T.HANDLER_EXCEPTION]
        assert recs["type"].tolist() == [s.type_id("SEND")]
        mod, handler, exc, _ = s.exceptions[-1]
        assert (mod, handler) == ("m", "send") and "EmitError" in exc
        assert "emit_batch: payload_ptr" in exc and "named by 4 records but holds 1" in exc
        assert ran == [] and s.sched.outstanding == 0 and s.arena.live_count() == 0
        s.submit("SEND", meta0=1)                          # a reference per record: sent
        assert s.run(timeout=10)
        assert sorted(ran) == [(i, b"\x07\x07") for i in range(4)]
        assert s.arena.live_count() == 0 and len(s.exceptions) == 1
        rep = s.halt(timeout=5)
    assert rep["outstanding"] == 0 and "worker_errors" not in rep
    s.arena.check()


def test_submit_batch_refuses_payload_pointers_it_does_not_own(hal):
    # (each was accepted and killed the worker that released it; two took the system down)
    m = Module("m")
    ran = []

    @m.handler("SINK")
    def sink(ctx):
        ran.append(ctx.task.meta0)

    with boot([m], hal=hal, workers=2, debug=True) as s:
        t = s.type_id("SINK")
        a = s.arena
        freed = a.alloc(8)
        a.release(freed)
        one_ref = a.alloc(8)
        bad = {"garbage": [0xDEAD0], "a free slot": [a.base + 4096 + 16], "freed": [freed],
               "one reference, two records": [one_ref, one_ref]}
        for why, ptrs in bad.items():
            recs = T.make(len(ptrs), type=t, payload_ptr=np.array(ptrs, np.uint64),
                          payload_len=8)
            with pytest.raises(ValueError, match="submit_batch: payload_ptr: 0x") as e:
                s.submit_batch(recs)
            assert "each record owns one reference" in str(e.value), why
        assert s.sched.outstanding == 0 and a.refcount(one_ref) == 1
        a.retain(one_ref)                                  # now it owns two: accepted
        recs = T.make(2, type=t, payload_ptr=one_ref, payload_len=8, meta0=[1, 2])
        assert s.submit_batch(recs) == 2
        assert s.run(timeout=10) and sorted(ran) == [1, 2]
        assert a.live_count() == 0 and s.stats()["types"]["SINK"]["enqueued"] == 2
        a.check()


def test_a_bad_release_is_reported_against_the_handler_and_the_batch_finishes(hal):
    # a handler that releases its own task's payload (the kernel releases it too): the worker's
    # release_many raised, killing the worker, leaving the batch outstanding and the other
    # tasks' payloads allocated for good
    m = Module("m")
    ran = []

    @m.handler("OWN")
    def own(ctx):
        ran.append(ctx.task.meta0)
        if ctx.task.meta0 in (1, 2):
            ctx.arena.release(ctx.task.payload_ptr)        # the mistake
        return T.FAIL if ctx.task.meta0 == 2 else T.OK

    with boot([m], hal=hal, workers=2) as s:
        ptrs = s.arena.alloc_many(100, 4)
        s.submit_batch(T.make(4, type=s.type_id("OWN"), payload_ptr=ptrs, payload_len=100,
                              meta0=np.arange(4)))
        assert s.run(timeout=10) and sorted(ran) == [0, 1, 2, 3]
        assert s.arena.live_count() == 0 and s.sched.outstanding == 0
        st = s.stats()["types"]["OWN"]
        assert (st["ok"], st["fail"]) == (3, 1)
        recs, codes = s.dead_letters("sys.error")
        assert recs["meta0"].tolist() == [2] and codes.tolist() == [T.FAIL]
        reports = [e for e in s.exceptions if e[:2] == ("m", "own")]
        assert len(reports) == 2                           # the OK one's and the failed one's
        assert all("payload reference(s) not released" in e[3] for e in reports)
        s.submit("OWN", meta0=5)                           # the workers are still there
        assert s.run(timeout=10) and ran[-1] == 5
        rep = s.halt(timeout=5)
    assert rep["outstanding"] == 0 and "worker_errors" not in rep
    s.arena.check()


@pytest.mark.parametrize("outcome", ["ok", "fail", "yield", "retry", "wait"])
def test_retain_keeps_a_reference_of_its_own_whatever_the_outcome(hal, outcome):
    # (only an OK task kept it: after FAIL, a yield, a retry or a wait the payload was freed,
    # and the handler's later release freed whatever had reused the slot)
    kept = []
    m = Module("m")
    first = {"ok": T.OK, "fail": T.FAIL, "yield": T.YIELD, "retry": T.RETRY, "wait": T.WAIT}

    @m.handler("KEEP")
    def keep(ctx):
        if ctx.task.yield_count or ctx.task.retries or kept:
            return T.OK                                    # the re-run of a yield/retry/wait
        kept.append(ctx.retain())
        return first[outcome]

    with boot([m], hal=hal, workers=2, debug=True) as s:
        s.submit("KEEP", payload=b"kept" * 25)
        assert s.run(timeout=10)
        assert len(kept) == 1 and s.arena.refcount(kept[0]) == 1
        assert bytes(s.arena.view(kept[0])) == b"kept" * 25
        other = s.arena.alloc(100)                         # may not take the kept slot
        assert other != kept[0]
        s.arena.release(kept[0])
        assert s.arena.live_count() == 1
        s.arena.release(other)
        s.arena.check()


def test_retain_in_a_batch_handler_names_the_task(hal):
    # (ctx.retain() in a batch handler kept the payload of the batch's last task)
    m = Module("m")
    kept, errors = [], []

    @m.handler("B", batch=True)
    def b(ctx, batch):
        i = int(batch.meta0[0])
        if i == 0:
            kept.append(ctx.retain(1))
        else:
            try:
                ctx.retain() if i == 1 else ctx.retain(len(batch))
            except (TypeError, ValueError) as e:
                errors.append(str(e))

    with boot([m], hal=hal, workers=1) as s:
        t = s.type_id("B")
        for first in range(3):
            ptrs = s.arena.alloc_many(100, 3)
            if first == 0:
                mine = int(ptrs[1])
            s.submit_batch(T.make(3, type=t, payload_ptr=ptrs, payload_len=100,
                                  meta0=[first, 9, 9]))
            assert s.run(timeout=10)
        assert kept == [mine] and s.arena.live_count() == 1 and s.arena.refcount(mine) == 1
        assert "ctx.retain(i)" in errors[0] and "ctx.retain: i=3: allowed an int 0..2" in errors[1]
        s.arena.release(mine)


def test_retain_in_a_per_task_handler_takes_no_index():
    m = Module("m")

    @m.handler("P")
    def p(ctx):
        ctx.retain(0)

    with Sandbox(m, raise_exceptions=False) as sb:
        assert sb.feed("P", payload=b"x") == T.HANDLER_EXCEPTION
        assert "per-task handler keeps its current task's payload" in str(sb.exceptions[0])
        assert sb.allocations()["live"] == 0


def test_the_sandbox_retains_as_the_kernel_does():
    # (its batch handlers' ctx.retain() kept nothing; a per-task one's kept the payload only
    # when the task returned OK)
    m = Module("m")
    kept = []

    @m.handler("P")
    def p(ctx):
        kept.append(ctx.retain())
        return T.FAIL

    @m.handler("B", batch=True)
    def b(ctx, batch):
        kept.append(ctx.retain(2))

    with Sandbox(m) as sb:
        assert sb.feed("P", payload=b"abc") == T.FAIL
        assert sb.allocations()["live"] == 1 and bytes(sb.arena.view(kept[0])) == b"abc"
        sb.feed("B", meta0=[0, 1, 2], payload=b"xyz")      # one payload, 3 references
        assert sb.allocations()["live"] == 2 and sb.arena.refcount(kept[1]) == 1
        for ptr in kept:
            sb.arena.release(ptr)
        assert sb.allocations()["live"] == 0


def test_the_sandbox_checks_emit_batch_payloads_as_the_kernel_does():
    m, ran = _sender("SINK")
    with Sandbox(m, raise_exceptions=False) as sb:
        assert sb.feed("SEND", 0) == T.HANDLER_EXCEPTION
        assert "named by 4 records but holds 1" in str(sb.exceptions[0])
        assert sb.feed("SEND", 1) == T.OK
        sb.run()
        assert sorted(ran) == [(i, b"\x07\x07") for i in range(4)]
        assert sb.allocations()["live"] == 0
