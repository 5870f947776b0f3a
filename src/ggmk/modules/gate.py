"""The ``gate`` module (SPEC §10): a reusable barrier - ``n`` arrivals open it.

Input: ``GATE_ARRIVE`` on channel ``NAME.arrive`` or submitted directly: ``meta0`` = gate id,
``meta1`` = the arriving task's tag, with any payload. Each arrival is held (its payload kept)
until the gate has ``n`` of them (``n`` per gate: ``sizes={gate: n}``, or ``gate.set_size``);
then all are released, in arrival (sequence) order, as ``GATE_PASS`` on ``NAME.open``
(``meta0`` = gate id, ``meta1`` = tag, the payload as it came) and the gate closes again for
the next round (``m.gate.rounds[gate]`` counts openings). Arrivals past ``n`` in one batch
belong to the next round.

Releases that find ``NAME.open`` full wait in order in the module's outbox (never lost); while
``outbox_limit`` of them wait, new arrivals are pushed back with ``WAIT``. At halt, arrivals
still waiting at a closed gate go to ``sys.dropped`` with ``CHAN_CLOSED`` (their count is in
``stats()``), so nothing disappears silently.

Example::

    import ggmk
    from ggmk.modules import gate

    g = gate.module(n=3)
    app = ggmk.Module("app")
    passed = []

    @app.handler("APP_GO", consumes="gate.open", message="GATE_PASS")
    def go(ctx): passed.append(ctx.task.meta1)

    with ggmk.boot([g, app], workers=2) as system:
        system.submit("GATE_ARRIVE", meta0=1, meta1=[10, 11])
        system.run()
        assert passed == []                       # 2 of 3: still closed
        system.submit("GATE_ARRIVE", meta0=1, meta1=12)
        system.run()
    print(sorted(passed))   # [10, 11, 12]
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import Outbox, instance_type, std_module

__all__ = ["module"]


def _check_n(n, what="n"):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BootError(f"gate: {what} must be a positive int, got {n!r}")
    return n


class _Gates:
    def __init__(self, name, n, sizes, limit):
        self.n = _check_n(n)
        self.sizes = {int(k): _check_n(v, f"sizes[{k!r}]") for k, v in (sizes or {}).items()}
        self.waiting: dict[int, list] = {}
        self.rounds: dict[int, int] = {}
        self.lock = threading.Lock()
        self.out = Outbox(f"{name}.open", instance_type("GATE_FLUSH", name, "gate"), limit)
        self.counters = {"arrivals": 0, "released": 0, "opened": 0, "waits": 0, "halted": 0}

    def set_size(self, gate: int, n: int) -> None:
        with self.lock:
            self.sizes[int(gate)] = _check_n(n)

    def size(self, gate: int) -> int:
        return self.sizes.get(gate, self.n)

    def arrive(self, ctx, batch):
        system = ctx.system
        if self.out.flush(system) and self.out.full:
            self.counters["waits"] += len(batch)
            return T.WAIT
        recs = batch.records
        order = np.argsort(recs["seq"], kind="stable")
        arena = system.arena
        with self.lock:
            for i in order.tolist():
                r = recs[i]
                g = int(r["meta0"])
                ptr, ln = int(r["payload_ptr"]), int(r["payload_len"])
                if ptr:
                    arena.retain(ptr)           # ours now (the worker releases its own ref)
                w = self.waiting.setdefault(g, [])
                w.append((int(r["meta1"]), ptr, ln))
                self.counters["arrivals"] += 1
                if len(w) >= self.size(g):
                    del self.waiting[g]
                    self.rounds[g] = self.rounds.get(g, 0) + 1
                    self.counters["opened"] += 1
                    self.counters["released"] += len(w)
                    for tag, p, n in w:
                        self.out.put(g, tag, p, n)
        self.out.flush(system)
        return None

    def fini(self, system):
        self.out.drop_all(system)
        with self.lock:
            items = [(g, tag, p) for g, w in self.waiting.items() for tag, p, _ in w]
            self.waiting.clear()
        if not items:
            return
        a = np.array(items, dtype=np.uint64)
        self.counters["halted"] += len(items)
        recs = T.make(len(items), type=system.type_id("GATE_ARRIVE"), meta0=a[:, 0],
                      meta1=a[:, 1], payload_ptr=a[:, 2])
        system.dead_letter(recs, T.CHAN_CLOSED, which="sys.dropped")

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counters, waiting_arrivals=sum(len(w) for w in self.waiting.values()),
                        waiting_releases=len(self.out))


def module(n: int, *, sizes: dict | None = None, name: str = "gate", capacity: int = 1024,
           outbox_limit: int = 4096, mode: str = "fanout"):
    """A configured gate ``ggmk.Module``: ``n`` arrivals open a gate (``sizes`` per gate id).
    ``m.gate``: state (``set_size``, ``rounds``, ``stats()``)."""
    m = std_module(name, "gate")
    st = _Gates(name, n, sizes, outbox_limit)
    m.gate = st
    m.produces(f"{name}.open", "GATE_PASS", mode=mode, capacity=capacity)
    m.handler(instance_type("GATE_ARRIVE", name, "gate"), batch=True,
              consumes=f"{name}.arrive", message="GATE_ARRIVE", name="on_arrive")(st.arrive)

    @m.handler(st.out.flush_type, name="on_flush")
    def on_flush(ctx):
        st.out.flushed(ctx.system)

    m.fini(st.fini)
    return m
