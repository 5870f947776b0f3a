"""The end of an ordered subscriber's one-record batch (``Channel._batch_done1``): the next
message waiting in its ring is handed over at once, and with nothing waiting the drain is
skipped; a message published after that look is handed over by its emitter. On the sim HAL
(stepped by ``run``), so the states in between can be looked at."""
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def _ordered(got):
    m = Module("m")

    @m.handler("ONE")
    def one(ctx):
        got.append(ctx.task.meta0)
    return m


def test_a_message_waiting_behind_the_batch_goes_next_and_none_is_left_behind():
    got = []
    with boot([_ordered(got)], hal="sim") as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe("ONE")
        assert sub.ordered
        assert ch.publish(meta0=1) == T.OK           # handed to the scheduler: busy
        assert sub.busy == 1 and ch.pending() == 0
        assert ch.publish(meta0=2) == T.OK           # waits in the ring behind it
        assert ch.pending() == 1
        assert s.workers[0].step()                   # runs 1; its end hands 2 over at once
        assert got == [1]
        assert sub.busy == 1 and ch.pending() == 0 and sub.b_lo == sub.b_hi == 2
        assert s.run(timeout=60)
        assert got == [1, 2]
        assert sub.busy == 0 and ch.pending() == 0 and sub.ring.tail == sub.ring.head
        # nothing waited at 2's end: the next message is handed over by its emitter
        assert ch.publish(meta0=3) == T.OK
        assert sub.busy == 1 and ch.pending() == 0
        assert s.run(timeout=60)
        assert got == [1, 2, 3] and sub.busy == 0
        st = s.stats()
        assert st["types"]["ONE"]["ok"] == st["types"]["ONE"]["enqueued"] == 3
        assert len(s.dead_letters("sys.error")[0]) == 0
