"""``ctx.payload``: read-only for a fan-out channel's message (SPEC §5: the payload is shared
read-only), its handler's own otherwise; raw payload bytes of a type with a schema are checked
against it at the sender."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import PayloadError
from ggmk.testing import Sandbox
from ggmk.typereg import load_types

TYPES = load_types('[types.PT]\nid = 10\npayload = { n = "u32", x = "f64" }\n'
                   '[types.VT]\nid = 11\npayload = { n = "u32", blob = "bytes" }\n')


def _fanout(mode):
    """Two subscribers of a ``mode`` channel (p2p: one): each tries to write its copy of the
    raw payload, then of the typed one, and records what it read first."""
    seen = {}
    prod = Module("prod")
    prod.produces("fan.raw", "RAW", mode=mode)
    prod.produces("fan.typed", "PT", mode=mode)
    cons = Module("cons")
    names = ("A", "B") if mode == "fanout" else ("A",)

    def raw_sub(name):
        @cons.handler(f"RAW_{name}", consumes="fan.raw", message="RAW", name=f"raw_{name}")
        def h(ctx):
            seen[f"raw {name} read"] = bytes(ctx.payload)
            try:
                ctx.payload[:] = np.frombuffer(b"CLOBBER!", np.uint8)
                seen[f"raw {name}"] = "written"
            except ValueError as e:
                seen[f"raw {name}"] = str(e)

    def typed_sub(name):
        @cons.handler(f"PT_{name}", consumes="fan.typed", message="PT", name=f"pt_{name}")
        def h(ctx):
            seen[f"typed {name} read"] = ctx.payload["n"]
            try:
                ctx.payload["n"] = 99
                seen[f"typed {name}"] = "written"
            except ValueError as e:
                seen[f"typed {name}"] = str(e)

    for n in names:
        raw_sub(n)
        typed_sub(n)
    return [prod, cons], seen, names


def test_a_fanout_payload_is_read_only_for_every_subscriber(hal):
    # (subscriber A's write was accepted, and B read b"CLOBBER!")
    mods, seen, names = _fanout("fanout")
    with boot(mods, hal=hal, workers=2, types=TYPES) as s:
        assert s.channel("fan.raw").publish(payload=b"original") == T.OK
        assert s.channel("fan.typed").publish(payload={"n": 7, "x": 1.5}) == T.OK
        assert s.run(timeout=10)
        for n in names:
            assert "read-only" in seen[f"raw {n}"] and "read-only" in seen[f"typed {n}"]
            assert seen[f"raw {n} read"] == b"original" and seen[f"typed {n} read"] == 7
        assert s.arena.live_count() == 0


def test_a_p2p_or_submitted_payload_stays_its_handlers_own(hal):
    mods, seen, _ = _fanout("p2p")
    got = []
    m = Module("direct")

    @m.handler("DIRECT")
    def direct(ctx):
        ctx.payload[:2] = 5                        # a task's own payload: scratch space
        got.append(bytes(ctx.payload))

    with boot(mods + [m], hal=hal, workers=2, types=TYPES) as s:
        assert s.channel("fan.raw").publish(payload=b"original") == T.OK
        assert s.channel("fan.typed").publish(payload={"n": 7, "x": 1.5}) == T.OK
        s.submit("DIRECT", payload=b"abcd")
        assert s.run(timeout=10)
    assert seen["raw A"] == seen["typed A"] == "written" and got == [b"\x05\x05cd"]


def test_the_sandbox_shares_a_fanout_payload_read_only_too():
    mods, seen, names = _fanout("fanout")
    with Sandbox(mods, types=TYPES) as sb:
        sb.publish("fan.raw", payload=b"original")
        sb.publish("fan.typed", payload={"n": 7, "x": 1.5})
        sb.run()
    for n in names:
        assert "read-only" in seen[f"raw {n}"] and "read-only" in seen[f"typed {n}"]
        assert seen[f"raw {n} read"] == b"original"


BAD = [(b"abc", "PT: payload is 3 bytes, expected 12"),
       (np.zeros(13, np.uint8), "PT: payload is 13 bytes, expected 12")]


@pytest.mark.parametrize("raw, says", BAD)
def test_raw_bytes_that_do_not_fit_the_schema_are_refused_at_the_sender(hal, raw, says):
    # (they were accepted; the consumer's ctx.payload then raised PayloadError, a failure
    # counted against the consumer)
    seen = []
    m = Module("m")
    m.produces("pt.out", "PT")

    @m.handler("PT", consumes="pt.out")
    def pt(ctx):
        seen.append(ctx.payload.to_dict())

    @m.handler("GEN")
    def gen(ctx):
        ctx.emit("PT", payload=raw)

    with boot([m], hal=hal, workers=2, types=TYPES) as s:
        with pytest.raises(PayloadError, match=says):
            s.submit("PT", payload=raw)
        with pytest.raises(PayloadError, match=says):
            s.channel("pt.out").publish(payload=raw)
        s.submit("GEN")
        assert s.run(timeout=10)
        recs, codes = s.dead_letters("sys.error")
        assert recs["type"].tolist() == [s.type_id("GEN")]        # the sender's failure
        assert codes.tolist() == [T.HANDLER_EXCEPTION]
        assert s.exceptions[-1][:2] == ("m", "gen") and "a raw payload must match" \
            in s.exceptions[-1][2]
        good = np.array([(3, 2.5)], TYPES.info("PT").dtype).tobytes()   # the right size
        assert s.submit("PT", payload=good) == 1
        assert s.run(timeout=10)
        assert seen == [{"n": 3, "x": 2.5}] and s.arena.live_count() == 0


def test_a_variable_field_is_checked_against_its_length_prefix(hal):
    m = Module("m")
    seen = []

    @m.handler("VT")
    def vt(ctx):
        seen.append(ctx.payload.to_dict())

    with boot([m], hal=hal, workers=1, types=TYPES) as s:
        with pytest.raises(PayloadError, match="expected at least 8"):
            s.submit("VT", payload=b"\x01\x00\x00\x00")
        with pytest.raises(PayloadError, match="says 5 bytes follow"):
            s.submit("VT", payload=b"\x01\x00\x00\x00\x05\x00\x00\x00ab")
        s.submit("VT", payload=b"\x01\x00\x00\x00\x02\x00\x00\x00ab")
        assert s.run(timeout=10) and seen == [{"n": 1, "blob": b"ab"}]


def test_the_sandbox_checks_raw_payloads_as_the_kernel_does():
    m = Module("m")
    m.produces("pt.out", "PT")
    seen = []

    @m.handler("PT")
    def pt(ctx):
        seen.append(ctx.task.payload_len)

    @m.handler("GEN")
    def gen(ctx):
        ctx.emit("PT", payload=b"abc")

    @m.handler("SUB")
    def sub(ctx):
        ctx.system.submit("PT", payload=b"abc")

    says = "PT: payload is 3 bytes, expected 12"
    with Sandbox(m, types=TYPES) as sb:
        for sender in ("GEN", "SUB"):
            with pytest.raises(PayloadError, match=says):
                sb.feed(sender)
        with pytest.raises(PayloadError, match=says):
            sb.publish("pt.out", payload=b"abc")
        assert sb.feed("PT", payload=b"abc") == T.OK       # an arrival: handed on as it came
        assert seen == [3] and sb.allocations()["live"] == 0
