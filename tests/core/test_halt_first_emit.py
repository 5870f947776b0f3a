"""halt() drains accepted work: a handler that emits to a channel declaration for the first
time while halt drains is accepted work too. It was refused ("closed, the system has halted":
the handler failed with HANDLER_EXCEPTION) because the declaration was resolved only at the
first emit and halt had set ``halted`` before draining (audit s17, storage: every nvme
request published just before halt failed that way)."""
from __future__ import annotations

import threading
import time

import ggmk

N = 20


def test_a_first_emit_to_a_declaration_while_halt_drains_is_delivered():
    release = threading.Event()
    got = []
    src = ggmk.Module("first_src")
    out = src.produces("first.out", "FIRST_OUT")

    @src.handler("FIRST_IN")
    def first_in(ctx):
        release.wait(30)              # held until halt has begun: the emit below is its first
        return ctx.emit(out, ctx.task.meta0)

    sink = ggmk.Module("first_sink")

    @sink.handler("FIRST_SINK", consumes="first.out", message="FIRST_OUT", batch=True)
    def first_sink(ctx, batch):
        got.extend(batch.meta0.tolist())

    system = ggmk.boot([src, sink], workers=2)
    for i in range(N):
        system.submit("FIRST_IN", meta0=i)
    def once_halting():                        # halt blocks: the handlers go once it began
        deadline = time.monotonic() + 30
        while not system.halted and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
    t = threading.Thread(target=once_halting)
    t.start()
    try:
        rep = system.halt(timeout=30)
    finally:
        release.set()
        t.join(30)
    err, codes = system.dead_letters("sys.error")
    assert len(err) == 0, (codes, system.exceptions)
    assert sorted(got) == list(range(N)), rep
