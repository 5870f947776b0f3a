"""Local device channels in the persistent kernel (P2P, fan-out, lossless, lossy, the
priority-0 reserve, dead letters, metrics, build-time errors) on the ``cpu`` and ``sim`` targets.

Each target boots one kernel (``workloads.run_channels``) and runs every scenario
in it, one after the other; the tests below check what that run saw. ``sim`` runs in a
subprocess (the CUDA simulator must be on before numba.cuda is imported) at small sizes.
"""
import pytest

import ggmk.device as gd
from ggmk.device import api as g
import workloads as W
from ggmk.device.module import ChannelBootError
from ggmk.errors import BootError, ChannelError
from ggmk.task import (CHAN_ALREADY_BOUND, CHAN_FULL, CHAN_TYPE_MISMATCH, CHAN_UNKNOWN, OK)
from ggmk.core.chan import CHAN_NO_SUBSCRIBER

SIM_KW = dict(workers=2, threads=32, batch=64, n_fifo=20, n_multi=[3, 5], n_fan=8, n_ll=20,
              n_lossy=24)
CPU_KW = dict(workers=2, n_fifo=60, n_multi=[4, 15], n_fan=20, n_ll=60, n_lossy=50)
KW = {"cpu": CPU_KW, "sim": SIM_KW}


@pytest.fixture(scope="module", params=["cpu", "sim"])
def run(request):
    target = request.param
    return target, KW[target], W.run("channels", target, **KW[target])


def _contiguous(seqs, n, first=1):
    """Every channel sequence number first..first+n-1 exactly once (the first message of a
    channel has seq 1, as on the CPU kernel's channels)."""
    return sorted(seqs) == list(range(first, first + n))


# ------------------------------------------------------------------------- run-time behaviour

def test_channel_ids_fixed_at_build(run):
    _, _, r = run
    assert r["channels"] == {"t.p2p": 1, "t.fan": 2, "t.ll": 3, "t.lossy": 4, "t.prio": 5,
                             "t.none": 6}


def test_p2p_delivers_every_message_once_with_its_sequence(run):
    target, kw, r = run
    n = kw["n_fifo"]
    f = r["fifo"]
    assert f["dead"] == []
    assert _contiguous(f["seq"], n) and sorted(f["value"]) == list(range(n))
    # the message's sequence number is its emit order (one producer emits 0..n-1 in order)
    assert sorted(zip(f["seq"], f["value"])) == [(i + 1, i) for i in range(n)]
    if target == "cpu":
        # FIFO: the producer's worker runs its local queue in order and the cpu target runs
        # a batch's lanes in order. On sim/cuda the lanes of one batch run at once (and a
        # spilled part may be taken by another worker), so there only the sequence numbers
        # (no gap, no duplicate) carry the order.
        assert f["seq"] == list(range(1, n + 1)) and f["value"] == list(range(n))


