"""The direct request path (``System.direct``, tried first by ``sdk.Client.call`` when booted
with ``host_helps=True``): a request whose channel has one handler subscriber, with nothing of
that subscriber waiting, runs on the calling thread as a borrowed worker's one-record batch.
On real threads with 2 workers: the path is taken (``system.direct_runs``) and leaves the same
results, metrics, channel counts and trace events as the normal path; callers on several
threads racing the workers on one kv; a handler that raises, yields or retries; halt while
calls are in flight; the fall-backs (two subscribers, a task of the type already waiting).
Every accepted task is accounted for."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk
from ggmk import sdk
from ggmk import task as T
from ggmk.events import EventType
from ggmk.modules import kv


def _parked_for_good(system, wait_until):
    """Both workers parked with an hour's park timeout: nothing but a wake-up moves them, so
    every call finds a worker to borrow (a timed-out park could take one away for a call)."""
    hal = system.hal
    hal.park_timeout = 3600.0
    hal.wake(2)
    assert wait_until(lambda: len(hal._parked) == 2, 30)


def _kv_run(host_helps, wait_until, *, trace=False):
    """The same puts, gets (hits and misses) and deletes through ``sdk.KV``; returns what
    the calls answered and the accounting the system kept."""
    store = kv.module(capacity=64)
    kw = {"trace": True, "trace_level": "all"} if trace else {}
    with ggmk.boot([store], workers=2, host_helps=host_helps, **kw) as system:
        if host_helps:
            _parked_for_good(system, wait_until)
        cl = sdk.KV(system)
        d0 = system.direct_runs
        out = []
        for k in range(20):
            cl.put(k, 1000 + k)
        for k in range(30):
            out.append(cl.get(k))
        out.append([cl.delete(k) for k in (3, 3, 40)])
        out.append(cl.get(3, "gone"))
        direct = system.direct_runs - d0
        assert system.run(timeout=60)
        st = system.stats()
        ev = system.tracer.drain() if trace else None
        chans = {n: (c["emitted"], c["seq"], [s["delivered"] for s in c["subs"]])
                 for n, c in st["channels"].items() if n.startswith("kv.")}
        errs = len(system.dead_letters("sys.error")[0])
        drops = len(system.dead_letters("sys.dropped")[0])
        kvst = store.kv.stats()
        cl.close()
    return out, direct, st["types"], chans, (errs, drops), kvst, ev


def test_the_direct_path_is_taken_and_leaves_the_same_accounting(wait_until):
    base = _kv_run(False, wait_until)
    got = _kv_run(True, wait_until)
    out, direct, types, chans, dead, kvst, _ = got
    assert out == [1000 + k for k in range(20)] + [None] * 10 + [[True, False, False], "gone"]
    assert out == base[0]
    assert base[1] == 0
    assert direct == 20 + 30 + 3 + 1               # every call ran on the caller's thread
    assert types == base[2]                         # per type: enqueued, dequeued, ok, ...
    for name in ("KV_PUT", "KV_GET", "KV_DEL"):
        c = types[name]
        assert c["enqueued"] == c["dequeued"] == c["ok"] and c["fail"] == 0
    assert chans == base[3]                         # channel seq, emitted, delivered
    assert dead == base[4] == (0, 0)
    assert kvst == base[5]


def test_a_direct_task_is_traced_like_a_worker_run(wait_until):
    out, direct, types, *_, ev = _kv_run(True, wait_until, trace=True)
    base_ev = _kv_run(False, wait_until, trace=True)[-1]
    assert direct == 54
    for e in (EventType.TASK_START, EventType.TASK_END):
        for evs in (ev, base_ev):
            assert (evs["event"] == e).sum() == sum(c["dequeued"] for c in types.values())


def echo(mode="p2p", gate=None, behave=None):
    """``ask`` (meta0 = x, meta1 = tag) -> ``ans`` (meta0 = tag, meta1 = x + 1). ``gate``:
    a request with x == 999 blocks until it is set; ``behave(ctx)``: a code to return first
    (a raise, a yield, a retry), or None to answer."""
    app = ggmk.Module("dsrv")
    app.produces("d.ask", "DASK", mode=mode, capacity=16)
    app.produces("d.ans", "DANS", mode="fanout", capacity=16)
    app.threads = []
    app.entered = threading.Event()

    @app.handler("D_ASK", consumes="d.ask", message="DASK")
    def ask(ctx):
        t = ctx.task
        app.threads.append(threading.get_ident())
        if gate is not None and t.meta0 == 999:
            app.entered.set()
            assert gate.wait(60), "the test never opened the gate"
        if behave is not None:
            r = behave(ctx)
            if r is not None:
                return r
        return ctx.emit("d.ans", t.meta1, t.meta0 + 1)
    return app


def _clean(system):
    assert system.run(timeout=60)
    assert len(system.dead_letters("sys.dropped")[0]) == 0
    st = system.stats()["types"]["D_ASK"]
    assert st["enqueued"] == st["dequeued"]
    return st


def test_a_handler_that_raises_fails_its_task_onto_sys_error(wait_until):
    def behave(ctx):
        if ctx.task.meta0 == 13:
            raise ValueError("unlucky")
    app = echo(behave=behave)
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        _parked_for_good(system, wait_until)
        cl = sdk.Client(system, "d.ask", "d.ans")
        ch = system.channel("d.ask")
        assert system.direct(ch, 13, 7)             # ran (and failed) on this thread
        assert app.threads == [threading.get_ident()]
        recs, codes = system.dead_letters("sys.error")
        assert len(recs) == 1 and int(codes[0]) == T.HANDLER_EXCEPTION
        assert int(recs["meta0"][0]) == 13 and int(recs["channel"][0]) == ch.id
        assert "unlucky" in system.exceptions[-1][2]
        # the ordered subscriber's batch is over: the next call runs directly again
        d0 = system.direct_runs
        assert cl.call(5, 50, tag=50) == (50, 6, None)
        assert system.direct_runs == d0 + 1
        cl.close()
        st = _clean(system)
        assert st["fail"] == 1 and st["ok"] == 1
        assert len(system.dead_letters("sys.error")[0]) == 0


@pytest.mark.parametrize("how", ["yield", "retry", "wait"])
def test_a_handler_that_yields_or_retries_goes_on_on_the_normal_path(wait_until, how):
    first = {"yield": lambda ctx: ctx.yield_(), "retry": lambda ctx: ggmk.RETRY,
             "wait": lambda ctx: ctx.wait_()}[how]
    seen = []

    def behave(ctx):
        seen.append(ctx.task.meta0)
        if len(seen) == 1:
            return first(ctx)
    app = echo(behave=behave)
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        # (the workers keep their park timeout: a retry or a wait comes back through the
        # event queue, which a parked worker services when its park times out)
        cl = sdk.Client(system, "d.ask", "d.ans", timeout=60)
        ch = system.channel("d.ask")
        cl.expect(40)
        # taken once a worker is parked to borrow (a call falls back while none is)
        assert wait_until(lambda: system.direct(ch, 4, 40), 30)
        assert seen[:1] == [4] and system.direct_runs == 1
        assert cl.wait(40) == (40, 5, None)
        assert seen == [4, 4]                       # run twice: directly, then once more
        assert cl.call(6, 60, tag=60) == (60, 7, None)
        cl.close()
        st = _clean(system)
        assert st["ok"] == 2 and st["dequeued"] == 3 and st["fail"] == 0
        assert st[how] == 1
        assert len(system.dead_letters("sys.error")[0]) == 0


def test_concurrent_callers_race_the_workers_on_one_kv(wait_until):
    store = kv.module(capacity=1024)
    nthreads, per = 4, 150
    with ggmk.boot([store], workers=2, host_helps=True) as system:
        cl = sdk.KV(system, timeout=60)
        errors = []
        answers = [0] * nthreads

        def caller(i):
            try:
                for j in range(per):
                    k = i * 1000 + j
                    cl.put(k, k * 3)
                    if cl.get(k) != k * 3:
                        errors.append((i, j, "get"))
                    answers[i] += 1
                    if j % 5 == 0:
                        assert cl.delete(k)
                        assert cl.get(k) is None
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))

        def feeder():                               # workers take puts meanwhile
            ch = system.channel("kv.put")
            keys = np.arange(100, dtype=np.uint64) + 900_000
            for _ in range(20):
                sent = 0
                while sent < len(keys):
                    sent += ch.publish(meta0=keys[sent:], meta1=keys[sent:] * 2,
                                       count=len(keys) - sent)
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(nthreads)]
        threads.append(threading.Thread(target=feeder))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert answers == [per] * nthreads
        assert system.run(timeout=60)
        assert system.direct_runs > 0
        tab = store.kv.table
        want = {i * 1000 + j: (i * 1000 + j) * 3 for i in range(nthreads) for j in range(per)
                if j % 5}
        want.update({900_000 + k: (900_000 + k) * 2 for k in range(100)})
        assert dict(tab.items()) == want and len(tab) == len(want)
        st = system.stats()
        for name in ("KV_PUT", "KV_GET", "KV_DEL"):
            c = st["types"][name]
            assert c["enqueued"] == c["dequeued"] == c["ok"]
        kvst = store.kv.stats()
        assert kvst["put"] == st["types"]["KV_PUT"]["ok"] == nthreads * per + 2000
        assert kvst["get"] == nthreads * (per + per // 5)
        assert kvst["published"] == st["channels"]["kv.resp"]["emitted"]
        assert len(system.dead_letters("sys.error")[0]) == 0
        assert len(system.dead_letters("sys.dropped")[0]) == 0
        cl.close()


def test_halt_while_calls_are_in_flight(wait_until):
    store = kv.module(capacity=64)
    system = ggmk.boot([store], workers=2, host_helps=True)
    cl = sdk.KV(system, timeout=2)      # (a request the halt dropped times out: bounded)
    for k in range(10):
        cl.put(k, k + 100)
    started = threading.Barrier(4)
    results = [[] for _ in range(3)]
    stopped = []

    def caller(i):
        started.wait(60)
        try:
            for j in range(1_000_000):
                results[i].append(cl.get(j % 10))
        except Exception as e:  # noqa: BLE001 - what a call gets once the system halts
            stopped.append(type(e).__name__)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait(60)
    # halt once calls are going, some of them on the direct path
    assert wait_until(lambda: all(results) and system.direct_runs > 0, 60)
    rep = system.halt(timeout=30)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(stopped) == 3                        # every caller was told, none hangs
    for r in results:
        assert r == [j % 10 + 100 for j in range(len(r))]
    assert rep["outstanding"] == 0 and system.sched.outstanding == 0
    st = system.stats()["types"]["KV_GET"]
    # every get accepted ran (answered: taken by its caller, or dropped with a reason when
    # kv.resp closed), or was dead-lettered HALTED (left queued when the drain ran out of
    # time, or delivered by a publish that raced the halt)
    errs, codes = system.dead_letters("sys.error")
    assert all(int(c) == T.HALTED for c in codes)
    assert int((errs["type"] == system.type_id("KV_GET")).sum()) == st["dropped"]
    assert st["dequeued"] <= st["enqueued"] <= st["dequeued"] + st["dropped"]
    assert st["dequeued"] == st["ok"] == store.kv.stats()["get"]
    drops, why = system.dead_letters("sys.dropped")
    assert all(int(c) == T.CHAN_CLOSED for c in why)


def test_two_subscribers_fall_back_to_the_normal_path(wait_until):
    app = echo(mode="fanout")
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        _parked_for_good(system, wait_until)
        tap = system.channel("d.ask").subscribe(name="tap")
        cl = sdk.Client(system, "d.ask", "d.ans")
        for i in range(5):
            assert cl.call(i, 100 + i, tag=100 + i) == (100 + i, i + 1, None)
        assert system.direct_runs == 0
        assert tap.take()["meta0"].tolist() == [0, 1, 2, 3, 4]
        system.channel("d.ask").unsubscribe(tap)
        assert cl.call(7, 107, tag=107) == (107, 8, None)      # one again: direct
        assert system.direct_runs == 1
        cl.close()
        st = _clean(system)
        assert st["ok"] == 6
        assert len(system.dead_letters("sys.error")[0]) == 0


def test_a_waiting_task_of_the_type_is_never_overtaken(wait_until):
    gate = threading.Event()
    seen = []
    app = echo(gate=gate, behave=lambda ctx: seen.append(ctx.task.meta0))
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        cl = sdk.Client(system, "d.ask", "d.ans", timeout=60)
        ch = system.channel("d.ask")
        assert ch.publish(999, 1) == ggmk.OK          # a worker takes it and blocks in it
        assert app.entered.wait(60)
        assert not system.direct(ch, 5, 2)            # its batch is in flight: no
        system.submit("D_ASK", 6, 3)                  # and one more of the type, queued
        out = []
        t = threading.Thread(target=lambda: out.append(cl.call(7, 4, tag=4)))
        t.start()
        assert wait_until(lambda: ch.stats()["emitted"] == 2, 60)   # the call published
        gate.set()
        t.join(60)
        assert out == [(4, 8, None)]
        assert system.direct_runs == 0
        # (the submitted one may run beside the blocked one: it came by type, not by the
        # channel) the call's request ran after the channel's earlier message
        assert sorted(seen) == [6, 7, 999] and seen.index(999) < seen.index(7)
        cl.close()
        assert system.run(timeout=60)
        st = system.stats()["types"]["D_ASK"]
        assert st["enqueued"] == st["dequeued"] == st["ok"] == 3
        assert len(system.dead_letters("sys.error")[0]) == 0


def test_direct_names_bad_arguments_and_declines_off_the_threads_hal(wait_until):
    app = echo()
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        with pytest.raises(ggmk.errors.EmitError, match="meta0=-1"):
            system.direct("d.ask", -1)
        with pytest.raises(ggmk.errors.EmitError, match="meta1="):
            system.direct("d.ask", 1, 1 << 64)
        with pytest.raises(ValueError, match="ch=3"):
            system.direct(3, 1)
        with pytest.raises(ggmk.errors.ChannelError, match="unknown channel"):
            system.direct("d.nope", 1)
        cl = sdk.Client(system, "d.ask", "d.ans")
        cl.expect(9)
        assert wait_until(lambda: system.direct("d.ask", 8, 9), 30)     # by name
        assert cl.wait(9) == (9, 9, None)
        cl.close()
        _clean(system)
    for kw in ({"hal": "sim"}, {"deterministic": True}, {}):
        app = echo()
        with ggmk.boot([app], workers=2, host_helps=True if kw else False, **kw) as system:
            cl = sdk.Client(system, "d.ask", "d.ans")
            assert not system.direct("d.ask", 1, 2)         # never on this system
            assert cl.call(3, 4, tag=4) == (4, 4, None)     # the normal path answers
            assert system.direct_runs == 0
            cl.close()
            _clean(system)


def test_a_runtime_error_around_the_handler_leaves_the_subscriber_usable(wait_until):
    """Not the handler's error (those fail the task): one raised by the dispatch machinery
    itself reaches the caller, and the ordered subscriber is not left marked busy."""
    app = echo()
    with ggmk.boot([app], workers=2, host_helps=True) as system:
        _parked_for_good(system, wait_until)
        ch = system.channel("d.ask")
        # the batch's end as the worker reports it to the channels (the one-record fast
        # path's on_batch_done1 or _finish's on_batch_done): raises once
        reg = system.channels

        def boom(*a, **k):
            reg.__dict__.pop("on_batch_done1", None)   # once: put back
            reg.__dict__.pop("on_batch_done", None)
            raise RuntimeError("boom")
        reg.on_batch_done1 = reg.on_batch_done = boom
        with pytest.raises(RuntimeError, match="boom"):
            system.direct(ch, 1, 1)
        assert ch.subs[0].busy == 0 and system.sched.outstanding == 0
        cl = sdk.Client(system, "d.ask", "d.ans")
        d0 = system.direct_runs
        assert cl.call(2, 22, tag=22) == (22, 3, None)
        assert system.direct_runs == d0 + 1
        cl.close()
        assert system.run(timeout=60)


def test_a_delivery_that_races_the_halt_is_dead_lettered_not_left_queued():
    """What a host thread delivers into the scheduler once the workers are stopped (a
    publish its channel admitted just before halt closed it) goes to sys.error HALTED at
    once: nothing stays outstanding where no worker will ever run it."""
    app = echo()
    system = ggmk.boot([app], workers=2, host_helps=True)
    system.halt()
    t = system.type_id("D_ASK")
    recs = T.make(3, type=t, flags=T.FLAG_CHANNEL_MSG, meta0=[1, 2, 3])
    from ggmk.core.sched import Route
    assert system.sched.enqueue(recs, Route.CHANNEL) == 0
    assert system.sched.outstanding == 0
    errs, codes = system.dead_letters("sys.error")
    assert errs["meta0"].tolist() == [1, 2, 3] and set(codes.tolist()) == {T.HALTED}
    assert system.stats()["types"]["D_ASK"]["dropped"] == 3


def test_the_direct_docstring_example_runs():
    import doctest

    from ggmk.core.kernel import System
    runner = doctest.DocTestRunner()
    for t in doctest.DocTestFinder().find(System.direct, "direct"):
        runner.run(t)
    assert runner.summarize(verbose=False).attempted == 3
    assert runner.summarize(verbose=False).failed == 0
