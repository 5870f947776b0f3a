"""SPEC §14.9, CPU half: per-module trace levels filter; sampling gives statistically right counts;
stripping tracing leaves the kernel's results unchanged and records nothing. Metrics are never
sampled. (Draining without stalling: the drain runs while workers keep recording.)"""
import threading

import numpy as np

from ggmk import FAIL, OK
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.events import SAMPLED_BIT, EventType


def _mods():
    a = Module("loud", trace_level="all")
    q = Module("quiet", trace_level="error")

    @a.handler("LOUD", batch=True)
    def loud(ctx, b):
        pass

    @q.handler("QUIET")
    def quiet(ctx):
        return FAIL if ctx.task.meta0 % 10 == 0 else OK

    return [a, q]


def _events(s):
    ev = s.tracer.drain()
    return ev, {EventType(e & 0x7FFF) for e in ev["event"]}


def test_per_module_levels_filter(hal):
    with boot(_mods(), workers=2, hal=hal) as s:
        s.submit("LOUD", meta0=np.arange(100))
        s.submit("QUIET", meta0=np.arange(100))
        assert s.run(timeout=10)
        ev, kinds = _events(s)
        loud, quiet = s.type_id("LOUD"), s.type_id("QUIET")
    lo = ev[ev["task_type"] == loud]
    qu = ev[ev["task_type"] == quiet]
    assert (lo["event"] == EventType.TASK_START).sum() == 100      # "all": every start
    assert set(qu["event"].tolist()) == {EventType.TASK_FAIL}        # "error": only failures
    assert len(qu) == 10


def test_sampling_counts_are_statistically_right(hal):
    n = 20_000
    with boot(_mods()[:1], workers=2, hal=hal, sample_rate=10) as s:
        for i in range(0, n, 1000):
            s.submit("LOUD", meta0=np.arange(1000))
        assert s.run(timeout=30)
        ev = s.tracer.drain()
        starts = ev[(ev["event"] & 0x7FFF) == EventType.TASK_START]
        assert (starts["event"] & SAMPLED_BIT).all()
        scaled = s.tracer.scaled_counts(ev)[EventType.TASK_START]
        assert s.stats()["types"]["LOUD"]["ok"] == n        # metrics are never sampled
    # 1-in-10 sampling of 20,000 events: the scaled count is within 5% (several sigma)
    assert abs(scaled - n) / n < 0.05, scaled


def test_stripped_tracing_records_nothing_and_changes_nothing(hal):
    outs = {}
    for trace in (True, False):
        with boot(_mods(), workers=2, hal=hal, trace=trace) as s:
            s.submit("LOUD", meta0=np.arange(500))
            s.submit("QUIET", meta0=np.arange(500))
            assert s.run(timeout=10)
            outs[trace] = s.stats()["types"]
            if not trace:
                assert not s.tracer.enabled and len(s.tracer.drain()) == 0
    assert outs[True] == outs[False]


def test_drain_while_running_does_not_stall_workers():
    stop = threading.Event()
    drained = []
    with boot(_mods()[:1], workers=2, hal="threads") as s:
        def drain():
            while not stop.is_set():
                drained.append(len(s.tracer.drain()))
        t = threading.Thread(target=drain)
        t.start()
        for _ in range(50):
            s.submit("LOUD", meta0=np.arange(200))
        assert s.run(timeout=20)
        stop.set()
        t.join()
        drained.append(len(s.tracer.drain()))
        assert s.stats()["types"]["LOUD"]["ok"] == 10_000
    assert sum(drained) == 20_000    # a start and an end per task, none lost or duplicated
