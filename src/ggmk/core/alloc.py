"""The CPU kernel's arena: slab, block (12 power-of-two bins) and bump allocators (SPEC §4).

One :class:`Arena` manages one contiguous NumPy ``uint8`` buffer: by default 64 MiB of its own,
or a buffer the caller supplies (for example page-locked host memory from the GPU driver, so the
bridge can DMA payloads directly). The buffer is subdivided like the GGMK seed:

============  ======  ==========================================================================
region        share   what it holds
============  ======  ==========================================================================
slab          10 %    fixed 64-byte slots: a 16-byte header + 48 payload bytes
block         68 %    12 bins, payload capacity 64 B .. 128 KiB, each bin 1/12 of the region
bump          20 %    transient allocations, 16-byte aligned, no header: a shared region
                      (bump_alloc / bump_reset) and, once a kernel asks, one region per worker
reserved      ~2 %    unused (the seed's trace slab; traces have their own rings here)
============  ======  ==========================================================================

Why a 64-byte slab slot: header plus payload is exactly one cache line, so slab slots never share
a line (no false sharing between workers), and the 48-byte payload holds one whole task record
(``TASK_SIZE``) or any of the small inline-ish payloads that dominate message traffic.

Addresses. Every payload address is a plain ``int``: the buffer's address plus an offset, so it
can travel in a task's ``payload_ptr`` and be handed to DMA as is. Payloads are 16-byte aligned.
The 16 bytes before each slab/block payload are its header, two little-endian u64 words::

    word 0: state magic (u32: LIVE / FREE / DEAD) | reference count (u32) << 32
    word 1: requested size (u32) | size class (u32) << 32     (class 0 = slab, 1..12 = bins)

so ``view``, ``retain`` and ``release`` are O(1) from the address; the address itself is checked
arithmetically against the region layout, so a pointer into the middle of a payload, or into
another arena, raises :class:`~ggmk.errors.InvalidPointer` naming it.

Placement. A request of ``n`` bytes goes to the slab if ``n <= 48``, else to the smallest bin
that holds ``n``. When that class is exhausted it spills to the next larger class that has a
free slot (counted as ``spills`` on the class asked for); when every candidate is full, or
``n > 128 KiB`` (``MAX_ALLOC``), the allocation fails: ``alloc`` returns 0 and counts a fail,
it never raises (``alloc_or_raise`` raises :class:`~ggmk.errors.AllocError`).

Reserve. ``set_reserve(fraction)`` keeps that share of every class's slots for
``alloc(n, reserve=True)``: plain allocations fail (and spill) as if those slots were taken. The
bridge reserves host memory for payloads arriving from the GPU this way (see ``set_reserve``).

Reference counts. ``alloc(n, refs=k)`` starts the count at ``k``; ``retain`` adds, ``release``
subtracts and frees at zero; ``set_refs`` overwrites it (fan-out sets it to the number of
subscribers that received the task; 0 frees). Releasing more references than are held raises
:class:`~ggmk.errors.DoubleFree` and changes nothing. ``check_refs`` checks, without changing
anything, what a sender of task records must own (a reference per record naming a payload);
``release_valid`` is the kernel's recovery path when a batch's ``release_many`` raised.

Bump. Transient memory, 16-byte aligned, without header or reference count, dropped all at
once by a reset (poisoned in debug mode). SPEC §4's "reset each tick" is per worker, as on the
GPU kernel (each worker block resets its own region at its iteration start): a wall tick moves
while handlers run on other workers, so one region reset at a tick boundary would free memory a
handler still uses. So the bump area has two parts:

* per worker (upper half): ``worker_bump(wid, nworkers)`` splits it, on the kernel's first
  call, into ``nworkers`` equal :class:`BumpRegion` s. Only its worker allocates from one
  (``ctx.bump_alloc``) and resets it, at the start of each of its steps (the worker's tick),
  where none of its handlers runs; so neither takes the arena's lock. A handler's bump memory
  is valid until its worker's next step begins (a host that borrowed the worker for a direct
  request: until the worker is given back).
* shared (the rest: the whole area while no worker region exists): ``bump_alloc`` /
  ``bump_reset``, under the lock. No kernel resets it: reset it yourself when nothing uses it.

``stats()["bump"]`` sums both parts (the worker regions' detail under ``workers``).

Debug canary (``debug=True``). A freed payload is filled with ``POISON`` (0xDB) and its header
marked DEAD; ``view``/``retain``/``refcount`` of it raise :class:`~ggmk.errors.UseAfterFree`, a
second ``release`` raises :class:`~ggmk.errors.DoubleFree`. When a DEAD slot is handed out again
its poison is verified first; a write after free raises ``UseAfterFree`` naming the address (the
slot is re-poisoned and put back, so the arena stays usable). Free slots are reused FIFO in debug
mode (least recently freed first, so a stale pointer stays detectably dead for longest) and LIFO
otherwise (cache-warm). Without debug, a freed or never-allocated address raises
``InvalidPointer``.

Threads. All mutating calls take one ``threading.Lock``; the batch calls (``alloc_many``,
``release_many``) take it once per call and do their work with vectorised NumPy. ``view`` and
``refcount`` read the header without the lock (owning a reference is what keeps it valid).

Statistics. ``stats()`` reports, for ``slab``, ``block`` (with per-bin detail), ``bump`` and
``total``: ``total_bytes``, ``used_bytes``, ``free_bytes``, ``high_watermark`` (max used bytes
ever), ``allocs``, ``frees``, ``fails``. Slab and block bytes count whole slots, header included
(a slab allocation uses 64 bytes, a 100-byte request in the 128-byte bin uses 144); bump bytes
count the 16-byte-rounded sizes, and ``frees`` for bump counts allocations dropped by resets.
The worker bump regions count without the lock: their ``high_watermark`` is the sum of each
region's own peak (an upper bound of the area's), which ``total`` adds to its own.

Example::

    from ggmk.core.alloc import Arena

    arena = Arena(size=16 << 20)
    p = arena.alloc(1000)                  # int address; 0 if it could not be satisfied
    arena.view(p)[:] = 7                   # uint8 view of the 1000 requested bytes
    arena.retain(p)                        # a second owner
    arena.release(p)                       # -> False (one reference left)
    arena.release(p)                       # -> True (freed)
    ptrs = arena.alloc_many(48, 1000)      # np.uint64 addresses, 0 where it failed
    arena.release_many(ptrs)               # -> 1000 freed
    t = arena.bump_alloc(256); arena.bump_reset()
    assert arena.live_count() == 0
    print(arena.stats()["block"]["high_watermark"])
"""
from __future__ import annotations

