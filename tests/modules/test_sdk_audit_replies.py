"""ggmk.sdk request/reply, an audit's findings: a reply duplicated within one take of the
shared reply side counts once (a missing one stays a TimeoutError); ``reply_tags`` alone
files single replies too; one reply channel, one pair of tag functions; the last close
wakes the waiters; ``Requests`` refuses a None value; ``channel=`` the same on every path;
tags and bool keys validated at once. Real threads (workers=2); no sleeps."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import ggmk
from ggmk import sdk
from ggmk.modules import kv

HELPS = [True, False]


def dup_server(dups=(), never=()):
    """A batch server: a request (meta0 = x, meta1 = tag) is answered on ``srv.resp`` with
    meta0 = tag, meta1 = x + 1; x in ``dups`` is answered twice in the same emit (the copy
    with meta1 = x + 1000), x in ``never`` not at all."""
    app = ggmk.Module("srv")
    app.produces("srv.req", "SRV_REQ", capacity=64)
    app.produces("srv.resp", "SRV_RESP", mode="fanout", capacity=256)

    @app.handler("SRV_ASK", batch=True, consumes="srv.req", message="SRV_REQ")
    def ask(ctx, batch):
        m0, m1 = [], []
        for x, tag in zip(batch.records["meta0"].tolist(), batch.records["meta1"].tolist()):
            if x in never:
                continue
            m0.append(tag)
            m1.append(x + 1)
            if x in dups:
                m0.append(tag)
                m1.append(x + 1000)
        # one emit: a duplicate lands in the same take as its first copy
        assert ctx.emit_batch("srv.resp", meta0=np.array(m0, np.uint64),
                              meta1=np.array(m1, np.uint64)) == len(m0)
        return None
    return app


def gated_server(gate: threading.Event, started: threading.Event):
    """``svc.req`` (meta0 = x, meta1 = tag) answered on ``svc.resp`` with (tag, x + 1) once
    ``gate`` is set; ``started`` is set when a request is taken."""
    app = ggmk.Module("svc")
    app.produces("svc.req", "SVC_REQ", capacity=64)
    app.produces("svc.resp", "SVC_RESP", mode="fanout", capacity=64)

    @app.handler("SVC_ASK", consumes="svc.req", message="SVC_REQ")
    def ask(ctx):
        started.set()
        assert gate.wait(60), "the test never opened the gate"
        return ctx.emit("svc.resp", ctx.task.meta1, ctx.task.meta0 + 1)
    return app


# -- 1: a duplicated reply inside one take ------------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_duplicate_reply_in_one_take_counts_once(helps):
    with ggmk.boot([dup_server(dups={3})], workers=2, host_helps=helps) as system:
        c = sdk.Client(system, "srv.req", "srv.resp", timeout=10)
        xs = list(range(1, 11))
        lo = sdk.new_tags(len(xs))
        r0, r1, data = c.call_many(xs, np.arange(lo, lo + len(xs)), lo)
        assert r0.tolist() == list(range(lo, lo + len(xs)))
        assert r1.tolist() == [x + 1 for x in xs]         # the first copy, not the 1003
        assert data is None and not c._runs
        c.close()


@pytest.mark.parametrize("helps", HELPS)
def test_duplicate_reply_does_not_stand_in_for_a_missing_one(helps):
    with ggmk.boot([dup_server(dups={3}, never={999})], workers=2,
                   host_helps=helps) as system:
        c = sdk.Client(system, "srv.req", "srv.resp", timeout=0.5)
        xs = [1, 2, 3, 999, 5, 6, 7, 8, 9, 10]
        lo = sdk.new_tags(len(xs))
        with pytest.raises(TimeoutError, match=rf"^1 of 10 replies \(tags {lo}\.\.{lo + 9}\) "
                                               r"missing on 'srv.resp'"):
            c.call_many(xs, np.arange(lo, lo + len(xs)), lo)
        c.close()


# -- 2: reply_tags alone -------------------------------------------------------------------------
def tag_m1(m0, m1):
    return m1


def echo_server():
    """``srv.req`` (x, tag) answered on ``srv.resp`` with (2 * x, tag): the tag in meta1."""
    app = ggmk.Module("srv")
    app.produces("srv.req", "SRV_REQ", capacity=64)
    app.produces("srv.resp", "SRV_RESP", mode="fanout", capacity=64)

    @app.handler("SRV_ASK", consumes="srv.req", message="SRV_REQ")
    def ask(ctx):
        return ctx.emit("srv.resp", 2 * ctx.task.meta0, ctx.task.meta1)
    return app


@pytest.mark.parametrize("helps", HELPS)
def test_reply_tags_alone_files_single_replies_by_it(helps):
    with ggmk.boot([echo_server()], workers=2, host_helps=helps) as system:
        c = sdk.Client(system, "srv.req", "srv.resp", reply_tags=tag_m1, timeout=2)
        c2 = sdk.Client(system, "srv.req", "srv.resp", reply_tags=tag_m1, timeout=2)
        assert c2.sub is c.sub                              # one hub: the same functions
        r0, r1, _ = c.call_many([1, 2, 3], [100, 101, 102], 100)
        assert r0.tolist() == [2, 4, 6] and r1.tolist() == [100, 101, 102]
        assert c.call(7, 50, tag=50) == (14, 50, None)
        # tag 14 awaited, then a reply whose meta0 is 14 (for tag 51): not tag 14's
        c.publish(1000, 14, tag=14)
        assert c2.call(7, 51, tag=51) == (14, 51, None)
        assert c.wait(14) == (2000, 14, None)
        assert c.ignored == 0
        c.close()
        c2.close()


# -- 3: one reply channel, one pair of tag functions ------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_other_tag_functions_on_a_shared_reply_channel_are_refused(helps):
    store = kv.module(capacity=64, resp_capacity=16, outbox_limit=16)
    with ggmk.boot([store], workers=2, host_helps=helps) as system:
        idle = sdk.KV(system, timeout=10)
        idle.put(1, 11)
        with pytest.raises(ValueError, match=r"reply channel 'kv.resp' already has clients .*"
                                             r"must pass the same tag functions"):
            sdk.Client(system, "kv.get", "kv.resp", reply_tag=lambda m0, m1: m0 & sdk.TAG_MASK)
        with pytest.raises(ValueError, match="'kv.resp' already has clients"):
            sdk.Client(system, "kv.get", "kv.resp")                 # the default: meta0
        other = sdk.KV(system, timeout=10)                          # the same functions
        assert other.client.sub is idle.client.sub
        assert len(system.channel("kv.resp").subs) == 1
        for _ in range(100):                    # > resp_capacity: nobody is stalled
            assert other.get(1) == 11
        other.close()
        idle.close()
        # every client gone: the channel may be taken with other functions
        c = sdk.Client(system, "kv.get", "kv.resp", reply_tag=sdk.tags._tag48)
        c.close()


# -- 4: close ---------------------------------------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_last_close_wakes_a_waiter_at_once(helps):
    gate, started = threading.Event(), threading.Event()
    with ggmk.boot([gated_server(gate, started)], workers=2, host_helps=helps) as system:
        # (timeout 5: without the wake-up the waiter would sleep it all, then TimeoutError)
        c = sdk.Client(system, "svc.req", "svc.resp", timeout=5)
        got = []

        def caller():
            try:
                got.append(c.call(7, 70, tag=70))
            except Exception as e:  # noqa: BLE001 - reported below
                got.append(e)
        th = threading.Thread(target=caller)
        th.start()
        assert started.wait(30)             # the request was sent: the caller is waiting
        c.close()                           # the last client leaves mid-call
        gate.set()                          # (its reply now has no subscription to go to)
        th.join(30)
        assert not th.is_alive()
        assert isinstance(got[0], ValueError), got
        assert "closed" in str(got[0]) and "tag 70" in str(got[0])


def test_a_closed_client_refuses_every_call():
    gate, started = threading.Event(), threading.Event()
    gate.set()
    with ggmk.boot([gated_server(gate, started)], workers=2) as system:
        c = sdk.Client(system, "svc.req", "svc.resp", timeout=30)
        c2 = sdk.Client(system, "svc.req", "svc.resp", timeout=30)
        c2.close()                          # c keeps the shared reply side open
        calls = {"call": lambda: c2.call(5, 1, tag=1),
                 "publish": lambda: c2.publish(5, 1, tag=1),
                 "expect": lambda: c2.expect(1),
                 "wait": lambda: c2.wait(1),
                 "call_many": lambda: c2.call_many([5], [1], 1),
                 "publish_many": lambda: c2.publish_many([5], [1], 1),
                 "stream": lambda: c2.stream([5, 6], [1, 2], 1, 1)}
        for name, fn in calls.items():
            with pytest.raises(ValueError, match=rf"^Client\.{name}: this client is closed"):
                fn()
        assert not c._single and not c._runs and not started.is_set()
        assert c.call(5, 1, tag=1) == (1, 6, None)
        c.close()


# -- 5: Requests ------------------------------------------------------------------------------
def test_requests_refuses_a_none_value():
    tick = [0]
    ctx = SimpleNamespace(system=SimpleNamespace(wall_tick=lambda: tick[0]))
    req = sdk.Requests(timeout=100)
    tag = req.start(ctx)
    with pytest.raises(ValueError, match=rf"Requests.complete: tag={tag}, value=None: "
                                         "allowed any value but None"):
        req.complete(tag, None)
    assert req.poll(ctx, tag) is None and req.pending() == 1      # still awaited
    assert req.complete(tag, 0) is True
    assert req.poll(ctx, tag) == 0 and req.timeouts == 0


# -- 6: channel= -----------------------------------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_channel_argument_alike_on_every_path(helps):
    with ggmk.boot([kv.module(capacity=16)], workers=2, host_helps=helps) as system, \
            ggmk.boot([kv.module(capacity=16)], workers=2) as other:
        k = sdk.KV(system, timeout=30)
        cl = k.client
        k.put(3, 33)
        t = sdk.new_tags()
        m0, _, _ = cl.call(4, t, tag=t, channel="kv.del")           # a name: not found
        assert m0 >> 56 == kv.NOT_FOUND
        t = sdk.new_tags()
        cl.publish(3, t, tag=t, channel="kv.del")
        assert cl.wait(t)[0] >> 56 == kv.OK
        t = sdk.new_tags()
        m0s, _, _ = cl.call_many([3], [t], t, channel="kv.del")     # deleted already
        assert (m0s >> np.uint64(56)).tolist() == [kv.NOT_FOUND]
        t = sdk.new_tags()
        r0, _, _ = cl.stream([3, 4], [t, t + 1], t, 1, channel=system.channel("kv.get"))
        assert len(r0) == 2
        for bad in (other.channel("kv.del"), 5):
            with pytest.raises(ValueError, match=r"Client.call: channel=.*: allowed None, a "
                                                 r"channel name or a Channel of this"):
                cl.call(3, 9, tag=9, channel=bad)
            with pytest.raises(ValueError, match=r"Client.publish: channel="):
                cl.publish(3, 9, tag=9, channel=bad)
            with pytest.raises(ValueError, match=r"Client.call_many: channel="):
                cl.call_many([3], [9], 9, channel=bad)
        assert not cl._single and not cl._runs                      # nothing left awaited
        k.close()


# -- 7: tags and keys ------------------------------------------------------------------------
@pytest.mark.parametrize("helps", HELPS)
def test_bad_tags_are_refused_at_once(helps):
    with ggmk.boot([kv.module(capacity=16)], workers=2, host_helps=helps) as system:
        k = sdk.KV(system, timeout=5)       # (a bad tag used to wait all of it)
        cl = k.client
        k.put(5, 55)
        for bad in (None, -7, "x", True, 2.0, 2 ** 60, sdk.TAG_MASK + 1):
            for name, fn in (("call", lambda: cl.call(5, 0, tag=bad)),
                             ("publish", lambda: cl.publish(5, 0, tag=bad)),
                             ("expect", lambda: cl.expect(bad)),
                             ("wait", lambda: cl.wait(bad))):
                if name == "publish" and bad is None:
                    continue                # (publish's None: no reply awaited)
                with pytest.raises(ValueError, match=rf"^Client\.{name}: tag=.*: allowed an "
                                                     rf"int in 0\.\.{sdk.TAG_MASK}"):
                    fn()
        with pytest.raises(ValueError, match=r"publish_many: lo=.*lie in 0\.\.281474976710655"):
            cl.call_many([1, 2], [1, 2], sdk.TAG_MASK)
        assert not cl._single and not cl._runs
        t = np.uint64(sdk.new_tags())                               # a NumPy int is an int
        assert cl.call(5, int(t), tag=t)[1] == 55
        k.close()


def test_tags_of_a_meta0_tagged_channel_are_64_bit():
    gate, started = threading.Event(), threading.Event()
    gate.set()
    with ggmk.boot([gated_server(gate, started)], workers=2) as system:
        c = sdk.Client(system, "svc.req", "svc.resp", timeout=30)
        assert c.call(1, 2 ** 60, tag=2 ** 60) == (2 ** 60, 2, None)
        with pytest.raises(ValueError, match=r"Client\.call: tag=18446744073709551616: "
                                             r"allowed an int in 0\.\.18446744073709551615"):
            c.call(1, 0, tag=2 ** 64)
        c.close()


def test_bool_keys_are_refused_as_get_refuses_them():
    with ggmk.boot([kv.module(capacity=16)], workers=2) as system:
        k = sdk.KV(system, timeout=30)
        k.put(5, 55)
        for keys in ([True, 5], (5, np.bool_(False)), [2 ** 64 - 1, True], np.array([True])):
            with pytest.raises(ValueError, match=r"keys: expected integers in 0\.\.2\*\*64-1 "
                                                 r"\(a column, no bools\)"):
                k.get_many(keys)
        with pytest.raises(ValueError, match="meta1: expected integers"):
            k.client.publish_many([5], True, sdk.new_tags())
        assert k.get_many([5, np.uint64(5)]) == [55, 55]
        k.close()
