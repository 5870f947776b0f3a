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
_memcpy = types.ExternalFunction(
    "memcpy", types.voidptr(types.voidptr, types.voidptr, types.uintp))
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.int32)())
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_CLOCK_MONOTONIC = 1
_EINTR, _EINVAL = E.EINTR, E.EINVAL
_BLK = 4096


@njit(nogil=True, cache=True)
def read_range(fd_direct, fd_buffered, offs, lens, caps, addrs, got, err, lat, fell_back,
               idx, first, stop, cancel):  # pragma: no cover - compiled
    """pread every I/O ``i = idx[j]`` for j in [first, stop) (``idx`` orders the I/Os, e.g.
    by the stage that opens their files): into addrs[i], lens[i] bytes at offs[i] of
    fd_direct[i] (O_DIRECT; -1: none) or fd_buffered[i]. Records bytes read, errno, latency;
    an O_DIRECT read the file system refuses (EINVAL) is retried buffered (fell_back[i] = 1).
    A read that returns short on a block boundary is continued (the next pread returns 0 at
    end of file, or the error that cut it short, e.g. EFAULT for an unmapped destination
    page), so a short count always means end of file.

    ``caps[i]``: how many bytes from offs[i] an O_DIRECT read may place straight in the
    destination (a multiple of 4096: the whole blocks before the end of the file). O_DIRECT
    transfers whole blocks, so the block that holds the end of the file would write zeros past
    it; from ``caps[i]`` on, blocks are read into an aligned scratch block and only the bytes
    the file has are copied: nothing past ``got[i]`` is written."""
    ts = np.zeros(2, np.int64)
    scratch = np.empty(2 * _BLK, np.uint8)
    sa = scratch.ctypes.data
    sa += (_BLK - sa % _BLK) % _BLK             # an aligned block inside it
    for j in range(first, stop):
        i = idx[j]
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
        cap = caps[i]
        done = 0
        e = 0
        while done < n:
            if direct and done >= cap:
                r = _pread(fd, sa, _BLK, offs[i] + done)      # the end of the file's block
                if r > 0:
                    k = min(r, n - done)
                    _memcpy(addrs[i] + done, sa, k)
                    done += k
                    if r < _BLK:
                        break          # end of file
                    continue
            else:
                want = n - done
                if direct and cap - done < want:
                    want = cap - done
                r = _pread(fd, addrs[i] + done, want, offs[i] + done)
                if r > 0:
                    done += r
                    if direct and done < n and (offs[i] + done) % _BLK != 0:
                        break          # O_DIRECT ends short off a block boundary only at EOF
                    continue
            if r == 0:
                break                  # end of file
            e = _errno_location()[0]
            if e == _EINTR:
                e = 0
                continue
            if e == _EINVAL and direct:
                direct = False         # the fs refused this alignment after all
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
               np.zeros(1, np.int64), np.zeros(1, np.uint64), np.zeros(1, np.int64),
               np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros(1, np.uint8),
               np.zeros(1, np.int64), 0, 0, np.zeros(1, np.int32))
