"""ggmk.sdk clients sharing a reply channel, and the edges of a request (an audit's findings):
tags unique across clients, one subscription per reply channel drained by whichever client
waits (an idle client stalls nobody), a block bigger than the request ring with one worker
lent to the caller, waiters woken by a halt, a refused request's tag forgotten, timeouts and
keys validated. Real threads (workers=2 unless the case needs one); no sleeps."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import ggmk
from ggmk import sdk
from ggmk.errors import KernelStopped
from ggmk.modules import kv

HELPS = [True, False]


def svc(*, reply: bool = True, gate: threading.Event | None = None):
    """A server: a request (meta0 = x, meta1 = tag) is answered on the fan-out ``svc.resp``
    with meta0 = tag, meta1 = x + 1 (``reply=False``: never answered; ``gate``: held until
    set). ``app.seen`` counts the requests taken."""
    app = ggmk.Module("svc")
    app.produces("svc.req", "SVC_REQ", capacity=64)
    app.produces("svc.resp", "SVC_RESP", mode="fanout", capacity=64)
    app.seen = 0
    lock = threading.Lock()

    @app.handler("SVC_ASK", consumes="svc.req", message="SVC_REQ")
    def ask(ctx):
        with lock:
            app.seen += 1
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        if reply:
            return ctx.emit("svc.resp", ctx.task.meta1, ctx.task.meta0 + 1)
        return ggmk.OK
    return app


def no_errors(system):
    assert len(system.dead_letters("sys.error")[0]) == 0
    assert len(system.dead_letters("sys.dropped")[0]) == 0


# -- 1: tags are unique across the clients of a process -----------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_two_kv_clients_get_their_own_replies(helps):
    with ggmk.boot([kv.module(capacity=64)], workers=2, host_helps=helps) as system:
        a, b = sdk.KV(system, timeout=30), sdk.KV(system, timeout=30)
        a.put(1, 111)
        b.put(2, 222)
        assert a.get(2) == 222 and b.get(1) == 111
        assert a.get_many([1, 2, 3]) == [111, 222, None]
        assert b.get_array([2, 1])[0].tolist() == [222, 111]
        assert a.client.ignored == 0
        a.close()
        b.close()
        no_errors(system)


def test_new_tags_are_unique_across_threads():
    out = [[] for _ in range(4)]
    go = threading.Barrier(4)

    def take(i):
        go.wait(30)
        for k in range(2000):
            lo = sdk.new_tags(1 + k % 3)
            out[i].extend(range(lo, lo + 1 + k % 3))
    ts = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    tags = [t for o in out for t in o]
    assert len(tags) == len(set(tags)) == 4 * sum(1 + k % 3 for k in range(2000))
    assert all(0 < t <= sdk.TAG_MASK for t in tags)
    with pytest.raises(ValueError, match=r"new_tags: n=-1: allowed an int"):
        sdk.new_tags(-1)


def test_clients_of_one_reply_channel_cannot_await_the_same_tag():
    with ggmk.boot([svc(reply=False)], workers=2) as system:
        c1 = sdk.Client(system, "svc.req", "svc.resp", timeout=30)
        c2 = sdk.Client(system, "svc.req", "svc.resp", timeout=30)
        c1.expect(5)
        with pytest.raises(ValueError, match="tag 5 is already awaited on 'svc.resp'"):
            c2.expect(5)
        p = c1.publish_many([1, 2, 3], [100, 101, 102], 100)
        with pytest.raises(ValueError, match=r"tags 102..103 overlap .* \(at 102\)"):
            c2.publish_many([1, 2], [102, 103], 102)
        with pytest.raises(ValueError, match="tag 101 is already awaited"):
            c2.expect(101)
        c1.forget(5)
        c2.expect(5)                      # free again
        c2.forget(5)
        with c1._cond:
            c1._hub.unregister(p)
        c1.close()
        c2.close()


# -- 2: an idle client stalls nobody ---------------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_an_idle_client_does_not_stall_the_others(helps):
    # resp_capacity 16: a subscription per client would fill with the active client's
    # replies after 16 gets, and the lossless kv.resp would then refuse every reply
    store = kv.module(capacity=64, resp_capacity=16)
    with ggmk.boot([store], workers=2, host_helps=helps) as system:
        idle = sdk.KV(system, timeout=10)           # made, never used, never closed
        a = sdk.KV(system, timeout=10)
        a.put(1, 5)
        for i in range(200):
            assert a.get(1) == 5
        assert a.get_many([1] * 100) == [5] * 100
        assert len(idle.client.sub.ring) == 0
        assert store.kv.stats()["waiting"] == 0
        a.close()
        idle.close()
        no_errors(system)


@pytest.mark.parametrize("helps", HELPS)
def test_threads_with_their_own_clients_and_one_shared_beside_an_idle_one(helps):
    store = kv.module(capacity=512, resp_capacity=16, outbox_limit=32)
    errors = []
    with ggmk.boot([store], workers=2, host_helps=helps) as system:
        idle = sdk.KV(system, timeout=60)
        shared = sdk.KV(system, timeout=60)
        for k in range(400):
            shared.put(k, k + 7)
        go = threading.Barrier(4)

        def user(i, c):
            try:
                go.wait(60)
                for r in range(40):
                    k = (i * 100 + r) % 400
                    assert c.get(k) == k + 7
                    keys = [(k + j) % 400 for j in range(1 + r % 50)]
                    assert c.get_many(keys, depth=None if r % 2 else 7) == \
                        [x + 7 for x in keys]
            except BaseException as e:   # noqa: BLE001 - reported by the main thread
                errors.append(e)
        own = [sdk.KV(system, timeout=60) for _ in range(2)]
        ts = [threading.Thread(target=user, args=(i, c))
              for i, c in enumerate(own + [shared, shared])]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts)
        assert errors == []
        assert shared.client.ignored == 0 and len(idle.client.sub.ring) == 0
        assert not shared.client._single and not shared.client._runs
        for c in own + [shared, idle]:
            c.close()
        assert len(system.channel("kv.resp").subs) == 0
        no_errors(system)


# -- 4: a block bigger than the request ring, the one worker lent to the caller -------------
@pytest.mark.parametrize("workers", [1, 2])
def test_a_block_bigger_than_the_request_ring_with_the_worker_lent(workers):
    with ggmk.boot([kv.module(capacity=1 << 16)], workers=workers, host_helps=True) as system:
        c = sdk.KV(system, timeout=20)
        for k in range(0, 100, 3):
            c.put(k, k + 1)
        cap = system.channel("kv.get").subs[0].ring.capacity
        keys = np.arange(4 * cap) % 100
        vals, found = c.get_array(keys)
        assert found.tolist() == (keys % 3 == 0).tolist()
        assert (vals[found] == keys[found] + 1).all()
        assert c.get_many(list(keys[:3 * cap])) == \
            [int(k) + 1 if k % 3 == 0 else None for k in keys[:3 * cap]]
        c.close()
        no_errors(system)


# -- 5: a halt wakes the waiting callers -----------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
@pytest.mark.parametrize("how", ["call", "call_many", "stream"])
def test_a_halt_wakes_callers_waiting_for_replies_that_cannot_come(helps, how, wait_until):
    app = svc(reply=False)
    system = ggmk.boot([app], workers=2, host_helps=helps)
    c = sdk.Client(system, "svc.req", "svc.resp", timeout=120)
    got = []

    def caller():
        t0 = time.monotonic()
        try:
            if how == "call":
                c.call(7, 70, tag=70)
            elif how == "call_many":
                c.call_many([1, 2, 3], [80, 81, 82], 80)
            else:
                c.stream(np.arange(10), np.arange(90, 100), 90, 4)
        except BaseException as e:  # noqa: BLE001 - checked below
            got.append(e)
        got.append(time.monotonic() - t0)
    t = threading.Thread(target=caller, daemon=True)
    t.start()
    n = {"call": 1, "call_many": 3, "stream": 4}[how]
    assert wait_until(lambda: app.seen == n, 60)       # its requests were taken
    system.halt(timeout=5)
    t.join(30)
    assert not t.is_alive(), "the caller slept through the halt"
    err, waited = got
    assert isinstance(err, KernelStopped)
    want = {"call": r"1 of 1 request\(s\) \(tag 70\) left unanswered on 'svc.resp'",
            "call_many": r"3 of 3 request\(s\) \(tags 80..82\) left unanswered",
            "stream": r"stream of 10 requests \(tags 90..99\): 10 left unanswered"}[how]
    assert err.args[0].startswith(("the system halted", "stream")), err
    assert re.search(want, err.args[0]), err
    assert waited < 60                                  # not the timeout
    assert not c._single and not c._runs
    # a call after the halt is refused at once, with the same error
    with pytest.raises(KernelStopped, match="the system halted: request channel 'svc.req'"):
        c.call(1, 71, tag=71)
    assert not c._single
    c.close()


@pytest.mark.parametrize("helps", HELPS)
def test_a_reply_that_comes_while_the_halt_drains_is_still_taken(helps, wait_until):
    gate = threading.Event()
    app = svc(gate=gate)
    system = ggmk.boot([app], workers=2, host_helps=helps)
    c = sdk.Client(system, "svc.req", "svc.resp", timeout=120)
    got = []
    t = threading.Thread(target=lambda: got.append(c.call(7, 70, tag=70)), daemon=True)
    t.start()
    assert wait_until(lambda: app.seen == 1, 60)
    h = threading.Thread(target=system.halt, kwargs={"timeout": 60}, daemon=True)
    h.start()
    assert wait_until(lambda: system.halted, 60)        # the halt drains: accepted work runs
    gate.set()
    t.join(60)
    h.join(60)
    assert got == [(70, 8, None)]
    c.close()


# -- 8: a refused request forgets its tag ----------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_a_refused_request_forgets_its_tag(helps):
    with ggmk.boot([kv.module()], workers=2, host_helps=helps) as system:
        k = sdk.KV(system, timeout=30)
        for bad in (-1, 1 << 64):
            with pytest.raises(ValueError):
                k.get(bad)
        with pytest.raises(ValueError):
            k.client.publish(-1, 0, tag=424242)
        assert not k.client._single
        k.client.expect(424242)                    # free: nobody awaits it
        with pytest.raises(ValueError, match="tag 424242 is already awaited"):
            k.client.expect(424242)
        k.client.forget(424242)
        k.put(5, 6)
        assert k.get(5) == 6
        k.close()


# -- 9: timeouts -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5", None])
def test_timeouts_must_be_finite_and_positive(bad):
    with ggmk.boot([kv.module()], workers=2) as system:
        with pytest.raises(ValueError, match=re.escape(
                f"Client: timeout={bad!r}: allowed a finite number of seconds > 0")):
            sdk.Client(system, "kv.get", "kv.resp", timeout=bad)
        with pytest.raises(ValueError, match=re.escape(f"KV: timeout={bad!r}: allowed")):
            sdk.KV(system, timeout=bad)
        assert len(system.channel("kv.resp").subs) == 0     # nothing subscribed meanwhile


# -- 10: keys past 2**63 in a list -----------------------------------------------------------
def test_get_many_of_keys_past_2_63_in_a_list():
    u = (1 << 64) - 1
    with ggmk.boot([kv.module()], workers=2) as system:
        k = sdk.KV(system, timeout=30)
        k.put(u, 7)
        k.put(0, 1)
        k.put(1 << 63, 9)
        assert k.get_many([0, u]) == [1, 7]
        assert k.get_many([1, 1 << 63, u]) == [None, 9, 7]
        vals, found = k.get_array([u, 0, 2])
        assert vals[found].tolist() == [7, 1] and found.tolist() == [True, True, False]
        for bad in ([0, 1 << 64], [-1, u], [1.5, u], [0, u, "x"]):
            with pytest.raises(ValueError, match="keys: expected integers in 0..2"):
                k.get_many(bad)
        with pytest.raises(ValueError, match="meta1: expected integers"):
            k.client.publish_many([1, 2], 2.5, 1)
        k.close()
