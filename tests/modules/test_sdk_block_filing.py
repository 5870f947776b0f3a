"""ggmk.sdk Client filing a block of replies (issue 16): one block in flight whose replies all
come in one take is filed without masks (``Client._pump``'s fast path); replies of two
blocks taken together, or of a block part of which was filed already, take the general path.
Real threads (workers=2), a gate so both blocks are answered in one batch; every reply filed
once, nothing ignored."""
from __future__ import annotations

import threading

import numpy as np

import ggmk
from ggmk import sdk


def _server(gate: threading.Event | None = None):
    """Each request (meta0 = x, meta1 = tag) is answered on ``ans.b`` with meta0 = tag,
    meta1 = x + 1, all of a batch in one emit (one take on the client's side)."""
    app = ggmk.Module("blk")
    app.produces("ask.b", "ASK_B", capacity=256)
    app.produces("ans.b", "ANS_B", mode="fanout", capacity=256)

    @app.handler("BLK_ASK", batch=True, consumes="ask.b", message="ASK_B")
    def ask(ctx, batch):
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        r = batch.records
        acc = ctx.emit_batch("ans.b", meta0=r["meta1"], meta1=r["meta0"] + np.uint64(1))
        assert acc == len(r)
    return app


def test_one_block_in_one_take_is_filed_whole():
    with ggmk.boot([_server()], workers=2) as system:
        cl = sdk.Client(system, "ask.b", "ans.b", timeout=60)
        for rnd in range(20):
            lo = 1000 * (rnd + 1)
            xs = np.arange(50, dtype=np.uint64) * np.uint64(rnd + 2)
            m0, m1, data = cl.call_many(xs, np.arange(lo, lo + 50, dtype=np.uint64), lo)
            assert m0.tolist() == list(range(lo, lo + 50))
            assert m1.tolist() == (xs + np.uint64(1)).tolist() and data is None
        assert cl.ignored == 0 and not cl._runs and not cl._single
        assert system.run(timeout=60)


def test_two_blocks_in_one_take_and_a_block_filed_in_parts_take_the_general_path():
    gate = threading.Event()
    with ggmk.boot([_server(gate)], workers=2, host_helps=False) as system:
        cl = sdk.Client(system, "ask.b", "ans.b", timeout=60)
        a = cl.publish_many(np.arange(10, dtype=np.uint64), np.arange(100, 110, dtype=np.uint64),
                            100)
        b = cl.publish_many(np.arange(20, 30, dtype=np.uint64),
                            np.arange(200, 210, dtype=np.uint64), 200)
        gate.set()                                     # both blocks: one batch, one emit
        m0, m1, _ = cl.wait_many(b)
        assert m0.tolist() == list(range(200, 210)) and m1.tolist() == list(range(21, 31))
        m0, m1, _ = cl.wait_many(a)
        assert m0.tolist() == list(range(100, 110)) and m1.tolist() == list(range(1, 11))
        assert a.left == 0 and b.left == 0 and cl.ignored == 0
        # a block whose first half was filed by an earlier take: the rest is filed by mask
        gate.clear()
        c = cl.publish_many(np.arange(4, dtype=np.uint64), np.arange(300, 304, dtype=np.uint64),
                            300)
        srv = system.channel("ans.b")
        # an answer published by the test for tags 300 and 301 (as the server would), taken
        assert srv.publish(meta0=[300, 301], meta1=[7, 8], count=2) == 2
        with cl._cond:
            assert cl._pump() == 2
        assert c.left == 2 and c.got.tolist() == [True, True, False, False]
        gate.set()                       # the server answers all four: 300, 301 again
        m0, m1, _ = cl.wait_many(c)
        assert m0.tolist() == [300, 301, 302, 303]
        assert m1.tolist() == [7, 8, 3, 4]            # the first answer of a tag is kept
        assert c.left == 0
        assert system.run(timeout=60)
        with cl._cond:
            cl._pump()
        assert not cl._runs and not cl._single
