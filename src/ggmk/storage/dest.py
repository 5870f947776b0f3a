"""Destinations (and sources) of storage I/O: host memory, the CPU kernel's arena, device memory.

=============  ===================  ========================================================
class          ``kind`` / target    memory
=============  ===================  ========================================================
HostDest       ``host``             any C-contiguous host array (viewed as bytes)
ArenaDest      ``arena``            a payload in a CPU-kernel :class:`~ggmk.core.alloc.Arena`
DeviceDest     ``device`` / cpu     the ``cpu`` target's device memory: host memory, reached
                                    through the pipelined copy path like real device memory
DeviceDest     ``device`` / cuda    GPU memory (a numba device array): GPUDirect Storage or
                                    pinned bounce buffers + async copies
=============  ===================  ========================================================

Ownership. A destination the storage layer allocated (``ArenaDest.alloc``, ``dest="arena"``)
is ``owned``: if the I/O fails or is cancelled it is released before the result is published,
and on success it passes to the caller (``result.dest``; release it with ``.release()``). A
destination the caller passed in stays the caller's either way. So a buffer is never left
half-owned.
"""
from __future__ import annotations

import ctypes
import operator

import numpy as np

from ggmk.storage.buffers import ALIGN, align_down, align_up, aligned_empty

__all__ = ["Destination", "HostDest", "ArenaDest", "DeviceDest", "as_destination"]


class Destination:
    kind = "host"
    target: str | None = None
    owned = False

    nbytes: int = 0

    @property
    def host_addressable(self) -> bool:
        """True when reads may land in it directly (``view`` works and it is not "device")."""
        return self.kind in ("host", "arena")

    def view(self, off: int = 0, n: int | None = None) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} has no host view")

    def address(self, off: int = 0) -> int:
        return self.view(off, 0).ctypes.data if self.host_addressable else 0

    def write_from_host(self, off: int, src: np.ndarray, stream) -> None:
        self.view(off, len(src))[:] = src

    def read_to_host(self, off: int, dst: np.ndarray, stream) -> None:
        dst[:] = self.view(off, len(dst))

    def zero(self, off: int, n: int, stream) -> None:
        self.view(off, n)[:] = 0

    def release(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.kind} memory ({self.nbytes} bytes)"


_MADV_DONTNEED = 4              # Linux: private anonymous pages read back as zeros afterwards
_DISCARD_MIN = 256 << 10        # below this a memset is cheaper than the system call
_libc = None


def _discard(addr: int, n: int) -> bool:
    """``madvise(MADV_DONTNEED)`` on ``[addr, addr + n)`` (page-aligned, private anonymous
    memory): the pages are dropped and read back as zeros. False if the call failed."""
    global _libc
    try:
        if _libc is None:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.madvise.restype = ctypes.c_int
            _libc = lib
        return _libc.madvise(addr, n, _MADV_DONTNEED) == 0
    except (OSError, AttributeError):
        return False


class HostDest(Destination):
    """Host memory: a C-contiguous array (any dtype, viewed as bytes).

    ``anon``: the memory is a private anonymous mapping this module made
    (:meth:`alloc`); zero-filling a large range of it (a sparse file's hole) then drops the
    whole pages in it (``MADV_DONTNEED``: they read back as zeros, from the kernel's zero page,
    until written) instead of writing every byte: a 90%-holes file then costs about its 10% of
    data. Memory the caller passes in is always zeroed with a memset (it may be a file mapping
    or shared, where dropping pages would not give zeros)."""

    kind = "host"
    anon = False

    def __init__(self, array: np.ndarray):
        a = np.asarray(array)
        if not a.flags.c_contiguous:
            raise ValueError("HostDest: the array must be C-contiguous")
        self.array = a.reshape(-1).view(np.uint8)
        self.nbytes = self.array.size

    @classmethod
    def alloc(cls, nbytes: int) -> "HostDest":
        """Page-aligned host memory (O_DIRECT reads land in it without a copy)."""
        d = cls(aligned_empty(nbytes))
        d.owned = True
        d.anon = True
        return d

    def view(self, off: int = 0, n: int | None = None) -> np.ndarray:
        return self.array[off:self.nbytes if n is None else off + n]

    def address(self, off: int = 0) -> int:
        return self.array.ctypes.data + off

    def zero(self, off: int, n: int, stream) -> None:
        if self.anon and n >= _DISCARD_MIN:
            a = self.address(off)
            lo, hi = align_up(a, ALIGN), align_down(a + n, ALIGN)
            if hi > lo and _discard(lo, hi - lo):
                self.array[off:off + lo - a] = 0
                self.array[off + hi - a:off + n] = 0
                return
        self.array[off:off + n] = 0


class ArenaDest(HostDest):
    """``nbytes`` at ``ptr`` in a CPU-kernel arena (a payload; its capacity bounds the size)."""

    kind = "arena"

    def __init__(self, arena, ptr: int, nbytes: int | None = None, *, owned: bool = False,
                 offset: int = 0):
        self.arena = arena
        self.ptr = operator.index(ptr)
        if nbytes is None:
            nbytes = arena.size_of(self.ptr) - offset
        self.offset = offset
        # view() checks the range against the slot's capacity (ValueError past it)
        self.array = arena.view(self.ptr, offset + nbytes)[offset:offset + nbytes]
        self.nbytes = nbytes
        self.owned = owned
        self._released = False

    @classmethod
    def alloc(cls, arena, nbytes: int) -> "ArenaDest | None":
        """Allocate ``nbytes`` in ``arena``; None when it is full (ALLOC_FAIL)."""
        ptr = arena.alloc(max(int(nbytes), 1))
        if not ptr:
            return None
        return cls(arena, ptr, int(nbytes), owned=True)

    def release(self) -> None:
        if self.owned and not self._released:
            self._released = True
            self.arena.release(self.ptr)

    def describe(self) -> str:
        return f"arena payload 0x{self.ptr:x} ({self.nbytes} bytes)"


