"""Review of the deterministic trace hasher (core/det.py folds each finished tick into it as it
goes): ``System.trace_hash()`` read while 2 worker threads fold ticks must not race those
folds. It read the hasher outside the tick stage's lock, so a read mid-run could lose or
double-hash a tick's events (a run's digest differed from the same run read only at the end)."""
import threading

import numpy as np

import ggmk


def _module():
    m = ggmk.Module("hashrace")

    @m.handler("HR_CHAIN", deterministic=True)
    def chain(ctx):
        v = int(ctx.task.meta0)
        if v % 1000 < 30:                         # 30 ticks of work per seed
            ctx.emit("HR_CHAIN", meta0=v + 1)
    return m


def _run(read_while_running: bool):
    outside = []
    with ggmk.boot([_module()], workers=2, deterministic=True) as s:
        det, hasher = s.det, s.hasher
        # every use of the hasher, by a worker's fold or by trace_hash, under the tick
        # stage's lock (a race otherwise: the hasher is plain Python state)
        for name in ("update", "hexdigest"):
            real = getattr(hasher, name)

            def checked(*a, _real=real, _name=name, **kw):
                if not det.lock._is_owned():
                    outside.append((_name, threading.current_thread().name))
                return _real(*a, **kw)
            setattr(hasher, name, checked)
        s.submit("HR_CHAIN", meta0=np.arange(0, 100_000, 1000), deterministic=True)
        stop = threading.Event()
        reads = []

        def reader():
            while not stop.is_set():
                reads.append(s.trace_hash())

        t = threading.Thread(target=reader) if read_while_running else None
        if t is not None:
            t.start()
        try:
            assert s.run(timeout=120)
        finally:
            stop.set()
            if t is not None:
                t.join()
        digest = s.trace_hash()
        assert not s.hal.errors
    return digest, outside, reads


def test_trace_hash_read_while_workers_fold_ticks_is_under_the_tick_lock():
    ref, outside, _ = _run(False)
    assert outside == []
    for _ in range(3):
        digest, outside, reads = _run(True)
        assert reads
        assert outside == [], outside[:3]
        assert digest == ref
