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
from ggmk import task as T
from ggmk.modules import instance_type, std_module, try_lock, unlock

__all__ = ["module", "encode", "decode", "DEBUG", "INFO", "WARN", "ERROR", "LEVELS",
           "device_module", "type_ids"]

DEBUG, INFO, WARN, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warn": WARN, "warning": WARN, "error": ERROR}
_HDR = np.dtype([("level", "u1"), ("nargs", "u1"), ("a", "<i8", (4,)), ("tlen", "<u4")])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def decode(payload: bytes) -> tuple[int, str]:
    """(level, formatted line) of a LOG payload (what ``encode`` made); a malformed one or a
    format that does not fit its arguments gives a readable line, never an exception."""
    raw = bytes(payload)
    if len(raw) < _HDR.itemsize:
        return ERROR, f"log: malformed LOG payload ({len(raw)} bytes)"
    h = np.frombuffer(raw[:_HDR.itemsize], _HDR)[0]
    text = raw[_HDR.itemsize:_HDR.itemsize + int(h["tlen"])].decode("utf-8", "replace")
    k = min(int(h["nargs"]), 4)
    args = tuple(int(x) for x in h["a"][:k])
    try:
        return int(h["level"]), (text % args if k else text)
    except (TypeError, ValueError) as e:
        return int(h["level"]), f"{text} [bad format: {e}; args {args}]"


class _Log:
    def __init__(self, level, rate, burst, sink, keep, clock):
        self.level = _level(level)
        if not _number(rate) or not rate > 0:
            raise BootError(f"log: rate must be a number > 0 (lines per second), got {rate!r}")
        if burst is not None and (not _number(burst) or not burst >= 1):
            # below one token no line could ever pass: every line dropped, silently in effect
            raise BootError(f"log: burst must be None (= rate) or a number >= 1 (lines), "
                            f"got {burst!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise BootError(f"log: keep must be an int >= 0 (lines kept in m.log.lines), "
                            f"got {keep!r}")
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
                lv = int(r["meta0"])
                if lv > 0xFF:              # not a level: written, with why, not truncated
                    self.counters["bad_format"] += 1
                    self.line(now, ERROR, f"{int(r['meta1'])} [bad level {lv}: allowed 0..255]")
                    continue
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


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)


