"""The ``cpu`` backend: memory is host NumPy buffers (256-byte aligned, like device
allocations), a context's batches run in order on one worker thread, and a fence is the
completion of that host-side work. The device kernel it pairs with is the ``cpu`` target."""
from __future__ import annotations

import queue
import threading

import numpy as np

from .backend import Backend, BackendContext
from .discovery import host_info
from .errors import ContextDestroyed

ALIGN = 256


class CpuMem:
    __slots__ = ("buf", "address", "nbytes", "kind")

    def __init__(self, nbytes: int, kind: str):
        raw = np.zeros(nbytes + ALIGN, np.uint8)
        off = (-raw.ctypes.data) % ALIGN
        self.buf = raw[off:off + nbytes]
        self.address = int(self.buf.ctypes.data)
        self.nbytes = nbytes
        self.kind = kind


class CpuToken:
    __slots__ = ("ops", "event", "err", "cancelled")

    def __init__(self, ops):
        self.ops = ops
        self.event = threading.Event()
        self.err = None
        self.cancelled = False


class CpuContext(BackendContext):
    supports_call = True

    def __init__(self, ctx_id: int):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[CpuToken] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"gpu_drv-ctx{ctx_id}-cpu",
                                        daemon=True)
        self._thread.start()

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, nbytes, kind):
        return CpuMem(nbytes, kind)

    def free(self, mem):
        mem.buf = None              # the worker's ops keep their own reference

    def map(self, mem):
        return mem.buf

    def unmap(self, mem, view):
        pass                        # the view is the memory itself

    # -- batches --------------------------------------------------------------------------------
    def submit(self, ops):
        # bind the NumPy buffers now: freeing a handle later cannot pull them from under a
        # queued op (the memory lives until the op ran)
        ops = [tuple(x.buf if isinstance(x, CpuMem) else x for x in op) for op in ops]
        tok = CpuToken(ops)
        with self._lock:
            self._pending.append(tok)
        self._q.put(tok)
        return tok

    def _run(self):
        while True:
            tok = self._q.get()
            if tok is None:
                return
            with self._lock:
                if tok in self._pending:
                    self._pending.remove(tok)
                skip = tok.cancelled
            if not skip:
                for i, op in enumerate(tok.ops):
                    try:
                        _execute(op)
                    except BaseException as e:          # the fence carries it
                        tok.err = (i, e)
                        break
            tok.ops = None
            tok.event.set()

    def done(self, token):
        return token.event.is_set()

    def wait(self, token, timeout):
        return token.event.wait(timeout)

    def error(self, token):
        return token.err

    def cancel_pending(self):
        with self._lock:
            toks, self._pending = self._pending, []
            for t in toks:
                t.cancelled = True
                t.err = (0, ContextDestroyed("the context was destroyed before this batch ran"))
                t.event.set()           # it will never run: its fence is final now
        return len(toks)

    def close(self, timeout):
        self._q.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread


def _execute(op):
    kind = op[0]
    if kind == "nop":
        return
    if kind == "fill":
        _, mem, off, n, value = op
        mem[off:off + n] = value
    elif kind == "write":
        _, mem, off, data = op
        mem[off:off + len(data)] = data
    elif kind == "read":
        _, mem, off, out = op
        out[:] = mem[off:off + len(out)]
    elif kind == "copy":
        _, dst, doff, src, soff, n = op
        dst[doff:doff + n] = src[soff:soff + n]      # overlapping ranges: NumPy copies safely
    elif kind == "call":
        _, fn, args = op
        fn(*args)
    else:                                            # pragma: no cover - the driver checks
        raise ValueError(f"unknown op {kind!r}")


class CpuBackend(Backend):
    """Host memory and host threads standing in for a GPU (every test runs on it)."""

    name = "cpu"
    kernel_target = "cpu"

    def describe(self):
        return host_info()

    def open_context(self, ctx_id):
        return CpuContext(ctx_id)
