"""Channel.suspend / resume (ggmk.core.channel): producers get CHAN_CLOSED while a channel is
suspended, nothing it accepted is lost, resume restores it; close() of a suspended channel is
for good. The bridge uses the pair during a GPU kernel reset (tests/acceptance/test_a17*)."""
import threading

import numpy as np

from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.task import CHAN_CLOSED, CHAN_FULL, OK


def test_suspend_refuses_keeps_queue_and_resume_restores():
    with boot([], hal="threads", workers=2) as s:
        ch = s.open("data.in", "MSG", capacity=16)
        sub = ch.subscribe()
        assert ch.publish(meta0=1) == OK
        assert ch.suspend() is True
        assert ch.suspend() is False                 # already suspended: nothing to do
        assert ch.publish(meta0=2) == CHAN_CLOSED
        assert ch.emit(T.make(3, type=s.type_id("MSG"), meta0=np.arange(3))) == 0
        assert ch.stats()["suspended"] is True
        got = sub.take()                             # what it accepted is still delivered
        assert got["meta0"].tolist() == [1]
        assert ch.resume() is True and ch.resume() is False
        assert ch.publish(meta0=3) == OK
        assert sub.take()["meta0"].tolist() == [3]
        assert ch.stats()["dropped"] == 0
        # suspended, then closed: closed for good (held messages dropped with CHAN_CLOSED)
        assert ch.publish(meta0=4) == OK
        assert ch.suspend()
        assert ch.close() == 1
        assert ch.closed and not ch.suspended
        assert ch.resume() is False and ch.publish(meta0=5) == CHAN_CLOSED
        assert ch.suspend() is False
        drops, codes = s.dead_letters("sys.dropped")
        assert drops["meta0"].tolist() == [4] and codes.tolist() == [CHAN_CLOSED]


def test_two_producers_while_another_thread_suspends_and_resumes(wait_until):
    """2 producer threads publish (retrying each refused message) while a third suspends and
    resumes the channel; a consumer thread takes meanwhile. Every accepted message is
    delivered exactly once, every refusal was CHAN_CLOSED, and each suspension is seen by both
    producers (waited on, not timed)."""
    rounds = 8
    per = 4000                       # messages per producer
    with boot([], hal="threads", workers=2) as s:
        ch = s.open("data.in", "MSG", capacity=2 * per)
        sub = ch.subscribe()
        stop = threading.Event()
        refusals = [[], []]          # codes other than CHAN_FULL, per producer
        fulls = [0, 0]
        accepted = [[], []]
        got = []
        errors = []

        def producer(p):
            try:
                i = 0
                while i < per:
                    r = ch.publish(meta0=p * per + i)
                    if r == OK:
                        accepted[p].append(p * per + i)
                        i += 1
                    elif r == CHAN_FULL:
                        fulls[p] += 1             # the consumer is behind: retried
                    else:
                        refusals[p].append(r)     # retried until accepted
            except BaseException as e:   # noqa: BLE001 - reported by the test thread
                errors.append(e)

        def consumer():
            while not (stop.is_set() and all(len(a) == per for a in accepted)
                       and len(got) == 2 * per):
                if sub.wait(0.05):
                    got.extend(sub.take()["meta0"].tolist())

        ts = [threading.Thread(target=producer, args=(p,)) for p in (0, 1)]
        tc = threading.Thread(target=consumer)
        assert ch.suspend()          # the first round starts before the producers do
        for t in ts + [tc]:
            t.start()
        done_rounds = 0
        for r in range(rounds):
            if r:
                if all(len(a) == per for a in accepted):
                    break
                seen = [len(x) for x in refusals]
                assert ch.suspend()
            else:
                seen = [0, 0]
            # both producers that still have messages to send must be refused once; the
            # consumer keeps taking what was accepted before the suspension meanwhile
            assert wait_until(lambda: all(len(refusals[p]) > seen[p] or len(accepted[p]) == per
                                          for p in (0, 1)), 60)
            assert wait_until(lambda: len(sub.ring) == 0, 60)
            assert ch.resume()
            done_rounds += 1
        stop.set()
        for t in ts:
            t.join(60)
        tc.join(60)
        assert not errors
        assert not any(t.is_alive() for t in ts + [tc])
        assert done_rounds >= 1
        # accounting: every accepted message delivered once, in each producer's order;
        # every refusal but a full channel's was CHAN_CLOSED; nothing dropped
        assert sorted(got) == sorted(accepted[0] + accepted[1]) == list(range(2 * per))
        for p in (0, 1):
            mine = [v for v in got if p * per <= v < (p + 1) * per]
            assert mine == accepted[p]
        assert sum(len(r) for r in refusals) > 0
        assert {c for r in refusals for c in r} == {CHAN_CLOSED}
        st = ch.stats()
        assert st["dropped"] == 0 and st["emitted"] == 2 * per and not st["suspended"]
        assert len(s.dead_letters("sys.dropped")[0]) == 0


