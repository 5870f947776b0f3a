"""The sequential path: a host read on the ``direct`` path cut into aligned chunks that the fast
pool reads in parallel (Storage(seq_chunk=, seq_depth=), fast.ChunkJob). Byte for byte against
plain reads: hypothesis over (offset, length) sets with small chunks, unaligned heads and tails,
sparse files (holes dropped from storage-allocated memory), an error in the middle of a range
(a destination page that faults), cancellation of chunks not yet started, and the accounting of
every I/O and block."""
from __future__ import annotations

import ctypes
import errno
import mmap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from ggmk.storage import HostDest, ReadRequest, Storage
from ggmk.storage.buffers import HUGE, aligned_empty

from storage_helpers import make_file, punch_hole

SIZE = 1 << 20


def _accounted(st, n_ios):
    """Every I/O went back to FREE and every block that was allocated was freed."""
    s = st.stats()
    assert s["inflight"] == 0
    io = s["states"]["io"]
    assert io.get("FREE->INIT", 0) == n_ios == s["ops"]["read"]
    assert io.get("CALLBACK_END->FREE", 0) + io.get("INIT->FREE", 0) == n_ios
    blk = s["states"]["block"]
    assert blk.get("FREE->ALLOC", 0) == sum(v for k, v in blk.items() if k.endswith("->FREE"))
    return s


@pytest.fixture(scope="module")
def seq_file(tmp_path_factory):
    from storage_helpers import odirect_ok
    d = tmp_path_factory.mktemp("seq")
    if not odirect_ok(d):
        pytest.skip(f"{d} does not accept O_DIRECT")
    data = np.random.default_rng(7).integers(0, 256, SIZE - 1000, dtype=np.uint8)
    return make_file(d / "seq.bin", data), data


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st_.lists(st_.tuples(st_.integers(0, SIZE + 5000), st_.integers(0, 300_000)),
                        min_size=1, max_size=6),
       chunk_pages=st_.integers(1, 24), depth=st_.integers(1, 5))
def test_hypothesis_chunked_ranges(seq_file, ranges, chunk_pages, depth):
    """Any (offset, length) set, any chunk size and depth: the bytes of a plain read, short at
    end of file (never padded), the path ``direct``, every I/O and block accounted."""
    path, data = seq_file
    bufs = [aligned_empty(ln + 4096) for _, ln in ranges]
    for b in bufs:
        b[:] = 0xEE
    with Storage(workers=2, fast_threads=3, seq_chunk=chunk_pages * 4096,
                 seq_depth=depth) as st:
        reqs = [ReadRequest(path, off, ln, dest=b, dest_offset=off % 4096)
                for (off, ln), b in zip(ranges, bufs)]
        res = st.submit(reqs).wait(60)
        for (off, ln), b, r in zip(ranges, bufs, res):
            want = data[off:off + ln].tobytes()
            assert r.nbytes == len(want), (off, ln, r)
            assert r.status == ("ok" if len(want) == ln else "short")
            if want:
                assert r.io_path == "direct" and r.o_direct
            d0 = off % 4096
            assert b[d0:d0 + r.nbytes].tobytes() == want
            assert (b[d0 + r.nbytes:] == 0xEE).all()          # nothing written past nbytes
            assert (b[:d0] == 0xEE).all()
        _accounted(st, len(ranges))


def test_large_read_in_parallel_chunks_with_holes(tmp_path):
    """A sparse file read into storage-allocated memory: data chunks on the fast pool, holes
    zeroed (their whole pages dropped: they read back as zeros), regions reported."""
    from storage_helpers import odirect_ok
    if not odirect_ok(tmp_path):
        pytest.skip("no O_DIRECT here")
    n = 6 * HUGE + 12345
    data = np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8)
    p = make_file(tmp_path / "sparse.bin", data)
    for off, ln in ((HUGE, HUGE), (4 * HUGE + 8192, HUGE - 8192)):
        punch_hole(p, off, ln)
        data[off:off + ln] = 0
    with Storage(workers=2, fast_threads=4, seq_chunk=256 << 10, seq_depth=4) as st:
        dest = HostDest.alloc(n)
        dest.view()[:] = 0xAB                       # every page touched, none zero
        r = st.read(p, 0, n, dest=dest)
        assert r.io_path == "direct" and r.status == "ok" and r.nbytes == n
        assert r.holes >= 2 and r.hole_bytes >= 2 * HUGE - 8192
        assert np.array_equal(dest.view(), data)
        # a caller's own array: holes written with a memset, same bytes
        mine = aligned_empty(n)
        mine[:] = 0xCD
        r = st.read(p, 0, n, dest=mine)
        assert r.io_path == "direct" and np.array_equal(mine, data)
        # unaligned start and end inside data and hole
        r = st.read(p, 4097, n - 5000, dest=mine[:n - 5000 + 4096], dest_offset=1)
        assert r.status == "ok" and np.array_equal(mine[1:n - 5000 + 1], data[4097:n - 903])
        s = _accounted(st, 3)
        assert s["sparse"]["holes"] >= 6 and s["fast_batches"] == 0


