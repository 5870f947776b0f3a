"""A read that fails part way (audit s18, storage defect 2 after the write fix): it reported
``nbytes = 0`` although bytes had landed in the destination. Now ``nbytes`` (and
``error.written``) count the bytes from the offset on that landed, the error names every range
that did, ``stats()["bytes"]["read"]`` counts them, on the ``direct`` path (chunks on the fast
pool), the buffered path and :meth:`Storage.read_batch` alike.

A real mid-read failure: the destination's third page is PROT_NONE, so the kernel fills what
comes before it and the pread that reaches it fails with EFAULT (as EIO on a bad sector would).
Also a file truncated between the read's sizing and its hole map: it read zeros past the new
end and said ``ok``; now it is short."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

import numpy as np
import pytest
from storage_helpers import make_file

from ggmk.storage import FileHandle, ReadRequest, Storage, StorageError
from ggmk.storage.fast import ERROR

P = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@pytest.fixture
def trap():
    """``trap(pages, bad)``: a page-aligned host array of ``pages`` pages whose page ``bad``
    cannot be written (PROT_NONE)."""
    maps = []

    def make(pages: int, bad: int) -> np.ndarray:
        mm = mmap.mmap(-1, pages * P)
        a = np.frombuffer(mm, np.uint8)
        if _libc.mprotect(a.ctypes.data + bad * P, P, 0):
            pytest.skip(f"mprotect: {os.strerror(ctypes.get_errno())}")
        maps.append((mm, a))
        return a

    yield make
    for mm, a in maps:
        _libc.mprotect(a.ctypes.data, len(a), mmap.PROT_READ | mmap.PROT_WRITE)


@pytest.fixture
def data_file(tmp_path):
    data = (np.arange(1 << 20) % 251 + 1).astype(np.uint8)
    return make_file(tmp_path / "f.bin", data), data


class _Gate:
    """A fast-pool job that holds the pool's only thread until ``go``: the worker then reads
    the direct path's chunks itself, one after another (so which landed is certain)."""
    _nchunks = 1

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    def _work(self):
        self.entered.set()
        self.go.wait(30)


@pytest.mark.parametrize("path,kw", [
    ("direct", dict(fast_threads=1, seq_chunk=P, seq_depth=1)),   # the fast path's chunks
    ("buffered", dict(o_direct=False, direct_chunk=P)),
])
def test_read_failing_part_way_reports_the_bytes_that_landed(trap, data_file, path, kw):
    p, data = data_file
    dest = trap(4, 2)
    dest[:2 * P] = 0
    gate = _Gate()
    with Storage(**kw) as st:
        try:
            if path == "direct":
                st._fast.dispatch(gate)
                assert gate.entered.wait(30)
            r = st.submit([ReadRequest(p, 0, 4 * P, dest=dest)]).wait(30)[0]
            assert r.io_path == path and r.status == "error"
            assert r.error.errno == errno.EFAULT
            assert np.array_equal(dest[:2 * P], data[:2 * P])           # what landed
            assert r.nbytes == 2 * P and r.error.written == 2 * P
            msg = str(r.error)
            assert f"at file offset {2 * P}" in msg
            assert f"{2 * P} of its {4 * P} bytes landed in the destination: [0, {2 * P})" in msg
            with pytest.raises(StorageError) as ei:                    # read() raises the same
                st.read(p, 0, 4 * P, dest=dest)
            assert ei.value.written == 2 * P
        finally:
            gate.go.set()
        s = st.stats()
        assert s["errors"]["io"] == 2 and s["bytes"]["read"] == 2 * 2 * P


def test_read_batch_read_failing_part_way_keeps_its_bytes(trap, data_file):
    p, data = data_file
    dest = trap(6, 4)
    dest[:4 * P] = 0
    with Storage(o_direct=False) as st:
        b = st.read_batch(p, [0, 8 * P], [P, 4 * P], dest=dest, dest_offsets=[0, P])
        assert b.status[0] != ERROR and b.status[1] == ERROR        # [P, 4P) lands, then the trap
        assert b.errno[1] == errno.EFAULT and b.nbytes[1] == 3 * P
        assert np.array_equal(b.data(1), data[8 * P:11 * P])
        e = b.error(1)
        assert e.written == 3 * P
        assert f"pread at file offset {11 * P}" in str(e)
        assert f"{3 * P} of its {4 * P} bytes" in str(e)
        assert f"landed in the destination: [{8 * P}, {11 * P})" in str(e)
        assert b.result(1).nbytes == 3 * P
        s = st.stats()
        assert s["bytes"]["read"] == 4 * P and s["errors"]["io"] == 1
        blocks = s["states"]["block"]
        assert blocks["DMA_START->DONE"] == 4 and blocks["DMA_START->DMA_ERROR"] == 1   # the trap


class _CutAfterSizing(FileHandle):
    """A file truncated by another writer right after the read measured it (before its hole
    map): a real truncate at that exact point."""

    def __init__(self, path, cut: int):
        super().__init__(path)
        self.cut = cut

    def size(self) -> int:
        n = super().size()
        os.truncate(self.path, self.cut)
        return n


def test_file_truncated_before_the_hole_map_reads_short_not_zeros(tmp_path):
    data = (np.arange(1 << 20) % 251 + 1).astype(np.uint8)
    p = make_file(tmp_path / "t.bin", data)
    dest = np.full(1 << 20, 0xEE, np.uint8)
    with Storage() as st, _CutAfterSizing(p, 5 * P + 7) as fh:
        r = st.read(fh, 0, 1 << 20, dest=dest)
        assert r.status == "short" and r.nbytes == 5 * P + 7
        assert np.array_equal(dest[:r.nbytes], data[:r.nbytes])
        assert (dest[r.nbytes:] == 0xEE).all()             # no zeros past the new end
        assert st.stats()["sparse"]["hole_bytes_skipped"] == 0
