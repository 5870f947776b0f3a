"""The batch fast path (Storage.read_batch): reads verified byte for byte against plain reads,
hypothesis over random (offset, length) sets, unaligned ranges, errors in the middle of a batch,
cancellation, the per-batch state machines and statistics."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from ggmk.storage import ArenaDest, DeviceDest, HostDest, Storage
from ggmk.storage.fast import CANCELLED, ERROR, OK, SHORT
from ggmk.storage.states import IllegalTransition, IoState, StateVector

from storage_helpers import make_file


def _plain(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def _accounted(b, st):
    """Every I/O finished with exactly one status, and the stats saw each of them."""
    assert b.done()
    assert sum(b.count(k) for k in (OK, SHORT, ERROR, CANCELLED)) == len(b)
    s = st.stats()
    assert s["inflight"] == 0
    io = s["states"]["io"]
    assert io.get("FREE->INIT", 0) == s["ops"]["read"]
    # every accepted I/O went back to FREE, every refused one too (INIT -> FREE)
    assert io.get("CALLBACK_END->FREE", 0) + io.get("INIT->FREE", 0) == s["ops"]["read"]
    blk = s["states"]["block"]
    assert blk.get("FREE->ALLOC", 0) == sum(v for k, v in blk.items() if k.endswith("->FREE"))
    return s


@pytest.fixture
def fst():
    st = Storage(workers=2, fast_threads=3)
    yield st
    st.close(cancel=True)


def test_random_4k_direct_byte_for_byte(fst, disk_dir, rng):
    data = rng.integers(0, 256, 4 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "d.bin", data)
    offs = rng.integers(0, len(data) // 4096, 3000) * 4096
    with fst.open(p) as fh:
        b = fst.read_batch(fh, offs, 4096)
    b.raise_for_error()
    assert b.ok and b.count(OK) == len(offs) and b.direct.all()
    assert (b.nbytes == 4096).all()
    got = b.dest.view()[:len(offs) * 4096].reshape(-1, 4096)
    want = data.reshape(-1, 4096)[offs // 4096]
    assert np.array_equal(got, want)
    for i in (0, 1234, len(offs) - 1):               # and against plain reads
        assert b.data(i).tobytes() == _plain(p, int(offs[i]), 4096)
    s = _accounted(b, fst)
    assert s["paths"]["direct"] == len(offs) and s["o_direct"]["used"] == len(offs)
    assert s["bytes"]["read"] == len(offs) * 4096 and s["fast_batches"] == 1
    assert s["states"]["block"]["DMA_START->DONE"] == len(offs)
    assert s["latency"]["count"] == len(offs)
    assert s["batches"]["max"] == len(offs)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st_.lists(st_.tuples(st_.integers(0, 300_000), st_.integers(0, 20_000)), min_size=1,
                 max_size=60))
def test_hypothesis_random_ranges(fst, disk_dir, ranges):
    size = 250_001                                   # unaligned end: reads past it are short
    p = disk_dir / "h.bin"
    if not p.exists():
        make_file(p, np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8))
    data = np.fromfile(p, np.uint8)
    offs = np.array([o for o, _ in ranges])
    lens = np.array([n for _, n in ranges])
    b = fst.read_batch(str(p), offs, lens)
    for i, (o, n) in enumerate(ranges):
        want = data[o:o + n]
        assert b.nbytes[i] == len(want)
        assert b.status[i] == (OK if len(want) == n else SHORT)
        assert np.array_equal(b.data(i), want)
        if b.direct[i]:
            assert o % 4096 == 0 and n % 4096 == 0
    assert b.ok


def test_unaligned_into_unaligned_dest_not_padded(fst, disk_dir, rng):
    data = rng.integers(0, 256, 100_000, dtype=np.uint8)
    p = make_file(disk_dir / "u.bin", data)
    dest = np.full(50_000, 0xEE, np.uint8)
    offs = [1, 4096, 99_990, 8191, 100_000]
    lens = [4095, 4096, 100, 3, 10]
    doffs = [3, 5000, 10_007, 20_001, 30_000]
    b = fst.read_batch(p, offs, lens, dest=dest, dest_offsets=doffs)
    assert [b.status_name(i) for i in range(5)] == ["ok", "ok", "short", "ok", "short"]
    assert list(b.nbytes) == [4095, 4096, 10, 3, 0]
    for i in range(5):
        o, n, d = offs[i], int(b.nbytes[i]), doffs[i]
        assert np.array_equal(dest[d:d + n], data[o:o + n])
        assert dest[d + n] == 0xEE                    # nothing past the short read's bytes
    # the 4096-aligned read lands at an address 5000 bytes into the buffer: not O_DIRECT,
    # and the fallback is counted with its reason
    assert not b.direct.any()
    s = _accounted(b, fst)
    assert s["o_direct"]["fallback"]["unaligned"] == 5
    assert s["short_reads"] == {"count": 2, "bytes_missing": 90 + 10}
    assert s["states"]["block"]["DMA_START->DMA_ERROR"] >= 1    # the short reads' tails


def test_errors_in_the_middle_of_a_batch(fst, disk_dir, rng):
    data = rng.integers(0, 256, 64 << 10, dtype=np.uint8)
    p = make_file(disk_dir / "e.bin", data)
    d = disk_dir / "adir"
    d.mkdir()
    files = [p, str(disk_dir / "missing.bin"), str(d)]
    fids = [0, 0, 1, 0, 2, 0, 0, 0]
    offs = [0, 4096, 0, -4096, 0, 8192, 12288, 16384]
    lens = [4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096]
    dest = HostDest.alloc(7 * 4096)                    # room for 7: the 8th does not fit
    b = fst.read_batch(files, offs, lens, dest=dest, file_ids=fids,
                       dest_offsets=np.arange(8) * 4096)
    names = [b.status_name(i) for i in range(8)]
    assert names == ["ok", "ok", "error", "error", "error", "ok", "ok", "error"]
    e = dict(b.errors())
    assert e[2].kind == "not_found" and e[2].errno == errno.ENOENT
    assert "missing.bin [0, 4096)" in str(e[2]) and "open" in str(e[2])
    assert e[3].kind == "bad_request" and "offset -4096" in str(e[3])
    assert e[4].kind == "bad_request" and e[4].errno == errno.EISDIR   # pread failed natively
    assert "adir [0, 4096)" in str(e[4]) and "pread" in str(e[4])
    assert e[7].kind == "dest_too_small" and "room for 0 bytes" in str(e[7])
    for i in (0, 1, 5, 6):                            # the neighbours are intact
        assert b.data(i).tobytes() == _plain(p, offs[i], 4096)
    with pytest.raises(Exception) as ei:
        b.raise_for_error()
    assert ei.value is not None and "missing.bin" in str(ei.value)
    s = _accounted(b, fst)
    assert s["errors"]["not_found"] == 1 and s["errors"]["bad_request"] == 2
    assert s["errors"]["dest_too_small"] == 1 and s["errors"]["total"] == 4
    assert s["states"]["io"]["INIT->FREE"] == 3       # refused before reading
    r = b.result(4)
    assert r.status == "error" and r.error.kind == "bad_request" and r.dest is None


def test_tmpfs_buffered_fallback_counted(fst, shm_dir, rng):
    data = rng.integers(0, 256, 40_000, dtype=np.uint8)
    p = make_file(os.path.join(shm_dir, "t.bin"), data)
    b = fst.read_batch(p, [0, 4096, 8192], 4096)
    assert b.ok and not b.direct.any()
    assert np.array_equal(b.dest.view()[:3 * 4096], data[:3 * 4096])
    s = _accounted(b, fst)
    assert s["o_direct"]["fallback"] == {"fs_refuses_o_direct": 3}
    assert s["paths"]["buffered"] == 3


def test_o_direct_required_refuses_unaligned(disk_dir, rng):
    data = rng.integers(0, 256, 40_000, dtype=np.uint8)
    p = make_file(disk_dir / "r.bin", data)
    with Storage(workers=2, fast_threads=2, o_direct=True) as st:
        b = st.read_batch(p, [0, 100], [4096, 4096])
        assert b.status_name(0) == "ok" and b.status_name(1) == "error"
        assert "O_DIRECT required" in str(b.error(1)) and "unaligned" in str(b.error(1))
        _accounted(b, st)


def test_cancel_accounts_every_io(disk_dir, rng):
    data = rng.integers(0, 256, 8 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "c.bin", data)
    offs = rng.integers(0, len(data) // 4096, 20_000) * 4096
    with Storage(workers=2, fast_threads=2) as st:
        b = st.read_batch(p, offs, 4096, wait=False)
        was_running = b.cancel()
        b.wait(120)
        assert b.cancel() is False                    # finished: nothing to cancel
        ok, cancelled = b.status == OK, b.status == CANCELLED
        assert ok.sum() + cancelled.sum() == len(offs)
        if not was_running:
            assert cancelled.sum() == 0
        assert (b.nbytes[cancelled] == 0).all()
        got = b.dest.view()[:len(offs) * 4096].reshape(-1, 4096)
        assert np.array_equal(got[ok], data.reshape(-1, 4096)[offs[ok] // 4096])
        if cancelled.any():
            e = b.error(int(np.flatnonzero(cancelled)[0]))
            assert e.kind == "cancelled" and "c.bin" in str(e)
        s = _accounted(b, st)
        assert s["errors"]["cancelled"] == int(cancelled.sum())
        assert s["states"]["io"].get("TERMINATE_REQ->TERMINATED", 0) == int(cancelled.sum())
        assert s["states"]["block"].get("QUEUED->FREE", 0) == int(cancelled.sum())


def test_arena_destination(fst, disk_dir, rng):
    from ggmk.core.alloc import Arena
    data = rng.integers(0, 256, 64 << 10, dtype=np.uint8)
    p = make_file(disk_dir / "a.bin", data)
    arena = Arena(8 << 20)
    dest = ArenaDest(arena, arena.alloc(16 << 10))
    b = fst.read_batch(p, [0, 20_000, 40_960], [4096, 5000, 4096], dest=dest)
    assert b.ok
    assert np.array_equal(dest.view(0, 4096), data[:4096])
    assert np.array_equal(dest.view(4096, 5000), data[20_000:25_000])
    assert np.array_equal(dest.view(9096, 4096), data[40_960:45_056])


def test_bad_arguments_name_the_argument(fst, disk_dir, rng):
    p = make_file(disk_dir / "b.bin", rng.integers(0, 256, 8192, dtype=np.uint8))
    with pytest.raises(ValueError, match="offsets: expected a 1-D array of integers"):
        fst.read_batch(p, [0.5, 1.0], 4096)
    with pytest.raises(ValueError, match="lengths: 3 entries, expected 2"):
        fst.read_batch(p, [0, 4096], [1, 2, 3])
    with pytest.raises(ValueError, match="dest: the fast path reads into host memory"):
        fst.read_batch(p, [0], 4096, dest=DeviceDest.alloc(4096, target="cpu"))
    with pytest.raises(ValueError, match="dest: host memory .* is read-only"):
        fst.read_batch(p, [0], 16, dest=np.frombuffer(bytes(64), np.uint8))
    with pytest.raises(ValueError, match="file: 2 files given without file_ids"):
        fst.read_batch([p, p], [0], 4096)
    with pytest.raises(ValueError, match=r"file_ids: values must be in \[0, 1\)"):
        fst.read_batch([p], [0], 4096, file_ids=[3])
    with pytest.raises(ValueError, match="fast_threads must be >= 1"):
        Storage(fast_threads=0)


def test_state_vector_rejects_illegal_naming_both_states():
    v = StateVector("io", 4)
    v.move(IoState.INIT)
    v.move(IoState.READY, np.array([True, True, False, False]))
    with pytest.raises(IllegalTransition, match=r"entry 2: illegal transition INIT -> IN_PROGRESS"):
        v.move(IoState.IN_PROGRESS)
    assert v.count(IoState.READY) == 2                # nothing changed by the refused move
    assert v.counts == {"FREE->INIT": 4, "INIT->READY": 2}
    with pytest.raises(ValueError, match="machine must be 'io' or 'block'"):
        StateVector("disk", 1)


def test_concurrent_batches_from_threads(disk_dir, rng):
    import threading
    data = rng.integers(0, 256, 2 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "m.bin", data)
    blocks = data.reshape(-1, 4096)
    out, errs = {}, []
    with Storage(workers=2, fast_threads=3) as st, st.open(p) as fh:
        def one(k):
            try:
                offs = np.random.default_rng(k).integers(0, len(blocks), 2000) * 4096
                b = st.read_batch(fh, offs, 4096)
                out[k] = (offs, b)
            except BaseException as e:  # noqa: BLE001
                errs.append(e)
        ts = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not errs and len(out) == 4
        for offs, b in out.values():
            assert b.ok
            got = b.dest.view()[:len(offs) * 4096].reshape(-1, 4096)
            assert np.array_equal(got, blocks[offs // 4096])
        s = _accounted(next(iter(out.values()))[1], st)
        assert s["fast_batches"] == 4 and s["ops"]["read"] == 8000
        assert s["bytes"]["read"] == 8000 * 4096


def test_close_finishes_a_batch_in_flight(disk_dir, rng):
    data = rng.integers(0, 256, 4 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "z.bin", data)
    offs = rng.integers(0, len(data) // 4096, 5000) * 4096
    st = Storage(workers=2, fast_threads=2)
    b = st.read_batch(p, offs, 4096, wait=False)
    assert st.wait_idle(60) and b.done()              # idle counts fast batches too
    b2 = st.read_batch(p, offs, 4096, wait=False)
    st.close()                                        # the pool drains its queue first
    b2.wait(60)
    assert b2.count(OK) == len(offs)
    b.wait(60)
    assert b.count(OK) == len(offs)
    got = b.dest.view()[:len(offs) * 4096].reshape(-1, 4096)
    assert np.array_equal(got, data.reshape(-1, 4096)[offs // 4096])
    with pytest.raises(RuntimeError, match="storage is closed"):
        st.read_batch(p, offs, 4096)
