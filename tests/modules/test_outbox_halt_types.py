"""What a standard module's outbox still holds at halt lands on ``sys.dropped`` with
``CHAN_CLOSED`` *as what it was*: its channel's message type and its payload length. Halt
closes the channels before module fini, so ``Outbox.drop_all`` could no longer ask the channel
for its type and wrote type 0 (a REDUCE_RESULT could not be told from a REDUCE_MISSING, and
gate releases lost their payload length).

Each test stalls a host-side subscriber (never read) on a capacity-8 channel, so the first 8
answers sit in its ring and the rest wait in the module's outbox; halt then accounts for both.
"""
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.modules import gate, kv, reduce, stats, timer


def _halt_dropped(system, outbox, held, wait_until):
    """Wait until ``held`` answers wait in ``outbox`` behind the stalled subscriber, halt, and
    return the sys.dropped records (all must be CHAN_CLOSED)."""
    assert wait_until(lambda: len(outbox) == held, timeout=30)
    system.halt(timeout=0.1)
    recs, codes = system.dead_letters("sys.dropped")
    assert set(codes.tolist()) == {T.CHAN_CLOSED}
    return recs


def test_reduce_results_and_missing_reports_keep_their_types(wait_until):
    red = reduce.module(n=1, capacity=8)
    late = reduce.module(n=2, timeout=1, capacity=8, name="late")
    system = boot([red, late], workers=2)
    system.channel("reduce.out").subscribe()          # stalled: never taken
    system.channel("late.missing").subscribe()
    system.channel("reduce.in").publish(meta0=list(range(20)), meta1=7)
    system.channel("late.in").publish(meta0=list(range(100, 120)), meta1=1)   # 1 of 2 each
    assert wait_until(lambda: len(late.reduce.missing) == 12, timeout=30)
    recs = _halt_dropped(system, red.reduce.out, 12, wait_until)
    types = recs["type"].tolist()
    res = recs[recs["type"] == system.type_id("REDUCE_RESULT")]
    miss = recs[recs["type"] == system.type_id("REDUCE_MISSING")]
    assert len(res) + len(miss) == len(types) == 40, sorted(set(types))
    assert sorted(res["meta0"].tolist()) == list(range(20)) and set(res["meta1"].tolist()) == {7}
    assert sorted(miss["meta0"].tolist()) == list(range(100, 120))
    assert set(miss["meta1"].tolist()) == {1}                        # partials received


def test_gate_releases_keep_their_type_and_payload_length(wait_until):
    g = gate.module(n=1, sizes={2: 100}, capacity=8)
    system = boot([g], workers=2)
    system.channel("gate.open").subscribe()
    system.submit("GATE_ARRIVE", meta0=2, meta1=[1, 2, 3], payload=b"y" * 11)    # 3 of 100
    system.submit("GATE_ARRIVE", meta0=1, meta1=list(range(20)), payload=b"x" * 37)
    assert wait_until(lambda: g.gate.stats()["waiting_arrivals"] == 3, timeout=30)
    recs = _halt_dropped(system, g.gate.out, 12, wait_until)
    passed = recs[recs["type"] == system.type_id("GATE_PASS")]
    held = recs[recs["type"] == system.type_id("GATE_ARRIVE")]       # at the closed gate
    assert len(passed) + len(held) == len(recs) == 23
    assert sorted(passed["meta1"].tolist()) == list(range(20))
    assert set(passed["payload_len"].tolist()) == {37}
    assert sorted(held["meta1"].tolist()) == [1, 2, 3]
    assert set(held["payload_len"].tolist()) == {11}
    assert system.arena.stats()["total"]["live"] == 0          # every payload given back


def test_timer_fires_keep_their_type(wait_until):
    tm = timer.module(capacity=8)
    system = boot([tm], workers=2)
    system.channel("timer.fire").subscribe()
    system.submit("TIMER_SET", meta0=list(range(20)), meta1=timer.arg(1))
    recs = _halt_dropped(system, tm.timer.fire_out, 12, wait_until)
    assert set(recs["type"].tolist()) == {system.type_id("TIMER_FIRE")}
    assert sorted(recs["meta0"].tolist()) == list(range(20))


def test_stats_snapshots_keep_their_type_and_payload_length(wait_until):
    st = stats.module(period=1, capacity=8)
    system = boot([st], workers=2)
    system.channel("stats.snapshot").subscribe()
    for i in range(11):              # one change per snapshot: 11 snapshots, 8 in the ring
        system.submit("STAT_ADD", meta0=1, meta1=1)
        assert wait_until(lambda: st.stats.number == i + 1, timeout=30)
    recs = _halt_dropped(system, st.stats.out, 3, wait_until)
    assert set(recs["type"].tolist()) == {system.type_id("STATS_SNAPSHOT")}
    assert sorted(recs["meta0"].tolist()) == list(range(1, 12))
    assert all(n > 0 for n in recs["payload_len"].tolist())


def test_kv_responses_keep_their_type_and_payload_length(wait_until):
    store = kv.module(value_size=64, resp_capacity=8)
    system = boot([store], workers=2)
    system.channel("kv.resp").subscribe()
    system.channel("kv.put").publish(meta0=list(range(20)), meta1=0, payload=b"v" * 40)
    assert wait_until(lambda: len(store.kv.outbox) == 12, timeout=30)   # 20 put answers
    system.channel("kv.get").publish(meta0=list(range(20)), meta1=5)
    recs = _halt_dropped(system, store.kv.outbox, 32, wait_until)
    assert set(recs["type"].tolist()) == {system.type_id("KV_RESP")}
    ops = [kv.unpack(m0)[:2] for m0 in recs["meta0"].tolist()]
    assert sorted(ops) == [(kv.OK, kv.OP_PUT)] * 20 + [(kv.OK, kv.OP_GET)] * 20
    gets = recs[[op == kv.OP_GET for _, op in ops]]
    assert set(gets["payload_len"].tolist()) == {40}                 # the value's bytes
    assert system.arena.stats()["total"]["live"] == 0          # every payload given back
