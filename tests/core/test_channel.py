"""Channel (ggmk.core.channel): P2P/fan-out, lossless/lossy, the priority-0 reserve, close,
no subscriber, wrong type, metrics, module declarations and boot-time validation; and the
``ggmk.core.chan`` names other code imports. Ordered delivery: test_channel_order.py; the
registry and system channels: test_channel_registry.py; replay: test_replay.py; per-message
emits: test_emitter.py; modes, guarantees and limits: test_channel_spec.py."""
import numpy as np
import pytest

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.errors import BootError, ChannelError, TypesError
from ggmk.task import CHAN_NO_SUBSCRIBER
from ggmk.typereg import load_types


def _sink(name="sink", types=("MSG",)):
    m = Module(name)
    got = {t: [] for t in types}
    for t in types:
        def f(ctx, t=t):
            got[t].append((ctx.chan_seq, ctx.task.meta0))
        f.__name__ = t.lower()
        m.handler(t)(f)
    return m, got


def test_p2p_second_subscriber_gets_already_bound():
    m, _ = _sink(types=("MSG", "OTHER"))
    with boot([m], hal="sim") as s:
        ch = s.open("data.in", "MSG")
        ch.subscribe("MSG")
        with pytest.raises(ChannelError) as e:
            ch.subscribe("OTHER")
        assert e.value.code == T.CHAN_ALREADY_BOUND and "data.in" in str(e.value)
        fan = s.open("data.fan", "MSG", mode="fanout")
        for _ in range(32):
            fan.subscribe()
        with pytest.raises(ChannelError) as e:
            fan.subscribe()
        assert e.value.code == T.CHAN_ALREADY_BOUND


def test_p2p_fifo_with_channel_sequence_numbers(hal):
    m, got = _sink()
    with boot([m], hal=hal, workers=1) as s:
        ch = s.open("data.in", "MSG")
        ch.subscribe("MSG")
        for lo in range(0, 3000, 500):
            assert ch.emit(T.make(500, type=s.type_id("MSG"), meta0=np.arange(lo, lo + 500))) == 500
        assert s.run(timeout=10)
    assert got["MSG"] == [(i + 1, i) for i in range(3000)]


def test_lossless_backpressure_reserve_and_resume():
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe()                           # host-side: nothing drains it
        assert ch.reserve == 1
        for i in range(15):
            assert ch.publish(meta0=i, priority=1) == T.OK
        assert ch.publish(meta0=99, priority=1) == T.CHAN_FULL   # the last slot: priority 0 only
        assert ch.publish(meta0=15, priority=0) == T.OK
        assert ch.publish(meta0=99, priority=0) == T.CHAN_FULL
        assert ch.stats()["full"] == 2
        got = sub.take(4)
        assert got["meta0"].tolist() == [0, 1, 2, 3] and got["seq"].tolist() == [1, 2, 3, 4]
        assert ch.emit(T.make(10, type=s.type_id("MSG"), priority=2)) == 3   # a prefix
        rest = sub.take()
        assert rest["seq"].tolist() == list(range(5, 20))
        assert len(s.dead_letters("sys.dropped")[0]) == 0


def test_wrong_type_is_a_clear_error_and_the_copy_is_on_sys_dropped():
    m, got = _sink(types=("MSG", "OTHER"))
    with boot([m], hal="sim") as s:
        ch = s.open("data.in", "MSG")
        ch.subscribe("MSG")
        with pytest.raises(ChannelError) as e:
            ch.emit(T.make(2, type=s.type_id("OTHER")))
        assert e.value.code == T.CHAN_TYPE_MISMATCH
        assert "data.in" in str(e.value) and "'OTHER'" in str(e.value) and "'MSG'" in str(e.value)
        recs, codes = s.dead_letters("sys.dropped")
        assert codes.tolist() == [T.CHAN_TYPE_MISMATCH] * 2
        assert ch.publish(meta0=5) == T.OK           # still works
        assert s.run(timeout=5) and got["MSG"] == [(1, 5)]


