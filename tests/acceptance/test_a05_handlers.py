"""SPEC §14.5 on the CPU kernel: 10+ handlers, mixed types at a high rate; every handler sees a
complete context and dispatch always picks the right handler."""
import threading

import numpy as np

from ggmk import OK
from ggmk.core.kernel import boot
from ggmk.core.module import Module


def test_twelve_handlers_right_handler_complete_context(hal):
    mods = [Module(f"m{i}") for i in range(3)]
    wrong = []
    counts = {}
    lock = threading.Lock()
    names = [f"T{i}" for i in range(12)]
    for i, name in enumerate(names):
        mod = mods[i % 3]
        if i % 2:
            def make(name=name, i=i):
                def h(ctx, batch):
                    ok = (batch.type == ctx.system.type_id(name)).all() and (batch.meta1 == i).all()
                    ok = ok and ctx.module.name == f"m{i % 3}" and ctx.arena is not None
                    with lock:
                        counts[name] = counts.get(name, 0) + len(batch)
                        if not ok:
                            wrong.append(name)
                return h
            mod.handler(name, batch=True)(make())
        else:
            def make(name=name, i=i):
                def h(ctx):
                    t = ctx.task
                    ok = t.type == ctx.system.type_id(name) and t.meta1 == i and ctx.tick >= 0
                    ok = ok and ctx.worker in (0, 1) and ctx.module.name == f"m{i % 3}"
                    with lock:
                        counts[name] = counts.get(name, 0) + 1
                        if not ok:
                            wrong.append(name)
                    return OK
                return h
            mod.handler(name)(make())
    rng = np.random.default_rng(1)
    with boot(mods, workers=2, hal=hal, seed=3) as s:
        expected = {}
        for _ in range(40):
            i = int(rng.integers(12))
            n = int(rng.integers(1, 300))
            s.submit(names[i], meta0=np.arange(n), meta1=i)
            expected[names[i]] = expected.get(names[i], 0) + n
        assert s.run(timeout=30)
        st = s.stats()["types"]
    assert not wrong
    assert counts == expected
    assert all(st[k]["ok"] == v for k, v in expected.items())
