"""GPUDirect Storage (cuFile) and the CUDA copy engine; everything here is imported lazily.

``available()`` says whether GDS can be used: ``cuda.bindings.cufile`` imports and
``cuFileDriverOpen`` succeeds (it needs ``libcufile.so.0``: the ``nvidia-cufile-cu12`` /
``-cu13`` wheel or a CUDA toolkit; cuFile falls back to its own compatibility mode when the
``nvidia-fs`` kernel module is absent), or else KvikIO is importable. Without either, reads
into CUDA memory take the pipelined bounce path (pinned buffers, async copies on a
non-blocking stream), which :class:`CudaCopy` implements.
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk.storage.buffers import Fence

__all__ = ["available", "CuFile", "CudaCopy", "pinned_alloc"]

_lock = threading.Lock()
_state: dict = {}


def available() -> tuple[bool, str]:
    """(usable, why): probes once per process."""
    with _lock:
        if "ok" in _state:
            return _state["ok"], _state["why"]
        ok, why, backend = False, "", None
        try:
            import os
            if not (os.path.exists("/proc/driver/nvidia/version")
                    or os.path.exists("/dev/nvidia0")):
                raise RuntimeError("no NVIDIA driver (no /proc/driver/nvidia/version)")
            try:
                import cuda.bindings.cufile as cufile
                cufile.driver_open()
                ok, why, backend = True, "cuda.bindings.cufile (cuFile driver open)", "cufile"
            except Exception as e1:  # noqa: BLE001 - library missing, driver refuses
                try:
                    import kvikio  # noqa: F401
                    ok, why, backend = True, "kvikio", "kvikio"
                except Exception as e2:  # noqa: BLE001
                    raise RuntimeError(f"cuFile unusable ({e1!r}); KvikIO unusable ({e2!r})") \
                        from None
        except Exception as e:  # noqa: BLE001
            ok, why = False, str(e)
        _state.update(ok=ok, why=why, backend=backend)
        return ok, why


class CuFile:
    """One file registered with cuFile (or opened with KvikIO)."""

    def __init__(self, fd_direct: int | None, path: str, write: bool = False):
        available()
        self.backend = _state.get("backend")
        self.path = path
        self._h = None
        if self.backend == "cufile":
            if fd_direct is None:
                raise OSError("cuFile needs an O_DIRECT file descriptor")
            import cuda.bindings.cufile as cufile
            self._cf = cufile
            d = cufile.Descr()
            d.type = cufile.FileHandleType.OPAQUE_FD
            d.handle.fd = fd_direct
            self._descr = d
            self._h = cufile.handle_register(d.ptr)
        elif self.backend == "kvikio":
            import kvikio
            self._h = kvikio.CuFile(path, "r+" if write else "r")
        else:
            raise RuntimeError(f"GPUDirect Storage is not available: {_state.get('why')}")

    def read(self, dest, dest_off: int, n: int, file_off: int) -> int:
        """Read ``n`` bytes at ``file_off`` into device memory ``dest`` at ``dest_off``."""
        if self.backend == "cufile":
            got = self._cf.read(self._h, dest.device_pointer(0), n, file_off, dest_off)
        else:
            got = self._h.pread(dest._dev(dest_off, n), n, file_off).get()
        if got < 0:
            raise OSError(-got if got > -1000 else 5, f"cuFileRead returned {got}")
        return int(got)

    def write(self, src, src_off: int, n: int, file_off: int) -> int:
        if self.backend == "cufile":
            got = self._cf.write(self._h, src.device_pointer(0), n, file_off, src_off)
        else:
            got = self._h.pwrite(src._dev(src_off, n), n, file_off).get()
        if got < 0:
            raise OSError(-got if got > -1000 else 5, f"cuFileWrite returned {got}")
        return int(got)

    def close(self) -> None:
        if self._h is None:
            return
        if self.backend == "cufile":
            self._cf.handle_deregister(self._h)
        else:
            self._h.close()
        self._h = None


def pinned_alloc(nbytes: int) -> np.ndarray:
    """Page-locked, page-aligned host memory (for CUDA bounce buffers)."""
    from numba import cuda
    a = cuda.pinned_array(nbytes + 4096, dtype=np.uint8)
    off = (-a.ctypes.data) % 4096
    return a[off:off + nbytes]


class _CudaFence(Fence):
    __slots__ = ("event",)

    def __init__(self, event):
        super().__init__()
        self.event = event

    def done(self) -> bool:
        return self.event.query()

    def wait(self, timeout: float | None = None) -> None:
        self.event.synchronize()


class CudaCopy:
    """Async copies between pinned host buffers and device memory on one non-blocking stream
    (the stream does not synchronize with the legacy default stream, so a resident device
    kernel never blocks it); each copy is fenced by an event."""

    name = "cuda"

    def __init__(self):
        from numba import cuda
        from ggmk.device.targets.cuda import make_stream
        self._cuda = cuda
        self._owner, self.stream = make_stream()

    def _fence(self) -> Fence:
        ev = self._cuda.event(timing=False)
        ev.record(self.stream)
        return _CudaFence(ev)

    def to_dest(self, dest, dest_off: int, src: np.ndarray) -> Fence:
        dest.write_from_host(dest_off, src, self.stream)
        return self._fence()

    def from_src(self, src, src_off: int, dst: np.ndarray) -> Fence:
        src.read_to_host(src_off, dst, self.stream)
        return self._fence()

    def zero(self, dest, off: int, n: int) -> Fence:
        dest.zero(off, n, self.stream)
        return self._fence()

    def close(self) -> None:
        self.stream.synchronize()
        try:
            self._owner.close()
        except Exception:  # noqa: BLE001
            pass
