"""core.bigbuf: big long-lived buffers over their own anonymous mappings, so that a process
that boots and halts systems again and again does not grow (glibc kept the freed MiB-size
buffers in a heap that does not shrink: +360 MB over 60 CPU-only boots)."""

import gc
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
import weakref

import numpy as np

from ggmk.core import bigbuf
from ggmk.core.alloc import Arena
from ggmk.core.ring import Ring
from ggmk.task import TASK_DTYPE


def _vma(addr: int):
    """The /proc/self/maps range holding ``addr``, or None."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return lo, hi
    return None


def _map_of(a: np.ndarray):
    while a is not None and not isinstance(a, mmap.mmap):
        a = a.base if isinstance(a, np.ndarray) else None
    return a


def test_big_arrays_are_zeroed_aligned_writeable_maps():
    for shape, dtype in [(3 << 20, np.uint8), ((7, 40000), np.int64), (5000, TASK_DTYPE)]:
        a = bigbuf.zeros(shape, dtype)
        assert a.shape == (shape if isinstance(shape, tuple) else (shape,))
        assert a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % mmap.PAGESIZE == 0
        assert isinstance(_map_of(a), mmap.mmap)
        raw = a.view(np.uint8).reshape(-1)
        assert not raw.any()
        raw[-1] = 1
        assert raw[-1] == 1


def test_small_arrays_stay_with_numpy():
    a = bigbuf.zeros(1000, np.int64)
    assert _map_of(a) is None and a.flags.writeable and not a.any()
    assert bigbuf.zeros((), np.int64).shape == ()


def test_copy():
    src = np.arange(1 << 18, dtype=np.int64)
    c = bigbuf.copy(src[::-1])
    assert isinstance(_map_of(c), mmap.mmap) and np.array_equal(c, src[::-1])


def test_mapping_is_gone_once_the_last_reference_drops():
    a = bigbuf.zeros(6 << 20, np.uint8)        # big enough for huge pages too
    addr = a.ctypes.data
    vma = _vma(addr)
    m = weakref.ref(_map_of(a))
    view = a[4096:]
    mv = memoryview(a)
    a[4096] = 9
    del a
    gc.collect()
    assert _vma(addr) == vma and view[0] == 9        # the views keep it mapped
    del view
    gc.collect()
    assert m() is not None and mv[4096] == 9
    del mv
    gc.collect()
    assert m() is None
    assert _vma(addr) != vma                         # unmapped: back to the OS


def test_pickles_as_a_plain_array():
    a = bigbuf.zeros(40000, TASK_DTYPE)
    a["type"][:3] = (1, 2, 3)
    b = pickle.loads(pickle.dumps(a))
    assert b.dtype == TASK_DTYPE and np.array_equal(a, b) and b.flags.writeable


def test_private_to_a_forked_child():
    a = bigbuf.zeros(1 << 20, np.uint8)
    pid = os.fork()
    if pid == 0:
        a[0] = 7
        os._exit(0 if a[0] == 7 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert a[0] == 0


def test_long_lived_buffers_are_maps():
    ar = Arena(4 << 20)
    assert isinstance(_map_of(ar.buffer), mmap.mmap) and ar.base % 64 == 0
    r = Ring(1 << 14)
    assert isinstance(_map_of(r.buf), mmap.mmap) and r.buf.ctypes.data % 16 == 0
    assert r.grow(1 << 15, 1 << 16) and isinstance(_map_of(r.buf), mmap.mmap)


_BOOTS = textwrap.dedent("""
    import gc, numpy as np, ggmk
    from ggmk import OK

    m = ggmk.Module("counter")

    @m.handler("C_INC")
    def inc(ctx):
        ctx.emit("C_DONE", meta0=ctx.task.meta0 + 1)
        return OK

    @m.handler("C_DONE", batch=True)
    def done(ctx, batch):
        pass

    def rss_kb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

    def once():
        with ggmk.boot([m], workers=2) as s:
            s.submit("C_INC", meta0=np.arange(100))
            s.run(until_idle=True, timeout=10)
        assert s.halt_report["drained"], s.halt_report

    for _ in range(3):
        once()
    gc.collect()
    base = rss_kb()
    for _ in range(60):
        once()
    gc.collect()
    print(rss_kb() - base)
""")


def test_repeated_boots_do_not_grow_rss():
    # without bigbuf: ~+360 MB (each boot's arena, rings, metrics, trace rings left in the heap);
    # with it: ~+17 MB
    out = subprocess.run([sys.executable, "-c", _BOOTS], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    grown_mb = int(out.stdout.split()[-1]) / 1024
    assert grown_mb < 60, f"RSS grew by {grown_mb:.0f} MB over 60 boot/halt cycles"
