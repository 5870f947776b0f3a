"""Particles: an app built from the standard modules plus one custom module.

``physics`` (the custom module) moves ``n`` particles in a 1-D box each time the ``timer``
fires. Per step and particle it stores the position in ``kv`` (key = particle), sends the
kinetic energy as a partial to ``reduce`` (group = step) and arrives at a ``gate`` (opens
after ``n`` arrivals: the step's barrier). When the gate has released every particle of a
step and ``reduce`` has its energy, the step is complete: ``log`` gets a line, ``stats`` a
counter and a histogram sample. A timer fire whose previous step is not complete waits
(``ctx.wait_``), so steps never overlap (each particle's kv value is its latest position).
After ``steps`` steps the timer is cancelled and the system
goes idle. Every emit goes through ``ggmk.sdk`` (backpressure: WAIT and resume).

Run: ``.venv/bin/python examples/particles.py`` (prints a JSON summary).

Example::

    from particles import main
    out = main(n=32, steps=5)
    assert out["steps"] == 5 and len(set(out["energy"])) == 1   # elastic walls: energy kept
"""
from __future__ import annotations

import json
import threading

import numpy as np

import ggmk
from ggmk import OK, sdk
from ggmk.modules import gate, kv, log, reduce, stats, timer

BOX = 1000
TIMER_ID = 1
GATE_ID = 1


def physics_module(n: int, steps: int, seed: int = 0) -> ggmk.Module:
    """The custom module; ``m.state`` holds what the run produced."""
    rng = np.random.default_rng(seed)
    m = ggmk.Module("physics")
    st = m.state = {"pos": rng.integers(0, BOX, n), "vel": rng.integers(-20, 21, n),
                    "snap": {}, "energy": {}, "passed": {}, "done": [], "lock": threading.Lock()}

    @m.handler("PHYS_FIRE", consumes="timer.fire", message="TIMER_FIRE")
    def on_fire(ctx):
        k = ctx.task.meta1                       # the fire number = the step
        if k > steps:
            return OK
        with st["lock"]:
            if k > 1 and k - 1 not in st["done"]:
                return ctx.wait_()               # the barrier: step k-1 still in flight
            if k not in st["snap"]:
                p, v = st["pos"] + st["vel"], st["vel"].copy()
                lo, hi = p < 0, p >= BOX          # elastic walls
                p[lo], v[lo] = -p[lo], -v[lo]
                p[hi], v[hi] = 2 * (BOX - 1) - p[hi], -v[hi]
                st["pos"], st["vel"] = p, v
                st["snap"][k] = (p.copy(), (v * v).copy())
        ctx.emit_batch("PHYS_PARTICLE", meta0=(k << 32) | np.arange(n, dtype=np.uint64))
        return OK

    @m.handler("PHYS_PARTICLE")
    def particle(ctx):
        k, i = ctx.task.meta0 >> 32, ctx.task.meta0 & 0xFFFFFFFF
        pos, e = st["snap"][k]
        phase = ctx.task.meta1                   # resume point after a WAIT
        sends = (lambda: sdk.kv_put(ctx, i, int(pos[i])),
                 lambda: sdk.send(ctx, "reduce.in", k, int(e[i])),
                 lambda: sdk.gate_arrive(ctx, GATE_ID, (k << 32) | i))
        for ph in range(phase, 3):
            code = sends[ph]()
            if code:
                return ctx.wait_(meta1=ph) if code == ggmk.WAIT else code
        return OK

    def maybe_done(ctx, k):
        with st["lock"]:
            ready = (st["passed"].get(k, 0) == n and k in st["energy"] and k not in st["done"])
            if ready:
                st["done"].append(k)
                last = len(st["done"]) == steps
        if not ready:
            return OK
        sdk.logf(ctx, "info", "step %d energy %d", k, st["energy"][k])
        sdk.count(ctx, 1)
        sdk.observe(ctx, 2, st["energy"][k])
        if last:
            sdk.timer_cancel(ctx, TIMER_ID)
        return OK

    @m.handler("PHYS_PASS", batch=True, consumes="gate.open", message="GATE_PASS")
    def on_pass(ctx, batch):
        steps_seen = (batch.meta1 >> 32).tolist()
        with st["lock"]:
            for k in steps_seen:
                st["passed"][k] = st["passed"].get(k, 0) + 1
        for k in sorted(set(steps_seen)):
            maybe_done(ctx, k)

    @m.handler("PHYS_ENERGY", consumes="reduce.out", message="REDUCE_RESULT")
    def on_energy(ctx):
        with st["lock"]:
            st["energy"][ctx.task.meta0] = ctx.task.meta1
        return maybe_done(ctx, ctx.task.meta0)

    @m.init
    def start(system):
        system.submit("TIMER_SET", meta0=TIMER_ID, meta1=timer.arg(delay=2, period=2))

    return m


def main(n: int = 64, steps: int = 10, workers: int = 2) -> dict:
    lines = []
    phys = physics_module(n, steps)
    store = kv.module(capacity=max(n, 8))
    mods = [timer.module(), store, reduce.module(n=n, op="sum", timeout=200),
            gate.module(n=n), log.module(sink=lambda lv, s: lines.append(s), rate=10_000),
            stats.module(period=10, names={1: "steps", 2: "energy"}), phys]
    with ggmk.boot(mods, workers=workers) as system:
        idle = system.run(timeout=60)
        errors = len(system.dead_letters("sys.error")[0])
    st = phys.state
    final = {i: store.kv.table.get(i) for i in range(n)}
    return {"idle": bool(idle), "steps": len(st["done"]),
            "energy": [st["energy"][k] for k in sorted(st["done"])],
            "positions_match": all(final[i] == int(st["pos"][i]) for i in range(n)),
            "log_lines": len(lines), "first_line": lines[0] if lines else None,
            "stats": mods[5].stats.snapshots[-1]["counters"] if mods[5].stats.snapshots else {},
            "errors": errors}


if __name__ == "__main__":
    print(json.dumps(main()))
