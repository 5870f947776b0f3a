"""The ``log`` module (SPEC §10): log lines with levels, formatted on the host, rate-limited.

Input: channel ``NAME.in`` (type ``LOG``) or ``LOG`` tasks submitted directly. A ``LOG``
payload is ``{level u8, nargs u8, a0..a3 i64, text bytes}``: the line is
``text % (a0, .., a[nargs-1])`` (``%``-formatting, done here on the host, so a producer -
a GPU handler included - only ships numbers); without a payload ``meta0`` is the level and
``meta1`` a number to print. :func:`encode` builds payloads; ``ggmk.sdk.log/logf`` emit them.

Levels: ``DEBUG`` 10, ``INFO`` 20, ``WARN`` 30, ``ERROR`` 40 (Python ``logging``'s numbers);
lines below ``level`` are filtered (counted in ``filtered``). A line whose format does not fit
its arguments is written as ``<text> [bad format: ...]``, never raised.

Flood control: a token bucket of ``rate`` lines per second (``burst`` deep). Lines over it
are dropped and counted; the next line that passes is preceded by a ``WARN`` line
``log: N lines dropped (rate limit)``, and ``m.log.stats()["dropped"]`` has the total (a
final report is written at halt if lines were dropped since the last one).

Output: ``sink(level, line)`` when given; else Python ``logging`` (logger ``ggmk.log``). The
last ``keep`` lines are in ``m.log.lines`` either way.

Example::

    import ggmk
    from ggmk.modules import log

    lg = log.module(level="info", rate=1000)
    with ggmk.boot([lg], workers=2) as system:
        system.submit("LOG", payload=log.encode(log.WARN, "disk %d at %d%%", 3, 97))
        system.run()
    print(lg.log.lines[-1])     # (30, 'disk 3 at 97%')
"""
from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np

from ggmk.errors import BootError
from ggmk.modules import instance_type, std_module

__all__ = ["module", "encode", "DEBUG", "INFO", "WARN", "ERROR", "LEVELS"]

DEBUG, INFO, WARN, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warn": WARN, "warning": WARN, "error": ERROR}
_HDR = np.dtype([("level", "u1"), ("nargs", "u1"), ("a", "<i8", (4,)), ("tlen", "<u4")])


def _level(level) -> int:
    if isinstance(level, str) and level.lower() in LEVELS:
        return LEVELS[level.lower()]
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 255:
        return level
    raise ValueError(f"log level must be one of {sorted(LEVELS)} or an int 0..255, "
                     f"got {level!r}")


def encode(level, fmt: str | bytes, *args) -> bytes:
    """A LOG payload: ``level``, a ``%``-format and up to 4 integer arguments."""
    lv = _level(level)
    if len(args) > 4:
        raise ValueError(f"log: at most 4 arguments, got {len(args)}")
    a = [0, 0, 0, 0]
    for i, x in enumerate(args):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or \
                not -(1 << 63) <= int(x) < 1 << 63:
            raise ValueError(f"log: argument {i} must be an int64, got {x!r}")
        a[i] = int(x)
    text = fmt.encode() if isinstance(fmt, str) else bytes(fmt)
    h = np.zeros(1, _HDR)
    h[0] = (lv, len(args), a, len(text))
    return h.tobytes() + text


class _Log:
    def __init__(self, level, rate, burst, sink, keep, clock):
        self.level = _level(level)
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise BootError(f"log: rate must be > 0 lines per second, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1))
        self.tokens = self.burst
        self.sink = sink
        self.lines: deque = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.last_ns = None
        self.pending_drops = 0
        self.counters = {"lines": 0, "dropped": 0, "filtered": 0, "bad_format": 0}
        self.py = logging.getLogger("ggmk.log")

    def _write(self, lv, line):
        self.lines.append((lv, line))
        self.counters["lines"] += 1
        if self.sink is not None:
            self.sink(lv, line)
        else:
            self.py.log(lv, line)

    def take(self, now_ns) -> bool:
        if self.last_ns is not None:
            self.tokens = min(self.burst, self.tokens + (now_ns - self.last_ns) * 1e-9 * self.rate)
        self.last_ns = now_ns
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def line(self, now_ns, lv, text):
        with self.lock:
            if lv < self.level:
                self.counters["filtered"] += 1
                return
            if not self.take(now_ns):
                self.counters["dropped"] += 1
                self.pending_drops += 1
                return
            if self.pending_drops:
                self._write(WARN, f"log: {self.pending_drops} lines dropped (rate limit)")
                self.pending_drops = 0
            self._write(lv, text)

    def run(self, ctx, batch):
        system = ctx.system
        arena = system.arena
        recs = batch.records
        now = system.clock()
        for r in recs:
            ptr, ln = int(r["payload_ptr"]), int(r["payload_len"])
            if not ptr:
                lv = int(r["meta0"]) & 0xFF
                self.line(now, lv, f"{int(r['meta1'])}")
                continue
            raw = bytes(arena.view(ptr, ln))
            if ln < _HDR.itemsize:
                self.counters["bad_format"] += 1
                self.line(now, ERROR, f"log: malformed LOG payload ({ln} bytes)")
                continue
            h = np.frombuffer(raw[:_HDR.itemsize], _HDR)[0]
            text = raw[_HDR.itemsize:_HDR.itemsize + int(h["tlen"])].decode("utf-8", "replace")
            k = min(int(h["nargs"]), 4)
            args = tuple(int(x) for x in h["a"][:k])
            try:
                out = text % args if k else text
            except (TypeError, ValueError) as e:
                self.counters["bad_format"] += 1
                out = f"{text} [bad format: {e}; args {args}]"
            self.line(now, int(h["level"]), out)

    def fini(self):
        with self.lock:
            if self.pending_drops:
                self._write(WARN, f"log: {self.pending_drops} lines dropped (rate limit)")
                self.pending_drops = 0

    def stats(self) -> dict:
        return dict(self.counters)


def module(*, level="info", rate: float = 1000.0, burst: float | None = None, sink=None,
           keep: int = 1000, name: str = "log"):
    """A configured log ``ggmk.Module`` (see the module docstring); ``m.log``: state."""
    m = std_module(name, "log")
    st = _Log(level, rate, burst, sink, keep, None)
    m.log = st
    m.handler(instance_type("LOG", name, "log"), batch=True, consumes=f"{name}.in",
              message="LOG", name="on_log")(st.run)
    m.fini(lambda system: st.fini())
    return m
