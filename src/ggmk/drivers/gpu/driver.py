"""``GpuDriver``: the GhostNV-style surface (contexts, memory, payload pools, command batches and
fences, the persistent kernel, displays) over whichever backend the machine has. See the package
docstring (``ggmk.drivers.gpu``) for an example."""
from __future__ import annotations

import collections
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from ggmk.errors import DeviceError

from . import commands as C
from .backend import KINDS, Backend
from .config import GpuConfig
from .discovery import SYSFS_PCI_DEVICES, Discovery, discover
from .errors import (CommandError, ContextDestroyed, FenceTimeout, GpuAllocError, GpuConfigError,
                     GpuDriverError, PoolExhausted)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _timeout(value, default: float, what: str, name: str = "timeout",
             positive: bool = False) -> float:
    """``value`` (seconds) checked, or ``default`` when None. Above ``threading.TIMEOUT_MAX``
    (about 292 years) the platform's waits overflow, so such a value is refused, not capped.
    ``name``: the argument the error names; ``positive``: 0 is refused too (a kernel start
    never completes in 0 s)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise GpuDriverError(f"{what}: {name}={value!r} must be a finite number of seconds "
                             f"{'> 0' if positive else '>= 0'}")
    if value > threading.TIMEOUT_MAX:
        raise GpuDriverError(f"{what}: {name}={value!r} is too large: must be at most "
                             f"{threading.TIMEOUT_MAX:g} s (threading.TIMEOUT_MAX)")
    return float(value)


# ---------------------------------------------------------------------------------------------
# handles
# ---------------------------------------------------------------------------------------------
class GpuMemory:
    """An allocation of one context: ``address`` (device pointer on cuda, host address on cpu),
    ``nbytes``, ``kind`` ("device" or "host"). Pass it to commands, ``map`` / ``unmap``,
    ``free``."""

    __slots__ = ("context", "nbytes", "kind", "address", "_h", "freed", "pool")

    def __init__(self, context, handle, nbytes: int, kind: str):
        self.context = context
        self._h = handle
        self.nbytes = nbytes
        self.kind = kind
        self.address = int(handle.address)
        self.freed = False
        self.pool = None

    @property
    def mapped(self) -> bool:
        return self in self.context._maps

    def __repr__(self) -> str:
        state = " freed" if self.freed else ""
        return (f"GpuMemory(ctx={self.context.id}, {self.kind}, {self.nbytes} B at "
                f"{self.address:#x}{state})")


class Fence:
    """Completion of one submitted batch: ``value`` counts 1, 2, ... per context and batches
    finish in order, so a signalled fence means every earlier one of its context signalled."""

    def __init__(self, context, value: int, cmds: list, token):
        self.context = context
        self.value = value
        self.commands = len(cmds)
        self._cmds = cmds
        self._token = token
        self.submitted = time.monotonic()

    @property
    def name(self) -> str:
        return f"fence {self.value} of context {self.context.id}"

    def done(self) -> bool:
        """Signalled (the batch finished, successfully or not)? Never blocks."""
        return self.context._b.done(self._token)

    @property
    def error(self) -> CommandError | None:
        """The failure of a finished batch (None while pending or when it succeeded)."""
        if not self.done():
            return None
        err = self.context._b.error(self._token)
        if err is None:
            return None
        i, exc = err
        if isinstance(exc, ContextDestroyed):
            e = ContextDestroyed(f"gpu_drv: {self.name}: {exc}")   # names fence and context
            e.fence = self
            e.__cause__ = exc
            return e
        cmd = self._cmds[i] if i < len(self._cmds) else None
        e = CommandError(self, i, cmd, exc)
        e.__cause__ = exc
        return e

    def wait(self, timeout: float | None = None) -> "Fence":
        """:meth:`Context.wait` on this fence."""
        return self.context.wait(self, timeout)

    def __repr__(self) -> str:
        return f"Fence(ctx={self.context.id}, value={self.value}, " \
               f"{'done' if self.done() else 'pending'})"


@dataclass
class PoolSlot:
    """One slot of a :class:`PayloadPool`: ``offset`` in the pool's memory, ``address`` on the
    device, ``size`` (the slot size); ``fence`` is the upload's when made by ``put``."""

    pool: "PayloadPool"
    index: int
    offset: int
    address: int
    size: int
    nbytes: int = 0
    fence: Fence | None = None
    generation: int = 0          # which allocation of this slot (a stale handle cannot free it)


