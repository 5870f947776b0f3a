"""``ggmk.testing.Sandbox`` against the CPU kernel (workers=2) for the same handlers: where a
message ends up when a lossy channel is full, when a type has no handler and when a channel
has no subscriber (sys.error / sys.dropped rows, codes, payloads released); and the
sandbox's ``listen=`` / ``outside=`` options."""
from __future__ import annotations

import pytest

import ggmk
from ggmk import task as T
from ggmk.modules import kv
from ggmk.testing import Sandbox


def _module():
    """D_LOSSY emits meta0 (payload b"p") on a lossy channel of 8; D_FULL on a lossless one;
    D_NOSUB on a channel nothing consumes; D_NOHANDLER emits, and submits, D_ORPHAN (a known
    type nothing handles). ``m.codes``: (handler, emit code)."""
    m = ggmk.Module("d")
    lossy = m.produces("d.lossy", "D_MSG", guarantee="lossy", capacity=8)
    full = m.produces("d.full", "D_MSG2", capacity=8)
    nosub = m.produces("d.nosub", "D_MSG3", capacity=8)
    m.codes = []

    @m.handler("D_LOSSY")
    def a(ctx):
        m.codes.append(("lossy", ctx.emit(lossy, ctx.task.meta0, payload=b"p")))

    @m.handler("D_FULL")
    def b(ctx):
        m.codes.append(("full", ctx.emit(full, ctx.task.meta0)))

    @m.handler("D_NOSUB")
    def c(ctx):
        m.codes.append(("nosub", ctx.emit(nosub, ctx.task.meta0, payload=b"n")))

    @m.handler("D_NOHANDLER")
    def d(ctx):
        m.codes.append(("orphan", ctx.emit("D_ORPHAN", ctx.task.meta0, payload=b"xyz")))
        m.codes.append(("submit", ctx.system.submit("D_ORPHAN", ctx.task.meta0, 9)))
    return m


def _types():
    reg = ggmk.TypeRegistry()
    reg.register("D_ORPHAN")
    return reg


def _feed_all(run):
    run("D_LOSSY", list(range(12)))
    run("D_FULL", list(range(10)))
    run("D_NOSUB", 5)
    run("D_NOHANDLER", 7)


def _rows(system, which):
    recs, codes = system.dead_letters(which)
    return sorted((system.type_name(int(r["type"])), int(r["meta0"]), int(r["meta1"]), int(c))
                  for r, c in zip(recs, codes))


def _kernel():
    m = _module()
    with ggmk.boot([m], workers=2, types=_types()) as system:
        lossy = system.channel("d.lossy").subscribe(name="stalled")
        full = system.channel("d.full").subscribe(name="stalled")

        def run(t, meta0):
            system.submit(t, meta0=meta0)
            assert system.run(timeout=30)
        _feed_all(run)
        got = lossy.take()
        system.arena.release_many(got["payload_ptr"])          # (what the host took is its)
        out = {"codes": sorted(set(m.codes)), "error": _rows(system, "sys.error"),
               "dropped": _rows(system, "sys.dropped"), "lossy": len(got),
               "full": len(full.take()), "live": system.arena.stats()["total"]["live"]}
    return out


def _sandbox(**kw):
    m = _module()
    with Sandbox(m, types=_types(), **kw) as sb:
        sb.capacity("d.lossy", 8)
        sb.capacity("d.full", 8)

        def run(t, meta0):
            sb.feed(t, meta0=meta0)
            assert sb.run() == 0 and sb.pending() == 0
        _feed_all(run)
        out = {"codes": sorted(set(m.codes)), "error": sorted(sb.errors),
               "dropped": sorted(sb.dropped), "lossy": len(sb.take("d.lossy")),
               "full": len(sb.take("d.full")), "live": sb.allocations()["live"]}
    return out, sb