def test_fanout_payload_refcount_is_number_of_deliveries_and_freed_once():
    seen = []
    m = Module("fan")
    for t in ("SUB_A", "SUB_B", "SUB_C"):
        @m.handler(t, name=t.lower())
        def f(ctx):
            seen.append((int(ctx.arena.refcount(ctx.task.payload_ptr)), bytes(ctx.payload)))
    with boot([m], hal="sim", workers=1, debug=True) as s:
        free0 = s.arena.stats()["total"]["free_bytes"]
        ch = s.open("data.fan", "MSG", mode="fanout")
        for t in ("SUB_A", "SUB_B", "SUB_C"):
            ch.subscribe(t)
        ptr, n = s.store_payload(s.type_id("MSG"), b"hello")
        assert ch.emit(T.make(1, type=s.type_id("MSG"), payload_ptr=ptr, payload_len=n)) == 1
        assert s.arena.refcount(ptr) == 3
        assert s.run(timeout=5)
        assert sorted(seen) == [(1, b"hello"), (2, b"hello"), (3, b"hello")]
        assert s.arena.live_count() == 0
        assert s.arena.stats()["total"]["free_bytes"] == free0


def test_lossy_drop_slow_goes_to_sys_dropped_and_releases_the_payload():
    with boot([], hal="sim", debug=True) as s:
        ch = s.open("data.fan", "MSG", mode="fanout", guarantee="lossy", capacity=8)
        fast, slow = ch.subscribe(name="fast"), ch.subscribe(name="slow")
        tid = s.type_id("MSG")
        for i in range(12):
            ptr, n = s.store_payload(tid, bytes([i]) * 4)
            assert ch.emit(T.make(1, type=tid, payload_ptr=ptr, payload_len=n, meta0=i,
                                  priority=1)) == 1
            fast.take()
            s.arena.release(int(ptr))                 # the fast subscriber is done with it
        recs, codes = s.dead_letters("sys.dropped")
        # the slow ring holds 7 (capacity 8 minus the priority-0 reserve); 5 copies dropped
        assert codes.tolist() == [T.CHAN_FULL] * 5
        assert recs["meta0"].tolist() == [7, 8, 9, 10, 11] and not recs["payload_ptr"].any()
        st = ch.stats()
        assert st["dropped"] == 5 and st["subs"][1]["dropped"] == 5
        kept = slow.take()
        assert kept["meta0"].tolist() == list(range(7))
        s.arena.release_many(kept["payload_ptr"])
        assert s.arena.live_count() == 0


def test_no_subscriber_means_undeliverable_on_sys_dropped():
    with boot([], hal="sim") as s:
        ch = s.open("nobody.home", "MSG")
        ptr, n = s.store_payload(s.type_id("MSG"), b"x")
        assert ch.emit(T.make(1, type=s.type_id("MSG"), payload_ptr=ptr, payload_len=n)) == 1
        _, codes = s.dead_letters("sys.dropped")
        assert codes.tolist() == [CHAN_NO_SUBSCRIBER]
        assert s.arena.live_count() == 0


def test_close_sends_messages_in_flight_to_sys_dropped_and_refuses_emits():
    with boot([], hal="sim", debug=True) as s:
        ch = s.open("data.fan", "MSG", mode="fanout")
        ch.subscribe(), ch.subscribe()
        tid = s.type_id("MSG")
        ptrs = [s.store_payload(tid, b"abc")[0] for _ in range(3)]
        assert ch.emit(T.make(3, type=tid, payload_ptr=np.array(ptrs), payload_len=3)) == 3
        assert s.close("data.fan") == 6
        recs, codes = s.dead_letters("sys.dropped")
        assert codes.tolist() == [T.CHAN_CLOSED] * 6
        assert s.arena.live_count() == 0
        assert ch.publish(meta0=1) == T.CHAN_CLOSED
        with pytest.raises(ChannelError):
            s.channel("data.fan")
        assert s.open("data.fan", "MSG").id != ch.id     # a name can be opened again


def test_module_declarations_bind_and_emit_by_declaration(hal):
    prod = Module("prod")
    out = prod.produces("nums.out", "NUM", mode="fanout", capacity=64)

    @prod.handler("GEN")
    def gen(ctx):
        for i in range(ctx.task.meta0):
            while ctx.emit(out, meta0=i) == T.CHAN_FULL:
                return T.RETRY            # not reached here: capacity covers it
        return T.OK

    got = {"A": [], "B": []}
    cons = Module("cons")

    @cons.handler("A_NUM", consumes="nums.out", message="NUM")
    def a(ctx):
        got["A"].append(ctx.chan_seq)

    @cons.handler("B_NUM", consumes="nums.out", message="NUM", batch=True)
    def b(ctx, batch):
        got["B"].extend(batch.seq.tolist())

    with boot([prod, cons], hal=hal, workers=1) as s:
        assert out.handle is s.channel("nums.out") and out.handle.mode == "fanout"
        s.submit("GEN", meta0=50)
        assert s.run(timeout=10)
        st = s.stats()["channels"]["nums.out"]
    assert got["A"] == list(range(1, 51)) and got["B"] == list(range(1, 51))
    assert st["emitted"] == 50 and st["subscribers"] == 2 and st["dropped"] == 0


