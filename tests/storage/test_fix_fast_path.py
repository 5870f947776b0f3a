"""Fixes in the batch fast path, Storage.read_batch (audit s15): O_DIRECT reads that cross the
end of the file wrote zeros past ``nbytes``; a bad entry in a file list leaked descriptors;
wrong error messages; many distinct files exhausted the descriptor limit."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from storage_helpers import make_file

from ggmk.storage import HostDest, Storage, aligned_empty
from ggmk.storage.fast import CANCELLED, OK, SHORT


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ 1: nothing past nbytes
@pytest.mark.parametrize("o_direct", ["auto", True])
def test_direct_read_past_eof_writes_nothing_past_nbytes(disk_dir, o_direct):
    rng = np.random.default_rng(1)
    with Storage(workers=1, fast_threads=2, o_direct=o_direct) as st:
        for size in (1, 511, 4095, 4096, 4097, 5000, 8191, 70000):
            data = rng.integers(1, 255, size, dtype=np.uint8)
            p = make_file(disk_dir / f"f{size}.bin", data)
            n = (size // 4096 + 2) * 4096
            dest = aligned_empty(2 * n)
            dest[:] = 0xCD
            offs = [0, 4096, 8192, n]                       # across, at and past the end
            b = st.read_batch(p, [0], n, dest=dest)
            assert b.status[0] == SHORT and b.nbytes[0] == size
            assert bool(b.direct[0])                         # O_DIRECT still used
            assert dest[:size].tobytes() == data.tobytes()
            assert (dest[size:] == 0xCD).all(), f"size {size}: bytes past nbytes written"
            # several reads into one buffer, each at its own place: only their bytes change
            dest[:] = 0xCD
            b = st.read_batch(p, offs, 4096, dest=dest, dest_offsets=np.arange(4) * 4096)
            want = bytearray(b"\xcd" * len(dest))
            for i, o in enumerate(offs):
                got = data[o:o + 4096].tobytes()
                assert b.nbytes[i] == len(got)
                assert b.status[i] == (OK if len(got) == 4096 else SHORT)
                want[i * 4096:i * 4096 + len(got)] = got
            assert dest.tobytes() == bytes(want), f"size {size}"
            assert b.direct.all()


def test_direct_read_far_past_eof_reads_nothing(disk_dir):
    p = make_file(disk_dir / "s.bin", np.full(100, 7, np.uint8))
    with Storage(workers=1) as st:
        dest = aligned_empty(3 * 4096)
        dest[:] = 0xCD
        b = st.read_batch(p, [0, 1 << 20], 4096, dest=dest, dest_offsets=[0, 8192])
        assert list(b.nbytes) == [100, 0] and list(b.status) == [SHORT, SHORT]
        assert (dest[:100] == 7).all() and (dest[100:] == 0xCD).all()


# ------------------------------------------------------------------ 9: bad file lists
def test_file_list_with_a_non_path_leaks_nothing_and_names_the_entry(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(8192, np.uint8))
    with Storage(workers=1) as st:
        fh = st.open(p)
        fd0 = _fds()
        for bad in (123, None, 4.5):
            with pytest.raises(TypeError) as ei:
                st.read_batch([p, fh, bad], [0, 0, 0], 100, file_ids=[0, 1, 2])
            msg = str(ei.value)
            assert "file[2]" in msg and repr(bad) in msg and "path or FileHandle" in msg
        with pytest.raises(ValueError) as ei:
            st.read_batch([p, "a\0b"], [0, 0], 100, file_ids=[0, 1])
        assert "file[1]" in str(ei.value) and "NUL" in str(ei.value)
        assert _fds() == fd0                        # nothing opened, nothing left open
        assert fh._users == 0
        fh.close()
        assert not fh._fds_open
        assert st.stats()["inflight"] == 0


# ------------------------------------------------------------------ 11: error messages
def test_error_messages_name_the_bad_value(tmp_path):
    p = make_file(tmp_path / "f.bin", np.arange(50_000, dtype=np.uint32).view(np.uint8))
    with Storage(workers=1) as st:
        b = st.read_batch(p, [0, 0], 100, dest=np.zeros(1000, np.uint8), dest_offsets=[-5, 0])
        e = b.error(0)
        assert e.kind == "bad_request" and "dest_offset -5 must be >= 0" in str(e)
        assert "offset 0 and length 100" not in str(e)
        assert b.status[1] == OK
        b = st.read_batch(p, [-3, 0], [7, -1])
        assert "offset -3 must be >= 0" in str(b.error(0))
        assert "length -1 must be >= 0" in str(b.error(1))
        b = st.read_batch(p, [(1 << 63) - 10, 0], 100)
        e = b.error(0)
        assert e.kind == "bad_request" and e.errno is None, e
        assert "2**63 - 1" in str(e) and str((1 << 63) - 10) in str(e)
        assert b.status[1] == OK
        s = st.stats()
        assert s["errors"].get("io", 0) == 0


# ------------------------------------------------------------------ 14: many distinct files
def test_many_distinct_files_under_a_low_descriptor_limit(tmp_path):
    """3000 small files in one read_batch with RLIMIT_NOFILE 1024 (in a child process, so that
    the limit is not this test process's): every read succeeds, no descriptor is left."""
    code = textwrap.dedent(f"""
        import os, resource, sys
        import numpy as np
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        from ggmk.storage import Storage
        d = {str(tmp_path)!r}
        rng = np.random.default_rng(22)
        blobs = [rng.integers(0, 256, int(rng.integers(0, 9000)), dtype=np.uint8)
                 for _ in range(3000)]
        paths = []
        for i, b in enumerate(blobs):
            paths.append(os.path.join(d, f"f{{i}}.bin"))
            b.tofile(paths[-1])
        fd0 = set(os.listdir("/proc/self/fd"))
        with Storage(workers=1, fast_threads=4) as st:
            b = st.read_batch(paths, np.zeros(3000, np.int64), 10000,
                              file_ids=np.arange(3000))
            errs = b.errors()
            assert not errs, (len(errs), str(errs[0][1]))
            assert all(b.data(i).tobytes() == blobs[i].tobytes() for i in range(3000))
            ids = np.arange(6000) % 3000                  # each file twice, interleaved
            b = st.read_batch(paths, np.zeros(6000, np.int64), 10000, file_ids=ids)
            assert not b.errors()
            assert all(b.data(i).tobytes() == blobs[ids[i]].tobytes() for i in range(6000))
            s = st.stats()
            assert s["inflight"] == 0 and s["errors"]["total"] == 0
        assert set(os.listdir("/proc/self/fd")) == fd0
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]


def test_read_batch_dest_none_zero_reads(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(10, np.uint8))
    with Storage(workers=1) as st:
        b = st.read_batch(p, [0, 3], 0)
        assert isinstance(b.dest, HostDest) and b.dest.nbytes == 0
        assert list(b.status) == [OK, OK] and list(b.nbytes) == [0, 0]


def test_staged_batch_errors_cancel_and_accounting(tmp_path):
    """Three paths open at once (forced small): 10 files run in 4 stages; a file of a later
    stage that does not open (missing, a FIFO) fails its reads alone, naming ``open``; a
    closed FileHandle is refused at submission; every read is accounted once."""
    rng = np.random.default_rng(14)
    blobs = [rng.integers(0, 256, 6000 + 1000 * i, dtype=np.uint8) for i in range(10)]
    files = [make_file(tmp_path / f"f{i}.bin", b) for i, b in enumerate(blobs)]
    files[5] = str(tmp_path / "missing.bin")
    os.mkfifo(tmp_path / "pipe")
    files[8] = str(tmp_path / "pipe")
    st = Storage(workers=1, fast_threads=2)
    st._files_per_stage = 3
    try:
        closed = st.open(files[0])
        closed.close()
        files.append(closed)                               # entry 10, stage 0
        fd0 = _fds()
        ids = np.array([i % 11 for i in range(44)])
        offs = np.array([(i // 11) * 1500 for i in range(44)])
        b = st.read_batch(files, offs, 1500, file_ids=ids)
        assert len(b._bounds) - 1 == 4                    # stages of 3 paths, 9 opened
        for i in range(44):
            k, o = int(ids[i]), int(offs[i])
            if k == 10:
                assert b.status_name(i) == "error" and b.error(i).kind == "bad_request"
                assert "closed" in str(b.error(i))
            elif k == 5:
                e = b.error(i)
                assert e.kind == "not_found" and "open" in str(e) and "missing.bin" in str(e)
            elif k == 8:
                e = b.error(i)
                assert e.kind == "bad_request" and "FIFO" in str(e), str(e)
            else:
                want = blobs[k][o:o + 1500].tobytes()
                assert b.status_name(i) == "ok" and b.data(i).tobytes() == want
        assert _fds() == fd0                               # every stage's files closed
        s = st.stats()
        assert s["inflight"] == 0 and s["errors"]["total"] == 12
        assert s["errors"]["not_found"] == 4 and s["errors"]["bad_request"] == 8
        io = s["states"]["io"]
        assert io["FREE->INIT"] == 44 and io["INIT->FREE"] == 4     # the closed handle's
        assert io["CALLBACK_END->FREE"] == 40
        # a cancelled staged batch: the stages not opened yet end CANCELLED, unread
        blk = _Blocker()
        st._fast.dispatch(blk)
        assert blk.entered.wait(20)
        good = [f for k, f in enumerate(files[:10]) if k not in (5, 8)]
        b = st.read_batch(good, np.zeros(8, np.int64), 100, file_ids=np.arange(8), wait=False)
        assert b.cancel()
        blk.go.set()
        b.wait(20)
        assert b.count(CANCELLED) == 8 and _fds() == fd0
    finally:
        st.close()


class _Blocker:
    """A fast-pool job that holds one of two fast threads until ``go`` is set."""
    _nchunks = 2

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    def _work(self):
        self.entered.set()
        self.go.wait(20)
