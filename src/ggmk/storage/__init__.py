"""Storage (NVFS, SPEC §12): file ranges to and from host memory, the CPU kernel's arena and
device memory, with GPUDirect Storage where available and a pipelined bounce path elsewhere.

Example::

    from ggmk.storage import Storage, ReadRequest, ArenaDest, DeviceDest

    with Storage(workers=4, arena=system.arena) as st:
        r = st.read("data.bin", 0, 1 << 20)                   # fresh aligned host memory
        r.data()[:16], r.status, r.io_path                     # "ok", "direct"
        r = st.read("data.bin", 4096, 1000, dest="arena")      # a payload in the arena
        ptr = r.dest.ptr                                       # the caller owns it now
        d = DeviceDest.alloc(64 << 20, target="cpu")           # device memory (cpu target)
        st.read("data.bin", 0, 64 << 20, dest=d).io_path       # "bounce" (pipelined)
        b = st.submit([ReadRequest("data.bin", off, 4096) for off in offsets])
        for r in b.as_completed(): ...                         # any order, own status each
        r = st.read("big.bin")            # whole file, 16 x 4 MiB O_DIRECT reads in flight
        fb = st.read_batch("data.bin", offsets, 4096)          # the fast path (arrays)
        fb.status, fb.nbytes, fb.data(0), fb.errors()          # per I/O
        st.stats()["latency"]

The batch fast path (:meth:`Storage.read_batch`, :mod:`ggmk.storage.fast`): many small reads
(4 KiB random reads) given as arrays run in a native loop (Numba, GIL released) on
``fast_threads`` threads, with no Python object per I/O; state machines and statistics are
updated once per batch; results (status, bytes, errno, path) stay per I/O, as arrays.

Paths (chosen per I/O, reported as ``result.io_path`` and counted in ``stats()["paths"]``):

* ``gds``: a CUDA destination and cuFile (``cuda.bindings.cufile``, else KvikIO) usable: the
  file's data DMAs into GPU memory (see :mod:`ggmk.storage.gds`).
* ``bounce``: device memory without GDS (and the ``cpu`` target's device memory, which is host
  memory reached the same way): reads into preallocated aligned bounce buffers (pinned on
  CUDA) overlapped with copies to the destination by a copy engine (a CUDA non-blocking stream,
  or a copy thread); several segments of a large I/O and several I/Os are in flight at once.
  Also host destinations whose address does not agree with the file offset modulo 4096 (O_DIRECT
  needs that), which get O_DIRECT into a bounce buffer plus a memcpy.
* ``direct``: host memory with O_DIRECT straight into the destination (head and tail that are
  not 4096-aligned through a bounce buffer). The range is cut into ``seq_chunk`` (4 MiB)
  aligned chunks that ``seq_depth`` (16) fast-path threads read at once, so several large
  reads are always queued at the device (one ``pread`` at a time leaves the disk idle between
  requests); memory the storage allocates (``HostDest.alloc``, ``dest=None``) is huge-page
  backed from 2 MiB up, so each O_DIRECT request is as large as the device takes instead of
  ~1 MiB of 4 KiB pages.
* ``buffered``: host memory through the page cache, when O_DIRECT is off or refused.

O_DIRECT (``o_direct="auto"``) is used where the file system accepts it; where it does not
(tmpfs refuses the open), or a write is unaligned, the I/O falls back to buffered I/O and the
fallback is counted with its reason (``stats()["o_direct"]["fallback"]``,
``result.fallback``): never silently.

Sparse files: before reading, ``SEEK_DATA``/``SEEK_HOLE`` map the range; holes are
zero-filled in the destination without reading (in memory the storage allocated, the whole
pages of a large hole are dropped with ``MADV_DONTNEED`` and read back as zeros; a caller's
array gets a memset), data regions are read (on the ``direct`` path, all of them as one set of
chunks in flight together); ``result.regions``
lists them and ``stats()["sparse"]`` counts holes and bytes skipped. A file system without
hole support (``lseek`` refuses SEEK_DATA) gets a dense read (``result.dense_fallback``).

Short reads: a range past the end of the file completes with ``status="short"`` and
``nbytes`` = what the file had; nothing past it is written (never padded).

State machines: :mod:`ggmk.storage.states` (per 4 KiB block and per I/O, one transition
table each; illegal transitions raise :class:`IllegalTransition` naming both states).

Errors: :class:`StorageError` with ``kind`` in ``not_found``, ``permission``,
``dest_too_small``, ``alloc_fail`` (``code == ALLOC_FAIL``), ``no_space``, ``file_too_large``,
``cancelled``, ``bad_request``, ``io``; the message names operation, file and byte range.
A destination the storage allocated is released when its I/O fails or is cancelled.
"""
from ggmk.storage.buffers import ALIGN, BouncePool, aligned_empty  # noqa: F401
from ggmk.storage.dest import (ArenaDest, Destination, DeviceDest, HostDest,  # noqa: F401
                               as_destination)
from ggmk.storage.engine import (Batch, FileHandle, IoResult, ReadRequest, Storage,  # noqa: F401
                                 WriteRequest)
from ggmk.storage.errors import KINDS, StorageError  # noqa: F401
from ggmk.storage.fast import FastBatch  # noqa: F401
from ggmk.storage.gds import available as gds_available  # noqa: F401
from ggmk.storage.states import (BLOCK_TRANSITIONS, IO_TRANSITIONS, BlockState,  # noqa: F401
                                 IllegalTransition, IoState)

_default = None


def default() -> Storage:
    """A process-wide Storage (created on first use)."""
    global _default
    if _default is None:
        _default = Storage()
    return _default


def stats() -> dict:
    """Statistics of the process-wide Storage (see :meth:`Storage.stats`)."""
    return default().stats()
