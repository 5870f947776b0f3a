"""``ggmk top``: a live view of a running system (rich), refreshed in place; q or Ctrl-C quits."""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ggmk.control.tables import column


def _fmt_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(frame: dict, prev: dict | None = None):
    ps = frame["ps"]
    dt = (frame["t"] - prev["t"]) if prev else 0.0
    head = Text.assemble(
        ("ggmk top", "bold"), f"  app {ps.get('app') or '-'}  pid {ps['pid']}  ",
        (ps["state"], "green" if ps["state"] == "running" else "yellow"),
        f"  device {ps.get('device')}  up {ps['uptime_s']:.1f}s  (q quits)")
    # rates need two frames: a single one (``--once``) has no rate columns, room for the rest
    rates = prev is not None
    kt = Table(title="kernels", expand=True)
    for c in ("kernel", "state", "workers", "tick", "done", "rate/s", "errors", "queued"):
        if c != "rate/s" or rates:
            column(kt, c, right=c not in ("kernel", "state"))
    pk = {k["name"]: k for k in (prev or {}).get("kernels", [])}
    for k in frame["kernels"]:
        rate = ""
        if dt > 0 and k["name"] in pk:
            rate = f"{(k['tasks_done'] - pk[k['name']]['tasks_done']) / dt:,.0f}"
        kt.add_row(k["name"], str(k.get("state")), str(k.get("workers") or "-"),
                   str(k.get("tick")), f"{k.get('tasks_done', 0):,}", *([rate] if rates else []),
                   str(k.get("errors", 0)), str(k.get("queued", 0)))
    wt = Table(title="workers", expand=True)
    for c in ("worker", "tasks", "batches", "parks"):
        column(wt, c)
    for w in frame.get("workers", []):
        wt.add_row(str(w["id"]), f"{w['tasks']:,}", f"{w['batches']:,}", f"{w['parks']:,}")
    ct = Table(title="channels", expand=True)
    chans = frame.get("channels", [])
    # channel and type names stay whole (a user types them into the next command)
    wide = {"channel": max((len(str(c.get("name"))) for c in chans), default=7),
            "type": max((len(str(c.get("type"))) for c in chans), default=4)}
    pc = {c.get("name"): c for c in (prev or {}).get("channels", [])}
    for c in ("channel", "kernel", "type", "depth", "emitted", "rate/s", "dropped"):
        if c != "rate/s" or rates:
            column(ct, c, right=c not in ("channel", "type", "kernel"), min_width=wide.get(c))
    for c in frame.get("channels", []):
        rate = ""
        p = pc.get(c.get("name"))
        if dt > 0 and p is not None:
            rate = f"{((c.get('emitted') or 0) - (p.get('emitted') or 0)) / dt:,.0f}"
        ct.add_row(str(c.get("name")), str(c.get("kernel") or ""), str(c.get("type")),
                   str(c.get("depth")), f"{c.get('emitted') or 0:,}",
                   *([rate] if rates else []), str(c.get("dropped") or 0))
    parts = []
    b = frame.get("bridge")
    if b:
        bt = Table(title="bridge", expand=True)
        for c in ("channel", "direction", "type", "crossed", "in flight", "dead"):
            column(bt, c, right=c not in ("channel", "direction", "type"))
        for name, bc in (b.get("channels") or {}).items():
            bt.add_row(name, str(bc.get("direction")), str(bc.get("type")),
                       f"{bc.get('pushed', bc.get('crossed', 0)):,}",
                       str(bc.get("in_flight", bc.get("waiting_for_room", 0))),
                       str(bc.get("dead", 0)))
        parts = [bt, Text(f"bridge: {b.get('transfers', 0):,} transfers, "
                          f"{b.get('records', 0):,} records, {b.get('payload_copies', 0):,} "
                          f"payload copies, retries {b.get('retries', 0)}, dead-lettered "
                          f"{b.get('dead_lettered', 0)}"
                          + (f", PAUSED ({b['paused']})" if b.get("paused") else ""))]
    tt = Table(title="types", expand=True)
    for c in ("type", "enqueued", "ok", "fail", "retry", "yield", "dropped"):
        column(tt, c, right=c != "type")
    for t in frame.get("types", []):
        tt.add_row(t["type"], *(f"{t.get(k, 0):,}" for k in
                                ("enqueued", "ok", "fail", "retry", "yield", "dropped")))
    a = frame.get("arena", {})
    s = frame.get("sched", {})
    mem = Text(f"arena {_fmt_bytes(a.get('used_bytes'))} used of "
               f"{_fmt_bytes(a.get('total_bytes'))} (high {_fmt_bytes(a.get('high_watermark'))})"
               f"   scheduler: outstanding {s.get('outstanding')}, ready {s.get('ready_depth')}"
               f" (high {s.get('ready_high_watermark')})")
    mods = Text("modules: " + ", ".join(f"{m['name']} ({m['kernel']}, {m['handlers']} "
                                          "handlers)" for m in frame.get("modules", [])))
    # the most telling first: a short terminal crops the bottom
    return Panel(Group(head, kt, *parts, ct, wt, mem, tt, mods), title="ggmk", expand=True)


def run_live(client, interval: float, console, seconds: float | None = None) -> None:
    """Stream frames and redraw in place until q / Ctrl-C / the system halts (or, with
    ``seconds``, until that long has passed)."""
    from rich.live import Live
    latest: dict = {}
    done = threading.Event()
    err: list = []

    def reader():
        try:
            for frame in client.stream("top", {"interval": interval}):
                latest["prev"], latest["cur"] = latest.get("cur"), frame
        except Exception as e:   # noqa: BLE001 - shown after the view closes
            if not done.is_set():
                err.append(e)
        finally:
            done.set()

    threading.Thread(target=reader, daemon=True).start()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = None
    # SIGTERM / SIGHUP unwind like q does (then exit code 128 + the signal): killed by their
    # default action, top left the terminal without echo and line editing (and the cursor
    # hidden)
    stopped: list = []

    def on_signal(signum, frame):
        stopped.append(signum)
        if not done.is_set():        # (once the view closes, the cleanup must not be cut)
            raise _Stopped(signum)
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        old_handlers = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    if fd is not None:
        import termios
        import tty
        old = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    shown = None
    try:
        with Live(Text("connecting..."), console=console, screen=False,
                  auto_refresh=False, transient=False) as live:
            t_end = None if seconds is None else time.monotonic() + seconds
            while not done.is_set():
                if t_end is not None and time.monotonic() >= t_end:
                    break
                cur = latest.get("cur")
                if cur is not None and cur is not shown:
                    live.update(render(cur, latest.get("prev")), refresh=True)
                    shown = cur
                if fd is not None:
                    r, _, _ = select.select([fd], [], [], 0.1)
                    if r:
                        ch = os.read(fd, 32)
                        if b"q" in ch or b"Q" in ch or b"\x03" in ch:
                            break
                else:
                    done.wait(0.1)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        done.set()
        if old is not None:
            import termios
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        client.close()
    if stopped:
        sys.exit(128 + stopped[0])
    if err:
        raise err[0]


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Stopped(BaseException):
    """SIGTERM / SIGHUP while ``top`` runs (a BaseException: no ``except Exception`` takes it)."""
