"""A handler that runs the arena out (``ctx.alloc``, a payload emit) fails its task with
ALLOC_FAIL, not HANDLER_EXCEPTION: memory pressure is not a handler bug. It is a failure like
any other code (poison counts every failure, SPEC §2/§6), and the AllocError's traceback is
kept in ``system.exceptions``."""
import numpy as np

from ggmk import task as T
from ggmk.core.alloc import MAX_ALLOC
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.testing import Sandbox


def _module():
    m = Module("m")

    @m.handler("ALLOC")
    def alloc(ctx):
        ctx.alloc(MAX_ALLOC + 1)                     # more than the largest bin

    @m.handler("EMIT_BIG")
    def emit_big(ctx):
        ctx.emit("SINK", payload=np.zeros(MAX_ALLOC + 1, np.uint8))

    @m.handler("BATCH", batch=True)
    def batch(ctx, b):
        ctx.alloc(MAX_ALLOC + 1)

    @m.handler("BUG")
    def bug(ctx):
        raise RuntimeError("a handler bug")

    @m.handler("SINK")
    def sink(ctx):
        pass

    return m


def test_an_alloc_error_in_a_handler_fails_its_task_with_alloc_fail(hal):
    # (every one was HANDLER_EXCEPTION: memory pressure looked like a handler bug)
    with boot([_module()], hal=hal, workers=2) as s:
        for t in ("ALLOC", "EMIT_BIG", "BUG"):
            s.submit(t)
        s.submit("BATCH", meta0=np.arange(3))
        assert s.run(timeout=10)
        recs, codes = s.dead_letters("sys.error")
        got = sorted(zip((s.type_name(int(t)) for t in recs["type"]), codes.tolist()))
        assert got == [("ALLOC", T.ALLOC_FAIL), ("BATCH", T.ALLOC_FAIL), ("BATCH", T.ALLOC_FAIL),
                       ("BATCH", T.ALLOC_FAIL), ("BUG", T.HANDLER_EXCEPTION),
                       ("EMIT_BIG", T.ALLOC_FAIL)]
        types = s.stats()["types"]
        assert all(types[t]["fail"] == n for t, n in (("ALLOC", 1), ("EMIT_BIG", 1),
                                                      ("BATCH", 3), ("BUG", 1)))
        assert sum("AllocError" in e[2] for e in s.exceptions) == 3     # tracebacks kept
        assert s.sched.outstanding == 0 and s.arena.live_count() == 0


def test_the_sandbox_records_alloc_fail_as_the_kernel_does():
    with Sandbox(_module(), raise_exceptions=False) as sb:
        assert sb.feed("ALLOC") == T.ALLOC_FAIL
        assert sb.feed("EMIT_BIG") == T.ALLOC_FAIL
        assert sb.feed("BATCH", meta0=[1, 2]) == [T.ALLOC_FAIL] * 2
        assert sb.feed("BUG") == T.HANDLER_EXCEPTION
