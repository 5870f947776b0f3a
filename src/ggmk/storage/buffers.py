"""Aligned memory, bounce-buffer pools and copy engines (the pipelined path's moving parts).

* :func:`aligned_empty`: page-aligned host memory (an anonymous ``mmap``; huge pages from
  2 MiB up), usable with ``O_DIRECT`` (which needs the buffer address, the file offset and the
  length aligned).
* :class:`BouncePool`: ``count`` preallocated aligned buffers of ``size`` bytes (page-locked
  when a CUDA copy engine uses them). ``acquire`` blocks until a buffer is free *and* the copy
  that last used it has finished (its :class:`Fence`); ``release(buf, fence)`` hands it back
  while that copy may still be running, so reads into one buffer overlap copies out of others.
* Copy engines move bytes between a bounce buffer and a destination and return a fence:
  :class:`InlineCopy` (a plain ``memcpy`` now: host destinations), :class:`ThreadCopy` (a copy
  thread working through a FIFO, like a DMA engine or a stream: the ``cpu`` target's "device"
  memory is host memory, so this is the generic pipelined path) and ``CudaCopy`` (async
  host-to-device copies on a non-blocking CUDA stream, fenced by events; see ``gds.py``).
"""
from __future__ import annotations

import mmap
import threading
from collections import deque

import numpy as np

__all__ = ["ALIGN", "aligned_empty", "is_aligned", "Fence", "DONE", "BouncePool", "InlineCopy",
           "ThreadCopy", "align_down", "align_up"]

ALIGN = 4096


def align_down(x: int, a: int = ALIGN) -> int:
    return x & ~(a - 1)


def align_up(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) & ~(a - 1)


HUGE = 2 << 20                 # a transparent huge page (x86-64, arm64 with 4 KiB pages)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def aligned_empty(nbytes: int) -> np.ndarray:
    """``nbytes`` of page-aligned, zero-filled host memory (a private anonymous mmap) as a
    uint8 array.

    From ``HUGE`` (2 MiB) up the memory starts on a 2 MiB boundary and is advised
    ``MADV_HUGEPAGE``. Why: an O_DIRECT read pins the destination's pages and hands the device
    one scatter-gather segment per physically contiguous run; with 4 KiB pages a request holds
    at most ``max_segments`` (254 on virtio-blk) pages, about 1 MiB, so a large read becomes
    many small device requests. Huge pages make each request as large as the device allows
    (``max_sectors_kb``): measured on this VM's virtio disk, 1 GiB of O_DIRECT reads went from
    1.6-2.1 to 2.4-2.8 GB/s. Where THP is off the advice is ignored (plain pages).

    ``nbytes`` 0 gives an empty array (one page is still mapped behind it, so its address is
    aligned), never a byte more than asked for: written as a source, it writes nothing."""
    n = int(nbytes)
    if n < 0:
        raise ValueError(f"aligned_empty: nbytes must be >= 0, got {n}")
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if n < HUGE or _MADV_HUGEPAGE is None:
        m = mmap.mmap(-1, align_up(max(n, 1)), flags=flags)
        return np.frombuffer(m, dtype=np.uint8, count=n)
    m = mmap.mmap(-1, align_up(n, HUGE) + HUGE, flags=flags)
    a = np.frombuffer(m, dtype=np.uint8)
    skip = -a.ctypes.data % HUGE
    try:
        m.madvise(_MADV_HUGEPAGE, skip, align_up(n, HUGE))
    except OSError:
        pass                      # THP disabled in this kernel: plain pages
    return a[skip:skip + n]


def is_aligned(arr_or_addr, a: int = ALIGN) -> bool:
    addr = arr_or_addr if isinstance(arr_or_addr, int) else arr_or_addr.ctypes.data
    return addr % a == 0


class Fence:
    """Completion of one asynchronous copy: ``wait()`` returns when it is done (and raises
    the copy's error, if it failed)."""

    __slots__ = ("_ev", "error")

    def __init__(self):
        self._ev = threading.Event()
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        self.error = error
        self._ev.set()

    def done(self) -> bool:
        return self._ev.is_set()

    def wait(self, timeout: float | None = None) -> None:
        if not self._ev.wait(timeout):
            raise TimeoutError("copy did not complete in time")
        if self.error is not None:
            raise self.error


