"""The fast path's native loop: libc ``pread`` called from a Numba ``@njit(nogil=True)`` function
(see :mod:`ggmk.storage.fast`). Kept apart so that Numba is imported only when a fast batch
runs. libc functions are bound by symbol name (``ExternalFunction``), which keeps the compiled
loop in Numba's on-disk cache across processes (ctypes function pointers would not be)."""
from __future__ import annotations

import errno as E

import numpy as np
from numba import njit, types

# libc, bound by symbol name (so the compiled loop is cacheable across processes)
_pread = types.ExternalFunction(
    "pread", types.intp(types.int32, types.voidptr, types.uintp, types.int64))
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.int32)())
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_CLOCK_MONOTONIC = 1
_EINTR, _EINVAL = E.EINTR, E.EINVAL


@njit(nogil=True, cache=True)
def read_range(fd_direct, fd_buffered, offs, lens, addrs, got, err, lat, fell_back,
               first, stop, cancel):  # pragma: no cover - compiled
    """pread every I/O in [first, stop): into addrs[i], lens[i] bytes at offs[i] of
    fd_direct[i] (O_DIRECT; -1: none) or fd_buffered[i]. Records bytes read, errno, latency;
    an O_DIRECT read the file system refuses (EINVAL) is retried buffered (fell_back[i] = 1).
    A read that returns short on a block boundary is continued (the next pread returns 0 at
    end of file, or the error that cut it short, e.g. EFAULT for an unmapped destination
    page), so a short count always means end of file."""
    ts = np.zeros(2, np.int64)
    for i in range(first, stop):
        if cancel[0] != 0:
            err[i] = -1
            continue
        _clock_gettime(_CLOCK_MONOTONIC, ts.ctypes.data)
        t0 = ts[0] * 1000000000 + ts[1]
        fd = fd_direct[i]
        direct = fd >= 0
        if not direct:
            fd = fd_buffered[i]
        n = lens[i]
        done = 0
        e = 0
        while done < n:
            r = _pread(fd, addrs[i] + done, n - done, offs[i] + done)
            if r > 0:
                done += r
                if direct and done < n and (offs[i] + done) % 4096 != 0:
                    break              # O_DIRECT ends short off a block boundary only at EOF
            elif r == 0:
                break                  # end of file
            else:
                e = _errno_location()[0]
                if e == _EINTR:
                    e = 0
                    continue
                if e == _EINVAL and direct:
                    direct = False     # the fs refused this alignment after all
                    fd = fd_buffered[i]
                    fell_back[i] = 1
                    e = 0
                    continue
                break
        got[i] = done
        err[i] = e
        _clock_gettime(_CLOCK_MONOTONIC, ts.ctypes.data)
        lat[i] = ts[0] * 1000000000 + ts[1] - t0
    return 0


def warm_up() -> None:
    """Compile (or load from Numba's cache) the read loop now rather than in the first batch."""
    z = np.zeros(1, np.int64)          # the dtypes of the real calls (one specialization)
    read_range(np.full(1, -1, np.int32), np.full(1, -1, np.int32), z, np.zeros(1, np.int64),
                np.zeros(1, np.uint64), np.zeros(1, np.int64), np.zeros(1, np.int32),
                np.zeros(1, np.int64), np.zeros(1, np.uint8), 0, 0, np.zeros(1, np.int32))
