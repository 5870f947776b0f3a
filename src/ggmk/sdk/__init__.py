"""``ggmk.sdk``: the second tier for module authors (SPEC §10) - helpers over the kernel API.

In a handler every helper returns a code to pass on: ``OK`` (0) when the message went out,
``WAIT`` when the channel was full (return it: the task runs again on a later tick - waiting
is backpressure, not a yield), or a negative code (``CHAN_CLOSED``; ``CHAN_FULL`` once a
task has waited longer than ``deadline`` ticks: the bound, so a stuck consumer fails the
producer's task onto ``sys.error`` instead of parking it forever)::

    code = sdk.send(ctx, "work.out", x)
    if code:
        return code

=====================  ==========================================================================
helper                 what
=====================  ==========================================================================
send / send_all        emit with backpressure (``send_all`` resumes at meta1 after a WAIT)
Requests               in-kernel request/reply: correlation tags, replies, timeouts
Client                 host-side request/reply over a request channel and a reply channel
KV                     host-side kv client (put/get/delete, correlated by tag; get_many /
                       get_array: a block of gets in one column, replies matched in bulk)
new_tags               request tags unique in the process (clients of a reply channel share it)
kv_put/kv_get/kv_del   in-handler requests to a kv module
log / logf             a line to the log module (``logf``: format + up to 4 ints, host-formatted)
timer_once/_every      timers (the timer module); ``timer_cancel``
gate_arrive            arrive at a gate (the gate module)
count/gauge/observe    the stats module's counter / gauge / histogram
=====================  ==========================================================================

Example (a handler that counts, logs and answers through kv, all with backpressure)::

    import ggmk
    from ggmk import sdk
    from ggmk.modules import kv, log, stats

    app = ggmk.Module("app")

    @app.handler("APP_WORK")
    def work(ctx):
        if ctx.task.yield_count == 0:               # phase 0: the put (resumed on WAIT)
            code = sdk.kv_put(ctx, ctx.task.meta0, 42)
            return code or ctx.yield_()
        code = sdk.logf(ctx, "info", "work %d done", ctx.task.meta0)   # phase 1: the log
        return code or sdk.count(ctx, 1)

    mods = [app, kv.module(capacity=64), log.module(), stats.module(period=5)]
    with ggmk.boot(mods, workers=2) as system:
        system.submit("APP_WORK", meta0=7)
        system.run()
        kvc = sdk.KV(system)
        print(kvc.get(7))                   # 42: one request, one reply
        print(kvc.get_many([7, 8, 7]))      # [42, None, 42]: one column out, matched in bulk
        kvc.close()

Request/reply from the host: ``KV.get`` (and ``Client.call``) is one request in flight. With
caller runs (boot's ``host_helps``, on by default) the calling thread runs the request itself
while a worker is idle: first the direct request path (``System.direct``: when the request
channel's only subscriber is a handler with nothing waiting, the request runs as a task on
the caller's thread, no ring, gather or hand-off), else the idle worker's steps
(``hal.help``); without it, two OS-thread wake-ups per round trip (publish -> a parked
worker, reply -> the waiting caller);
``KV.get_many`` / ``get_array`` (and ``Client.publish_many``/``wait_many``) send a block of
requests as one column and file the block of replies by tag with NumPy: use them whenever
there is more than one request to make.
"""
from ggmk.sdk.calls import (count, gate_arrive, gauge, kv_del, kv_get, kv_put, log, logf, observe,
                            timer_cancel, timer_every, timer_once)
from ggmk.sdk.client import Client
from ggmk.sdk.kv import KV
from ggmk.sdk.sends import DEFAULT_DEADLINE, TIMEOUT, Requests, send, send_all
from ggmk.sdk.tags import TAG_MASK, new_tags

__all__ = ["send", "send_all", "Requests", "Client", "KV", "new_tags", "TAG_MASK", "kv_put",
           "kv_get", "kv_del", "log", "logf", "timer_once", "timer_every", "timer_cancel",
           "gate_arrive", "count", "gauge", "observe", "TIMEOUT", "DEFAULT_DEADLINE"]