class PayloadPool:
    """A fixed number of fixed-size slots preallocated in one piece of context memory, for
    payloads arriving from the CPU. ``alloc`` / ``free`` are O(1) and thread-safe; when every
    slot is in use ``alloc`` raises :class:`PoolExhausted` (``ALLOC_FAIL``)."""

    def __init__(self, context, name: str, slots: int, slot_size: int, kind: str):
        self.context = context
        self.name = name
        self.slots = slots
        self.slot_size = slot_size
        self.mem = context.alloc(slots * slot_size, kind)
        self.mem.pool = self
        self._lock = threading.Lock()
        self._free = list(range(slots - 1, -1, -1))     # stack: slot 0 first
        self._used = [False] * slots
        self._gen = [0] * slots
        self.allocs = self.frees = self.alloc_fail = self.high_watermark = 0
        self.destroyed = False

    @property
    def in_use(self) -> int:
        return self.slots - len(self._free)

    @property
    def available(self) -> int:
        return len(self._free)

    def alloc(self, nbytes: int | None = None) -> PoolSlot:
        """Take a slot (for a payload of ``nbytes``, at most ``slot_size``)."""
        if nbytes is not None and (not _is_int(nbytes) or nbytes < 0):
            raise GpuDriverError(f"payload pool {self.name!r}: nbytes={nbytes!r} must be an "
                                 f"integer >= 0")
        if nbytes is not None and nbytes > self.slot_size:
            with self._lock:
                self.alloc_fail += 1
            raise GpuAllocError(f"payload pool {self.name!r} (context {self.context.id}): a "
                                f"{nbytes} B payload does not fit a {self.slot_size} B slot")
        with self._lock:
            if self.destroyed:
                raise GpuDriverError(f"payload pool {self.name!r}: destroyed")
            if not self._free:
                self.alloc_fail += 1
                raise PoolExhausted(
                    f"payload pool {self.name!r} (context {self.context.id}) exhausted: "
                    f"{self.slots}/{self.slots} slots of {self.slot_size} B in use; free a slot "
                    f"or raise payload_slots")
            i = self._free.pop()
            self._used[i] = True
            self._gen[i] += 1
            gen = self._gen[i]
            self.allocs += 1
            self.high_watermark = max(self.high_watermark, self.slots - len(self._free))
        off = i * self.slot_size
        return PoolSlot(self, i, off, self.mem.address + off, self.slot_size,
                        self.slot_size if nbytes is None else nbytes, generation=gen)

    def free(self, slot: PoolSlot) -> None:
        """Give ``slot`` back. Freeing a slot twice, or one of another pool, is an error."""
        if not isinstance(slot, PoolSlot) or slot.pool is not self:
            raise GpuDriverError(f"payload pool {self.name!r}: {slot!r} is not a slot of this pool")
        with self._lock:
            if self.destroyed:      # the slot went with the pool's memory: not a free
                raise GpuDriverError(f"payload pool {self.name!r}: destroyed; slot "
                                     f"{slot.index} went with it (nothing to free)")
            self._release(slot)

    def _release(self, slot: PoolSlot) -> None:
        """Give ``slot`` back (the caller holds ``_lock``)."""
        if not self._used[slot.index] or self._gen[slot.index] != slot.generation:
            raise GpuDriverError(f"payload pool {self.name!r}: slot {slot.index} is not "
                                 f"allocated (double free?)")
        self._used[slot.index] = False
        self._free.append(slot.index)
        self.frees += 1

    def put(self, data) -> PoolSlot:
        """Take a slot and upload ``data`` (bytes or an array) into it with a Write command;
        ``slot.fence`` signals when it landed."""
        raw = _as_bytes(data, f"payload pool {self.name!r}: put")
        slot = self.alloc(len(raw))
        try:
            slot.fence = self.context.submit([C.Write(self.mem, raw, slot.offset)])
        except BaseException:
            with self._lock:
                if not self.destroyed:  # else the context went meanwhile: nothing to give back
                    self._release(slot)
            raise
        return slot

    def stats(self) -> dict:
        return {"slots": self.slots, "slot_size": self.slot_size, "in_use": self.in_use,
                "available": self.available, "high_watermark": self.high_watermark,
                "allocs": self.allocs, "frees": self.frees, "alloc_fail": self.alloc_fail,
                "bytes": self.mem.nbytes, "kind": self.mem.kind}

    def destroy(self) -> None:
        """Free the pool's memory (slots still held become invalid)."""
        self.context._destroy_pool(self)

    def __repr__(self) -> str:
        return (f"PayloadPool({self.name!r}, ctx={self.context.id}, {self.in_use}/{self.slots} "
                f"x {self.slot_size} B)")