def test_messages_a_handler_staged_before_a_suspension_are_delivered():
    """A worker's emitter takes credit and stages messages without the lock; a suspension
    between the staging and the commit must not drop what emit already accepted (0)."""
    from ggmk.core.module import Module
    codes = []
    p = Module("prod")
    p.produces("data.out", "MSG", capacity=64)
    holder = {}

    @p.handler("GO")
    def go(ctx):
        codes.append(ctx.emit("data.out", meta0=1))
        codes.append(ctx.emit("data.out", meta0=2))      # takes a credit: staged from here
        codes.append(ctx.emit("data.out", meta0=3))
        holder["ch"].suspend()
        codes.append(ctx.emit("data.out", meta0=4))      # inside the credit: accepted

    with boot([p], hal="threads", workers=2) as s:
        ch = holder["ch"] = s.channel("data.out")
        sub = ch.subscribe()
        s.submit("GO")
        assert s.run(timeout=30)
        assert codes == [0, 0, 0, 0]
        assert ch.suspended and ch.resume()
        got = sub.take()["meta0"].tolist()
        drops, _ = s.dead_letters("sys.dropped")
    assert got == [1, 2, 3, 4] and len(drops) == 0


def test_a_suspended_channel_keeps_draining_when_another_channel_is_opened(wait_until):
    """Opening, closing or subscribing anywhere rebuilds the registry's drain lists; a channel
    suspended meanwhile fell out of them (suspend sets ``closed``): run() said idle with its
    messages still in the ring, its ordered subscriber never got its next batch, and halt
    dropped them. Suspend, open an unrelated channel, resume, publish: every message is
    delivered, in order."""
    import threading

    from ggmk.core.module import Module
    got = []
    gate = threading.Event()
    m = Module("cons")

    @m.handler("SLOW", consumes="data.in", message="MSG")
    def slow(ctx):
        gate.wait(30)                 # the first batch holds the rest in the ring
        got.append(ctx.task.meta0)

    p = Module("prod")
    p.produces("data.in", "MSG", capacity=16)
    with boot([m, p], hal="threads", workers=2, max_batch=2, host_helps=False) as s:
        ch = s.channel("data.in")
        assert all(ch.publish(meta0=i) == OK for i in range(12))
        assert wait_until(lambda: ch.stats()["subs"][0]["in_flight"])
        assert ch.suspend()
        s.open("other.chan", "OTHER")             # rebuilds the drain lists
        s.open("other2.chan", "OTHER2").subscribe()   # (a subscribe rebuilds them too)
        assert ch.resume()
        assert all(ch.publish(meta0=i) == OK for i in range(12, 16))
        gate.set()
        assert s.run(timeout=30)
        assert got == list(range(16))
        st = ch.stats()
        assert st["depth"] == 0 and st["dropped"] == 0 and st["subs"][0]["delivered"] == 16
        rep = s.halt()
    assert rep["channel_dropped"] == 0 and len(s.dead_letters("sys.dropped")[0]) == 0
