"""Request tags (unique in the process) and the checks of the host clients' arguments."""
from __future__ import annotations

import math
import operator
import threading

import numpy as np


_U64 = (1 << 64) - 1


def _u64_column(name: str, v, n: int | None = None) -> np.ndarray:
    """``v`` (a column, or a scalar when ``n`` is given) as uint64, or a ValueError naming
    the argument and the value."""
    try:
        if n is not None and np.ndim(v) == 0:
            x = operator.index(v)               # (np.full would truncate a float)
            if isinstance(v, (bool, np.bool_)) or not 0 <= x <= _U64:
                raise ValueError
            a = np.full(n, x, dtype=np.uint64)
        else:
            a = np.asarray(v)
            if a.dtype != np.uint64:
                if a.dtype.kind in "fO" and not isinstance(v, np.ndarray):
                    # Python ints past 2**63 make a list float64 (past 2**64 object) to
                    # NumPy: range-check them as ints and convert exactly
                    xs = [operator.index(x) for x in v]
                    if xs and (min(xs) < 0 or max(xs) > _U64):
                        raise ValueError
                    a = np.array(xs, dtype=np.uint64)
                elif a.size and (a.dtype.kind not in "iu" or
                                 (a.dtype.kind == "i" and a.min() < 0)):
                    raise ValueError
                else:
                    a = a.astype(np.uint64)
            if isinstance(v, (list, tuple)):
                types = set(map(type, v))       # NumPy made True a 1: refuse it as get(True) is
                if bool in types or np.bool_ in types:
                    raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{name}: expected integers in 0..2**64-1 (a column, no bools), got "
                         f"{v!r:.80}") from None
    if a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError(f"{name}: expected a 1-D column" +
                         (f" of {n} values" if n is not None else "") +
                         f", got shape {a.shape}")
    return a


def _check_timeout(who: str, timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{who}: timeout={timeout!r}: allowed a finite number of seconds > 0")
    return timeout


# ------------------------------------------------------------------------------- tags
TAG_MASK = (1 << 48) - 1                # tags are 48-bit (what a kv reply carries)
_tag_lock = threading.Lock()
_tag_next = 1


def new_tags(n: int = 1) -> int:
    """The first of ``n`` consecutive request tags (48-bit, never 0, a run never wraps) that
    no other call in this process gets (until 2**48 tags later): what ``KV`` numbers its
    requests with. Clients of one reply channel share its replies, so their tags must not
    collide: take them here (a tag already awaited on the channel raises ValueError)."""
    global _tag_next
    if n.__class__ is not int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"new_tags: n={n!r}: allowed an int in 0..2**48-1")
        n = int(n)
    if not 0 <= n <= TAG_MASK:
        raise ValueError(f"new_tags: n={n!r}: allowed an int in 0..2**48-1")
    with _tag_lock:
        lo = _tag_next
        if lo + n - 1 > TAG_MASK:
            lo = 1
        _tag_next = lo + n
    return lo


def _tag_m0(m0, m1):
    return m0


def _tag48(m0, m1):
    return m0 & TAG_MASK


_U48 = np.uint64(TAG_MASK)


def _tags48(m0, m1):
    return m0 & _U48