def _as_bytes(data, what: str) -> np.ndarray:
    """A private uint8 copy of host data."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise GpuDriverError(f"{what}: data is a NumPy array of dtype {data.dtype}; it must "
                                 f"hold plain numbers or bytes (no Python objects)")
        try:
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8).copy()
        except (TypeError, ValueError) as e:
            raise GpuDriverError(f"{what}: data (a NumPy array of dtype {data.dtype}, shape "
                                 f"{data.shape}) cannot be taken as bytes: {e}") from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), np.uint8).copy()
    raise GpuDriverError(f"{what}: data must be bytes, bytearray, memoryview or a NumPy array, "
                         f"not {type(data).__name__}")


# ---------------------------------------------------------------------------------------------
# context
# ---------------------------------------------------------------------------------------------
class Context:
    """A GPU context: owns memory, payload pools and an in-order command queue. ``destroy``
    waits for its batches (``command_timeout_ms``), then frees everything it owns."""

    def __init__(self, driver: "GpuDriver", ctx_id: int):
        self.driver = driver
        self.id = ctx_id
        self._b = driver.backend.open_context(ctx_id)
        self._lock = threading.RLock()
        self._mems: dict[int, GpuMemory] = {}
        self._maps: dict[GpuMemory, np.ndarray] = {}
        self._pools: dict[str, PayloadPool] = {}
        self._pending: collections.deque[Fence] = collections.deque()
        self._seq = 0
        self.alive = True
        self.report: dict | None = None

    def _check_alive(self, what: str) -> None:
        if not self.alive:
            raise ContextDestroyed(f"{what}: context {self.id} was destroyed")

    def _own(self, mem, what: str) -> GpuMemory:
        if not isinstance(mem, GpuMemory):
            raise GpuDriverError(f"{what}: expected GpuMemory, got {type(mem).__name__}")
        if mem.context is not self:
            raise GpuDriverError(f"{what}: {mem!r} belongs to context {mem.context.id}, "
                                 f"not context {self.id}")
        if mem.freed:
            raise GpuDriverError(f"{what}: {mem!r} was freed (use after free)")
        return mem

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, nbytes: int, kind: str = "device") -> GpuMemory:
        """Allocate ``nbytes`` of ``kind`` ("device", or "host": pinned memory the device reaches).
        Past the driver's ``memory_reservation``: :class:`GpuAllocError` (``ALLOC_FAIL``)."""
        if not _is_int(nbytes) or nbytes <= 0:
            raise GpuDriverError(f"alloc: nbytes={nbytes!r} must be an integer > 0")
        if kind not in KINDS:
            raise GpuDriverError(f"alloc: kind={kind!r} must be one of {', '.join(KINDS)}")
        nbytes = int(nbytes)
        with self._lock:
            self._check_alive("alloc")
            self.driver._reserve(nbytes, self)
            try:
                h = self._b.alloc(nbytes, kind)
            except MemoryError as e:
                self.driver._release(nbytes, failed=True)
                raise GpuAllocError(f"context {self.id}: {nbytes} B of {kind} memory: the "
                                    f"{self.driver.backend.name} device has no room ({e})") from e
            mem = GpuMemory(self, h, nbytes, kind)
            self._mems[id(mem)] = mem
            return mem

    def free(self, mem: GpuMemory) -> None:
        """Free ``mem`` (after the batches already queued on this context)."""
        with self._lock:
            self._check_alive("free")
            if isinstance(mem, GpuMemory) and mem.freed and mem.context is self:
                raise GpuDriverError(f"free: {mem!r} was already freed (double free)")
            self._own(mem, "free")
            if mem.pool is not None:
                raise GpuDriverError(f"free: {mem!r} is the memory of payload pool "
                                     f"{mem.pool.name!r}; destroy the pool instead")
            if mem in self._maps:
                raise GpuDriverError(f"free: {mem!r} is still mapped; unmap it first")
            self._free(mem)

    def _free(self, mem: GpuMemory) -> None:
        self._b.free(mem._h)
        mem.freed = True
        del self._mems[id(mem)]
        self.driver._release(mem.nbytes)

    def map(self, mem: GpuMemory) -> np.ndarray:
        """A host view (uint8, ``mem.nbytes``) of ``mem``; mapping it again returns the same
        view. On cuda, device memory is staged: writes reach the device at :meth:`unmap`."""
        with self._lock:
            self._check_alive("map")
            self._own(mem, "map")
            view = self._maps.get(mem)
            if view is None:
                view = self._maps[mem] = self._b.map(mem._h)
            return view

    def unmap(self, mem: GpuMemory) -> None:
        with self._lock:
            self._check_alive("unmap")
            self._own(mem, "unmap")
            if mem not in self._maps:
                raise GpuDriverError(f"unmap: {mem!r} is not mapped")
            self._b.unmap(mem._h, self._maps.pop(mem))

    # -- payload pools --------------------------------------------------------------------------
    def payload_pool(self, slots: int | None = None, slot_size: int | None = None,
                     name: str = "payload", kind: str = "device") -> PayloadPool:
        """Create the pool ``name`` (defaults: config ``payload_slots`` x ``payload_slot_size``),
        or return it if it exists with the same shape and ``kind``."""
        cfg = self.driver.config
        slots = cfg.payload_slots if slots is None else slots
        slot_size = cfg.payload_slot_size if slot_size is None else slot_size
        if not _is_int(slots) or slots < 1:
            raise GpuConfigError("payload_slots", slots, "must be an integer >= 1")
        if not _is_int(slot_size) or slot_size < 8 or slot_size % 8:
            raise GpuConfigError("payload_slot_size", slot_size,
                                 "must be a positive multiple of 8 bytes")
        if kind not in KINDS:
            raise GpuDriverError(f"payload_pool {name!r}: kind={kind!r} must be one of "
                                 f"{', '.join(KINDS)}")
        with self._lock:
            self._check_alive("payload_pool")
            pool = self._pools.get(name)
            if pool is not None:
                if (pool.slots, pool.slot_size, pool.mem.kind) != (slots, slot_size, kind):
                    raise GpuDriverError(f"payload_pool: context {self.id} already has pool "
                                         f"{name!r} with {pool.slots} x {pool.slot_size} B of "
                                         f"{pool.mem.kind} memory (asked: {slots} x {slot_size} B "
                                         f"of {kind} memory)")
                return pool
            pool = self._pools[name] = PayloadPool(self, name, int(slots), int(slot_size), kind)
            return pool

    def _destroy_pool(self, pool: PayloadPool) -> None:
        with self._lock:
            if pool.destroyed:
                return
            with pool._lock:
                pool.destroyed = True
            self._pools.pop(pool.name, None)
            if not pool.mem.freed:
                self._maps.pop(pool.mem, None)
                self._free(pool.mem)

    # -- commands -------------------------------------------------------------------------------
    @staticmethod
    def _field_int(i, cmd, field: str, value) -> int:
        """A command's byte offset / count: an integer >= 0 (the error names command and field)."""
        if not _is_int(value) or value < 0:
            raise GpuDriverError(f"command {i} ({type(cmd).__name__}): {field}={value!r} must be "
                                 f"an integer >= 0")
        return int(value)

    def _offset(self, i, cmd, mem: GpuMemory, field: str, value) -> int:
        """A checked offset into ``mem``: 0 .. mem.nbytes (the end itself is an empty range)."""
        off = self._field_int(i, cmd, field, value)
        if off > mem.nbytes:
            raise GpuDriverError(f"command {i} ({type(cmd).__name__}): {field}={off} is past the "
                                 f"end of {mem!r} (allowed 0..{mem.nbytes})")
        return off

    def _range(self, i, cmd, mem, off, n, what, field="offset"):
        mem = self._own(mem, f"command {i} ({type(cmd).__name__})")
        off = self._offset(i, cmd, mem, field, off)
        n = self._field_int(i, cmd, "nbytes", n)
        if off + n > mem.nbytes:
            raise GpuDriverError(f"command {i} ({type(cmd).__name__}): {what} bytes "
                                 f"[{off}, {off + n}) are outside {mem!r}")
        return mem._h, off, n

    def _resolve(self, i: int, cmd) -> tuple:
        if _is_int(cmd):
            if cmd in (C.OP_NOP, C.OP_FENCE):
                return ("nop",)
            raise GpuDriverError(f"command {i}: unknown GhostNV opcode {int(cmd):#x} "
                                 f"(known: 0x1 NOP, 0x2 FENCE)")
        if isinstance(cmd, C.Nop):
            return ("nop",)
        if isinstance(cmd, C.Fill):
            if not _is_int(cmd.value) or not 0 <= cmd.value <= 255:
                raise GpuDriverError(f"command {i} (Fill): value={cmd.value!r} must be a byte "
                                     f"(0..255)")
            mem = self._own(cmd.mem, f"command {i} (Fill)")
            n = mem.nbytes - self._offset(i, cmd, mem, "offset", cmd.offset) \
                if cmd.nbytes is None else cmd.nbytes
            h, off, n = self._range(i, cmd, mem, cmd.offset, n, "fill")
            return ("fill", h, off, n, int(cmd.value))
        if isinstance(cmd, C.Write):
            data = _as_bytes(cmd.data, f"command {i} (Write)")
            h, off, _ = self._range(i, cmd, cmd.mem, cmd.offset, len(data), "write")
            return ("write", h, off, data)
        if isinstance(cmd, C.Read):
            out = cmd.out
            if not isinstance(out, np.ndarray) or not out.flags.c_contiguous \
                    or not out.flags.writeable:
                raise GpuDriverError(f"command {i} (Read): out must be a writable C-contiguous "
                                     f"NumPy array")
            if out.dtype.hasobject:
                raise GpuDriverError(f"command {i} (Read): out is a NumPy array of dtype "
                                     f"{out.dtype}; it must hold plain numbers or bytes (no "
                                     f"Python objects)")
            try:
                flat = out.reshape(-1).view(np.uint8)
            except (TypeError, ValueError) as e:
                raise GpuDriverError(f"command {i} (Read): out (dtype {out.dtype}, shape "
                                     f"{out.shape}) cannot be filled as bytes: {e}") from None
            h, off, _ = self._range(i, cmd, cmd.mem, cmd.offset, len(flat), "read")
            return ("read", h, off, flat)
        if isinstance(cmd, C.Copy):
            src = self._own(cmd.src, f"command {i} (Copy)")
            n = src.nbytes - self._offset(i, cmd, src, "src_offset", cmd.src_offset) \
                if cmd.nbytes is None else cmd.nbytes
            sh, soff, n = self._range(i, cmd, src, cmd.src_offset, n, "source", "src_offset")
            dh, doff, _ = self._range(i, cmd, cmd.dst, cmd.dst_offset, n, "destination",
                                      "dst_offset")
            return ("copy", dh, doff, sh, soff, n)
        if isinstance(cmd, C.Call):
            if not self._b.supports_call:
                raise GpuDriverError(f"command {i} (Call): host callables run on the cpu backend "
                                     f"only (this driver's backend is "
                                     f"{self.driver.backend.name})")
            if not callable(cmd.fn):
                raise GpuDriverError(f"command {i} (Call): fn={cmd.fn!r} is not callable")
            return ("call", cmd.fn, tuple(cmd.args))
        raise GpuDriverError(f"command {i}: {cmd!r} is not a gpu_drv command (Nop, Fill, Write, "
                             f"Read, Copy, Call or a GhostNV opcode 0x1/0x2)")

    def submit(self, commands) -> Fence:
        """Check and queue a batch of commands (run in order, after earlier batches); returns
        its :class:`Fence`. Nothing is queued when a command is invalid (the error names it)."""
        if isinstance(commands, (str, bytes)) or not hasattr(commands, "__iter__"):
            raise GpuDriverError(f"submit: commands must be a list of commands, not "
                                 f"{type(commands).__name__}")
        cmds = list(commands)
        with self._lock:
            self._check_alive("submit")
            ops = [self._resolve(i, c) for i, c in enumerate(cmds)] or [("nop",)]
            while self._pending and self._pending[0].done():
                self._pending.popleft()
            self._seq += 1
            fence = Fence(self, self._seq, cmds, self._b.submit(ops))
            self._pending.append(fence)
            return fence

    def wait(self, fence: Fence, timeout: float | None = None) -> Fence:
        """Block until ``fence`` signals; ``timeout`` in seconds (default: config
        ``command_timeout_ms``). Raises :class:`FenceTimeout` (a ``TimeoutError`` naming the
        fence) when it does not, :class:`CommandError` when a command of its batch failed."""
        if not isinstance(fence, Fence) or fence.context is not self:
            raise GpuDriverError(f"wait: {fence!r} is not a fence of context {self.id}")
        t = _timeout(timeout, self.driver.config.command_timeout, f"wait({fence.name})")
        if not self._b.wait(fence._token, t):
            raise FenceTimeout(fence, t)
        err = fence.error
        if err is not None:
            raise err
        return fence

    def pending(self) -> list[Fence]:
        with self._lock:
            return [f for f in self._pending if not f.done()]

    # -- lifetime -------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"id": self.id, "alive": self.alive, "allocations": len(self._mems),
                    "bytes": sum(m.nbytes for m in self._mems.values()),
                    "mapped": len(self._maps), "fences_submitted": self._seq,
                    "fences_pending": sum(1 for f in self._pending if not f.done()),
                    "pools": {n: p.stats() for n, p in self._pools.items()}}

    def destroy(self, timeout: float | None = None) -> dict:
        """Wait up to ``timeout`` s (default ``command_timeout_ms``) for queued batches, drop the
        ones that have not started, then unmap and free everything the context owns. Returns
        the accounting: freed allocations and bytes, pools, fences waited for, cancelled (never
        ran) and still running (a batch that started cannot be interrupted: its fence signals
        when it returns; ``stopped`` is False then)."""
        t = _timeout(timeout, self.driver.config.command_timeout, f"destroy(context {self.id})")
        with self._lock:
            if not self.alive:
                return dict(self.report or {})
            self.alive = False
            pending = [f for f in self._pending if not f.done()]
        deadline = time.monotonic() + t
        cancelled = running = pools = n = nbytes = 0
        stopped = False
        errors: list[BaseException] = []
        try:
            for f in pending:
                self._b.wait(f._token, max(0.0, deadline - time.monotonic()))
            cancelled = self._b.cancel_pending()
            running = sum(1 for f in pending if not f.done())  # started, cannot be interrupted
        finally:                # whatever failed above, the context's memory and worker go
            with self._lock:
                pools = len(self._pools)
                for p in list(self._pools.values()):
                    with p._lock:
                        p.destroyed = True
                self._pools.clear()
                for mem, view in list(self._maps.items()):
                    try:
                        self._b.unmap(mem._h, view)
                    except Exception:       # destroy frees regardless
                        pass
                self._maps.clear()
                n = len(self._mems)
                nbytes = sum(m.nbytes for m in self._mems.values())
                for mem in list(self._mems.values()):
                    try:
                        self._b.free(mem._h)
                    except Exception as e:  # noqa: BLE001 - the accounting is released anyway
                        errors.append(e)
                    mem.freed = True
                    del self._mems[id(mem)]
                    self.driver._release(mem.nbytes)
                self._pending.clear()
            try:
                stopped = self._b.close(max(0.0, deadline - time.monotonic()) or 0.001)
            finally:
                self.driver._forget(self)
                self.report = {"context": self.id, "freed_allocations": n, "freed_bytes": nbytes,
                               "pools": pools, "fences_waited": len(pending),
                               "fences_cancelled": cancelled, "fences_running": running,
                               "stopped": stopped}
        if errors:
            raise GpuDriverError(f"destroy(context {self.id}): freeing {len(errors)} of {n} "
                                 f"allocations failed in the backend (first: "
                                 f"{type(errors[0]).__name__}: {errors[0]})") from errors[0]
        return dict(self.report)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"Context(id={self.id}, {self.driver.backend.name}, " \
               f"{'alive' if self.alive else 'destroyed'})"


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def gpu_present() -> bool:
    """Is an NVIDIA driver loaded (no CUDA import)?"""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def _check_device(cfg: GpuConfig, disc: Discovery, *, fallback: bool) -> None:
    """Refuse a ``device`` index discovery did not find. ``fallback``: the cpu backend is
    chosen, where only device 0 (the default) stands for no GPU; otherwise an index is checked
    only when discovery found GPUs (cuda may see one that sysfs and NVML hide)."""
    n = len(disc.gpus)
    if not n and not fallback:
        return
    if cfg.device >= max(n, 1):
        found = ": " + ", ".join(f"{g.index}: {g.name}" for g in disc.gpus) if n else ""
        raise GpuConfigError("device", cfg.device, f"no such GPU ({n} found{found})")