DONE = Fence()
DONE.set()


class BouncePool:
    """``count`` aligned buffers of ``size`` bytes; see the module docstring."""

    def __init__(self, size: int, count: int, *, alloc=None):
        if size < ALIGN or size % ALIGN:
            raise ValueError(f"bounce buffer size {size} must be a positive multiple of {ALIGN}")
        if count < 1:
            raise ValueError(f"bounce buffer count must be >= 1, got {count}")
        alloc = alloc or aligned_empty
        self.size = size
        self.buffers = [alloc(size) for _ in range(count)]
        for b in self.buffers:
            if not is_aligned(b):
                raise ValueError("bounce buffer allocator returned memory that is not "
                                 f"{ALIGN}-byte aligned")
        self._fences = [DONE] * count
        self._free = deque(range(count))
        self._cond = threading.Condition()
        self.waits = 0           # acquires that found no free buffer
        self.acquires = 0

    def acquire(self) -> tuple[int, np.ndarray]:
        with self._cond:
            if not self._free:
                self.waits += 1
                while not self._free:
                    self._cond.wait()
            i = self._free.popleft()
            self.acquires += 1
            fence = self._fences[i]
        try:
            fence.wait()                 # the copy that used it last is done
        except BaseException:
            pass                         # that copy's owner saw (and reported) its error
        return i, self.buffers[i]

    def release(self, i: int, fence: Fence = DONE) -> None:
        with self._cond:
            self._fences[i] = fence
            self._free.append(i)
            self._cond.notify()

    def stats(self) -> dict:
        return {"buffers": len(self.buffers), "size": self.size, "acquires": self.acquires,
                "waits": self.waits}


class InlineCopy:
    """Copies now, in the calling thread (host destinations)."""

    name = "inline"

    def to_dest(self, dest, dest_off: int, src: np.ndarray) -> Fence:
        dest.write_from_host(dest_off, src, None)
        return DONE

    def from_src(self, src, src_off: int, dst: np.ndarray) -> Fence:
        src.read_to_host(src_off, dst, None)
        return DONE

    def zero(self, dest, off: int, n: int) -> Fence:
        dest.zero(off, n, None)
        return DONE

    def close(self) -> None:
        pass


INLINE_COPY = InlineCopy()          # (stateless: one serves every host copy)


class ThreadCopy:
    """A copy thread with a FIFO of copies: the generic pipelined engine (a stand-in for a DMA
    engine / CUDA stream when the "device" is host memory). Copies complete in submission
    order, so waiting for the last fence of a sequence waits for all of it."""

    name = "thread"

    def __init__(self, name: str = "ggmk-storage-copy"):
        self._q: deque = deque()
        self._cond = threading.Condition()
        self._stop = False
        self.copies = 0
        self.bytes = 0
        self._t = threading.Thread(target=self._run, name=name, daemon=True)
        self._t.start()

    def _submit(self, fn) -> Fence:
        f = Fence()
        with self._cond:
            if self._stop:
                raise RuntimeError("copy engine is closed")
            self._q.append((fn, f))
            self._cond.notify()
        return f

    def to_dest(self, dest, dest_off: int, src: np.ndarray) -> Fence:
        return self._submit(lambda: dest.write_from_host(dest_off, src, None))

    def from_src(self, src, src_off: int, dst: np.ndarray) -> Fence:
        return self._submit(lambda: src.read_to_host(src_off, dst, None))

    def zero(self, dest, off: int, n: int) -> Fence:
        return self._submit(lambda: dest.zero(off, n, None))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._q and not self._stop:
                    self._cond.wait()
                if not self._q:
                    return
                fn, f = self._q.popleft()
            try:
                fn()
                self.copies += 1
            except BaseException as e:    # noqa: BLE001 - reported through the fence
                f.set(e)
                continue
            f.set()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._t.join()