def test_p2p_several_producers_no_gap_no_duplicate(run):
    _, kw, r = run
    np_, per = kw["n_multi"]
    m = r["multi"]
    assert m["dead"] == []
    # sequence numbers continue after the first scenario's, atomically assigned
    assert _contiguous(m["seq"], np_ * per, first=kw["n_fifo"] + 1)
    assert sorted(m["value"]) == sorted(p * 1000 + i for p in range(np_) for i in range(per))
    # each producer's own messages keep its order in the channel sequence
    for p in range(np_):
        mine = sorted((s, v) for s, v in zip(m["seq"], m["value"]) if v // 1000 == p)
        assert [v for _, v in mine] == [p * 1000 + i for i in range(per)]


def test_fanout_every_subscriber_gets_every_message_and_payload_refcounts(run):
    _, kw, r = run
    n = kw["n_fan"]
    f = r["fan"]
    assert f["dead"] == []
    for t in W.C_FAN:
        s = f[str(t)]
        assert _contiguous(s["seq"], n), t
        assert sorted(zip(s["seq"], s["value"])) == [(i + 1, i) for i in range(n)]
        assert s["ok"] == [2] * n           # payload shared, right bytes, 1 <= refcount <= 3
    ch = r["metrics"]["channels"]["t.fan"]
    assert ch["subscribers"] == 3 and ch["emitted"] == n and ch["delivered"] == 3 * n
    assert [s["type"] for s in ch["subs"]] == list(W.C_FAN)
    assert all(s["delivered"] == n and s["depth"] == 0 for s in ch["subs"])
    # every payload freed exactly once: the refcount was the number of copies and each
    # subscriber's finish released one
    gl = r["metrics"]["global"]
    assert gl["alloc"] == n and gl["free"] == n and gl["alloc_fail"] == 0


def test_lossless_full_is_seen_retried_and_nothing_is_lost(run):
    _, kw, r = run
    n = kw["n_ll"]
    ll = r["lossless"]
    assert ll["dead"] == []
    assert sorted(zip(ll["seq"], ll["value"])) == [(i + 1, i) for i in range(n)]
    ch = r["metrics"]["channels"]["t.ll"]
    refused_seen = r["metrics"]["user"][W.SC_LL]
    assert refused_seen > 0                  # the producer did get CHAN_FULL (capacity 8)
    assert ch["full"] == refused_seen        # ... exactly as often as the channel counted
    assert ch["emitted"] == n and ch["delivered"] == n and ch["dropped"] == 0
    assert ch["high_watermark"] <= ch["capacity"] == 8
    assert ch["depth"] == 0                  # every credit back once the subscriber finished
    # deliveries that yielded or retried once kept their seq (checked above) and credit
    per = r["metrics"]["per_type"][str(W.C_FAN[0])]
    n_yield = sum(1 for v in range(n) if v % 5 == 1)
    assert per["yield"] == n_yield and per["retry"] == sum(1 for v in range(n) if v % 5 == 2)


def test_lossy_overflow_goes_to_dead_letters_with_code(run):
    _, kw, r = run
    n, cap = kw["n_lossy"], W.CHAN_CAPS["t.lossy"]
    lo = r["lossy"]
    assert lo["refused"] == [0]              # a lossy emit never refuses the producer
    # one handler call emits n messages before any subscriber runs: the first `cap` (the
    # producer has priority 0: no reserve) are delivered, the rest dropped
    assert sorted(lo["seq"]) == list(range(1, cap + 1))
    dead = lo["dead"]
    assert len(dead) == n - cap
    assert {(d["chan"], d["code"], d["type"]) for d in dead} == {("dropped", CHAN_FULL,
                                                                  W.C_FAN[0])}
    assert sorted(d["seq"] for d in dead) == list(range(cap + 1, n + 1))
    ch = r["metrics"]["channels"]["t.lossy"]
    assert ch["emitted"] == n and ch["delivered"] + ch["dropped"] == n
    assert ch["dropped"] == n - cap and ch["full"] == 0
    assert ch["subs"][0]["dropped"] == n - cap and ch["high_watermark"] == cap


def test_priority0_reserve(run):
    _, _, r = run
    cap = W.CHAN_CAPS["t.prio"]
    reserve = cap // 10
    p = r["prio"]
    assert p["lo_hi"] == [cap - reserve, reserve]   # priority 2 stops short of the reserve
    assert sorted(p["value"]) == list(range(cap - reserve)) + [100 + i for i in range(reserve)]
    prio_of = dict(zip(p["value"], p["prio"]))
    assert {prio_of[v] for v in range(cap - reserve)} == {2}     # inherited from the producer
    assert {prio_of[100 + i] for i in range(reserve)} == {0}
    ch = r["metrics"]["channels"]["t.prio"]
    assert ch["reserve"] == reserve and ch["full"] == 2 and ch["emitted"] == cap


def test_no_subscriber_and_unknown_channel_id(run):
    _, _, r = run
    mi = r["misc"]
    assert mi["codes"] == [OK, CHAN_UNKNOWN]
    got = {(d["chan"], d["code"], d["meta0"]) for d in mi["dead"]}
    assert got == {("dropped", CHAN_NO_SUBSCRIBER, 5), ("error", CHAN_UNKNOWN, 6)}
    ch = r["metrics"]["channels"]["t.none"]
    assert ch["subscribers"] == 0 and ch["emitted"] == 1 and ch["dropped"] == 1
    assert r["metrics"]["global"]["chan_unknown"] == 1


def test_global_channel_counters_add_up(run):
    _, _, r = run
    chans = r["metrics"]["channels"]
    gl = r["metrics"]["global"]
    assert gl["chan_emitted"] == sum(c["emitted"] for c in chans.values())
    assert gl["chan_delivered"] == sum(c["delivered"] for c in chans.values())
    assert gl["chan_dropped"] == sum(c["dropped"] for c in chans.values())
    assert gl["chan_full"] == sum(c["full"] for c in chans.values())
    assert all(c["depth"] == 0 for c in chans.values())


# ------------------------------------------------------------------------ build-time checks

def _consumer(ctx, task):
    return OK


def test_p2p_second_subscriber_is_a_build_error_naming_the_channel():
    a = gd.Module("a")
    a.channel("a.out", message=30)
    a.handler(1, consumes="a.out")(_consumer)
    b = gd.Module("b")
    b.handler(2, consumes="a.out")(_consumer)
    with pytest.raises(ChannelBootError, match=r"'a.out'.*CHAN_ALREADY_BOUND") as e:
        gd.DeviceKernel([a, b], target="cpu")
    assert e.value.code == CHAN_ALREADY_BOUND and "a._consumer" in str(e.value)
    assert isinstance(e.value, BootError) and isinstance(e.value, ChannelError)


def test_fanout_allows_32_subscribers_not_33():
    m = gd.Module("fan")
    m.channel("fan.out", message=30, mode="fanout")
    for t in range(100, 132):
        m.handler(t, consumes="fan.out")(_consumer)
    k = gd.DeviceKernel([m], target="cpu")              # 32: fine (nothing compiled yet)
    assert k.chans[0].subs == list(range(32)) and k.channels == {"fan.out": 1}
    m.handler(132, consumes="fan.out")(_consumer)
    with pytest.raises(ChannelBootError, match=r"'fan.out'.*at most 32"):
        gd.DeviceKernel([m], target="cpu")


def test_unknown_channel_names_module_handler_and_channel():
    m = gd.Module("mod1")
    m.channel("x.out", message=30)
    m.handler(1, consumes="x.ot")(_consumer)
    with pytest.raises(ChannelBootError, match=r"mod1.*_consumer.*'x.ot'.*x.out") as e:
        gd.DeviceKernel([m], target="cpu")
    assert e.value.code == CHAN_UNKNOWN


def test_unknown_channel_reference_in_handler_code():
    m = gd.Module("mod2")
    REF = gd.chan("nope.out")

    @m.handler(1)
    def emitter(ctx, task):
        g.emit_chan(ctx, REF, 0, 0)
        return OK
    with pytest.raises(ChannelBootError, match=r"mod2.*emitter.*'nope.out'"):
        gd.DeviceKernel([m], target="cpu")


def test_wrong_message_type_names_module_and_channel():
    m = gd.Module("mod3")
    m.channel("y.out", message=30)
    m.handler(1, consumes="y.out", message=31)(_consumer)
    with pytest.raises(ChannelBootError, match=r"mod3.*'y.out'.*type 30.*CHAN_TYPE_MISMATCH") \
            as e:
        gd.DeviceKernel([m], target="cpu")
    assert e.value.code == CHAN_TYPE_MISMATCH


def test_message_type_names_resolve_through_types():
    m = gd.Module("mod4")
    m.channel("z.out", message="MSG")
    m.handler("SUB", consumes="z.out", message="MSG")(_consumer)
    k = gd.DeviceKernel([m], target="cpu", types={"MSG": 30, "SUB": 5})
    assert k.chans[0].message == 30 and k.channel_id("z.out") == 1
    with pytest.raises(BootError, match=r"mod4.*'z.out'.*unknown type name 'MSG'"):
        gd.DeviceKernel([m], target="cpu", types={"SUB": 5})


def test_declaration_errors():
    m = gd.Module("mod5")
    with pytest.raises(ChannelBootError, match="mod5.*'c1'.*mode"):
        m.channel("c1", message=30, mode="broadcast")
    with pytest.raises(ChannelBootError, match="mod5.*'c1'.*guarantee"):
        m.channel("c1", message=30, guarantee="maybe")
    with pytest.raises(BootError, match="mod5.*'c1'.*capacity"):
        m.channel("c1", message=30, capacity=4)
    with pytest.raises(ChannelBootError, match="mod5.*'c1'.*message"):
        m.channel("c1", message=-3)
    m.channel("c1", message=30)
    with pytest.raises(BootError, match="mod5.*'c1'.*twice"):
        m.channel("c1", message=30)
    other = gd.Module("mod6")
    other.channel("c1", message=30)
    m.handler(1)(_consumer)
    with pytest.raises(ChannelBootError, match="'c1'.*mod5.*mod6"):
        gd.DeviceKernel([m, other], target="cpu")
    with pytest.raises(BootError, match="mod5.*consumes"):
        m.handler(2, consumes=[3])(_consumer)


def test_channel_ids_are_in_the_generated_code_and_cache_key():
    from ggmk.device.codegen import source
    mods = W.channels_modules()
    k = gd.DeviceKernel(mods, target="cpu")
    src = source.generate(k.handlers, k.plan, k.chans)
    assert "def chan_cap(c):" in src and "if c == 5:\n        return 20" in src
    assert "1='t.p2p'" in src
    with pytest.raises(KeyError, match="no device channel 'q'"):
        k.channel_id("q")
