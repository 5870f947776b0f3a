"""The bridge's tunable options and their checks (a bad value is a boot error naming it)."""
from __future__ import annotations

import math

import numpy as np


def check_arena_reserve(share) -> None:
    """The bridge's ``arena_reserve`` option (ValueError naming it unless a share in (0, 1))."""
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        raise ValueError(f"bridge: arena_reserve must be a share of the CPU arena in (0, 1), "
                         f"got {share!r}")


def _count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _amount(v) -> bool:
    # finite: an infinite flush_us or retry_backoff_us would wait forever
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(v)


# upper bounds: ``batch``: a transfer is at most a ring's worth (the rings hold 16,384 /
# 32,768 records by default; a bigger batch only moves a prefix); ``window``: the credit
# window is a compile-time constant the device adds to an int64 credit count (2**70 failed in
# the GPU compile), and as large as a device channel may be; ``max_retries`` and
# ``retry_backoff_us``: a failing link is given up on in hours at most, not never
BATCH_MAX = 1 << 16
WINDOW_MAX = 2**31 - 1
MAX_RETRIES_MAX = 1000
RETRY_BACKOFF_MAX_US = 1_000_000

#: the bridge's tunable options: (what it must be, the check)
OPTION_RULES = {
    "batch": (f"an int 1..{BATCH_MAX} (records per transfer)",
              lambda v: _count(v) and 1 <= v <= BATCH_MAX),
    "flush_us": ("a finite number >= 0 (us a partial batch may wait)", lambda v: _amount(v) and v >= 0),
    "window": (f"None or an int 1..{WINDOW_MAX} (credits per bridge channel)",
               lambda v: v is None or (_count(v) and 1 <= v <= WINDOW_MAX)),
    "max_retries": (f"an int 0..{MAX_RETRIES_MAX} (retries of a failed transfer)",
                    lambda v: _count(v) and 0 <= v <= MAX_RETRIES_MAX),
    "retry_backoff_us": (f"a finite number 0..{RETRY_BACKOFF_MAX_US} (us before the first "
                         "retry; doubled per retry, up to 64 times)",
                         lambda v: _amount(v) and 0 <= v <= RETRY_BACKOFF_MAX_US),
    "pump_helps": ("True or False", lambda v: isinstance(v, bool)),
}


def check_options(opts: dict) -> None:
    """ValueError naming the first bridge option whose value is not allowed (the option, the
    value and what it must be): a bad value must not boot a bridge that then misbehaves (a
    negative ``max_retries`` sent no batch at all and lost every CPU -> GPU message)."""
    for name, v in opts.items():
        if name == "arena_reserve":
            check_arena_reserve(v)
            continue
        rule = OPTION_RULES.get(name)
        if rule is not None and not rule[1](v):
            raise ValueError(f"bridge: {name} must be {rule[0]}, got {v!r}")
