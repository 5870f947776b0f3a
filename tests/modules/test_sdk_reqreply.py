"""ggmk.sdk request/reply (Client, KV.get_many/get_array) on real threads (workers=2) with
small channels: correlation by tag across threads and clients, bulk matching, timeouts, a
full request channel bounded by the timeout, and every request answered (nothing lost)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk
from ggmk import sdk
from ggmk.modules import kv


def tripler(gate: threading.Event | None = None, *, ask_cap: int = 8, ans_cap: int = 16):
    """A server: each request (meta0 = x, meta1 = tag) is answered on ``ans.q`` with
    meta0 = tag, meta1 = 3 * x. ``gate`` (when given) holds the handler until it is set."""
    app = ggmk.Module("srv")
    app.produces("ask.q", "ASK_Q", capacity=ask_cap)
    app.produces("ans.q", "ANS_Q", mode="fanout", capacity=ans_cap)
    app.asked = 0
    lock = threading.Lock()

    @app.handler("SRV_ASK", batch=True, consumes="ask.q", message="ASK_Q")
    def ask(ctx, batch):
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        r = batch.records
        acc = ctx.emit_batch("ans.q", meta0=r["meta1"], meta1=r["meta0"] * np.uint64(3))
        with lock:
            app.asked += acc
        if acc < len(r):                 # the reply channel is full: the rest run again later
            codes = np.zeros(len(r), np.int32)
            codes[acc:] = ggmk.WAIT
            return codes
        return None
    return app


def no_errors(system):
    assert len(system.dead_letters("sys.error")[0]) == 0
    assert len(system.dead_letters("sys.dropped")[0]) == 0


def test_get_many_and_get_array_match_replies_in_bulk():
    # resp_capacity 16: 1000 answers cannot fit at once, so the module's answers wait in its
    # outbox and the client takes them block by block
    store = kv.module(capacity=64, resp_capacity=16, outbox_limit=32)
    with ggmk.boot([store], workers=2) as system:
        c = sdk.KV(system, timeout=60)
        for k in range(0, 64, 2):
            c.put(k, k * 10 + 1)
        keys = [i % 80 for i in range(1000)]
        want = [k * 10 + 1 if k % 2 == 0 and k < 64 else None for k in keys]
        assert c.get_many(keys) == want
        vals, found = c.get_array(np.array(keys, dtype=np.uint64))
        assert found.tolist() == [w is not None for w in want]
        assert vals[found].tolist() == [w for w in want if w is not None]
        assert c.get_many([]) == []
        st = store.kv.stats()
        assert st["get"] == 2000 and st["hit"] + st["miss"] == 2000 and st["waiting"] == 0
        assert c.client.ignored == 0
        c.close()
        no_errors(system)


def test_two_threads_share_one_client_and_get_their_own_answers():
    store = kv.module(capacity=256, resp_capacity=32)
    errors = []
    with ggmk.boot([store], workers=2) as system:
        c = sdk.KV(system, timeout=60)
        for k in range(200):
            c.put(k, k + 1000)

        def worker(base):
            try:
                for i in range(60):
                    k = (base + i) % 200
                    assert c.get(k) == k + 1000
                    block = [(base + i + j) % 200 for j in range(37)]
                    assert c.get_many(block) == [x + 1000 for x in block]
            except BaseException as e:   # noqa: BLE001 - reported by the main thread
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(b,)) for b in (0, 100)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts)
        assert errors == []
        assert c.client.ignored == 0
        assert store.kv.stats()["get"] == 2 * 60 * 38
        c.close()
        no_errors(system)


def test_two_clients_share_one_subscription_and_get_their_own_answers():
    store = kv.module(capacity=64)
    with ggmk.boot([store], workers=2) as system:
        a, b = sdk.KV(system, timeout=60), sdk.KV(system, timeout=60)
        resp = system.channel("kv.resp")
        # one host subscription for both (their tags come from one allocator)
        assert a.client.sub is b.client.sub and len(resp.subs) == 1
        a.put(1, 11)
        assert b.get(1) == 11
        assert a.get_many([1, 2]) == [11, None]
        assert b.get_many([2, 1]) == [None, 11]
        assert a.client.ignored == 0
        a.close()
        a.close()                              # (a second close does not leave twice)
        assert len(resp.subs) == 1 and b.get(1) == 11
        b.close()                              # the last one unsubscribes
        assert len(resp.subs) == 0
        no_errors(system)


def test_client_correlates_blocks_and_singles_from_two_threads():
    srv = tripler(ask_cap=8, ans_cap=16)
    errors = []
    with ggmk.boot([srv], workers=2) as system:
        cl = sdk.Client(system, "ask.q", "ans.q", timeout=60)

        def blocks():
            try:
                for r in range(20):
                    lo = 1_000_000 + r * 50
                    x = np.arange(50, dtype=np.uint64) + np.uint64(r)
                    p = cl.publish_many(x, np.arange(lo, lo + 50, dtype=np.uint64), lo)
                    m0, m1, data = cl.wait_many(p)
                    assert m0.tolist() == list(range(lo, lo + 50))
                    assert m1.tolist() == (x * np.uint64(3)).tolist() and data is None
            except BaseException as e:   # noqa: BLE001
                errors.append(e)

        def singles():
            try:
                for i in range(200):
                    assert cl.call(i, 5_000_000 + i, tag=5_000_000 + i) == \
                        (5_000_000 + i, 3 * i, None)
            except BaseException as e:   # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=blocks), threading.Thread(target=singles)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts)
        assert errors == []
        assert srv.asked == 20 * 50 + 200 and cl.ignored == 0
        cl.close()
        no_errors(system)


def test_timeouts_name_what_is_missing_and_late_replies_are_counted():
    gate = threading.Event()
    srv = tripler(gate, ask_cap=64, ans_cap=64)
    # the server blocks until this thread opens the gate: the host must not run it itself
    # (caller runs would: the one case host_helps=False is for)
    with ggmk.boot([srv], workers=2, host_helps=False) as system:
        cl = sdk.Client(system, "ask.q", "ans.q", timeout=0.2)
        try:
            with pytest.raises(TimeoutError, match="tag 77 on 'ans.q'"):
                cl.call(1, 77, tag=77)
            p = cl.publish_many([1, 2, 3], [500, 501, 502], 500)
            with pytest.raises(TimeoutError, match=r"3 of 3 replies \(tags 500..502\) missing"):
                cl.wait_many(p)
        finally:
            gate.set()
        assert system.run(timeout=60)
        # the four answers came after their callers gave up: taken, counted, not filed
        cl.timeout = 60
        assert cl.call(4, 78, tag=78) == (78, 12, None)
        assert cl.ignored == 4 and srv.asked == 5
        assert not cl._single and not cl._runs
        with pytest.raises(ValueError, match="timeout"):
            sdk.Client(system, "ask.q", "ans.q", timeout=0)
        cl.close()
        no_errors(system)


def test_full_request_channel_is_bounded_and_nothing_is_lost():
    gate = threading.Event()
    srv = tripler(gate, ask_cap=8, ans_cap=256)
    # the server blocks until this thread opens the gate: the host must not run it itself
    # (caller runs would: the one case host_helps=False is for)
    with ggmk.boot([srv], workers=2, host_helps=False) as system:
        cl = sdk.Client(system, "ask.q", "ans.q", timeout=0.3)
        try:
            n = 100
            with pytest.raises(TimeoutError, match=r"CHAN_FULL for 0.3 s \((\d+)/100 sent\)") as ei:
                cl.publish_many(np.arange(n), np.arange(1000, 1000 + n), 1000)
            sent = int(ei.value.args[0].split("(")[1].split("/")[0])
            assert 0 < sent < n
            with pytest.raises(TimeoutError, match="CHAN_FULL"):
                while True:                    # single requests meet the same bound
                    cl.publish(7, 9999)
        finally:
            gate.set()
        assert system.run(timeout=60)
        ch = system.channel("ask.q")
        accepted = ch.emitted
        assert srv.asked == accepted and ch.full > 0   # every accepted request was answered
        taken = len(cl.sub.take())
        assert taken == accepted and cl.ignored == 0   # and its answer reached the client
        cl.close()
        no_errors(system)


def test_depth_bounds_requests_in_flight_and_bad_input_is_named():
    srv = tripler(ask_cap=16, ans_cap=16)
    with ggmk.boot([srv], workers=2) as system:
        cl = sdk.Client(system, "ask.q", "ans.q", timeout=60)
        x = np.arange(1000, dtype=np.uint64)
        m0, m1, data = cl.stream(x, np.arange(10_000, 11_000), 10_000, 64)
        assert m0.tolist() == list(range(10_000, 11_000))
        assert m1.tolist() == (x * np.uint64(3)).tolist() and data is None
        assert srv.asked == 1000 and cl.ignored == 0 and not cl._runs
        with pytest.raises(ValueError, match="depth must be a positive int, got 0"):
            cl.stream(x, x, 0, 0)
        with pytest.raises(ValueError, match=r"meta0: expected integers in 0..2\*\*64-1"):
            cl.publish_many([-1, 2], [1, 2], 5)
        with pytest.raises(ValueError, match="meta1: expected a 1-D column of 2 values"):
            cl.publish_many([1, 2], [1, 2, 3], 5)
        cl.close()
        no_errors(system)
    store = kv.module(capacity=16, resp_capacity=8)
    with ggmk.boot([store], workers=2) as system:
        c = sdk.KV(system, timeout=60)
        for k in range(10):
            c.put(k, k + 1)
        keys = [i % 13 for i in range(500)]
        assert c.get_many(keys, depth=32) == [k + 1 if k < 10 else None for k in keys]
        vals, found = c.get_array(keys, depth=7)
        assert found.tolist() == [k < 10 for k in keys] and vals[found].tolist() == \
            [k + 1 for k in keys if k < 10]
        with pytest.raises(ValueError, match="keys: expected integers"):
            c.get_many(["a"])
        assert store.kv.stats()["get"] == 1000 and c.client.ignored == 0
        c.close()
        no_errors(system)


def test_get_many_of_payload_values_copies_and_releases_every_payload(wait_until):
    store = kv.module(capacity=32, value_size=16, name="blob", resp_capacity=8)
    with ggmk.boot([store], workers=2) as system:
        c = sdk.KV(system, "blob", timeout=60)
        for k in range(20):
            c.put(k, bytes([k]) * 16)
        keys = [k % 25 for k in range(300)]
        assert c.get_many(keys, depth=50) == [bytes([k]) * 16 if k < 20 else None for k in keys]
        with pytest.raises(sdk.KV.KVError, match="get_array is for inline"):
            c.get_array([1, 2])
        # every payload given back: the requests' (by the workers, once each put finished)
        # and the replies' (by the client, copied out as it filed them)
        assert wait_until(lambda: system.arena.live_count() == 0, 60)
        c.close()
        no_errors(system)