import bisect
import operator
import threading

import numpy as np

from ggmk.core import bigbuf
from ggmk.core.det import check_flag, check_int
from ggmk.errors import (AllocError, BootError, DoubleFree, GgmkError, InvalidPointer,
                         UseAfterFree)

__all__ = [
    "Arena", "BumpRegion", "HEADER_SIZE", "SLAB_SLOT", "SLAB_PAYLOAD", "NUM_BINS", "BIN_SIZES", "MAX_ALLOC",
    "DEFAULT_SIZE", "MIN_SIZE", "POISON", "size_class", "ArenaTooSmall",
]

HEADER_SIZE = 16
SLAB_SLOT = 64                          # one cache line: header + payload
SLAB_PAYLOAD = SLAB_SLOT - HEADER_SIZE  # 48 bytes = one task record
NUM_BINS = 12
BIN_SIZES = tuple(64 << i for i in range(NUM_BINS))  # payload capacities 64 B .. 128 KiB
MAX_ALLOC = BIN_SIZES[-1]
NUM_CLASSES = NUM_BINS + 1              # class 0 = slab, classes 1..12 = bins
SLAB_FRACTION, BLOCK_FRACTION, BUMP_FRACTION = 0.10, 0.68, 0.20
DEFAULT_SIZE = 64 << 20
MIN_SIZE = 4 << 20                      # smallest arena where every bin has at least one slot
POISON = 0xDB
_POISON64 = np.uint64(0xDBDBDBDBDBDBDBDB)

MAGIC_LIVE = 0x4556494C                 # b"LIVE"
MAGIC_FREE = 0x45455246                 # b"FREE": never allocated, or freed without debug
MAGIC_NEVER = 0                         # a slot of a fresh (zeroed) arena never allocated yet
MAGIC_DEAD = 0x44414544                 # b"DEAD": freed and poisoned (debug)
_M32 = 0xFFFFFFFF
_NO_FLOOR = (0,) * (NUM_BINS + 1)