def _is_cuda_array(obj) -> bool:
    return hasattr(obj, "__cuda_array_interface__")


class DeviceDest(Destination):
    """Device memory of the device kernel's target.

    ``target="cpu"`` (or ``"sim"``): ``array`` is host memory (a NumPy uint8 array) standing in
    for device memory; I/O goes through the pipelined bounce path and a copy engine, as it
    would on a GPU. ``target="cuda"``: ``array`` is a numba device array (uint8)."""

    kind = "device"

    def __init__(self, array, offset: int = 0, nbytes: int | None = None, *,
                 target: str | None = None):
        if target is None:
            target = "cuda" if _is_cuda_array(array) and not isinstance(array, np.ndarray) else "cpu"
        self.target = target
        self.base = array
        size = int(array.size) * int(array.dtype.itemsize)
        self.offset = int(offset)
        self.nbytes = size - self.offset if nbytes is None else int(nbytes)
        if self.offset < 0 or self.offset + self.nbytes > size:
            raise ValueError(f"DeviceDest: [{offset}, {offset + self.nbytes}) is outside the "
                             f"{size}-byte array")
        if target == "cuda":
            self.array = array.view(np.uint8) if array.dtype != np.uint8 else array
            self.array = self.array.reshape(-1) if self.array.ndim != 1 else self.array
        else:
            self.array = np.asarray(array).reshape(-1).view(np.uint8)

    @classmethod
    def alloc(cls, nbytes: int, target: str = "cpu") -> "DeviceDest":
        """Fresh device memory of ``target`` (``cpu``: aligned host memory)."""
        if target == "cuda":
            from numba import cuda
            d = cls(cuda.device_array(int(nbytes), np.uint8), target="cuda")
        else:
            d = cls(aligned_empty(nbytes), target=target)
        d.owned = True
        return d

    @classmethod
    def from_kernel(cls, kernel, offset: int, nbytes: int) -> "DeviceDest":
        """``nbytes`` at ``offset`` of a started :class:`~ggmk.device.DeviceKernel`'s arena.

        The device allocator owns that arena: use a range the device side set aside (for
        example one a handler allocated and reported to the host)."""
        arrays = getattr(kernel, "_arrays", None)
        if arrays is None:
            raise ValueError("DeviceDest.from_kernel: the device kernel is not started")
        arena = arrays[2]
        if kernel.target_name == "cuda":
            return cls(arena, offset, nbytes, target="cuda")
        host = kernel.target.host_view(arena)
        return cls(np.asarray(host), offset, nbytes, target=kernel.target_name)

    def _dev(self, off: int, n: int):
        o = self.offset + off
        return self.array[o:o + n]

    def view(self, off: int = 0, n: int | None = None) -> np.ndarray:
        if self.target == "cuda":
            raise TypeError("DeviceDest(cuda) has no host view; copy_to_host() it")
        return self._dev(off, self.nbytes - off if n is None else n)

    def device_pointer(self, off: int = 0) -> int:
        if self.target == "cuda":
            return int(self.array.__cuda_array_interface__["data"][0]) + self.offset + off
        return self.view(off, 0).ctypes.data

    def write_from_host(self, off: int, src: np.ndarray, stream) -> None:
        if self.target == "cuda":
            self._dev(off, len(src)).copy_to_device(src, stream=stream or 0)
        else:
            self._dev(off, len(src))[:] = src

    def read_to_host(self, off: int, dst: np.ndarray, stream) -> None:
        if self.target == "cuda":
            self._dev(off, len(dst)).copy_to_host(dst, stream=stream or 0)
        else:
            dst[:] = self._dev(off, len(dst))

    def zero(self, off: int, n: int, stream) -> None:
        if self.target == "cuda":
            from numba.cuda.cudadrv import driver
            driver.device_memset(self._dev(off, n), 0, n, stream=stream or 0)
        else:
            self._dev(off, n)[:] = 0

    def to_host(self) -> np.ndarray:
        """A host copy of the whole destination (tests, debugging)."""
        if self.target == "cuda":
            return self._dev(0, self.nbytes).copy_to_host()
        return self.view().copy()

    def describe(self) -> str:
        return f"{self.target} device memory ({self.nbytes} bytes)"


def as_destination(obj, nbytes: int | None = None) -> Destination:
    """A Destination for ``obj``: a Destination as is, a NumPy array as HostDest, a CUDA device
    array as DeviceDest(cuda), ``None`` as fresh page-aligned host memory of ``nbytes``."""
    if isinstance(obj, Destination):
        return obj
    if obj is None:
        return HostDest.alloc(nbytes or 0)
    if isinstance(obj, np.ndarray):
        return HostDest(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return HostDest(np.frombuffer(obj, dtype=np.uint8))
    if _is_cuda_array(obj):
        return DeviceDest(obj, target="cuda")
    raise TypeError(f"not a storage destination: {type(obj).__name__} (expected a NumPy array, "
                    f"HostDest, ArenaDest, DeviceDest or a CUDA device array)")