def _choose_backend(cfg: GpuConfig, disc: Discovery) -> tuple[Backend, str]:
    from .cpu import CpuBackend
    if cfg.backend == "cpu":
        _check_device(cfg, disc, fallback=True)
        return CpuBackend(), "backend='cpu' requested"
    from . import cuda as cuda_backend
    _check_device(cfg, disc, fallback=False)
    if cfg.backend == "cuda":
        ok, why = cuda_backend.available(cfg.device)
        if not ok:
            raise GpuDriverError(f"gpu_drv: backend 'cuda' requested but not usable: {why}")
        return cuda_backend.CudaBackend(cfg.device), "backend='cuda' requested"
    # auto (a device index the cpu backend would ignore was accepted silently)
    if not disc.gpus and not gpu_present():
        _check_device(cfg, disc, fallback=True)
        return CpuBackend(), "no NVIDIA GPU found (PCI, NVML, /dev/nvidia0): cpu backend"
    ok, why = cuda_backend.available(cfg.device)
    if not ok:
        _check_device(cfg, disc, fallback=True)
        return CpuBackend(), f"an NVIDIA GPU is present but cuda is not usable ({why}): cpu backend"
    return cuda_backend.CudaBackend(cfg.device), "NVIDIA GPU found and cuda usable"


class GpuDriver:
    """gpu_drv: discovery, contexts, memory, fences, the persistent kernel and displays.

    ``config``/keywords: :class:`GpuConfig` options. ``discovery``: a :class:`Discovery` to use
    instead of probing (``sysfs_root`` and ``nvml`` are passed to :func:`discover`).
    ``display``: ``"auto"`` (open the virtio-gpu display module on first use when QEMU's
    vhost-user-gpu back end is installed), ``None`` (no displays) or a ``DisplayModule``."""

    def __init__(self, config: GpuConfig | dict | None = None, *,
                 discovery: Discovery | None = None, display="auto",
                 sysfs_root: str = SYSFS_PCI_DEVICES, nvml="auto", **options):
        self.config = GpuConfig.make(config, **options)
        self.discovery = discovery if discovery is not None else discover(sysfs_root, nvml=nvml)
        self.backend, self.backend_reason = _choose_backend(self.config, self.discovery)
        self.device = self._device_facts()
        total = self.device.get("memory_total")
        if total and self.config.memory_reservation > total:
            raise GpuConfigError("memory_reservation", self.config.memory_reservation,
                                 f"exceeds the memory of {self.device.get('name')} ({total} B, "
                                 f"from {self.device.get('sources', {}).get('memory_total')})")
        self._lock = threading.Lock()
        self._contexts: dict[int, Context] = {}
        self._next_ctx = 1
        self._used = 0
        self._allocs = 0
        self.alloc_fail = 0
        self._klock = threading.Lock()
        self._kernel = None
        self._kernel_args = None
        self.launches = 0
        self.resets = 0
        self.last_reset: dict | None = None
        self._display_arg = display
        self._display = None if display in (None, False, "auto") else display
        self._display_owned = False
        self._display_tried = display in (None, False) or self._display is not None
        self.display_note: str | None = None if display not in (None, False) else "disabled"
        self.closed = False

    def _device_facts(self) -> dict:
        d = dict(self.backend.describe())
        srcs = dict(d.get("sources", {}))
        if self.backend.name != "cpu" and self.config.device < len(self.discovery.gpus):
            g = self.discovery.gpus[self.config.device].to_dict()
            for k, v in g.items():
                if k == "sources":
                    continue
                if v is not None and (k not in d or k in g["sources"]):
                    d[k] = v
            srcs.update(g["sources"])
        d["sources"] = srcs
        d["kind"] = self.backend.name
        return d

    # -- accounting -----------------------------------------------------------------------------
    def _reserve(self, nbytes: int, ctx: Context) -> None:
        with self._lock:
            res = self.config.memory_reservation
            if self._used + nbytes > res:
                self.alloc_fail += 1
                raise GpuAllocError(f"context {ctx.id}: alloc({nbytes} B) exceeds the memory "
                                    f"reservation: {self._used} of {res} B in use (config "
                                    f"memory_reservation)")
            self._used += nbytes
            self._allocs += 1

    def _release(self, nbytes: int, failed: bool = False) -> None:
        with self._lock:
            self._used -= nbytes
            self._allocs -= 1
            if failed:
                self.alloc_fail += 1

    def _forget(self, ctx: Context) -> None:
        with self._lock:
            self._contexts.pop(ctx.id, None)

    # -- contexts -------------------------------------------------------------------------------
    def create_context(self) -> Context:
        """A new context (its own memory, pools and in-order command queue)."""
        if self.closed:
            raise GpuDriverError("create_context: the driver is closed")
        with self._lock:
            cid = self._next_ctx
            self._next_ctx += 1
        ctx = Context(self, cid)
        with self._lock:
            self._contexts[cid] = ctx
        return ctx

    def destroy_context(self, ctx: Context, timeout: float | None = None) -> dict:
        return ctx.destroy(timeout)

    @property
    def contexts(self) -> list[Context]:
        with self._lock:
            return list(self._contexts.values())

    def stats(self) -> dict:
        with self._lock:
            used, allocs, nctx = self._used, self._allocs, len(self._contexts)
        k = self._kernel
        return {"backend": self.backend.name, "contexts": nctx, "allocations": allocs,
                "bytes_in_use": used, "memory_reservation": self.config.memory_reservation,
                "bytes_free": self.config.memory_reservation - used,
                "alloc_fail": self.alloc_fail,
                "kernel": {"running": bool(k is not None and k.alive()),
                           "target": self.backend.kernel_target, "launches": self.launches,
                           "resets": self.resets}}

    # -- the persistent kernel ------------------------------------------------------------------
    def launch(self, modules, *, workers: int | None = None, timeout: float = 600.0,
               **kernel_config):
        """Build (or load from cache) and start the persistent device kernel for ``modules`` on
        this backend's target; returns the running :class:`ggmk.device.DeviceKernel`."""
        if self.closed:
            raise GpuDriverError("launch: the driver is closed")
        # checked here: the kernel's own start fails late and unnamed on a bad timeout
        timeout = _timeout(timeout, 600.0, "launch", positive=True)
        if not self.config.enable_compute:
            raise GpuDriverError("launch: compute is disabled (config enable_compute=False)")
        from ggmk.device import DeviceKernel
        with self._klock:
            if self.closed:
                raise GpuDriverError("launch: the driver is closed")
            if self._kernel is not None and self._kernel.alive():
                raise GpuDriverError("launch: the persistent kernel is already running; "
                                     "reset() relaunches it, stop_kernel() stops it")
            modules = list(modules)
            k = DeviceKernel(modules, target=self.backend.kernel_target, workers=workers,
                             **kernel_config)
            k.start(timeout=timeout)
            self._kernel = k
            self._kernel_args = (modules, workers, dict(kernel_config))
            self.launches += 1
            return k

    @property
    def kernel(self):
        """The current DeviceKernel (None before ``launch``)."""
        return self._kernel

    def stop_kernel(self, timeout: float = 60.0) -> None:
        timeout = _timeout(timeout, None, "stop_kernel")     # None: as the kernel takes it
        with self._klock:
            if self._kernel is not None:
                self._kernel.stop(timeout)

    def reset(self, timeout: float = 60.0, start_timeout: float = 600.0):
        """Stop the persistent kernel (a kernel that does not stop within ``timeout`` is
        abandoned: its state is never reused) and launch it again with the same modules and
        options; returns the new DeviceKernel. ``last_reset`` says how the stop went."""
        if self.closed:
            raise GpuDriverError("reset: the driver is closed")
        # both checked before the kernel is touched: a bad value must not stop (or abandon) a
        # running kernel and then fail to start the new one
        timeout = _timeout(timeout, None, "reset")
        start_timeout = _timeout(start_timeout, 600.0, "reset", "start_timeout", positive=True)
        from ggmk.device import DeviceKernel
        with self._klock:
            if self.closed:
                raise GpuDriverError("reset: the driver is closed")
            if self._kernel_args is None:
                raise GpuDriverError("reset: no kernel was launched (call launch(modules) first)")
            err = None
            try:
                self._kernel.stop(timeout)
            except DeviceError as e:
                err = str(e)
            modules, workers, cfg = self._kernel_args
            k = DeviceKernel(modules, target=self.backend.kernel_target, workers=workers, **cfg)
            k.start(timeout=start_timeout)
            self._kernel = k
            self.resets += 1
            self.last_reset = {"stopped_cleanly": err is None, "error": err}
            return k

    # -- displays -------------------------------------------------------------------------------
    def _display_module(self, what: str):
        if self.closed:     # an owned display was closed with the driver
            raise GpuDriverError(f"{what}: the driver is closed")
        if not self.config.enable_display:
            self.display_note = "disabled (config enable_display=False)"
            return None
        if self._display is None and not self._display_tried:
            self._display_tried = True
            from ggmk.drivers.virtio.backend import BackendNotFound, find_backend
            try:
                find_backend()
            except BackendNotFound:
                self.display_note = "no virtio-gpu device (QEMU's vhost-user-gpu is not installed)"
                return None
            from ggmk.drivers.virtio.errors import VirtioError
            from ggmk.modules.display import DisplayModule
            try:
                self._display = DisplayModule.open()
                self._display_owned = True
                self.display_note = None
            except (VirtioError, OSError) as e:
                self.display_note = f"virtio-gpu display failed to open: {e}"
        return self._display

    def attach_display(self, module) -> None:
        """Use ``module`` (a ``ggmk.modules.display.DisplayModule``) for displays."""
        self._display, self._display_owned, self._display_tried = module, False, True
        self.display_note = None

    def displays(self) -> list:
        """The displays of the virtio-gpu device (``DisplayInfo``); [] when there is none."""
        mod = self._display_module("displays")
        return [] if mod is None else mod.displays()

    def set_mode(self, display: int, mode) -> None:
        """Set ``display`` to ``mode`` (``"1024x768"``, ``(w, h)`` or a ``Mode``)."""
        mod = self._display_module("set_mode")
        if mod is None:
            raise GpuDriverError(f"set_mode: no display to set ({self.display_note}); "
                                 f"displays() is empty")
        mod.set_mode(display, mode)

    # -- report and shutdown --------------------------------------------------------------------
    def info(self, displays: bool = True) -> dict:
        """What gpu_drv found (the ``ggmk hw`` section): backend and why, the device it drives
        with each fact's source, every GPU discovered, NVML's state, config, displays."""
        out = {"backend": self.backend.name, "backend_reason": self.backend_reason,
               "kernel_target": self.backend.kernel_target, "device": dict(self.device),
               "config": self.config.to_dict()}
        out.update(self.discovery.to_dict())
        if displays:
            try:
                ds = self.displays()
            except Exception as e:          # a report never fails on the display
                ds, self.display_note = [], f"display query failed: {e}"
            out["displays"] = [{"id": d.id, "preferred": str(d.preferred),
                                "mode": None if d.mode is None else str(d.mode),
                                "modes": [str(m) for m in d.modes]} for d in ds]
            out["display_note"] = self.display_note
        return out

    def close(self, timeout: float | None = None) -> None:
        """Stop the kernel, destroy every context (each waits up to ``timeout`` s, default
        ``command_timeout_ms``), close an owned display. A bad ``timeout`` changes nothing; a
        step that fails does not stop the others: the first error is raised at the end."""
        if self.closed:
            return
        t = _timeout(timeout, self.config.command_timeout, "close")
        self.closed = True
        first: BaseException | None = None

        def step(fn, *args):
            nonlocal first
            try:
                fn(*args)
            except BaseException as e:      # noqa: BLE001 - raised after the other steps
                if first is None:
                    first = e

        with self._klock:
            if self._kernel is not None:
                step(self._kernel.stop)
        for ctx in self.contexts:
            step(ctx.destroy, t)
        if self._display_owned and self._display is not None:
            step(self._display.close)
            self._display = None
        step(self.backend.close)
        if first is not None:
            raise first

    def __enter__(self) -> "GpuDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GpuDriver(backend={self.backend.name}, device={self.device.get('name')!r})"


def probe(**options) -> dict:
    """:meth:`GpuDriver.info` of a driver opened with ``options`` and closed again."""
    with GpuDriver(**options) as d:
        return d.info()