def test_the_sandbox_puts_messages_where_the_kernel_does():
    """(before: the lossy emit past capacity answered CHAN_FULL and nothing was dropped; the
    emit and the submit to D_ORPHAN succeeded silently; D_NOSUB's messages were delivered)"""
    k = _kernel()
    assert k["codes"] == [("full", T.CHAN_FULL), ("full", T.OK), ("lossy", T.OK),
                          ("nosub", T.OK), ("orphan", T.OK), ("submit", 0)]
    assert k["error"] == [("D_ORPHAN", 7, 0, T.UNKNOWN_TYPE), ("D_ORPHAN", 7, 9, T.UNKNOWN_TYPE)]
    assert k["dropped"] == [("D_MSG", i, 0, T.CHAN_FULL) for i in range(8, 12)] + \
        [("D_MSG3", 5, 0, T.CHAN_NO_SUBSCRIBER)]
    assert (k["lossy"], k["full"], k["live"]) == (8, 8, 0)
    # the test listens on the channels the kernel's test subscribed to, and no other
    s, sb = _sandbox(listen=["d.lossy", "d.full"])
    assert s == k
    assert [e.meta0 for e in sb.emitted if e.target == "D_ORPHAN"] == [7]   # still captured


def test_by_default_the_test_listens_on_every_channel():
    s, sb = _sandbox()
    assert ("D_MSG3", 5, 0, T.CHAN_NO_SUBSCRIBER) not in s["dropped"]
    assert [(e.meta0, e.payload) for e in sb.emitted if e.target == "d.nosub"] == [(5, b"n")]
    assert s["dropped"] == [("D_MSG", i, 0, T.CHAN_FULL) for i in range(8, 12)]
    assert s["live"] == 0


def test_outside_types_are_captured_for_the_test_instead_of_failing():
    for outside in (["D_ORPHAN"], True):
        m = _module()
        with Sandbox(m, types=_types(), outside=outside) as sb:
            sb.feed("D_NOHANDLER", 7)
            assert sb.errors == [] and sb.allocations()["live"] == 0
            assert [(e.meta0, e.meta1, e.payload) for e in sb.take("D_ORPHAN")] == \
                [(7, 0, b"xyz"), (7, 9, None)]
            assert ("submit", 1) in m.codes


def test_a_lossy_publish_past_capacity_is_dropped_not_refused():
    m = _module()
    with Sandbox(m, types=_types()) as sb:
        sb.capacity("d.lossy", 1)
        assert [sb.publish("d.lossy", i, payload=b"q") for i in range(3)] == [T.OK] * 3
        assert sb.dropped == [("D_MSG", 1, 0, T.CHAN_FULL), ("D_MSG", 2, 0, T.CHAN_FULL)]
        sb.capacity("d.full", 1)
        assert [sb.publish("d.full", i) for i in range(2)] == [T.OK, T.CHAN_FULL]
        assert [e.meta0 for e in sb.take("d.lossy")] == [0]
        assert sb.allocations()["live"] == 0


def test_a_module_sees_nobody_listening_as_in_the_kernel():
    """kv answers only while something subscribes to kv.resp (its outbox is optional): with
    the test not listening, a put is applied and not answered, as in a kernel where nothing
    subscribes."""
    store = kv.module(capacity=8)
    with Sandbox(store, listen=False) as sb:
        sb.publish("kv.put", meta0=1, meta1=10)
        sb.run()
        assert store.kv.table.get(1) == 10
        assert sb.take("kv.resp") == [] and sb.dropped == [] and sb.errors == []
        assert store.kv.stats()["published"] == 0
    store = kv.module(capacity=8)
    with Sandbox(store) as sb:
        sb.publish("kv.put", meta0=1, meta1=10)
        sb.run()
        assert [kv.unpack(e.meta0)[0] for e in sb.take("kv.resp")] == [kv.OK]


@pytest.mark.parametrize("kw, msg", [
    ({"listen": "d.lossy"}, r"listen='d.lossy': allowed True \(every channel\), False"),
    ({"listen": ["d.nope"]}, r"listen=\['d.nope'\]: allowed .* channel names from "
                             r"\['d.full', 'd.lossy', 'd.nosub'\]"),
    ({"listen": 1}, r"listen=1: allowed"),
    ({"outside": "D_ORPHAN"}, r"outside='D_ORPHAN': allowed True \(every type\) or a list"),
    ({"outside": False}, r"outside=False: allowed"),
])
def test_bad_listen_and_outside_values_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Sandbox(_module(), types=_types(), **kw)
