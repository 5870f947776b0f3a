"""The ``cuda`` backend, on NVIDIA's ``cuda.core`` (imported from ``cuda.core``, never
``cuda.core.experimental``). UNTESTED WITHOUT A GPU: its tests carry the ``cuda`` marker.

* Device: ``cuda.core.Device(index)``, made current on its primary context (the one numba and
  the device kernel's ``cuda`` target use).
* A context owns one ``Stream`` created with ``StreamOptions(nonblocking=True)``: a blocking
  stream would synchronize with the legacy default stream, where the resident device kernel's
  neighbours may wait forever. Every copy, fill, allocation and free names that stream.
* Memory: ``device`` from ``DeviceMemoryResource`` (stream-ordered), ``host`` from
  ``LegacyPinnedMemoryResource`` (pinned, mapped: the device reaches it, the host views it).
* A fence is an ``Event`` recorded on the stream after the batch; ``wait(timeout)`` polls
  ``Event.is_done`` (``Event.sync`` has no timeout). Read commands land in a pinned staging buffer
  and are copied to the caller's array once the event is seen done.
* ``map`` of device memory stages it in pinned memory (copy, sync); ``unmap`` copies it back.
"""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np

from .backend import Backend, BackendContext
from .errors import ContextDestroyed, GpuDriverError


def _host_view(buf, nbytes: int) -> np.ndarray:
    """A NumPy view of pinned host memory (its pointer is valid on the host)."""
    if nbytes == 0:
        return np.zeros(0, np.uint8)
    arr = (ctypes.c_uint8 * nbytes).from_address(int(buf.handle))
    return np.ctypeslib.as_array(arr)


class CudaMem:
    __slots__ = ("buf", "address", "nbytes", "kind", "staging")

    def __init__(self, buf, nbytes: int, kind: str):
        self.buf = buf
        self.address = int(buf.handle)
        self.nbytes = nbytes
        self.kind = kind
        self.staging = None


class CudaToken:
    __slots__ = ("event", "keep", "after", "err", "finished", "lock")

    def __init__(self):
        self.event = None
        self.keep = []              # staging buffers alive until the event is done
        self.after = []             # host copies to run once (Read results)
        self.err = None
        self.finished = False
        self.lock = threading.Lock()


