"""Large, long-lived buffers from anonymous memory maps.

glibc serves a big ``malloc`` from a mapping of its own, but freeing that chunk raises malloc's
dynamic mmap threshold (up to 32 MiB): from then on buffers of that size come from the heap,
which fragments and does not shrink. A process that boots and halts systems again and again
(test suites, notebooks, services that restart their system) grew by hundreds of MB that way.
An array from :func:`zeros` owns its own private anonymous mapping instead: the OS zero-fills
it, takes the pages back as soon as the last reference (view, memoryview) is gone, and malloc's
threshold is never touched. The process's malloc settings (``mallopt``) are its host's, not ours.

The arrays are ordinary NumPy arrays (writeable, C-contiguous; pickling copies the data).
Memory a device process shares is shared memory already (``bridge/process.py``), not this.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

MIN_BYTES = 128 << 10     # glibc's initial mmap threshold: smaller buffers stay with malloc
_HUGE = 4 << 20           # NumPy asks for transparent huge pages from this size: so do we
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS     # private: a forked child gets a copy


def zeros(shape, dtype=np.uint8) -> np.ndarray:
    """A zeroed C-contiguous array like ``np.zeros(shape, dtype)``. From ``MIN_BYTES`` up it is
    over its own anonymous mapping (page aligned, unmapped when the array and every view of it
    are gone); smaller, it is ``np.zeros`` (16-byte aligned)."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or min(shape) < 0:      # np.zeros names a negative dimension
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=_FLAGS)
    if nbytes >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return np.ndarray(shape, dtype, buffer=buf)     # .base is the mmap: it keeps it mapped


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` (``a.copy()``), over its own mapping when big."""
    out = zeros(a.shape, a.dtype)
    out[...] = a
    return out
