"""Ctrl-C while the main thread runs a help nested in a handler of an outer caller-runs step (a
handler that makes an sdk call): the KeyboardInterrupt waits for the outer step, as it should,
but every later nested help ran one step and gave its worker back (the interrupt pending made
each one stop) until the outer step ended: the nested calls' work left the calling thread."""
import os
import signal
import threading

import pytest

import ggmk
from ggmk import sdk

HOPS = 12


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="SIGINT goes to the main thread")
def test_ctrl_c_in_a_nested_help_does_not_cut_the_later_nested_helps_short(wait_until):
    app = ggmk.Module("nested")
    app.produces("nest.ask", "ASK", capacity=64)
    app.produces("nest.ans", "ANS", mode="fanout", capacity=64)
    hops, replies = [], []
    box = {}

    @app.handler("NEST_ASK", consumes="nest.ask", message="ASK")
    def ask(ctx):
        return ctx.emit("NEST_HOP", HOPS, ctx.task.meta1)    # meta0: hops left, meta1: tag

    def hop(ctx, other):
        left, tag = ctx.task.meta0, ctx.task.meta1
        hops.append((tag, threading.get_ident()))
        if tag == 1 and left == HOPS - 3:
            os.kill(os.getpid(), signal.SIGINT)      # as if the user hit Ctrl-C right here
        if left:
            return ctx.emit(other, left - 1, tag)
        return ctx.emit("nest.ans", tag, 0)
    # two types taking turns: each hop is a step of its own (a step runs the follow-ons of
    # its own type itself)
    app.handler("NEST_HOP")(lambda ctx: hop(ctx, "NEST_HOP2"))
    app.handler("NEST_HOP2")(lambda ctx: hop(ctx, "NEST_HOP"))

    @app.handler("NEST_OUTER")
    def outer(ctx):
        box["outer"] = threading.get_ident()
        # (type=: the request goes through the channel, not the direct path, so the calling
        # thread runs the steps of the nested help)
        replies.append(box["client"].call(0, 1, tag=1, type="ASK"))
        replies.append(box["client"].call(0, 2, tag=2, type="ASK"))

    with ggmk.boot([app], workers=2, host_helps=True) as system:
        hal = system.hal
        hal.park_timeout = 3600.0            # both workers parked, and they stay parked
        hal.wake(2)
        assert wait_until(lambda: len(hal._parked) == 2, 30)
        box["client"] = sdk.Client(system, "nest.ask", "nest.ans", timeout=30)
        with pytest.raises(KeyboardInterrupt):  # raised once the outer step is over
            system.submit_and_run("NEST_OUTER", timeout=60)
        main = threading.get_ident()
        assert box["outer"] == main and replies == [(1, 0, None), (2, 0, None)]
        # both calls' hops ran on the calling thread (before: after the Ctrl-C, each nested
        # help ran one step, then the worker it gave back ran the rest)
        assert len(hops) == 2 * (HOPS + 1)
        assert [t for t, who in hops if who != main] == []
        box["client"].close()
        assert system.run(timeout=60)
        assert len(system.dead_letters("sys.error")[0]) == 0
        assert len(system.dead_letters("sys.dropped")[0]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # put back at halt