class CudaContext(BackendContext):
    supports_call = False

    def __init__(self, backend: "CudaBackend", ctx_id: int):
        from cuda.core import StreamOptions
        self.b = backend
        backend.dev.set_current()
        self.stream = backend.dev.create_stream(options=StreamOptions(nonblocking=True))
        self._tokens: list[CudaToken] = []

    def _sub(self, mem: CudaMem, off: int, n: int):
        from cuda.core import Buffer
        if off == 0 and n == mem.nbytes:
            return mem.buf
        return Buffer.from_handle(mem.address + off, n, owner=mem.buf)   # no mr: not freed

    def _pinned(self, n: int):
        return self.b.pinned_mr.allocate(max(n, 1), stream=self.stream)

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, nbytes, kind):
        self.b.dev.set_current()
        mr = self.b.device_mr if kind == "device" else self.b.pinned_mr
        try:
            buf = mr.allocate(max(nbytes, 1), stream=self.stream)
        except Exception as e:       # CUDA_ERROR_OUT_OF_MEMORY and friends
            raise MemoryError(f"cuda: {nbytes} B of {kind} memory: {e}") from e
        return CudaMem(buf, nbytes, kind)

    def free(self, mem):
        mem.buf.close(self.stream)   # stream-ordered: after the work queued before it

    def map(self, mem):
        if mem.kind == "host":
            self.stream.sync()       # queued writes to it have landed
            return _host_view(mem.buf, mem.nbytes)
        st = self._pinned(mem.nbytes)
        st.copy_from(mem.buf, stream=self.stream)
        self.stream.sync()
        mem.staging = st
        return _host_view(st, mem.nbytes)

    def unmap(self, mem, view):
        if mem.kind == "host" or mem.staging is None:
            return
        mem.buf.copy_from(mem.staging, stream=self.stream)
        self.stream.sync()
        mem.staging.close(self.stream)
        mem.staging = None

    # -- batches --------------------------------------------------------------------------------
    def submit(self, ops):
        self.b.dev.set_current()
        tok = CudaToken()
        for op in ops:
            kind = op[0]
            if kind == "nop":
                continue
            if kind == "fill":
                _, mem, off, n, value = op
                if n:
                    self._sub(mem, off, n).fill(int(value), stream=self.stream)
            elif kind == "write":
                _, mem, off, data = op
                if len(data):
                    st = self._pinned(len(data))
                    _host_view(st, len(data))[:] = data
                    self._sub(mem, off, len(data)).copy_from(st, stream=self.stream)
                    tok.keep.append(st)
            elif kind == "read":
                _, mem, off, out = op
                if len(out):
                    st = self._pinned(len(out))
                    st.copy_from(self._sub(mem, off, len(out)), stream=self.stream)
                    tok.keep.append(st)
                    tok.after.append((out, st))
            elif kind == "copy":
                _, dst, doff, src, soff, n = op
                if n:
                    self._sub(dst, doff, n).copy_from(self._sub(src, soff, n), stream=self.stream)
            else:
                raise GpuDriverError(f"cuda backend: op {kind!r} is not supported")
        tok.event = self.stream.record()
        self._tokens.append(tok)
        return tok

    def _finish(self, tok: CudaToken) -> None:
        with tok.lock:
            if tok.finished:
                return
            try:
                for out, st in tok.after:
                    out[:] = _host_view(st, len(out))
            except BaseException as e:
                tok.err = (0, e)
            for st in tok.keep:
                st.close(self.stream)
            tok.keep, tok.after, tok.finished = [], [], True
        if tok in self._tokens:
            self._tokens.remove(tok)

    def done(self, token):
        if token.finished:
            return True
        if token.event is not None and token.event.is_done:
            self._finish(token)
            return True
        return False

    def wait(self, token, timeout):
        deadline = time.monotonic() + timeout
        delay = 20e-6
        while not self.done(token):
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        return True

    def error(self, token):
        return token.err

    def cancel_pending(self):
        # work on a stream cannot be withdrawn once queued; nothing to cancel
        return 0

    def close(self, timeout):
        ok = all(self.wait(t, timeout) for t in list(self._tokens))
        if ok:
            self.stream.sync()
            self.stream.close()
        else:
            for t in self._tokens:
                t.err = (0, ContextDestroyed("the context was destroyed while this batch ran"))
        return ok


class CudaBackend(Backend):
    """An NVIDIA GPU through ``cuda.core``."""

    name = "cuda"
    kernel_target = "cuda"

    def __init__(self, device: int = 0):
        from cuda.core import Device, DeviceMemoryResource, LegacyPinnedMemoryResource
        self.dev = Device(device)
        self.dev.set_current()
        self.device_mr = DeviceMemoryResource(self.dev)
        self.pinned_mr = LegacyPinnedMemoryResource()

    def describe(self):
        d = {"name": self.dev.name, "pci_bus_id": self.dev.pci_bus_id().lower(),
             "compute_capability": ".".join(map(str, tuple(self.dev.compute_capability))),
             "sources": {"name": "cuda", "pci_bus_id": "cuda", "compute_capability": "cuda"}}
        try:
            from cuda.bindings import driver as cu
            err, total = cu.cuDeviceTotalMem(self.dev.device_id)
            if int(err) == 0:
                d["memory_total"] = int(total)
                d["sources"]["memory_total"] = "cuda"
        except Exception:
            pass
        return d

    def open_context(self, ctx_id):
        return CudaContext(self, ctx_id)


def available(device: int = 0) -> tuple[bool, str]:
    """(usable, why): cuda.core importable and ``device`` present."""
    try:
        from cuda.core import Device
        n = len(Device.get_all_devices())
    except Exception as e:
        return False, f"cuda.core unusable: {type(e).__name__}: {e}"
    if device >= n:
        return False, f"cuda: device {device} requested, {n} present"
    return True, ""
