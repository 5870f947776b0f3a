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
           "device_module", "device_line", "type_ids"]

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
    if isinstance(fmt, str):
        text = fmt.encode()
    elif isinstance(fmt, (bytes, bytearray, memoryview)):
        text = bytes(fmt)
    else:                       # (bytes(5) made a line of 5 NUL bytes)
        raise TypeError(f"log: fmt={fmt!r}: allowed a str or bytes (the %-format)")
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
        if sink is not None and not callable(sink):
            raise BootError(f"log: sink must be None or a callable (sink(level, line)), got "
                            f"{sink!r}")
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


def device_line(type_id: int, meta0: int, meta1: int, payload=None) -> tuple[int, str] | None:
    """(level, line) of a record the device log sent to the host (``channels=False``), formatted
    as the CPU version writes it: ``LOG_LINE`` (``payload``: its bytes, read from the device
    arena, e.g. ``DeviceKernel.read_arena``; a malformed one, or a level that was no level, is
    an ``ERROR`` line saying so) and ``LOG_DROPPED`` (``WARN`` ``log: N lines dropped (rate
    limit)``); None for any other type."""
    ids = type_ids()
    meta0, meta1 = int(meta0) & _U64, int(meta1) & _U64
    if type_id == ids["LOG_DROPPED"]:
        return WARN, f"log: {meta0} lines dropped (rate limit)"
    if type_id != ids["LOG_LINE"]:
        return None
    if payload is not None:
        return decode(payload)
    if meta0 > 0xFF:                   # the task's meta0 was not a level (the CPU's words)
        return ERROR, f"{meta1} [bad level {meta0}: allowed 0..255]"
    return meta0, f"{meta1}"


_U64 = (1 << 64) - 1
_DROP_TEXT = b"log: %d lines dropped (rate limit)"      # the CPU version's drop report


def _words(raw: bytes) -> list[int]:
    """``raw`` as little-endian int64 words (zero-padded), for device stores."""
    raw = raw + b"\0" * (-len(raw) % 8)
    return [int.from_bytes(raw[i:i + 8], "little", signed=True) for i in range(0, len(raw), 8)]


