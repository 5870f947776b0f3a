"""Guest memory: one memfd shared with the backend, seen here as a NumPy byte array.

The backend maps the same file (SET_MEM_TABLE), so a write into ``GuestMemory.buf`` is what the
device reads. Addresses come in three kinds: an *offset* into the file, a *guest physical address*
(``gpa``, what descriptors and attach-backing entries carry) and a *user address* (``uaddr``,
what SET_VRING_ADDR carries: our own virtual address of the mapping).

Example::

    mem = GuestMemory(1 << 20)
    off = mem.alloc(4096)
    mem.buf[off:off + 4] = (1, 2, 3, 4)
    mem.gpa(off)          # address the device uses
    mem.free(off); mem.close()
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from .errors import VirtioError

GPA_BASE = 0x1_0000_0000   # arbitrary, non-zero: a zero address looks like a bug in traces


def check_size(size, what: str = "guest memory: size") -> int:
    """``size`` as a guest memory size: an int > 0 in whole pages (a bool, a float or a string
    is refused), or a VirtioError naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0 \
            or size % mmap.PAGESIZE:
        raise VirtioError(f"{what}={size!r}: allowed an int > 0, a multiple of the page size "
                          f"{mmap.PAGESIZE}")
    return int(size)


class GuestMemory:
    """A memfd-backed region with a small first-fit allocator (few, large allocations)."""

    def __init__(self, size: int, gpa_base: int = GPA_BASE):
        size = check_size(size)
        self.size = size
        self.gpa_base = gpa_base
        self.fd = os.memfd_create("ggmk-virtio-guest", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self._mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        self.buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.uaddr_base = self.buf.ctypes.data
        self._free: list[tuple[int, int]] = [(0, size)]     # (offset, length), sorted
        self._used: dict[int, int] = {}                      # offset -> length

    def alloc(self, nbytes: int, align: int = 64) -> int:
        """Reserve ``nbytes`` (aligned to ``align``); return the offset. Raises VirtioError when full."""
        if nbytes <= 0:
            raise VirtioError(f"guest memory allocation of {nbytes} bytes")
        for i, (off, length) in enumerate(self._free):
            start = -(-off // align) * align
            end = start + nbytes
            if end <= off + length:
                pieces = []
                if start > off:
                    pieces.append((off, start - off))
                if end < off + length:
                    pieces.append((end, off + length - end))
                self._free[i:i + 1] = pieces
                self._used[start] = nbytes
                return start
        raise VirtioError(
            f"guest memory exhausted: {nbytes} bytes wanted, {self.available()} free of "
            f"{self.size}; open the device with a larger mem_size")

    def free(self, offset: int) -> None:
        """Return an allocation made by :meth:`alloc`."""
        length = self._used.pop(offset, None)
        if length is None:
            raise VirtioError(f"guest memory offset {offset:#x} is not an allocation")
        self._free.append((offset, length))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for off, ln in self._free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + ln)
            else:
                merged.append((off, ln))
        self._free = merged

    def available(self) -> int:
        return sum(length for _, length in self._free)

    def gpa(self, offset: int) -> int:
        return self.gpa_base + offset

    def uaddr(self, offset: int) -> int:
        return self.uaddr_base + offset

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        return self.buf[offset:offset + nbytes]

    def close(self) -> None:
        if self.fd < 0:
            return
        self.buf = None
        try:
            self._mm.close()
        except BufferError:
            pass            # a caller still holds a view; the mapping goes when it does
        os.close(self.fd)
        self.fd = -1