def test_boot_rejects_producer_consumer_type_mismatch():
    p = Module("prod")
    p.produces("data.out", "MSG")
    c = Module("cons")

    @c.handler("OTHER", consumes="data.out")
    def h(ctx):
        pass

    with pytest.raises(BootError) as e:
        boot([p, c], hal="sim")
    assert "data.out" in str(e.value) and "type mismatch" in str(e.value)
    assert "MSG" in str(e.value) and "OTHER" in str(e.value)


def test_boot_rejects_lossless_type_on_lossy_channel_and_det_type_on_nondet_handler():
    reg = load_types('[types.EXACT]\nid = 10\nlossy = false\n[types.STEP]\nid = 11\n'
                     'deterministic = true\n')
    p = Module("prod")
    p.produces("data.out", "EXACT", guarantee="lossy")
    with pytest.raises(BootError) as e:
        boot([p], hal="sim", types=reg)
    assert "data.out" in str(e.value) and "EXACT" in str(e.value) and "lossless" in str(e.value)

    c = Module("cons")

    @c.handler("ON_STEP", consumes="steps.out", message="STEP")
    def on_step(ctx):
        pass

    with pytest.raises(BootError) as e:
        boot([c], hal="sim", types=load_types('[types.STEP]\nid = 11\ndeterministic = true\n'))
    assert "on_step" in str(e.value) and "deterministic" in str(e.value)


def test_boot_rejects_two_p2p_consumers_and_a_consumer_without_handler():
    mods = []
    for name, t in (("one", "A_MSG"), ("two", "B_MSG")):
        m = Module(name)
        m.handler(t, consumes="data.out", message="MSG")(lambda ctx: None)
        mods.append(m)
    with pytest.raises(BootError) as e:
        boot(mods, hal="sim")
    assert "p2p" in str(e.value) and "'one'" in str(e.value) and "'two'" in str(e.value)
    lone = Module("lone")
    lone.consumes("data.out", "MSG")
    with pytest.raises(BootError) as e:
        boot([lone], hal="sim")
    assert "lone" in str(e.value) and "no handler" in str(e.value)


def test_module_manifest_declarations(tmp_path):
    path = tmp_path / "module.toml"
    path.write_text('[module]\nname = "counter"\nversion = "0.1.0"\n'
                    '[[channel]]\nname = "counter.in"\ndirection = "consume"\ntype = "COUNTER_INC"\n'
                    '[[handler]]\ntype = "COUNTER_INC"\nname = "inc"\n'
                    '[types.COUNTER_INC]\nid = 100\npayload = { n = "u32" }\n')
    seen = []

    def inc(ctx):
        seen.append(int(ctx.payload["n"]))

    m = Module.from_manifest(path, {"inc": inc})
    with boot([m], hal="sim") as s:
        assert s.type_id("COUNTER_INC") == 100
        assert s.channel("counter.in").publish(payload={"n": 7}) == T.OK
        assert s.run(timeout=5)
    assert seen == [7]
    with pytest.raises(BootError) as e:
        Module.from_manifest(path, {})
    assert str(path) in str(e.value) and "'inc'" in str(e.value)
    bad = tmp_path / "bad.toml"
    bad.write_text('[module]\nname = "x"\nversion = "1"\n[[channel]]\nname = "a.b"\n'
                   'direction = "consume"\ntype = "T"\n[types.T]\npayload = { n = "u33" }\n')
    with pytest.raises(TypesError) as e:
        Module.from_manifest(bad, {})
    assert "bad.toml" in str(e.value) and "u33" in str(e.value)


def test_malformed_types_toml_names_file_and_field(tmp_path):
    for text, want in (("[types.A\nid=1", "TOML"), ("[types.A]\npayload = {x = 'u8'}", "id"),
                       ("[types.A]\nid = 1\npayload = {x = 'int7'}", "x")):
        p = tmp_path / "types.toml"
        p.write_text(text)
        with pytest.raises(TypesError) as e:
            load_types(p)
        assert "types.toml" in str(e.value) and want in str(e.value)
    with boot([], hal="sim") as s:                # a bad file does not take a system down
        assert s.open("still.up", "MSG").publish() == T.OK