def device_module(*, level="info", rate: float = 1000.0, burst: int | None = None,
                  tick_ns: int = 1_000_000, base: int | None = None, name: str = "log",
                  channels: bool = False, capacity: int = 256, out: str | None = None):
    """The log module for the GPU kernel (``ggmk.device``): filters and rate-limits on the
    device, formats on the host.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    A ``LOG`` task (meta0 = level, meta1 = a number; or a payload from :func:`encode`, whose
    first byte is the level) below ``level`` is counted and dropped; otherwise it takes a
    token from a bucket of ``burst`` tokens (default ``rate`` per second, at least 1) refilled
    at ``rate`` lines per second (``tick_ns``: the kernel's tick, to convert). With a token the
    line goes to the host as ``LOG_LINE`` (meta0 = level, meta1 = the number, the payload
    handed on); without one it is dropped and counted, and the next line that passes is
    preceded by ``LOG_DROPPED`` (meta0 = lines dropped since the last report, meta1 = the
    total), so a flood costs the host a bounded number of records and the loss is never
    silent. :func:`device_line` formats both records as the CPU version writes its lines.
    Bad input is an ``ERROR`` line, as on the CPU: a meta0 that is no level (above 255) keeps
    its value in the ``LOG_LINE``'s meta0 (``device_line``: ``N [bad level L: allowed
    0..255]``), a payload shorter than a header is handed on as it came (``log: malformed LOG
    payload (N bytes)``); both are counted in user word ``base + 8``.

    ``channels=True`` subscribes to ``NAME.in`` and sends the lines that pass, as they came
    (``LOG`` records), on the device channel ``out`` (default ``NAME.host``; name it
    ``"hostlog.in"`` and a CPU ``log.module(name="hostlog")`` formats them through the
    bridge: a bad level or a malformed payload as the CPU version writes it); a line that
    finds it full is dropped and counted. A drop report is then a ``LOG`` record whose
    payload the device builds (``encode(WARN, "log: %d lines dropped (rate limit)", n)``), so
    the CPU log writes the CPU version's ``log: N lines dropped (rate limit)``; one that finds
    the arena or the channel full is sent with the next line that passes.

    State: user words ``base .. base + 9`` (exclusive; ``m.user_words``): lock, milli-tokens,
    last refill tick, dropped since the report, dropped total, filtered, lines passed,
    bucket-initialised flag, bad lines. Without ``base`` from 28672, or where the kernel's
    build finds free words when other modules' words are there (``m.user_words`` says where
    once the kernel is made).

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
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g
    import math

    import ggmk.device as gd
    from ggmk.errors import BootError as _BE
    from ggmk.modules import device_api, device_check, device_region
    g = device_api()
    lv = _level(level)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or not 0 < rate <= 1e9:
        raise _BE(f"log (device): rate must be > 0 and finite, at most 1e9 (lines per second), "
                  f"got {rate!r}")
    device_check("log (device): tick_ns", tick_ns, 1, 10**12)
    milli_per_tick = int(round(rate * tick_ns / 1e6))
    if milli_per_tick < 1:
        raise _BE(f"log (device): rate {rate!r} lines/s is below one line per 1000 ticks of "
                  f"{tick_ns} ns; raise rate")
    if milli_per_tick > 1 << 50:
        raise _BE(f"log (device): rate={rate!r} with tick_ns={tick_ns} refills "
                  f"{milli_per_tick} milli-tokens a tick; allowed at most 2**50: lower rate "
                  f"or tick_ns")
    bst = burst if burst is not None else max(int(rate), 1)
    device_check("log (device): burst", bst, 1, 2**40)
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = 28672
    lo, hi = device_region("log (device)", base, 9, "its state")
    ids = type_ids()
    LOGT, LINE, DROPT = ids["LOG"], ids["LOG_LINE"], ids["LOG_DROPPED"]
    LEVEL, RM, CAPM, YIELD = lv, milli_per_tick, bst * 1000, T.YIELD
    DTFULL = (CAPM + RM - 1) // RM                    # ticks that refill a whole bucket
    WARNL, ERRL, HDR = WARN, ERROR, _HDR.itemsize
    # the drop report's payload: encode(WARN, _DROP_TEXT, n), built on the device
    TW = _words(_DROP_TEXT)
    assert len(TW) == 5
    TW0, TW1, TW2, TW3, TW4 = TW
    TLEN = len(_DROP_TEXT)
    RPT_LEN = HDR + TLEN
    RPT_ALLOC = HDR + 8 * len(TW)                     # (the last text word is stored whole)
    CH = bool(channels)
    m = gd.Module(name)
    LOCK = TOK = LAST = PEND = DTOT = FILT = NLINES = INITW = BADW = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region):
        INITW is 1 once the bucket was filled, BADW counts bad levels and malformed
        payloads."""
        nonlocal LOCK, TOK, LAST, PEND, DTOT, FILT, NLINES, INITW, BADW
        LOCK, TOK, LAST, PEND, DTOT, FILT, NLINES, INITW, BADW = range(b, b + 9)
        m.log_layout = {"lock": LOCK, "dropped_total": DTOT, "filtered": FILT,
                        "lines": NLINES, "bad": BADW}
    place(base)
    C_HOST = 0
    if CH:
        C_HOST = m.channel(out or f"{name}.host", message=LOGT, mode="p2p", capacity=capacity)

    @m.handler(LOGT, max_yields=60000, consumes=f"{name}.in" if CH else None)
    def log_line(ctx, task):
        ptr = g.payload_ptr(task)
        nb = g.payload_len(task)
        m0 = g.meta0(task)
        if ptr != 0:
            if nb < HDR:                              # malformed: an ERROR line (the host
                lvl = ERRL                            # writes why), never a level read from
                g.user_add(ctx, BADW, 1)              # a byte of something else
            else:
                lvl = g.load_u8(ctx, ptr)
        elif m0 < 0 or m0 > 255:                      # not a level: an ERROR line, not
            lvl = ERRL                                # truncated to its low byte
            g.user_add(ctx, BADW, 1)
        else:
            lvl = m0
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
        elif now - last >= DTFULL:
            tok = CAPM                                # (no overflow after a long pause)
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
        if CH:
            if pend > 0:
                # the report as the CPU version writes it: a LOG payload built here
                rp = g.alloc(ctx, RPT_ALLOC)
                if rp == 0:
                    g.user_add(ctx, PEND, pend)       # arena full: with the next line
                else:
                    g.store_u8(ctx, rp, WARNL)
                    g.store_u8(ctx, rp + 1, 1)        # one argument: the count
                    g.store_i64(ctx, rp + 2, pend)
                    g.store_i64(ctx, rp + 10, 0)
                    g.store_i64(ctx, rp + 18, 0)
                    g.store_i64(ctx, rp + 26, 0)
                    g.store_i64(ctx, rp + 34, TLEN)   # (u32; its high bytes: the text's)
                    g.store_i64(ctx, rp + HDR, TW0)
                    g.store_i64(ctx, rp + HDR + 8, TW1)
                    g.store_i64(ctx, rp + HDR + 16, TW2)
                    g.store_i64(ctx, rp + HDR + 24, TW3)
                    g.store_i64(ctx, rp + HDR + 32, TW4)
                    if g.emit_chan_full(ctx, C_HOST, WARNL, pend, rp, RPT_LEN, -1) != 0:
                        g.release(ctx, rp)
                        g.user_add(ctx, PEND, pend)   # full: report it with the next line
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_chan_full(ctx, C_HOST, m0, g.meta1(task), ptr, nb, -1) != 0:
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
            lw = lvl
            if ptr == 0 and lvl != m0:
                lw = m0                               # a bad level: kept, for device_line
            if g.emit_full(ctx, LINE, lw, g.meta1(task), ptr, nb, -1, 0) != 0:
                if ptr != 0:
                    g.release(ctx, ptr)
                g.user_add(ctx, PEND, 1)              # queues full: dropped, counted, reported
                g.user_add(ctx, DTOT, 1)
                g.user_add(ctx, NLINES, -1)
        return 0

    m.user_words = (lo, hi, f"{name}: log (device) lock, bucket, counters")
    if movable:
        m.movable(place)
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
