"""kv bytes tables: a get whose answer finds the arena full waits (WAIT, counted in ``waits``)
and is answered once room is back, instead of answering TOO_BIG; an int put from the host
(``sdk.KV.put``) is stored as a handler's ``sdk.kv_put`` stores it (8 little-endian bytes)."""
from __future__ import annotations

import ggmk
from ggmk import sdk
from ggmk import task as T
from ggmk.modules import kv
from ggmk.testing import Sandbox


def test_get_many_of_big_values_waits_for_arena_room():
    """128 values of 60000 bytes, a 4 MiB arena: their answers cannot all be in flight at
    once. (before: KVError TOO_BIG, "60 of 64 gets failed", too_big 0)"""
    store = kv.module(capacity=128, value_size=65536)
    with ggmk.boot([store], workers=2, arena_size=4 << 20) as system:
        c = sdk.KV(system, timeout=30)
        for k in range(128):
            c.put(k, bytes([k]) * 60000)
        got = c.get_many(list(range(128)))
        assert got == [bytes([k]) * 60000 for k in range(128)]
        st = store.kv.stats()
        assert st["waits"] > 0 and st["too_big"] == 0
        assert (st["get"], st["hit"], st["miss"]) == (128, 128, 0)
        c.close()
        assert system.run(timeout=30)
        assert len(system.dead_letters("sys.error")[0]) == 0
        assert len(system.dead_letters("sys.dropped")[0]) == 0
        assert system.arena.stats()["total"]["live"] == 0


def test_a_get_waits_while_the_arena_is_full_then_answers():
    """The rest of the batch is pushed back with WAIT (counted), answered once room is back."""
    store = kv.module(capacity=8, value_size=1000)
    with Sandbox(store, arena_size=4 << 20) as sb:
        for k in range(3):
            sb.publish("kv.put", meta0=k, meta1=k, payload=bytes([k]) * 1000)
        sb.run()
        sb.take("kv.resp")
        hog = []
        while (p := sb.arena.alloc(1000)):              # fill the arena
            hog.append(p)
        assert sb.feed("KV_GET", meta0=[0, 1, 2], meta1=[10, 11, 12]) == [T.WAIT] * 3
        assert store.kv.stats()["waits"] == 3 and store.kv.stats()["get"] == 0
        sb.arena.release(hog.pop())     # room for one answer (taken at once: room again)
        sb.advance(1)
        got = sb.take("kv.resp")
        assert [(kv.unpack(e.meta0), e.payload) for e in got] == [
            ((kv.OK, kv.OP_GET, 10 + k), bytes([k]) * 1000) for k in range(3)]
        sb.arena.release_many(hog)
        st = store.kv.stats()
        assert (st["get"], st["hit"], st["too_big"], st["waits"]) == (3, 3, 0, 3)
        assert sb.errors == [] and sb.pending() == 0 and sb.allocations()["live"] == 0


def test_an_int_put_from_the_host_is_stored_as_a_handler_stores_it():
    """(before: host put(1, 5) read back b'\\x05', the handler's kv_put(2, 5) 8 bytes)"""
    app = ggmk.Module("app")

    @app.handler("APP_PUT")
    def put(ctx):
        return sdk.kv_put(ctx, ctx.task.meta0, ctx.task.meta1)

    store = kv.module(capacity=8, value_size=16)
    with ggmk.boot([store, app], workers=2) as system:
        c = sdk.KV(system, timeout=30)
        c.put(1, 5)
        system.submit("APP_PUT", meta0=2, meta1=5)
        assert system.run(timeout=30)
        assert c.get(1) == c.get(2) == (5).to_bytes(8, "little")
        c.put(3, (1 << 64) - 1)
        assert c.get(3) == b"\xff" * 8
        c.close()
    # a word table keeps the int, whatever its value_size (the shortest form fits)
    store = kv.module(capacity=8, value_size=1, name="small")
    with ggmk.boot([store], workers=2) as system:
        c = sdk.KV(system, "small", timeout=30)
        c.put(1, 5)
        assert c.get(1) == 5
        c.close()