_CAPACITY = (SLAB_PAYLOAD,) + BIN_SIZES
_STRIDE = tuple(c + HEADER_SIZE for c in _CAPACITY)


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    """An int argument (``check_int``'s): TypeError naming it for a bool, a float or a string
    (True was taken as 1, 1.5 raised an error naming nothing), ValueError out of range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        check_int(name, value, lo, hi, TypeError)
    return check_int(name, value, lo, hi)


def size_class(nbytes: int) -> int:
    """Class that serves ``nbytes``: 0 = slab, 1..12 = bins of 64 B..128 KiB, 13 = too large."""
    if nbytes <= SLAB_PAYLOAD:
        return 0
    return min(max((nbytes - 1).bit_length() - 5, 1), NUM_CLASSES)


class ArenaTooSmall(BootError, ValueError):
    """The arena is too small for what is asked of it: below ``MIN_SIZE``, or a bump area
    that cannot give each worker a region (``worker_bump``, which each worker of a booting
    kernel calls). A BootError, as boot raises it; a ValueError, like the arena's other
    argument errors."""


def _worker_half(bump_size: int) -> int:
    """The bytes ``worker_bump`` splits among the workers: the bump area less the shared
    region it keeps."""
    return bump_size - ((bump_size // 2) & ~15)


def _arena_size_for(nworkers: int) -> int:
    """The smallest arena size (a multiple of 64) whose bump area gives ``nworkers`` workers
    16 bytes each (the workers' half is about 10 % of the arena)."""
    size = max(MIN_SIZE, (nworkers * 160 - 1024) & ~63)     # (just below the first that fits)
    while _worker_half(int(size * BUMP_FRACTION) & ~15) < 16 * nworkers:
        size += 64
    return size


def _class_name(k: int) -> str:
    return "slab" if k == 0 else f"block bin {_CAPACITY[k]} B"


class BumpRegion:
    """One worker's bump region (``Arena.worker_bump``; see the module docstring, "Bump").

    Only its worker's thread (or a host that borrowed the worker) calls ``alloc`` and
    ``reset``, so they take no lock; other threads only read the counters (``Arena.stats``).
    """

    __slots__ = ("arena", "index", "start", "size", "top", "hw", "allocs", "frees", "fails",
                 "live", "resets")

    def __init__(self, arena: "Arena", index: int, start: int, size: int):
        self.arena = arena
        self.index = index                 # the worker
        self.start = start                 # offset in the arena
        self.size = size
        self.top = 0                       # bytes handed out since the last reset
        self.hw = self.allocs = self.frees = self.fails = self.live = self.resets = 0

    def alloc(self, nbytes: int) -> int:
        """``nbytes`` of transient memory (``Arena.bump_alloc``'s rules): its address, or 0
        (counted in ``fails``) when the region is full."""
        if nbytes.__class__ is not int or nbytes < 0:
            nbytes = _int("ctx.bump_alloc: nbytes", nbytes, 0)
        a = (max(nbytes, 1) + 15) & ~15
        top = self.top
        if top + a > self.size:
            self.fails += 1
            return 0
        self.top = t = top + a
        if t > self.hw:
            self.hw = t
        self.allocs += 1
        self.live += 1
        return self.arena.base + self.start + top

    def reset(self) -> int:
        """Drop every allocation (poisoned in debug mode); returns how many were dropped."""
        if self.arena.debug and self.top:
            self.arena.buffer[self.start:self.start + self.top] = POISON
        dropped = self.live
        self.frees += dropped
        self.live = 0
        self.resets += 1
        self.top = 0
        return dropped

    def stats(self) -> dict:
        return {"worker": self.index, "total_bytes": self.size, "used_bytes": self.top,
                "high_watermark": self.hw, "allocs": self.allocs, "frees": self.frees,
                "fails": self.fails, "live": self.live, "resets": self.resets}

    def __repr__(self) -> str:
        return f"BumpRegion(worker={self.index}, size={self.size}, used={self.top})"


class Arena:
    """Slab + block + bump allocator over one contiguous uint8 buffer; see the module docstring.

    ``Arena(size=64 << 20, debug=False)`` allocates its own buffer;
    ``Arena(buffer=arr)`` manages a caller's 1-D, C-contiguous, writable ``uint8`` array (at
    least ``MIN_SIZE`` bytes; the layout starts at its first 64-byte-aligned byte).
    """

    def __init__(self, size: int = DEFAULT_SIZE, *, buffer: np.ndarray | None = None,
                 debug: bool = False):
        if buffer is None:
            size = _int("Arena: size", size, 0)
            if size < MIN_SIZE:
                raise ArenaTooSmall(f"Arena size {size} (boot's arena_size) is below the "
                                    f"minimum {MIN_SIZE} bytes (every block bin needs at least "
                                    f"one {MAX_ALLOC}-byte slot)")
            buffer = bigbuf.zeros(size + 64)      # +64: room to align the origin
            usable = size
            fresh = True
        else:
            if not isinstance(buffer, np.ndarray):
                raise TypeError(f"Arena buffer must be a numpy uint8 array, got {type(buffer).__name__}")
            if buffer.dtype != np.uint8 or buffer.ndim != 1:
                raise ValueError(f"Arena buffer must be 1-D uint8, got {buffer.ndim}-D {buffer.dtype}")
            if not buffer.flags.c_contiguous or not buffer.flags.writeable:
                raise ValueError("Arena buffer must be C-contiguous and writable")
            usable = None
            fresh = False
        pad = (-buffer.ctypes.data) % 64
        if usable is None:
            usable = buffer.size - pad
            if usable < MIN_SIZE:
                raise ValueError(f"Arena buffer has {usable} usable bytes (after aligning to 64), "
                                 f"below the minimum {MIN_SIZE}")
        usable &= ~63
        self.debug = check_flag("Arena: debug", debug)
        self.size = usable
        self._owner = buffer                       # keeps a caller's memory alive
        self.buffer = buffer[pad:pad + usable]     # the managed bytes, origin 64-byte aligned
        self.base = self.buffer.ctypes.data        # address of offset 0
        self._q = self.buffer.view(np.uint64)      # header words
        self._lock = threading.Lock()

        # layout: slab, then the 12 bins, then bump, then reserved
        starts, nslots = [], []
        n_slab = int(usable * SLAB_FRACTION) // SLAB_SLOT
        starts.append(0)
        nslots.append(n_slab)
        pos = n_slab * SLAB_SLOT
        share = int(usable * BLOCK_FRACTION) // NUM_BINS
        for k in range(1, NUM_CLASSES):
            starts.append(pos)
            n = share // _STRIDE[k]
            nslots.append(n)
            pos += n * _STRIDE[k]
        self._starts = starts                      # slot start (header) offset of each class
        self._nslots = nslots
        self._span = [n * s for n, s in zip(nslots, _STRIDE)]
        self._managed_end = pos                    # end of slab + block
        self.bump_start = pos
        self.bump_size = (int(usable * BUMP_FRACTION)) & ~15
        self._bump_cap = self.bump_size            # the shared region's (worker_bump halves it)
        self._regions: list[BumpRegion] = []       # the worker regions, after the shared one
        self._wbump_start = self.bump_start + self.bump_size
        self._wbump_size = 0
        self.reserved_bytes = usable - self.bump_start - self.bump_size
        self._starts_np = np.array(starts, dtype=np.int64)
        self._stride_np = np.array(_STRIDE, dtype=np.int64)
        self._span_np = np.array(self._span, dtype=np.int64)

        # free lists: one ring of payload offsets per class (FIFO pops from head in debug mode,
        # LIFO pops from the tail otherwise); count is the number of free slots
        self._rings, self._head, self._count = [], [0] * NUM_CLASSES, list(nslots)
        for k in range(NUM_CLASSES):
            offs = starts[k] + HEADER_SIZE + _STRIDE[k] * np.arange(nslots[k], dtype=np.int64)
            # LIFO hands out the tail first: store descending so both modes start at low addresses
            self._rings.append(bigbuf.copy(offs if self.debug else offs[::-1]))
            if not fresh:
                # a caller's memory may hold anything: mark every slot FREE. Our own zeroed
                # buffer is left untouched (a zero header means "never allocated"), so its pages
                # are only faulted in when used: boot stays fast for a 64 MiB arena.
                hdr = (offs - HEADER_SIZE) >> 3
                self._q[hdr] = MAGIC_FREE
                self._q[hdr + 1] = np.uint64(k) << np.uint64(32)

        # the reserve: free slots per class that plain allocations leave alone (set_reserve)
        self._floor = [0] * NUM_CLASSES

        # statistics (Python ints: cheap scalar updates under the lock)
        self._used = [0] * NUM_CLASSES             # live slots per class
        self._hw = [0] * NUM_CLASSES               # max live slots per class
        self._allocs = [0] * NUM_CLASSES
        self._frees = [0] * NUM_CLASSES
        self._fails = [0] * NUM_CLASSES            # counted on the class asked for
        self._spills = [0] * NUM_CLASSES           # served by a larger class than asked for
        self._oversize = 0
        self._block_used = self._block_hw = 0      # bytes
        self._total_used = self._total_hw = 0      # bytes, slab + block + bump
        self._bump_top = 0
        self._bump_hw = self._bump_allocs = self._bump_frees = self._bump_fails = 0
        self._bump_live = self._bump_resets = 0
        self._poison_faults = 0

    # ------------------------------------------------------------------ address checks
    def _locate(self, ptr: int, what: str) -> tuple[int, int]:
        """(payload offset, class) of a slab/block payload address, else InvalidPointer."""
        off = ptr - self.base
        if off < HEADER_SIZE or off >= self._managed_end or off & 15:
            self._bad_address(ptr, off, what)
        k = bisect.bisect_right(self._starts, off - HEADER_SIZE) - 1
        rel = off - HEADER_SIZE - self._starts[k]
        if rel >= self._span[k] or rel % _STRIDE[k]:
            raise InvalidPointer(f"{what}: 0x{ptr:x} is inside the {_class_name(k)} region of "
                                 f"this arena but not the start of an allocation")
        return off, k

    def _bad_address(self, ptr: int, off: int, what: str):
        if self.bump_start <= off < self.bump_start + self.bump_size:
            raise InvalidPointer(f"{what}: 0x{ptr:x} is a bump allocation; bump memory has no "
                                 f"header and is freed only by a reset (bump_reset(), or its "
                                 f"worker's next step)")
        if 0 <= off < self.size:
            raise InvalidPointer(f"{what}: 0x{ptr:x} is not the start of an allocation in "
                                 f"this arena (offset {off})")
        raise InvalidPointer(f"{what}: 0x{ptr:x} is not an address in this arena "
                             f"[0x{self.base:x}, 0x{self.base + self.size:x})")

    def _not_live(self, ptr: int, state: int, what: str):
        if state == MAGIC_DEAD:
            if what == "release":
                raise DoubleFree(f"{what}: 0x{ptr:x} was already freed (double free)")
            raise UseAfterFree(f"{what}: 0x{ptr:x} was freed (use after free)")
        if state in (MAGIC_FREE, MAGIC_NEVER):
            raise InvalidPointer(f"{what}: 0x{ptr:x} is not a live allocation (free slot)")
        raise InvalidPointer(f"{what}: header of 0x{ptr:x} is corrupt (magic 0x{state:08x}); "
                             f"was the allocation before it written past its end?")

    # ------------------------------------------------------------------ free lists
    def _pop(self, k: int) -> int:
        n = self._nslots[k]
        c = self._count[k] - 1
        self._count[k] = c
        if self.debug:
            h = self._head[k]
            self._head[k] = (h + 1) % n
            return self._rings[k].item(h)
        return self._rings[k].item((self._head[k] + c) % n)

    def _push(self, k: int, off: int) -> None:
        c = self._count[k]
        self._rings[k][(self._head[k] + c) % self._nslots[k]] = off
        self._count[k] = c + 1

    def _pop_many(self, k: int, m: int) -> np.ndarray:
        n, h, c = self._nslots[k], self._head[k], self._count[k]
        if self.debug:
            idx = (h + np.arange(m)) % n
            self._head[k] = (h + m) % n
        else:
            idx = (h + c - 1 - np.arange(m)) % n
        self._count[k] = c - m
        return self._rings[k][idx]

    def _push_many(self, k: int, offs: np.ndarray) -> None:
        c = self._count[k]
        self._rings[k][(self._head[k] + c + np.arange(offs.size)) % self._nslots[k]] = offs
        self._count[k] = c + offs.size

    # ------------------------------------------------------------------ debug canary
    def _poison_intact(self, off: int, k: int) -> bool:
        return bool((self._q[off >> 3:(off + _CAPACITY[k]) >> 3] == _POISON64).all())

    def _poison(self, off: int, k: int) -> None:
        self.buffer[off:off + _CAPACITY[k]] = POISON

    def _write_after_free(self, ptr: int, k: int):
        self._poison_faults += 1
        return UseAfterFree(f"alloc: free {_class_name(k)} slot 0x{ptr:x} was written after it "
                            f"was freed (poison overwritten); slot re-poisoned and kept free")

    # ------------------------------------------------------------------ stats helpers
    def _account_alloc(self, k: int, m: int) -> None:
        u = self._used[k] + m
        self._used[k] = u
        if u > self._hw[k]:
            self._hw[k] = u
        self._allocs[k] += m
        b = m * _STRIDE[k]
        if k:
            bu = self._block_used + b
            self._block_used = bu
            if bu > self._block_hw:
                self._block_hw = bu
        t = self._total_used + b
        self._total_used = t
        if t > self._total_hw:
            self._total_hw = t

    def _account_free(self, k: int, m: int) -> None:
        self._used[k] -= m
        self._frees[k] += m
        b = m * _STRIDE[k]
        if k:
            self._block_used -= b
        self._total_used -= b

    # ------------------------------------------------------------------ the reserve
    def set_reserve(self, fraction: float) -> None:
        """Keep ``fraction`` of every class's slots out of reach of :meth:`alloc` and
        :meth:`alloc_many` (at least one slot where ``fraction`` > 0, but never a class's
        only slot: a small arena's 128 KiB bin stays usable); ``alloc(n, reserve=True)`` may
        take them.

        Why: a producer that fills the arena with payloads waiting to leave must not take the
        memory that arriving payloads need, or the two wait on each other (the bridge: CPU ->
        GPU payloads wait for device blocks, which come back only when the GPU -> CPU copies
        they turned into find host memory). ``stats()["<class>"]["reserve_slots"]``.

        >>> a = Arena()
        >>> a.set_reserve(0.5)
        >>> a.stats()["block"]["bins"][-1]["slots"]              # the 128 KiB bin
        29
        >>> sum(1 for _ in range(29) if a.alloc(MAX_ALLOC))      # 14 slots are the reserve's
        15
        >>> a.alloc(MAX_ALLOC) == 0, a.alloc(MAX_ALLOC, reserve=True) != 0
        (True, True)
        """
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or \
                not 0 <= fraction < 1:
            raise ValueError(f"Arena.set_reserve: fraction must be a number in [0, 1), "
                             f"got {fraction!r}")
        with self._lock:
            self._floor = [0 if not fraction or n < 2 else max(1, int(n * fraction))
                           for n in self._nslots]

    # ------------------------------------------------------------------ allocation
    def alloc(self, nbytes: int, refs: int = 1, *, reserve: bool = False) -> int:
        """Allocate ``nbytes`` with reference count ``refs``; the payload address, or 0.

        Failure (too large, or the class and every larger one exhausted down to their reserve,
        :meth:`set_reserve`; ``reserve=True`` may take that too) is counted in ``stats()`` and
        returns 0; it never raises except for bad arguments or, in debug mode, a detected
        write-after-free.
        """
        if nbytes.__class__ is not int or refs.__class__ is not int:   # (True is not 1 byte)
            nbytes = _int("alloc: nbytes", nbytes, 0)
            refs = _int("alloc: refs", refs, 1, _M32)
        if nbytes <= SLAB_PAYLOAD:
            if nbytes < 0:
                raise ValueError(f"alloc: nbytes must be >= 0, got {nbytes}")
            c = 0
        else:
            c = (nbytes - 1).bit_length() - 5
        if refs != 1 and not 1 <= refs <= _M32:
            raise ValueError(f"alloc: refs must be in 1..{_M32}, got {refs}")
        # the scalar hot path is inlined (no helper calls): it is most of a task's alloc cost
        lock = self._lock
        lock.acquire()
        try:
            if c >= NUM_CLASSES:
                self._oversize += 1
                return 0
            count = self._count
            floor = _NO_FLOOR if reserve else self._floor
            k = c
            while count[k] <= floor[k]:
                k += 1
                if k == NUM_CLASSES:
                    self._fails[c] += 1
                    return 0
            n = count[k] - 1
            count[k] = n
            q = self._q
            if self.debug:
                hd = self._head[k]
                self._head[k] = (hd + 1) % self._nslots[k]
                off = self._rings[k].item(hd)
                h = (off - HEADER_SIZE) >> 3
                if q.item(h) & _M32 == MAGIC_DEAD and not self._poison_intact(off, k):
                    self._poison(off, k)
                    self._push(k, off)
                    raise self._write_after_free(self.base + off, k)
            else:
                off = self._rings[k].item(n)  # LIFO: the ring's head stays at 0 without debug
                h = (off - HEADER_SIZE) >> 3
            q[h] = MAGIC_LIVE | (refs << 32)
            q[h + 1] = nbytes | (k << 32)
            if k != c:
                self._spills[c] += 1
            self._account_alloc(k, 1)
        finally:
            lock.release()
        return self.base + off

    def alloc_or_raise(self, nbytes: int, refs: int = 1) -> int:
        """Like :meth:`alloc` but raises :class:`~ggmk.errors.AllocError` instead of returning 0."""
        ptr = self.alloc(nbytes, refs)
        if ptr:
            return ptr
        if nbytes > MAX_ALLOC:
            raise AllocError(f"alloc of {nbytes} bytes exceeds the largest block bin "
                             f"({MAX_ALLOC} bytes)")
        raise AllocError(f"alloc of {nbytes} bytes failed: the {_class_name(size_class(nbytes))} "
                         f"and every larger bin are full (arena of {self.size} bytes)")

    def alloc_many(self, nbytes: int, count: int, refs: int = 1) -> np.ndarray:
        """Allocate ``count`` payloads of ``nbytes`` each under one lock acquisition.

        Returns a ``uint64`` array of addresses, 0 where it failed (successes come first).
        Same placement and accounting as ``count`` calls to :meth:`alloc`.
        """
        nbytes = _int("alloc_many: nbytes", nbytes, 0)
        count = _int("alloc_many: count", count, 0)
        refs = _int("alloc_many: refs", refs, 1, _M32)
        if nbytes < 0 or count < 0:
            raise ValueError(f"alloc_many: nbytes and count must be >= 0, got {nbytes}, {count}")
        if refs < 1 or refs > _M32:
            raise ValueError(f"alloc_many: refs must be in 1..{_M32}, got {refs}")
        out = np.zeros(count, dtype=np.uint64)
        c = size_class(nbytes)
        with self._lock:
            if c >= NUM_CLASSES:
                self._oversize += count
                return out
            # take slots class by class (spilling upward), then commit them all at once, so a
            # debug write-after-free found in any class hands nothing out
            taken, got, k = [], 0, c
            while got < count and k < NUM_CLASSES:
                m = min(self._count[k] - self._floor[k], count - got)
                if m > 0:
                    taken.append((k, self._pop_many(k, m)))
                    got += m
                k += 1
            if self.debug:
                self._check_poison_batch(taken)
            got = 0
            for k, offs in taken:
                m = offs.size
                hdr = (offs - HEADER_SIZE) >> 3
                self._q[hdr] = MAGIC_LIVE | (refs << 32)
                self._q[hdr + 1] = nbytes | (k << 32)
                out[got:got + m] = offs + self.base
                if k != c:
                    self._spills[c] += m
                self._account_alloc(k, m)
                got += m
            if got < count:
                self._fails[c] += count - got
        return out

    def _check_poison_batch(self, taken: list) -> None:
        bad = []
        for k, offs in taken:
            hdr = (offs - HEADER_SIZE) >> 3
            dead = np.flatnonzero((self._q[hdr] & np.uint64(_M32)) == MAGIC_DEAD)
            bad += [(k, o) for o in offs[dead].tolist() if not self._poison_intact(o, k)]
        if bad:
            for k, off in bad:
                self._poison(off, k)
            for k, offs in taken:               # hand nothing out; every slot goes back free
                self._push_many(k, offs)
            self._poison_faults += len(bad) - 1
            raise self._write_after_free(self.base + bad[0][1], bad[0][0])

    # ------------------------------------------------------------------ reference counts
    def retain(self, ptr: int, n: int = 1) -> int:
        """Add ``n`` references to a live payload; returns the new count."""
        ptr, n = operator.index(ptr), _int("retain: n", n, 1)
        with self._lock:
            off, k = self._locate(ptr, "retain")
            h = (off - HEADER_SIZE) >> 3
            q0 = self._q.item(h)
            if q0 & _M32 != MAGIC_LIVE:
                self._not_live(ptr, q0 & _M32, "retain")
            refs = (q0 >> 32) + n
            if refs > _M32:
                raise ValueError(f"retain: refcount of 0x{ptr:x} would overflow ({refs})")
            self._q[h] = MAGIC_LIVE | (refs << 32)
            return refs

    def release(self, ptr: int, n: int = 1) -> bool:
        """Drop ``n`` references; frees the payload when the count reaches zero (returns True)."""
        if ptr.__class__ is not int or n.__class__ is not int:
            ptr, n = operator.index(ptr), _int("release: n", n, 1)
        if n < 1:
            raise ValueError(f"release: n must be >= 1, got {n}")
        # inlined address check (see _locate) and free: the scalar hot path
        off = ptr - self.base
        lock = self._lock
        lock.acquire()
        try:
            if off < HEADER_SIZE or off >= self._managed_end or off & 15:
                self._bad_address(ptr, off, "release")
            k = bisect.bisect_right(self._starts, off - HEADER_SIZE) - 1
            rel = off - HEADER_SIZE - self._starts[k]
            if rel >= self._span[k] or rel % _STRIDE[k]:
                self._locate(ptr, "release")
            h = (off - HEADER_SIZE) >> 3
            q = self._q
            q0 = q.item(h)
            if q0 & _M32 != MAGIC_LIVE:
                self._not_live(ptr, q0 & _M32, "release")
            refs = q0 >> 32
            if n < refs:
                q[h] = q0 - (n << 32)
                return False
            if n > refs:
                raise DoubleFree(f"release: {n} references of 0x{ptr:x} released but only "
                                 f"{refs} held (it would be freed more than once)")
            if self.debug:
                self._free(off, k, h)
                return True
            q[h] = MAGIC_FREE
            count = self._count
            c = count[k]
            self._rings[k][c] = off           # LIFO: the ring's head stays at 0 without debug
            count[k] = c + 1
            self._used[k] -= 1
            self._frees[k] += 1
            b = _STRIDE[k]
            if k:
                self._block_used -= b
            self._total_used -= b
            return True
        finally:
            lock.release()

    def _free(self, off: int, k: int, h: int) -> None:
        if self.debug:
            self._q[h] = MAGIC_DEAD
            self._poison(off, k)
        else:
            self._q[h] = MAGIC_FREE
        self._push(k, off)
        self._account_free(k, 1)

    def _addresses(self, ptrs, what: str) -> np.ndarray:
        """The nonzero entries of ``ptrs`` (integers) as a flat array."""
        p = np.asarray(ptrs)
        if p.size and p.dtype.kind not in "iu":
            raise TypeError(f"{what}: addresses must be integers, got dtype {p.dtype}")
        p = p.ravel()
        return p[p != 0]

    def _held(self, p: np.ndarray, what: str, used: str) -> tuple:
        """Check (under the lock) that every address of ``p`` is a live allocation holding at
        least as many references as ``p`` names it; raise naming the first bad one, changing
        nothing. ``used``: "released" (a release) or "named" (a check), for the message. Returns
        (unique offsets, first index of each, counts, classes, header indexes, header words,
        references held)."""
        offs = p.astype(np.int64) - np.int64(self.base)
        ok = (offs >= HEADER_SIZE) & (offs < self._managed_end) & ((offs & 15) == 0)
        ks = np.searchsorted(self._starts_np, offs - HEADER_SIZE, side="right") - 1
        ks = np.clip(ks, 0, NUM_CLASSES - 1)
        rel = offs - HEADER_SIZE - self._starts_np[ks]
        ok &= (rel < self._span_np[ks]) & (rel % self._stride_np[ks] == 0)
        if not ok.all():
            i = int(np.argmin(ok))
            self._locate(int(p[i]), what)             # raises with the right message
            raise InvalidPointer(f"{what}: 0x{int(p[i]):x} is not an allocation")
        uniq, first, counts = np.unique(offs, return_index=True, return_counts=True)
        hdr = (uniq - HEADER_SIZE) >> 3
        q0 = self._q[hdr]
        state = q0 & np.uint64(_M32)
        live = state == MAGIC_LIVE
        if not live.all():
            i = int(np.argmin(live))
            self._not_live(int(p[first[i]]), int(state[i]),
                           "release" if used == "released" else what)
        refs = (q0 >> np.uint64(32)).astype(np.int64)
        if (counts > refs).any():
            i = int(np.argmax(counts > refs))
            if used == "released":
                raise DoubleFree(f"{what}: 0x{int(p[first[i]]):x} released {counts[i]} "
                                 f"times but only {refs[i]} references held")
            raise DoubleFree(f"{what}: 0x{int(p[first[i]]):x} is {used} by {counts[i]} "
                             f"records but holds {refs[i]} reference(s)")
        return uniq, first, counts, ks[first], hdr, q0, refs

    def release_many(self, ptrs) -> int:
        """Release one reference per entry of ``ptrs`` (0 entries ignored; repeats allowed).

        One lock acquisition; every address is validated before anything changes, so a bad
        batch raises (naming the first bad address) and leaves the arena untouched.
        Returns how many payloads were freed.
        """
        p = self._addresses(ptrs, "release_many")
        if p.size == 0:
            return 0
        with self._lock:
            uniq, _, counts, ks, hdr, q0, refs = self._held(p, "release_many", "released")
            return self._drop_refs(uniq, counts, ks, hdr, q0, refs)

    def _drop_refs(self, uniq, counts, ks, hdr, q0, refs) -> int:
        """Drop ``counts`` references of the checked allocations (``_held``'s answer; under
        the lock); free those that reach zero. Returns how many were freed."""
        left = refs - counts
        self._q[hdr] = q0 - (counts.astype(np.uint64) << np.uint64(32))
        dead = left == 0
        nfreed = int(dead.sum())
        if nfreed:
            foffs, fk = uniq[dead], ks[dead]
            self._q[hdr[dead]] = MAGIC_DEAD if self.debug else MAGIC_FREE
            per_class = np.bincount(fk, minlength=NUM_CLASSES)
            for k in np.flatnonzero(per_class):
                k = int(k)
                ko = foffs[fk == k]
                if self.debug:
                    for off in ko.tolist():
                        self._poison(off, k)
                self._push_many(k, ko)
                self._account_free(k, int(per_class[k]))
        return nfreed

    def check_refs(self, ptrs, what: str = "check_refs", err=ValueError) -> None:
        """Raise ``err`` unless every nonzero address of ``ptrs`` is a live allocation holding
        at least as many references as ``ptrs`` names it: what a sender of task records
        (``payload_ptr``) must own, since each record's consumer releases one. Changes nothing;
        ``what`` names the argument in the message."""
        p = self._addresses(ptrs, what)
        if p.size == 0:
            return
        try:
            with self._lock:
                self._held(p, what, "named")
        except GgmkError as e:
            raise err(f"{e} (each record owns one reference to its payload: n records sharing "
                      f"one need n, arena.retain(ptr, n - 1))") from None

    def release_valid(self, ptrs) -> tuple[int, int, GgmkError | None]:
        """What a finished batch whose ``release_many`` raised still owes the arena: release
        the references of ``ptrs`` that are held (one lock acquisition; a payload named more
        often than it has references loses all it has) and skip the rest. Returns (references
        released, references not released, the first error). The kernel's recovery path: one
        bad pointer must not keep the good ones of its batch alive for good."""
        p = self._addresses(ptrs, "release_valid")
        skipped, first = 0, None
        with self._lock:
            for ptr, c in zip(*(a.tolist() for a in np.unique(p, return_counts=True))):
                try:
                    off, k = self._locate(ptr, "release")
                    h = (off - HEADER_SIZE) >> 3
                    q0 = self._q.item(h)
                    if q0 & _M32 != MAGIC_LIVE:
                        self._not_live(ptr, q0 & _M32, "release")
                except GgmkError as e:
                    first = first or e
                    skipped += c
                    continue
                refs = q0 >> 32
                if c > refs:
                    first = first or DoubleFree(f"release: 0x{ptr:x} released {c} times but "
                                                f"only {refs} references held")
                    skipped += c - refs
                    c = refs
                if c == refs:
                    self._free(off, k, h)
                else:
                    self._q[h] = q0 - (c << 32)
        return len(p) - skipped, skipped, first

    def set_refs(self, ptr: int, n: int) -> bool:
        """Overwrite the reference count (fan-out: number of receivers). 0 frees; returns freed."""
        ptr, n = operator.index(ptr), _int("set_refs: n", n, 0, _M32)
        with self._lock:
            off, k = self._locate(ptr, "set_refs")
            h = (off - HEADER_SIZE) >> 3
            q0 = self._q.item(h)
            if q0 & _M32 != MAGIC_LIVE:
                self._not_live(ptr, q0 & _M32, "set_refs")
            if n == 0:
                self._free(off, k, h)
                return True
            self._q[h] = MAGIC_LIVE | (n << 32)
            return False

    def refcount(self, ptr: int) -> int:
        """Current reference count of a live payload."""
        ptr = operator.index(ptr)
        off, _ = self._locate(ptr, "refcount")
        q0 = self._q.item((off - HEADER_SIZE) >> 3)
        if q0 & _M32 != MAGIC_LIVE:
            self._not_live(ptr, q0 & _M32, "refcount")
        return q0 >> 32

    # ------------------------------------------------------------------ access
    def view(self, ptr: int, length: int | None = None) -> np.ndarray:
        """O(1) ``uint8`` view of a payload.

        ``length`` defaults to the requested size and may go up to the slot's capacity. Bump
        addresses carry no header, so for them ``length`` is required (bounded by the bump
        bytes handed out since the last reset).
        """
        ptr = operator.index(ptr)
        off = ptr - self.base
        if self.bump_start <= off < self.bump_start + self.bump_size:
            if length is None:
                raise ValueError(f"view: 0x{ptr:x} is a bump allocation (no header); pass length")
            length = _int("view: length", length, 0)
            if off < self._wbump_start:
                end = self.bump_start + self._bump_top
            else:
                i = (off - self._wbump_start) // self._wbump_size
                r = self._regions[i] if i < len(self._regions) else None
                end = r.start + r.top if r is not None else 0
            if off + length > end:
                raise ValueError(f"view: 0x{ptr:x}+{length} runs past the bump allocations "
                                 f"handed out since the last reset")
            return self.buffer[off:off + length]
        off, k = self._locate(ptr, "view")
        h = (off - HEADER_SIZE) >> 3
        q0 = self._q.item(h)
        if q0 & _M32 != MAGIC_LIVE:
            self._not_live(ptr, q0 & _M32, "view")
        if length is None:
            length = self._q.item(h + 1) & _M32
        else:
            if length.__class__ is not int:          # (True was 1 byte, 1.5 a slice error)
                length = _int("view: length", length, 0)
            if length < 0 or length > _CAPACITY[k]:
                raise ValueError(f"view: length {length} of 0x{ptr:x} is outside "
                                 f"0..{_CAPACITY[k]} (the {_class_name(k)} capacity)")
        return self.buffer[off:off + length]

    def size_of(self, ptr: int) -> int:
        """Requested size of a live payload."""
        ptr = operator.index(ptr)
        off, _ = self._locate(ptr, "size_of")
        h = (off - HEADER_SIZE) >> 3
        q0 = self._q.item(h)
        if q0 & _M32 != MAGIC_LIVE:
            self._not_live(ptr, q0 & _M32, "size_of")
        return self._q.item(h + 1) & _M32

    def capacity(self, ptr: int) -> int:
        """Payload capacity of the slot at ``ptr`` (48 for slab, the bin size for block)."""
        return _CAPACITY[self._locate(operator.index(ptr), "capacity")[1]]

    def owns(self, ptr: int) -> bool:
        """Whether ``ptr`` lies inside this arena's buffer (any region)."""
        return 0 <= operator.index(ptr) - self.base < self.size

    def offset(self, ptr: int) -> int:
        """Offset of ``ptr`` from the arena's origin (``self.base``), for DMA descriptors."""
        off = operator.index(ptr) - self.base
        if not 0 <= off < self.size:
            self._bad_address(ptr, off, "offset")
        return off

    # ------------------------------------------------------------------ bump
    def worker_bump(self, wid: int, nworkers: int) -> BumpRegion:
        """Worker ``wid``'s own bump region, one of ``nworkers`` (see the module docstring,
        "Bump"). The first call splits the upper half of the bump area into ``nworkers``
        equal regions (the shared region keeps the rest); later calls answer from them."""
        nworkers = _int("worker_bump: nworkers", nworkers, 1)
        wid = _int("worker_bump: wid", wid, 0, nworkers - 1)
        with self._lock:
            regs = self._regions
            if not regs:
                half = _worker_half(self.bump_size)
                shared = self.bump_size - half
                each = (half // nworkers) & ~15
                if each < 16:
                    # (named as boot names them: a raw ValueError out of boot named neither)
                    raise ArenaTooSmall(
                        f"worker_bump: workers={nworkers} do not fit arena_size={self.size}: "
                        f"each worker needs a bump region of at least 16 bytes, and the "
                        f"{half}-byte workers' half of this arena's bump area holds at most "
                        f"{half // 16}; {nworkers} workers need arena_size="
                        f"{_arena_size_for(nworkers)} or more")
                if self._bump_top > shared:
                    raise ValueError(f"worker_bump: the shared bump region holds "
                                     f"{self._bump_top} bytes, past the {shared} it keeps once "
                                     f"split (bump_reset() first)")
                self._bump_cap = shared
                self._wbump_start = ws = self.bump_start + shared
                self._wbump_size = each
                regs.extend(BumpRegion(self, i, ws + i * each, each) for i in range(nworkers))
            elif len(regs) != nworkers:
                raise ValueError(f"worker_bump: nworkers {nworkers}, but the bump area is split "
                                 f"into {len(regs)} worker regions already")
            return regs[wid]

    def bump_alloc(self, nbytes: int) -> int:
        """Transient allocation (16-byte aligned, no header, no refcount) from the shared
        bump region; 0 when full.

        Valid until the next :meth:`bump_reset`, which is the caller's to make: no kernel
        resets the shared region (handlers have their worker's: ``ctx.bump_alloc``).
        """
        nbytes = _int("bump_alloc: nbytes", nbytes, 0)
        a = (max(nbytes, 1) + 15) & ~15
        with self._lock:
            top = self._bump_top
            if top + a > self._bump_cap:
                self._bump_fails += 1
                return 0
            self._bump_top = t = top + a
            if t > self._bump_hw:
                self._bump_hw = t
            self._bump_allocs += 1
            self._bump_live += 1
            tu = self._total_used + a
            self._total_used = tu
            if tu > self._total_hw:
                self._total_hw = tu
            return self.base + self.bump_start + top

    def bump_reset(self) -> int:
        """Drop every allocation of the shared bump region (poisoned in debug mode; the
        worker regions are their workers' to reset); returns how many were dropped."""
        with self._lock:
            if self.debug and self._bump_top:
                self.buffer[self.bump_start:self.bump_start + self._bump_top] = POISON
            dropped = self._bump_live
            self._bump_frees += dropped
            self._bump_live = 0
            self._bump_resets += 1
            self._total_used -= self._bump_top
            self._bump_top = 0
            return dropped

    # ------------------------------------------------------------------ accounting
    def live_count(self) -> int:
        """Slab + block allocations not yet freed (bump allocations are transient, not counted)."""
        return sum(self._used)

    def stats(self) -> dict:
        """Byte and count statistics per allocator; see the module docstring for the units."""
        with self._lock:
            bins = []
            for k in range(1, NUM_CLASSES):
                s = _STRIDE[k]
                bins.append({
                    "size": _CAPACITY[k], "slot_bytes": s, "slots": self._nslots[k],
                    "live": self._used[k], "free_slots": self._count[k],
                    "reserve_slots": self._floor[k],
                    "total_bytes": self._span[k], "used_bytes": self._used[k] * s,
                    "free_bytes": self._count[k] * s, "high_watermark": self._hw[k] * s,
                    "allocs": self._allocs[k], "frees": self._frees[k],
                    "fails": self._fails[k], "spills": self._spills[k],
                })
            slab = {
                "object_size": SLAB_PAYLOAD, "slot_bytes": SLAB_SLOT, "slots": self._nslots[0],
                "live": self._used[0], "reserve_slots": self._floor[0],
                "total_bytes": self._span[0],
                "used_bytes": self._used[0] * SLAB_SLOT,
                "free_bytes": self._count[0] * SLAB_SLOT,
                "high_watermark": self._hw[0] * SLAB_SLOT,
                "allocs": self._allocs[0], "frees": self._frees[0], "fails": self._fails[0],
                "spills": self._spills[0],
            }
            btotal = sum(self._span[1:])
            block = {
                "total_bytes": btotal, "used_bytes": self._block_used,
                "free_bytes": btotal - self._block_used, "high_watermark": self._block_hw,
                "allocs": sum(self._allocs[1:]), "frees": sum(self._frees[1:]),
                "fails": sum(self._fails[1:]) + self._oversize, "oversize": self._oversize,
                "live": sum(self._used[1:]), "spills": sum(self._spills[1:]), "bins": bins,
            }
            # the worker regions' counters are read without their owners' cooperation: each
            # is a whole int, their sum a snapshot taken a little apart
            regs = [r.stats() for r in self._regions]
            wsum = {key: sum(r[key] for r in regs) for key in
                    ("used_bytes", "high_watermark", "allocs", "frees", "fails", "live", "resets")}
            bused = self._bump_top + wsum["used_bytes"]
            bump = {
                "total_bytes": self.bump_size, "used_bytes": bused,
                "free_bytes": self.bump_size - bused,
                "high_watermark": self._bump_hw + wsum["high_watermark"],
                "allocs": self._bump_allocs + wsum["allocs"],
                "frees": self._bump_frees + wsum["frees"],
                "fails": self._bump_fails + wsum["fails"], "live": self._bump_live + wsum["live"],
                "resets": self._bump_resets + wsum["resets"],
                "shared_bytes": self._bump_cap, "workers": regs,
            }
            parts = (slab, block, bump)
            total_bytes = sum(d["total_bytes"] for d in parts)
            tused = self._total_used + wsum["used_bytes"]
            total = {
                "total_bytes": total_bytes, "used_bytes": tused,
                "free_bytes": total_bytes - tused,
                "high_watermark": self._total_hw + wsum["high_watermark"],
                "allocs": sum(d["allocs"] for d in parts), "frees": sum(d["frees"] for d in parts),
                "fails": sum(d["fails"] for d in parts), "live": sum(d["live"] for d in parts),
                "arena_bytes": self.size, "reserved_bytes": self.reserved_bytes,
                "debug": self.debug, "poison_faults": self._poison_faults,
            }
            return {"slab": slab, "block": block, "bump": bump, "total": total}

    def check(self) -> None:
        """Walk every header and free list; raise ``AssertionError`` on an inconsistency.

        For tests and debugging (O(slots), vectorised): every slot header is LIVE, FREE or DEAD
        with its own class, live counts match the statistics, the free lists hold exactly the
        non-live slots, and in debug mode every DEAD slot's poison is intact.
        """
        with self._lock:
            for k in range(NUM_CLASSES):
                n = self._nslots[k]
                offs = self._starts[k] + HEADER_SIZE + _STRIDE[k] * np.arange(n, dtype=np.int64)
                hdr = (offs - HEADER_SIZE) >> 3
                state = self._q[hdr] & np.uint64(_M32)
                cls = self._q[hdr + 1] >> np.uint64(32)
                name = _class_name(k)
                never = (self._q[hdr] == MAGIC_NEVER) & (self._q[hdr + 1] == 0)   # never allocated
                assert ((cls == k) | never).all(), f"{name}: header with a wrong class"
                ok = (state == MAGIC_LIVE) | (state == MAGIC_FREE) | (state == MAGIC_DEAD) | never
                assert ok.all(), f"{name}: corrupt header at offset {int(offs[np.argmin(ok)])}"
                live = int((state == MAGIC_LIVE).sum())
                assert live == self._used[k], f"{name}: {live} live headers, stats say {self._used[k]}"
                assert live + self._count[k] == n, f"{name}: free list holds {self._count[k]}"
                c, h = self._count[k], self._head[k]
                free = np.sort(self._rings[k][(h + np.arange(c)) % n]) if n else offs[:0]
                expect = offs[state != MAGIC_LIVE]
                assert np.array_equal(free, expect), f"{name}: free list differs from headers"
                if self.debug:
                    for off in offs[state == MAGIC_DEAD].tolist():
                        assert self._poison_intact(off, k), \
                            f"{name}: freed slot 0x{self.base + off:x} written after free"
            assert self._block_used == sum(u * s for u, s in zip(self._used[1:], _STRIDE[1:]))
            assert self._total_used == self._block_used + self._used[0] * SLAB_SLOT + self._bump_top

    def __repr__(self) -> str:
        return (f"Arena(size={self.size}, base=0x{self.base:x}, live={self.live_count()}, "
                f"debug={self.debug})")