def _guarded(nbytes: int, bad_page: int):
    """``nbytes`` of page-aligned memory whose page ``bad_page`` is PROT_NONE (a read into it
    fails with EFAULT), and the mmap keeping it alive (unmapped when the last view goes)."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, np.uint8)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(a.ctypes.data + bad_page * 4096, 4096, 0) == 0
    return m, a


def test_error_in_the_middle_of_a_range(seq_file):
    """A chunk in the middle fails (its destination page faults): the I/O fails with EFAULT
    naming the file, the range and the failing chunk; the chunks after it are not started;
    every block is accounted; the next read works."""
    path, data = seq_file
    m, a = _guarded(SIZE, 100)                       # byte 409600: chunk 6 of 64 KiB
    with Storage(workers=2, fast_threads=2, seq_chunk=64 << 10, seq_depth=1) as st:
        r = st.submit([ReadRequest(path, 0, 900_000, dest=a[:900_000])]).wait(60)[0]
        assert r.status == "error" and r.error.kind == "io" and r.error.errno == errno.EFAULT
        msg = str(r.error)
        assert path in msg and "[0, 900000)" in msg and "[393216, 458752)" in msg
        assert np.array_equal(a[:393216], data[:393216])   # the chunks before it landed
        s = _accounted(st, 1)
        assert s["errors"]["io"] == 1
        assert s["states"]["block"].get("DMA_START->DMA_ERROR", 0) >= 1
        assert s["states"]["block"].get("QUEUED->FREE", 0) >= 1         # never started
        good = aligned_empty(SIZE)
        r = st.read(path, 0, SIZE - 1000, dest=good)
        assert r.status == "ok" and np.array_equal(good[:SIZE - 1000], data)


def test_error_in_the_middle_of_a_batch_of_ranges(seq_file):
    """Several I/Os in one submission, one of them over the faulting page: only that one
    fails; the others have their bytes."""
    path, data = seq_file
    m, a = _guarded(SIZE, 60)
    with Storage(workers=2, fast_threads=3, seq_chunk=32 << 10, seq_depth=3) as st:
        spans = [(0, 200_000), (200_704, 60_000), (262_144, 300_000), (600_000, 123_457)]
        res = st.submit([ReadRequest(path, o, n, dest=a, dest_offset=o) for o, n in spans]
                        ).wait(60)
        assert [r.status for r in res] == ["ok", "error", "ok", "ok"]
        assert res[1].error.errno == errno.EFAULT and "[200704, 260704)" in str(res[1].error)
        for (o, n), r in zip(spans, res):
            if r.ok:
                assert np.array_equal(a[o:o + n], data[o:o + n])
        _accounted(st, 4)


class _Gate:
    """A job that holds one fast-pool thread until released (so chunks queue behind it)."""

    _nchunks = 1

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    def _work(self):
        self.entered.set()
        assert self.go.wait(60)


def test_cancel_stops_chunks_not_started(seq_file, wait_until):
    # the worker reads the chunks no pool thread took itself (the pool may be busy for long):
    # on a loaded machine it may finish all of them before the cancel lands (cancel() == 0,
    # the read ok: seen once in a full CI run). Each try whose cancel lands must show the
    # accounting; one of a few tries must land
    for _ in range(10):
        if _cancel_try(seq_file, wait_until):
            return
    raise AssertionError("no cancel landed before the read finished in 10 tries")


def _cancel_try(seq_file, wait_until) -> bool:
    path, data = seq_file
    with Storage(workers=2, fast_threads=1, seq_chunk=16 << 10, seq_depth=1) as st:
        gate = _Gate()
        st._fast.dispatch(gate)
        assert gate.entered.wait(60)
        buf = aligned_empty(SIZE)
        b = st.submit([ReadRequest(path, 0, 500_000, dest=buf)])
        io = b._ios[0]
        wait_until(lambda: io.cancel_flag is not None, timeout=60)
        if b.cancel() == 0:                   # too late: the read ended on its own, whole
            gate.go.set()
            r = b.wait(60)[0]
            assert r.status == "ok" and np.array_equal(buf[:500_000], data[:500_000])
            return False
        gate.go.set()
        r = b.wait(60)[0]
        assert r.status == "cancelled" and "mid-flight" in str(r.error)
        s = _accounted(st, 1)
        assert s["errors"]["cancelled"] == 1
        assert s["states"]["io"]["IN_PROGRESS->TERMINATE_REQ"] == 1
        if not s["states"]["block"].get("QUEUED->FREE", 0):
            return False                      # it landed after the worker took every chunk
        r = st.read(path, 0, 500_000, dest=buf)                         # the pool still works
        assert r.status == "ok" and np.array_equal(buf[:500_000], data[:500_000])
    return True


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="seq_chunk must be a positive multiple of 4096, got 5000"):
        Storage(seq_chunk=5000)
    with pytest.raises(ValueError, match="seq_depth must be >= 1, got 0"):
        Storage(seq_depth=0)


def test_aligned_empty_huge_and_small():
    big = aligned_empty(HUGE + 5)
    assert len(big) == HUGE + 5 and big.ctypes.data % HUGE == 0 and not big.any()
    small = aligned_empty(5000)
    assert len(small) == 5000 and small.ctypes.data % 4096 == 0


def test_read_batch_on_done_runs_once_and_keeps_its_error(seq_file):
    """read_batch(on_done=): called once with the finished batch (before wait returns); an
    exception in it is kept on the batch, the reads and the accounting are unaffected."""
    path, data = seq_file
    seen = []

    def cb(b):
        seen.append((b, b.count(0)))
        raise RuntimeError("callback bug")

    with Storage(workers=1, fast_threads=2) as st:
        b = st.read_batch(path, [0, 8192, 5000], 4096, on_done=cb, wait=False).wait(60)
        assert seen == [(b, 3)] and isinstance(b.callback_error, RuntimeError)
        assert b.data(2).tobytes() == data[5000:9096].tobytes()
        assert st.wait_idle(60) and st.stats()["fast_batches"] == 1
