"""Bad input to submit()/read()/read_batch(): refused as a result naming the argument and the
value (never truncated, never a raw exception out of submit), the rest of a submission
proceeds, and a destination the storage allocated for a refused request is released."""
from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import make_file

from ggmk.core.alloc import Arena
from ggmk.storage import ReadRequest, Storage, StorageError, WriteRequest

MAX_OFF = 2**63 - 1


@pytest.fixture
def arena():
    return Arena(4 << 20)


@pytest.fixture
def data_file(tmp_path):
    return make_file(tmp_path / "f.bin", np.arange(256, dtype=np.uint8).repeat(16))


def _bad(r, *words):
    assert r.status == "error" and r.dest is None, r
    assert r.error.kind == "bad_request", r.error
    for w in words:
        assert w in str(r.error), (w, str(r.error))


def test_refused_read_releases_the_arena_block(arena, data_file):
    with Storage(arena=arena, workers=1) as st:
        reqs = [ReadRequest(data_file, -4096, 100 << 10, dest="arena"),
                ReadRequest(data_file, 1.5, 100 << 10, dest="arena"),
                ReadRequest(data_file, MAX_OFF, 100 << 10, dest="arena")]
        for _ in range(3):
            for r in st.submit(reqs).wait(5):
                _bad(r)
            assert arena.live_count() == 0
        r = st.read(data_file, 0, 100 << 10, dest="arena")      # the arena still has room
        assert r.status == "short" and r.nbytes == 4096
        r.dest.release()
        for dest in ("device", None):                            # refused before allocating
            _bad(st.submit([ReadRequest(data_file, -1, 10, dest=dest)]).wait(5)[0], "-1")


def test_failed_read_keeps_a_callers_owned_arena_dest(arena, data_file, tmp_path):
    """A destination a previous read handed over is the caller's: never released here."""
    with Storage(arena=arena, workers=1) as st:
        d = st.read(data_file, 0, 1000, dest="arena").dest
        assert d.owned and arena.refcount(d.ptr) == 1
        _bad(st.submit([ReadRequest(data_file, -1, 10, dest=d)]).wait(5)[0])
        r = st.submit([ReadRequest(tmp_path / "missing.bin", 0, 10, dest=d)]).wait(5)[0]
        assert r.error.kind == "not_found"
        assert arena.refcount(d.ptr) == 1 and arena.live_count() == 1
        d.release()


def test_unallocatable_dest_is_answered_the_rest_proceeds(arena, data_file):
    got = []
    with Storage(arena=arena, workers=1) as st:
        reqs = [ReadRequest(data_file, 0, 100 << 10, dest="arena", tag="A"),
                ReadRequest(data_file, 0, 2**62, tag="B"),           # no such memory
                ReadRequest(data_file, 0, 2**70, tag="C"),           # past any file offset
                ReadRequest(data_file, 16, 4, tag="D")]
        rs = st.submit(reqs, on_complete=lambda r: got.append(r.tag)).wait(5)
        assert [r.status for r in rs] == ["short", "error", "error", "ok"]
        assert rs[1].error.kind == "alloc_fail" and str(2**62) in str(rs[1].error)
        assert "could not allocate" in str(rs[1].error) and rs[1].dest is None
        _bad(rs[2], "length", str(2**70), str(MAX_OFF))
        assert rs[3].data().tolist() == [1, 1, 1, 1]
        assert sorted(got) == ["A", "B", "C", "D"]
        rs[0].dest.release()
        assert arena.live_count() == 0
        with pytest.raises(StorageError) as ei:
            st.read(data_file, 0, 2**62)
        assert ei.value.kind == "alloc_fail"
        assert st.stats()["errors"]["alloc_fail"] == 2


@pytest.mark.parametrize("off,length,name,shown", [
    (100.9, 10, "offset", "100.9"), (0, 10.7, "length", "10.7"), ("32", 4, "offset", "'32'"),
    (0, "4", "length", "'4'"), (True, 3, "offset", "True"), (0, False, "length", "False"),
    ("abc", 4, "offset", "'abc'"), (0, None, "length", "None"),
    (np.float64(8), 4, "offset", "8.0")])