def test_channel_metrics():
    m, got = _sink()
    with boot([m], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=16)
        ch.subscribe("MSG", window=1)
        tid = s.type_id("MSG")
        assert ch.emit(T.make(20, type=tid)) == 16      # the ring's room (prio 0 may use all)
        st = s.stats()["channels"]["data.in"]
        # the emit drained one message into the ready queue (window=1): 15 wait in the ring
        assert st["depth"] == 15 and st["high_watermark"] == 16 and st["full"] == 4
        assert st["subscribers"] == 1 and st["emitted"] == 16 and st["emit_rate"] > 0
        assert s.run(timeout=5) and len(got["MSG"]) == 16
        assert s.stats()["channels"]["data.in"]["depth"] == 0


def test_chan_module_keeps_the_names_other_code_imports():
    from ggmk.core import chan, channel, channel_registry, channel_spec, emitter
    assert chan.Channel is channel.Channel and chan.Subscriber is channel.Subscriber
    assert chan.Channels is channel_registry.Channels
    assert chan.SysChannel is channel_registry.SysChannel
    assert chan.SYS_CHANNELS is channel_registry.SYS_CHANNELS
    assert chan.Emitter is emitter.Emitter
    assert (chan.MODES, chan.GUARANTEES, chan.MAX_FANOUT) == (
        channel_spec.MODES, channel_spec.GUARANTEES, channel_spec.MAX_FANOUT)
    # the code lives with the others in ggmk.task, named there
    assert chan.CHAN_NO_SUBSCRIBER == T.CHAN_NO_SUBSCRIBER == -106
    assert T.code_name(T.CHAN_NO_SUBSCRIBER) == "CHAN_NO_SUBSCRIBER"
    for name in chan.__all__:
        assert hasattr(chan, name), name


def test_capacity_is_rounded_up_to_a_power_of_two_with_a_reserve():
    with boot([], hal="sim") as s:
        for want, (cap, reserve) in {1: (8, 1), 9: (16, 1), 100: (128, 12),
                                     4096: (4096, 409)}.items():
            ch = s.open(f"cap.c{want}", "MSG", capacity=want)
            assert (ch.capacity, ch.reserve) == (cap, reserve)
            assert ch.stats()["capacity"] == cap and ch.stats()["reserve"] == reserve


def test_host_subscriber_waits_for_a_delivery_from_a_worker_and_notifies():
    """A host reading a channel blocks on a real wake-up: a handler on another worker thread
    emits to the channel, the host's wait returns, nothing is lost; small ring, 2 workers."""
    m = Module("relay")
    out = m.produces("relay.out", "MSG")

    @m.handler("MSG")
    def relay(ctx):
        ctx.emit(out, meta0=ctx.task.meta0)
    kicks = []
    with boot([m], workers=2) as s:
        sub = s.channel("relay.out").subscribe(name="reader", notify=lambda: kicks.append(1))
        assert sub.wait(0.01) is False                 # nothing yet: times out, says so
        got = []
        for i in range(200):
            assert s.submit("MSG", meta0=i) == 1
            while len(got) <= i:                       # one in flight: each wait is a wake-up
                assert sub.wait(10)
                got += sub.take()["meta0"].tolist()
        assert got == list(range(200)) and len(kicks) >= 200
        h = s.open("h.in", "MSG")
        hs = h.subscribe("MSG")
        with pytest.raises(ChannelError, match="only a host-side subscriber waits"):
            hs.wait(0)
        with pytest.raises(ChannelError, match="notify hooks are for host-side"):
            hs.add_notify(lambda: None)


