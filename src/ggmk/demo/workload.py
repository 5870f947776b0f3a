"""A small multi-module workload that exercises the CPU kernel end to end.

- ``source``: a timer-driven source that submits mixed task types every tick it is woken;
- ``physics``: a *batch* handler integrating particles (NumPy columns, deterministic);
- ``solver``: a *per-task* handler that yields in phases (3 phases per task);
- ``flaky``: a handler that fails transiently (RETRY with backoff) and sometimes for good
  (FAIL, routed to ``sys.error``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import ggmk
from ggmk import FAIL, OK, RETRY
from ggmk.control.tables import column


def build_modules():
    physics = ggmk.Module("physics", version="0.1.0")

    @physics.handler("PARTICLE_STEP", batch=True, deterministic=True)
    def step(ctx, batch):
        # x += v (fixed point), bounce at 2^20; keep stepping while meta1 (steps left) > 0
        x = batch.meta0.astype(np.int64)
        v = (batch.seq.astype(np.int64) % 7) + 1
        x = np.abs((x + v * 1000) % (1 << 21) - (1 << 20))
        more = batch.meta1 > 0
        if more.any():
            ctx.emit_batch("PARTICLE_STEP", meta0=x[more].astype(np.uint64),
                           meta1=batch.meta1[more] - 1, count=int(more.sum()))

    solver = ggmk.Module("solver", version="0.1.0")

    @solver.handler("SOLVE")
    def solve(ctx):
        t = ctx.task
        if t.yield_count < 3:              # phase 0, 1, 2 each do a slice of work, then yield
            t.meta1 = t.meta1 + t.meta0 * (t.yield_count + 1)
            return ctx.yield_()
        ctx.emit("SOLVED", meta0=t.meta1)
        return OK

    @solver.handler("SOLVED", batch=True)
    def solved(ctx, batch):
        pass

    flaky = ggmk.Module("flaky", version="0.1.0")

    @flaky.handler("FETCH")
    def fetch(ctx):
        t = ctx.task
        if t.meta0 % 50 == 0:
            return FAIL                    # permanent: lands on sys.error with the code
        if t.meta0 % 5 == 0 and t.retries < 2:
            return RETRY                   # transient: retried with backoff
        return OK

    return [physics, solver, flaky]


def run(seconds: float = 3.0, workers: int = 2, seed: int = 1) -> dict:
    mods = build_modules()
    rng = np.random.default_rng(seed)
    t_end = time.monotonic() + seconds
    with ggmk.boot(mods, workers=workers, seed=seed, deterministic=True) as system:
        system.submit("PARTICLE_STEP", meta0=rng.integers(0, 1 << 20, 4096).astype(np.uint64),
                      meta1=50, deterministic=True)
        rounds = 0
        while time.monotonic() < t_end:            # the source: mixed types, every few ms
            system.submit("SOLVE", meta0=rng.integers(1, 100, 200), meta1=0)
            system.submit("FETCH", meta0=np.arange(rounds * 100, rounds * 100 + 100))
            rounds += 1
            system.run(0.005, until_idle=False)
        drained = system.run(until_idle=True, timeout=30)
        trace_hash = system.trace_hash()       # folds the last tick, so stats count it too
        stats = system.stats()
        stats["drained"] = drained
        stats["trace_hash"] = trace_hash
        errors, codes = system.dead_letters("sys.error")
        stats["sys_error_codes"] = {ggmk.task.code_name(c): int((codes == c).sum())
                                    for c in np.unique(codes)}
    stats["halt"] = system.halt_report
    return stats


def _on_sys_error(c: dict) -> int:
    """A type's tasks on sys.error: the ones its handler failed and the ones dead-lettered
    without running (``dropped``: refused, poisoned, halted)."""
    return c["fail"] + c["dropped"]


def render(stats: dict, console: Console) -> None:
    t = Table(title="ggmk demo: tasks per type", title_justify="left")
    for col in ("type", "enqueued", "ok", "yields", "retries", "failed", "sys.error"):
        column(t, col, right=col != "type")
    for name, c in sorted(stats["types"].items()):
        t.add_row(name, f"{c['enqueued']:,}", f"{c['ok']:,}", f"{c['yield']:,}", f"{c['retry']:,}",
                  f"{c['fail']:,}", f"{_on_sys_error(c):,}")
    console.print(t)
    s = stats["sched"]
    q = Table(title="queues (high watermarks) and arena", title_justify="left", show_header=False)
    column(q, "what", right=False)
    column(q, "value", right=False)
    q.add_row("ready queue", f"{s['ready_high_watermark']:,}")
    q.add_row("local queues", ", ".join(f"w{i}: {l['high_watermark']:,}" for i, l in enumerate(s["local"])))
    q.add_row("yield overflow", f"{s['overflow']['high_watermark']:,}")
    q.add_row("event queue", f"{s['events']['high_watermark']:,}")
    a = stats["arena"]["total"]
    q.add_row("arena", f"{a['used_bytes']:,} B used of {a['total_bytes']:,}; high watermark "
                       f"{a['high_watermark']:,} B; allocs {a['allocs']:,}, fails {a['fails']:,}")
    q.add_row("sys.error", ", ".join(f"{k}: {v}" for k, v in stats["sys_error_codes"].items()) or "empty")
    q.add_row("workers", ", ".join(f"w{w['id']}: {w['tasks']:,} tasks" for w in stats["workers"]))
    q.add_row("deterministic ticks", f"{stats['det']['tick']:,} ({stats['det']['tasks']:,} tasks)")
    q.add_row("trace hash", stats["trace_hash"])
    console.print(q)
    types = stats["types"].values()
    halted = stats["halt"]["halted"]
    console.print(f"accounting: {sum(c['ok'] for c in types):,} tasks finished OK, "
                  f"{sum(_on_sys_error(c) for c in types):,} on sys.error with a reason "
                  f"({halted:,} of them halted before running); "
                  f"{'all work finished' if stats['drained'] else 'NOT drained within 30 s'}")


def _number(kind, least: int):
    """An argparse ``type`` for a finite ``kind`` (int or float) >= ``least``: a bad value is a
    usage error naming the option and the allowed range, not a traceback from the kernel."""
    def convert(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {'integer' if kind is int else 'number'}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number (allowed: "
                                             f">= {least})")
        if v < least:
            raise argparse.ArgumentTypeError(f"{v} is not in the range >= {least}")
        return v
    convert.__name__ = kind.__name__
    return convert


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ggmk-demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=_number(float, 0), default=3.0,
                   help="how long the source submits work (>= 0, default 3)")
    p.add_argument("--workers", type=_number(int, 1), default=2,
                   help="worker threads (>= 1, default 2)")
    p.add_argument("--seed", type=_number(int, 0), default=1, help="random seed (>= 0, default 1)")
    a = p.parse_args(argv)
    stats = run(a.seconds, a.workers, a.seed)
    render(stats, Console())
    return 0
