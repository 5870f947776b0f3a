"""Modules for the device-process and watchdog tests (module level: the device process gets
them by pickle, by reference). One compiled GPU kernel, reused by every test that boots it.

* CPU -> GPU ``wd.in`` (WD_WORK, lossless p2p): GPU handler WD_ECHO sends meta0 back on GPU -> CPU
  ``wd.back`` (WD_BACK, lossless p2p), where CPU batch handler WD_SINK records it. A message with
  ``meta1 == HANG`` never returns: the handler loops on a volatile load of a user word nobody
  sets (an atomic load: LLVM cannot delete the loop), so the GPU kernel's workers stop beating.
* CPU handler WD_LOCAL: the CPU kernel's own work (no bridge): counts, and notes whether the GPU
  kernel was being reset while it ran (``STATE.system``).
"""
from __future__ import annotations

import threading

import ggmk
import ggmk.dual
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.typereg import TypeRegistry

TYPES = {"WD_WORK": 301, "WD_BACK": 302, "WD_ECHO": 310, "WD_SINK": 320, "WD_LOCAL": 321}
HANG = 0xDEAD
HANG_WORD = 77                 # the user word the stuck handler waits on (never set)


def registry() -> TypeRegistry:
    reg = TypeRegistry()
    for name, tid in TYPES.items():
        reg.register(name, id=tid)
    return reg


# ---------------------------------------------------------------------------- the GPU side
gpu = gd.Module("wdgpu")
BACK = gpu.channel("wd.back", message="WD_BACK", mode="p2p", guarantee="lossless",
                   capacity=128)


@gpu.handler("WD_ECHO", consumes="wd.in", message="WD_WORK")
def wd_echo(ctx, task):
    if g.meta1(task) == 0xDEAD:
        while g.user_get(ctx, 77) == 0:      # never set: a handler that never returns
            pass
    if g.emit_chan(ctx, BACK, g.meta0(task), 0) == -100:
        return WAIT
    return 0


# ---------------------------------------------------------------------------- the CPU side
class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.system = None
        self.clear()

    def clear(self):
        with self.lock:
            self.back: list = []
            self.local = 0
            self.local_during_reset = 0


STATE = State()
cpu = ggmk.Module("wdcpu")
IN = cpu.produces("wd.in", "WD_WORK", mode="p2p", guarantee="lossless", capacity=256)


@cpu.handler("WD_SINK", consumes="wd.back", message="WD_BACK", batch=True)
def wd_sink(ctx, batch):
    with STATE.lock:
        STATE.back.extend(batch.meta0.tolist())


@cpu.handler("WD_LOCAL")
def wd_local(ctx):
    s = STATE.system
    resetting = s is not None and s.resetting()
    with STATE.lock:
        STATE.local += 1
        if resetting:
            STATE.local_during_reset += 1
    return ggmk.OK


def modules():
    return [cpu, gpu]


def boot(**kw):
    STATE.clear()
    kw.setdefault("workers", 2)
    kw.setdefault("device_process", True)
    s = ggmk.dual.boot(modules(), device=kw.pop("device", "cpu"), types=registry(), **kw)
    STATE.system = s
    return s
