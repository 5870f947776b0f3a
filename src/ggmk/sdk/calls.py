"""In-handler calls to the standard modules (kv, log, timer, gate, stats), with backpressure."""
from __future__ import annotations



from ggmk.sdk.sends import DEFAULT_DEADLINE, send


def kv_put(ctx, key: int, value, *, tag: int = 0, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    """Put ``value`` (an int: inline; bytes: payload, with ``tag``) into kv module ``prefix``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return send(ctx, f"{prefix}.put", key, tag, payload=bytes(value), deadline=deadline)
    return send(ctx, f"{prefix}.put", key, value, deadline=deadline)


def kv_get(ctx, key: int, tag: int = 0, *, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.get", key, tag, deadline=deadline)


def kv_del(ctx, key: int, tag: int = 0, *, prefix: str = "kv", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.del", key, tag, deadline=deadline)


def log(ctx, level, text: str, *, prefix: str = "log", deadline=DEFAULT_DEADLINE):
    """One line (taken as is, no formatting) to log module ``prefix``."""
    from ggmk.modules import log as _log
    return send(ctx, f"{prefix}.in", payload=_log.encode(level, text), deadline=deadline)


def logf(ctx, level, fmt: str, *args, prefix: str = "log", deadline=DEFAULT_DEADLINE):
    """``fmt % args`` formatted by the log module on the host (up to 4 int args)."""
    from ggmk.modules import log as _log
    return send(ctx, f"{prefix}.in", payload=_log.encode(level, fmt, *args) if args
                else _log.encode(level, fmt.replace("%%", "%")), deadline=deadline)


def timer_once(ctx, timer_id: int, delay: int, *, prefix: str = "timer",
               deadline=DEFAULT_DEADLINE):
    from ggmk.modules import timer as _t
    return send(ctx, f"{prefix}.set", timer_id, _t.arg(delay), deadline=deadline)


def timer_every(ctx, timer_id: int, period: int, *, delay: int | None = None,
                prefix: str = "timer", deadline=DEFAULT_DEADLINE):
    from ggmk.modules import timer as _t
    return send(ctx, f"{prefix}.set", timer_id, _t.arg(delay or period, period),
                deadline=deadline)


def timer_cancel(ctx, timer_id: int, *, prefix: str = "timer", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.cancel", timer_id, deadline=deadline)


def gate_arrive(ctx, gate: int, tag: int = 0, *, payload=None, prefix: str = "gate",
                deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.arrive", gate, tag, payload=payload, deadline=deadline)


def count(ctx, metric: int, delta: int = 1, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.add", metric, delta, deadline=deadline)


def gauge(ctx, metric: int, value: int, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.set", metric, value, deadline=deadline)


def observe(ctx, metric: int, value: int, *, prefix: str = "stats", deadline=DEFAULT_DEADLINE):
    return send(ctx, f"{prefix}.obs", metric, value, deadline=deadline)
