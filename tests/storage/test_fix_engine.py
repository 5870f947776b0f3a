"""Fixes in the storage engine (audit s15): offsets past 2**47 on the direct path, cancelling
running I/O (cancel_all, close(cancel=True), an exception in a with block), FIFOs refused,
a timed-out arena read that leaked its block, callbacks that read again, error kinds, the
Storage(...) option checks and zero-length buffers."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading

import numpy as np
import pytest
from storage_helpers import make_file, odirect_ok

from ggmk.core.alloc import Arena
from ggmk.storage import (DeviceDest, FileHandle, HostDest, ReadRequest, Storage, StorageError,
                          aligned_empty)
from ggmk.storage.fast import CANCELLED

WAIT = 20.0                        # the deadline of every wait below (never reached when fixed)


class _Blocker:
    """A fast-pool job that holds one fast thread until ``go`` is set."""
    _nchunks = 1

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    def _work(self):
        self.entered.set()
        self.go.wait(WAIT)


class _HoldFirstChunk:
    """A chunk_hook that holds the first I/O to reach it (``running`` set) until ``go``."""

    def __init__(self):
        self.running, self.go = threading.Event(), threading.Event()
        self._first = True

    def __call__(self, index, pos):
        if self._first:
            self._first = False
            self.running.set()
            self.go.wait(WAIT)


# ------------------------------------------------------------------ 2: offsets past 2**47
def test_direct_path_reads_at_offsets_past_2_47():
    if not os.path.isdir("/dev/shm") or not odirect_ok("/dev/shm"):
        pytest.skip("needs a tmpfs that takes O_DIRECT (Linux >= 6.6) for a 2**50-byte file")
    off = 1 << 50
    data = np.random.default_rng(2).integers(0, 256, 3 * 4096 + 123, dtype=np.uint8)
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        f.seek(off)
        f.write(data.tobytes())
        f.flush()
        with Storage(workers=2) as st:
            r = st.read(f.name, off, len(data))
            assert r.io_path == "direct" and r.status == "ok"
            assert r.data().tobytes() == data.tobytes()
            dest = aligned_empty(len(data))
            r = st.read(f.name, off, len(data), dest=dest)
            assert r.io_path == "direct" and dest.tobytes() == data.tobytes()


# ------------------------------------------------------------------ 4: cancel running I/O
def _big(tmp_path, n=4 << 20):
    p = tmp_path / "big.bin"
    np.random.default_rng(4).integers(0, 256, n, dtype=np.uint8).tofile(p)
    return str(p)


@pytest.mark.parametrize("dest", ["device", "buffered"])
def test_cancel_all_cancels_a_running_read(tmp_path, dest):
    p = _big(tmp_path)
    hook = _HoldFirstChunk()
    st = Storage(workers=2, bounce_size=4096, bounce_count=2, direct_chunk=4096,
                 o_direct=False if dest == "buffered" else "auto", chunk_hook=hook)
    try:
        b = st.submit([ReadRequest(p, 0, 4 << 20, dest=None if dest == "buffered" else dest)])
        assert hook.running.wait(WAIT)               # mid-flight, on a worker
        assert st.cancel_all() == 1
        hook.go.set()
        r = b.wait(WAIT)[0]
        assert r.status == "cancelled" and r.error.kind == "cancelled"
        assert "mid-flight" in str(r.error)
    finally:
        hook.go.set()
        st.close()


def test_close_cancel_and_with_exception_cancel_running_reads(tmp_path):
    p = _big(tmp_path)
    for how in ("close", "with"):
        hook = _HoldFirstChunk()
        st = Storage(workers=2, bounce_size=4096, bounce_count=2, direct_chunk=4096,
                     chunk_hook=hook)
        real = st.cancel_all

        def cancel_all():
            n = real()
            hook.go.set()                            # the held read goes on (and stops)
            return n
        st.cancel_all = cancel_all
        b = st.submit([ReadRequest(p, 0, 4 << 20, dest="device")])
        assert hook.running.wait(WAIT)
        if how == "close":
            st.close(cancel=True, timeout=WAIT)
        else:
            with pytest.raises(KeyError):
                with st:
                    raise KeyError("boom")
        hook.go.set()
        assert b.wait(WAIT)[0].status == "cancelled"


def test_cancel_all_cancels_a_fast_batch_in_flight(tmp_path):
    p = _big(tmp_path, 1 << 20)
    st = Storage(workers=1, fast_threads=1)
    blk = _Blocker()
    try:
        st._fast.dispatch(blk)
        assert blk.entered.wait(WAIT)                # the only fast thread is busy
        b = st.read_batch(p, np.arange(64) * 4096, 4096, wait=False)
        assert st.cancel_all() >= 1
        blk.go.set()
        b.wait(WAIT)
        assert b.count(CANCELLED) == 64
    finally:
        blk.go.set()
        st.close()


# ------------------------------------------------------------------ 5: FIFOs
def _in_thread(fn):
    """Run ``fn`` in a daemon thread: (finished, its result or exception)."""
    out = {}

    def run():
        try:
            out["r"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["r"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    return not t.is_alive(), out.get("r")


def test_a_fifo_is_refused_at_once_never_hangs(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    st = Storage(workers=2)
    try:
        calls = {
            "FileHandle": lambda: FileHandle(fifo),
            "open": lambda: st.open(fifo),
            "read": lambda: st.read(fifo, 0, 10, timeout=WAIT),
            "read_nolen": lambda: st.read(fifo, timeout=WAIT),
            "write": lambda: st.write(fifo, 0, b"abc", timeout=WAIT),
            "submit": lambda: st.submit([ReadRequest(fifo, 0, 10)]).wait(WAIT)[0],
            "read_batch": lambda: st.read_batch(fifo, [0], 10, timeout=WAIT).error(0),
        }
        for name, fn in calls.items():
            done, r = _in_thread(fn)
            assert done, f"{name} hung on a FIFO"
            if name in ("FileHandle", "open"):
                assert isinstance(r, OSError) and r.errno == errno.ESPIPE, (name, r)
                assert "FIFO" in str(r) and "regular file" in str(r)
                continue
            if hasattr(r, "error") and not isinstance(r, BaseException):
                r = r.error
            assert isinstance(r, StorageError), (name, r)
            assert r.kind == "bad_request" and "FIFO" in str(r) and "pipe" in str(r), (name, r)
    finally:
        try:                                    # unblock a reader stuck in open() (unfixed)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        st.close(timeout=5)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)        # never written to or replaced


def test_regular_files_and_directories_unchanged(tmp_path):
    p = make_file(tmp_path / "f.bin", np.arange(100, dtype=np.uint8))
    (tmp_path / "d").mkdir()
    with Storage(workers=1) as st:
        assert st.read(p, 0, 100).data().tobytes() == bytes(range(100))
        with pytest.raises(StorageError) as ei:
            st.read(str(tmp_path / "d"), 0, 10)
        assert ei.value.kind == "bad_request" and ei.value.errno == errno.EISDIR


# ------------------------------------------------------------------ 8: timed-out arena read
def test_timed_out_arena_read_frees_its_block(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(1 << 20, np.uint8))
    arena = Arena(16 << 20)
    hook = _HoldFirstChunk()
    st = Storage(workers=1, arena=arena, bounce_size=4096, bounce_count=2, direct_chunk=4096,
                 chunk_hook=hook)
    try:
        held = st.submit([ReadRequest(p, 0, 64 << 10, dest="device")])
        assert hook.running.wait(WAIT)          # the only worker is busy: the next one waits
        for _ in range(5):
            with pytest.raises(TimeoutError):
                st.read(p, 0, 100_000, dest="arena", timeout=0.01)
        assert arena.live_count() == 0          # freed before each read() raised (not left running)
        hook.go.set()
        held.wait(WAIT)
        assert st.wait_idle(WAIT)
        assert arena.live_count() == 0
        r = st.read(p, 0, 1000, dest="arena", timeout=WAIT)   # one that finishes: kept
        assert arena.live_count() == 1 and r.dest.owned
        r.dest.release()
    finally:
        hook.go.set()
        st.close()


# ------------------------------------------------------------------ 10: callbacks that read
def test_on_done_that_reads_again_with_one_fast_thread(tmp_path):
    p = _big(tmp_path, 8 << 20)
    want = open(p, "rb").read(1 << 20)
    out = {}
    with Storage(workers=2, fast_threads=1) as st:
        def cb(b):
            r = st.read(p, 0, 1 << 20, timeout=WAIT)            # direct: chunks on the pool
            out["read"] = (r.status, r.io_path, r.data().tobytes() == want)
            out["batch"] = st.read_batch(p, [0, 4096], 4096, timeout=WAIT).count(0)
        b = st.read_batch(p, [0, 4096], 4096, on_done=cb, wait=False)
        b.wait(3 * WAIT)
        assert b.callback_error is None, b.callback_error
        assert out == {"read": ("ok", "direct", True), "batch": 2}


@pytest.mark.parametrize("max_batch", [1, 256])
def test_on_complete_that_reads_again_with_one_worker(tmp_path, max_batch):
    p = _big(tmp_path, 1 << 20)
    want = open(p, "rb").read()
    out = []
    with Storage(workers=1, max_batch=max_batch, segment_size=64 << 10) as st:
        def cb(r):
            if len(out) < 3:
                got = st.read(p, 0, 1 << 20, dest="device", timeout=WAIT)   # 16 segments
                out.append(got.dest.to_host().tobytes() == want)
                b2 = st.submit([ReadRequest(p, 4096, 10)])
                out.append(b2.wait(WAIT)[0].data().tobytes() == want[4096:4106])
        b = st.submit([ReadRequest(p, 0, 4096), ReadRequest(p, 8192, 4096)], on_complete=cb)
        assert [r.status for r in b.wait(3 * WAIT)] == ["ok", "ok"]
        assert not st.callback_errors, list(st.callback_errors)
        assert out == [True] * 4


# ------------------------------------------------------------------ 11: error kinds
def test_read_negative_dest_offset_is_a_bad_request(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(100, np.uint8))
    with Storage(workers=1) as st:
        with pytest.raises(StorageError) as ei:
            st.read(p, 0, 10, dest=np.zeros(100, np.uint8), dest_offset=-1)
        assert ei.value.kind == "bad_request"
        assert "dest_offset -1" in str(ei.value) and ">= 0" in str(ei.value)
        with pytest.raises(StorageError) as ei:          # fresh memory: never ignored
            st.read(p, 0, 10, dest="device", dest_offset=5)
        assert ei.value.kind == "bad_request" and "dest_offset 5" in str(ei.value)


# ------------------------------------------------------------------ 12: options
@pytest.mark.parametrize("kw, exc, words", [
    ({"direct_chunk": 0}, ValueError, ["direct_chunk", "0", "multiple of 4096"]),
    ({"direct_chunk": -5}, ValueError, ["direct_chunk", "-5", "multiple of 4096"]),
    ({"direct_chunk": 1000}, ValueError, ["direct_chunk", "1000", "multiple of 4096"]),
    ({"direct_chunk": 5000}, ValueError, ["direct_chunk", "5000", "multiple of 4096"]),
    ({"direct_chunk": 4096.0}, TypeError, ["direct_chunk", "4096.0", "int"]),
    ({"device_target": "gpu"}, ValueError, ["device_target", "'gpu'", "'cpu'", "'cuda'"]),
    ({"gds": "maybe"}, ValueError, ["gds", "'maybe'", "'auto'"]),
    ({"sparse": "no"}, TypeError, ["sparse", "'no'", "True or False"]),
    ({"sparse": 0}, TypeError, ["sparse", "0", "True or False"]),
    ({"segment_size": 1000}, ValueError, ["segment_size", "1000", "multiple of 4096"]),
    ({"segment_size": -4096}, ValueError, ["segment_size", "-4096", "multiple of 4096"]),
    ({"workers": "2"}, TypeError, ["workers", "'2'", "int"]),
    ({"workers": 2.5}, TypeError, ["workers", "2.5", "int"]),
    ({"workers": True}, TypeError, ["workers", "True", "int"]),
    ({"workers": 0}, ValueError, ["workers", "0", ">= 1"]),
    ({"max_batch": "8"}, TypeError, ["max_batch", "'8'", "int"]),
    ({"bounce_count": 0}, ValueError, ["bounce_count", "0", ">= 1"]),
    ({"bounce_size": 1000}, ValueError, ["bounce_size", "1000", "multiple of 4096"]),
    ({"fast_threads": "4"}, TypeError, ["fast_threads", "'4'", "int"]),
    ({"seq_depth": 0}, ValueError, ["seq_depth", "0", ">= 1"]),
    ({"seq_chunk": 1000}, ValueError, ["seq_chunk", "1000", "multiple of 4096"]),
    ({"chunk_hook": 5}, TypeError, ["chunk_hook", "5", "callable"]),
])
def test_storage_options_refused_naming_option_value_and_allowed(kw, exc, words):
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(exc) as ei:
        Storage(**kw)
    for w in words:
        assert w in str(ei.value), (kw, str(ei.value))
    assert {t.name for t in threading.enumerate()} <= before     # no thread left running


def test_storage_options_accepted():
    st = Storage(direct_chunk=8192, device_target="sim", sparse=False, gds=False,
                 workers=np.int64(1), segment_size=np.int64(8192))
    try:
        assert st.direct_chunk == 8192 and st.sparse is False and st.device_target == "sim"
    finally:
        st.close()


# ------------------------------------------------------------------ 13: zero-length buffers
def test_zero_length_buffers_are_zero_bytes(tmp_path):
    assert HostDest.alloc(0).nbytes == 0 and aligned_empty(0).size == 0
    d = DeviceDest.alloc(0)
    assert d.nbytes == 0
    p = str(tmp_path / "w.bin")
    with Storage(workers=1) as st:
        r = st.write(p, 0, d)
        assert r.status == "ok" and r.nbytes == 0
        assert os.path.getsize(p) == 0
        r = st.write(p, 0, HostDest.alloc(0))
        assert r.nbytes == 0 and os.path.getsize(p) == 0
        r = st.read(p, 0, 0)
        assert r.status == "ok" and r.nbytes == 0 and r.data().size == 0


def test_block_device_reads_and_sizes(tmp_path):
    """A block device is read like a file (its st_size is 0: the size comes from lseek).
    Needs root and a loop device: skipped otherwise."""
    import shutil
    import subprocess
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup for a loop device")
    img = tmp_path / "blk.img"
    data = np.random.default_rng(7).integers(0, 256, 4 << 20, dtype=np.uint8)
    data.tofile(img)
    r = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        with Storage(workers=2) as st:
            with st.open(dev) as fh:
                assert fh.size() == len(data)
            r = st.read(dev)                              # length=None: the whole device
            assert r.nbytes == len(data) and r.data().tobytes() == data.tobytes()
            b = st.read_batch(dev, [0, len(data) - 100], 4096)
            assert list(b.nbytes) == [4096, 100]
            assert b.data(1).tobytes() == data[-100:].tobytes()
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