def test_publish_of_a_column_larger_than_the_room_builds_and_accepts_a_prefix(monkeypatch):
    """A column bigger than the channel's room: the accepted prefix is the room, in order,
    and only that many records are built (the rest is the caller's to publish again); a
    payload is referenced once per accepted record; a column of another length is still
    make()'s error, naming the field."""
    built = []
    real_make = T.make

    def counting_make(n, **kw):
        built.append(n)
        return real_make(n, **kw)
    from ggmk.core import channel as channel_mod
    monkeypatch.setattr(channel_mod.T, "make", counting_make)
    with boot([], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe()                           # host-side: nothing drains it
        room = 16                                      # (priority 0 may take the reserve)
        assert ch.publish(meta0=np.arange(1000), meta1=list(range(1000)), count=None) == room
        assert built[-1] == room
        got = sub.take(100)
        assert got["meta0"].tolist() == list(range(room))
        assert got["meta1"].tolist() == list(range(room))
        assert got["seq"].tolist() == list(range(1, room + 1))
        # the rest, published again as a user's loop does: all of it arrives, in order
        done, out = room, [got]
        while done < 1000:
            k = ch.publish(meta0=np.arange(done, 1000))
            done += k
            out.append(sub.take(100))
        allm = np.concatenate(out)["meta0"].tolist()
        assert allm == list(range(1000))
        # with a payload: one reference per accepted record, none left behind for the rest
        used0 = s.arena.stats()["total"]["live"]
        k = ch.publish(meta0=np.arange(50), payload=b"x" * 100)
        assert k == room
        recs = sub.take(100)
        assert len(recs) == room and len(set(recs["payload_ptr"].tolist())) == 1
        s.arena.release(int(recs["payload_ptr"][0]), room)
        assert s.arena.stats()["total"]["live"] == used0
        with pytest.raises(T.TaskValueError, match="meta1"):
            ch.publish(meta0=np.arange(40), meta1=np.arange(41))


def test_publishing_a_big_column_into_a_small_channel_on_real_threads():
    """The same with 2 real workers draining while the host publishes: each call is accepted
    as a prefix of what is left, and every message is handled once, in channel order."""
    got = []
    m = Module("slow")
    m.produces("data.in", "MSG", capacity=64)

    @m.handler("MSG", consumes="data.in", message="MSG", batch=True)
    def take(ctx, batch):
        got.extend(batch.meta0.tolist())
    with boot([m], workers=2) as s:
        ch = s.channel("data.in")
        assert ch.capacity == 64
        col = np.arange(20_000, dtype=np.uint64)
        done = calls = 0
        while done < len(col):
            done += ch.publish(meta0=col[done:])
            calls += 1
        assert s.run(timeout=60)
    assert calls > 1                                   # the channel was full at times
    assert got == list(range(20_000))


def test_a_raising_hook_does_not_fail_a_publish_nor_stop_halt():
    """A notify hook that raised made ``publish`` raise after the message was accepted (a
    caller that retried duplicated it) and ``halt`` raise from the close, half way: later
    channels stayed open with their messages unaccounted, fini never ran and a second halt()
    returned None. Now the hook's error is reported (system.exceptions), the publish returns
    OK, halt closes every channel; a hook that is not callable is refused at subscribe."""
    from ggmk.task import CHAN_CLOSED, OK
    m = Module("m")
    fini = []
    m.fini(lambda system: fini.append(1))
    s = boot([m], workers=2)
    a = s.open("a.chan", "A", mode="fanout", capacity=8)
    b = s.open("b.chan", "B", capacity=8)
    bsub = b.subscribe()
    assert all(b.publish(meta0=i) == OK for i in range(3))

    def bad():
        raise RuntimeError("hook bug")

    with pytest.raises(ChannelError, match=r"channel 'a.chan': notify=5 is not allowed: a "
                                           r"callable \(called with no arguments"):
        a.subscribe(notify=5)
    assert not a.subs                                 # nothing half added
    sub = a.subscribe(notify=bad)
    with pytest.raises(ChannelError, match=r"after=5 is not allowed: a callable"):
        sub.add_after(5)
    sub.add_after(bad)
    assert a.publish(meta0=7) == OK
    assert a.publish(meta0=[8, 9]) == 2
    assert sub.take()["meta0"].tolist() == [7, 8, 9]
    assert a.stats()["emitted"] == 3
    assert s.stats()["exceptions"] >= 4 and all("hook" in e[1] for e in s.exceptions)
    assert a.publish(meta0=10) == OK                  # left for the close to drop
    rep = s.halt()
    assert rep["channel_dropped"] == 4 and a.closed and b.closed and fini == [1]
    assert s.halt() == rep
    drops, codes = s.dead_letters("sys.dropped")
    assert sorted(drops["meta0"].tolist()) == [0, 1, 2, 10]
    assert set(codes.tolist()) == {CHAN_CLOSED} and bsub.chan is b


def test_take_refuses_a_count_that_is_not_an_int():
    """(before: sub.take('x') was a raw TypeError from inside the ring)"""
    with boot([], workers=2) as s:
        ch = s.open("a.chan", "A")
        sub = ch.subscribe()
        assert ch.publish(meta0=[1, 2, 3]) == 3
        for bad in ("x", 1.5, True, -1):
            with pytest.raises(ValueError, match=rf"max_n={bad!r}: allowed an int >= 0 "
                                                 rf"\(messages to take from channel 'a.chan'\)"):
                sub.take(bad)
        assert sub.take(np.int64(2))["meta0"].tolist() == [1, 2]
        assert sub.take()["meta0"].tolist() == [3]