def type_ids() -> dict[str, int]:
    """The log types' ids (from log.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return {t.name: t.id for t in _manifest(str(Path(__file__).with_name("log.toml"))).types}


def device_module(*, level="info", rate: float = 1000.0, burst: int | None = None,
                  tick_ns: int = 1_000_000, base: int = 16384, name: str = "log",
                  channels: bool = False, capacity: int = 256, out: str | None = None):
    """The log module for the GPU kernel (``ggmk.device``): filters and rate-limits on the
    device, formats on the host.

    A ``LOG`` task (meta0 = level, meta1 = a number; or a payload from :func:`encode`, whose
    first byte is the level) below ``level`` is counted and dropped; otherwise it takes a
    token from a bucket of ``burst`` tokens (default ``rate`` per second, at least 1) refilled
    at ``rate`` lines per second (``tick_ns``: the kernel's tick, to convert). With a token the
    line goes to the host as ``LOG_LINE`` (meta0 = level, meta1 = the number, the payload
    handed on: :func:`decode` formats it); without one it is dropped and counted, and the next
    line that passes is preceded by ``LOG_DROPPED`` (meta0 = lines dropped since the last
    report, meta1 = the total), so a flood costs the host a bounded number of records and the
    loss is never silent. ``channels=True`` subscribes to ``NAME.in`` and sends the lines that
    pass, as ``LOG`` records, on the device channel ``out`` (default ``NAME.host``; name it
    ``"hostlog.in"`` and a CPU ``log.module(name="hostlog")`` formats them through the
    bridge; a drop report is a ``WARN`` line whose number is the count); a line that finds
    it full is dropped and counted.

    State: user words ``base .. base + 8``: lock, milli-tokens, last refill tick, dropped
    since the report, dropped total, filtered, lines passed, bucket-initialised flag.

    What the numeric subset forbids here: formatting (no strings on the device: the payload
    travels as bytes and the host formats it), Python ``logging``, a sink callable, and the
    final drop report at halt (the host has the total in the last ``LOG_DROPPED`` and in user
    word ``base + 4``).

    Example::

        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import log

        ids = log.type_ids()
        with gd.DeviceKernel([log.device_module(rate=1000, burst=2)], target="cpu") as k:
            k.push(task.make(5, type=ids["LOG"], meta0=log.WARN, meta1=range(5)))
            got = k.pull_until(2, timeout=300)             # 2 pass, 3 are dropped
        print(got["meta1"].tolist())                        # [0, 1]
    """
    global g
    import ggmk.device as gd
    from ggmk.errors import BootError as _BE
    from ggmk.modules import device_api, device_check
    g = device_api()
    lv = _level(level)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
        raise _BE(f"log (device): rate must be > 0 lines per second, got {rate!r}")
    device_check("log (device): tick_ns", tick_ns, 1, 10**12)
    milli_per_tick = int(round(rate * tick_ns / 1e6))
    if milli_per_tick < 1:
        raise _BE(f"log (device): rate {rate!r} lines/s is below one line per 1000 ticks of "
                  f"{tick_ns} ns; raise rate")
    bst = burst if burst is not None else max(int(rate), 1)
    device_check("log (device): burst", bst, 1, 2**40)
    device_check("log (device): base", base, 0, 65536 - 8)
    ids = type_ids()
    LOGT, LINE, DROPT = ids["LOG"], ids["LOG_LINE"], ids["LOG_DROPPED"]
    LOCK, TOK, LAST, PEND, DTOT, FILT, NLINES = (base, base + 1, base + 2, base + 3, base + 4,
                                                 base + 5, base + 6)
    LEVEL, RM, CAPM, YIELD = lv, milli_per_tick, bst * 1000, T.YIELD
    WARNL = WARN
    CH = bool(channels)
    m = gd.Module(name)
    C_HOST = 0
    if CH:
        C_HOST = m.channel(out or f"{name}.host", message=LOGT, mode="p2p", capacity=capacity)
    INITW = base + 7                                  # 1 once the bucket was filled

    @m.handler(LOGT, max_yields=60000, consumes=f"{name}.in" if CH else None)
    def log_line(ctx, task):
        ptr = g.payload_ptr(task)
        if ptr != 0 and g.payload_len(task) > 0:
            lvl = g.load_u8(ctx, ptr)
        else:
            lvl = g.meta0(task) & 0xFF
        if lvl < LEVEL:
            g.user_add(ctx, FILT, 1)
            return 0
        if not try_lock(ctx, LOCK):
            return YIELD
        now = g.tick(ctx)
        last = g.user_get(ctx, LAST)
        tok = g.user_get(ctx, TOK)
        if g.user_get(ctx, INITW) == 0:
            tok = CAPM                                # the first line: a full bucket
            g.user_set(ctx, INITW, 1)
        elif now > last:
            tok = min(CAPM, tok + (now - last) * RM)
        g.user_set(ctx, LAST, now)
        passed = tok >= 1000
        pend = 0
        if passed:
            tok -= 1000
            pend = g.user_get(ctx, PEND)
            g.user_set(ctx, PEND, 0)
            g.user_add(ctx, NLINES, 1)
        else:
            g.user_add(ctx, PEND, 1)
            g.user_add(ctx, DTOT, 1)
        g.user_set(ctx, TOK, tok)
        total = g.user_get(ctx, DTOT)
        unlock(ctx, LOCK)
        if not passed:
            return 0
        nb = g.payload_len(task)
        if CH:
            if pend > 0:
                if g.emit_chan(ctx, C_HOST, WARNL, pend) != 0:
                    g.user_add(ctx, PEND, pend)       # full: report it with the next line
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_chan_full(ctx, C_HOST, g.meta0(task), g.meta1(task), ptr, nb, -1) != 0:
                if ptr != 0:
                    g.release(ctx, ptr)
                g.user_add(ctx, PEND, 1)              # full: dropped, counted, reported
                g.user_add(ctx, DTOT, 1)
                g.user_add(ctx, NLINES, -1)
        else:
            if pend > 0:
                g.emit_host(ctx, DROPT, pend, total)
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_full(ctx, LINE, lvl, g.meta1(task), ptr, nb, -1, 0) != 0:
                if ptr != 0:
                    g.release(ctx, ptr)
                g.user_add(ctx, PEND, 1)              # queues full: dropped, counted, reported
                g.user_add(ctx, DTOT, 1)
                g.user_add(ctx, NLINES, -1)
        return 0

    m.log_layout = {"lock": LOCK, "dropped_total": DTOT, "filtered": FILT, "lines": NLINES}
    return m