def test_submit_refuses_non_int_offset_length(data_file, off, length, name, shown):
    with Storage(workers=1) as st:
        r = st.submit([ReadRequest(data_file, off, length)]).wait(5)[0]
        _bad(r, f"{name}: expected an int", shown)
        if length is not None:                  # read(): None is the rest of the file
            with pytest.raises(StorageError, match="bad_request") as ei:
                st.read(data_file, off, length)
            assert shown in str(ei.value)
        with pytest.raises(StorageError, match="bad_request"):
            st.read(data_file, off if name == "offset" else "x")


def test_submit_refuses_non_int_dest_and_src_offsets(data_file, tmp_path):
    with Storage(workers=1) as st:
        buf = np.zeros(64, np.uint8)
        for doff in (1.5, "2", True, None):
            r = st.submit([ReadRequest(data_file, 0, 4, dest=buf, dest_offset=doff)]).wait(5)[0]
            _bad(r, "dest_offset: expected an int", repr(doff))
        w = tmp_path / "w.bin"
        for kw, v in (("offset", 2.0), ("length", 1.5), ("src_offset", True)):
            req = WriteRequest(**{"file": w, "offset": 0, "src": b"abcd", kw: v})
            _bad(st.submit([req]).wait(5)[0], f"{kw}: expected an int", repr(v))
        assert not w.exists() or w.stat().st_size == 0
        assert (buf == 0).all()
        # NumPy integers are ints
        r = st.read(data_file, np.int64(32), np.uint32(4), dest=buf, dest_offset=np.int8(2))
        assert r.status == "ok" and buf[2:6].tolist() == [2, 2, 2, 2]


def test_submit_refuses_offsets_past_a_file_offset(data_file, tmp_path):
    with Storage(workers=1) as st:
        for off, n in ((2**63, 1), (MAX_OFF, 10), (np.uint64(2**64 - 1), 1)):
            r = st.submit([ReadRequest(data_file, off, n, dest=np.zeros(10, np.uint8))])
            _bad(r.wait(5)[0], str(int(off)), str(MAX_OFF))
        with pytest.raises(StorageError, match="bad_request") as ei:
            st.write(tmp_path / "w.bin", MAX_OFF, b"abc")
        assert str(MAX_OFF) in str(ei.value)


def test_read_batch_unallocatable_dest_clear_error(data_file):
    with Storage(workers=1, fast_threads=1) as st:
        for lens in ([2**62], [2**62, 2**62], [MAX_OFF, MAX_OFF, 4096]):   # sums overflow
            with pytest.raises(StorageError) as ei:
                st.read_batch(data_file, [0] * len(lens), lens)
            assert ei.value.kind == "alloc_fail" and "could not allocate" in str(ei.value)


def test_read_batch_refuses_values_past_int64(data_file):
    dest = np.zeros(10, np.uint8)
    cases = [("lengths", 2**64 - 1, dict(offsets=[0], lengths=np.array([2**64 - 1], np.uint64))),
             ("offsets", 2**64 - 4096,
              dict(offsets=np.array([2**64 - 4096], np.uint64), lengths=10)),
             ("offsets", 2**70, dict(offsets=[0, 2**70], lengths=1)),
             ("lengths", 2**64 - 1, dict(offsets=[0], lengths=2**64 - 1)),
             ("dest_offsets", 2**63, dict(offsets=[0], lengths=1,
                                          dest_offsets=np.array([2**63], np.uint64)))]
    with Storage(workers=1, fast_threads=1) as st:
        for name, bad, kw in cases:
            with pytest.raises(ValueError, match=rf"{name}: .*\b{bad}\b.*{MAX_OFF}"):
                st.read_batch(data_file, dest=dest, **kw)


def test_read_batch_dest_bound_check_does_not_overflow(data_file):
    with Storage(workers=1, fast_threads=1) as st:
        dest = np.zeros(4096, np.uint8)
        b = st.read_batch(data_file, [0, 0, 0, 4080], [4096, MAX_OFF, 4097, 16], dest=dest,
                          dest_offsets=[MAX_OFF, 1, 0, 4080])
        assert [b.status_name(i) for i in range(4)] == ["error"] * 3 + ["ok"]
        for i in range(3):
            assert b.error(i).kind == "dest_too_small" and b.errno[i] == 0
        assert b.data(3).tolist() == [255] * 16
        assert (dest[:4080] == 0).all()
