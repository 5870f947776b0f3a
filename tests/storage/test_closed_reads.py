"""Reads and writes after close: a closed Storage refuses every public I/O call with the same
RuntimeError naming the call, and never starts a storage thread again (warm_up, a read_batch
that close() overtook, a direct read still queued when a callback closed it); a closed
FileHandle gives the same StorageError (bad_request, EBADF, "the FileHandle is closed") from
read, write, submit and read_batch, and a read_batch with nothing to read starts no thread."""
from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from ggmk.storage import ReadRequest, Storage, StorageError, WriteRequest
from ggmk.storage.fast import CANCELLED, OK


def _storage_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("ggmk-storage")}


def _file(tmp_path, n=1 << 20):
    p = tmp_path / "f.bin"
    data = np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8)
    data.tofile(p)
    return p, data


@pytest.mark.parametrize("pool_started", [False, True])
def test_every_call_after_close_is_the_same_error_and_starts_no_thread(tmp_path, pool_started):
    p, _ = _file(tmp_path)
    before = _storage_threads()
    st = Storage(workers=2, fast_threads=3)
    if pool_started:
        assert st.read_batch(p, [0, 4096], 4096).ok
    st.close()
    assert _storage_threads() == before
    calls = {
        "read()": lambda: st.read(p, 0, 4096),
        "write()": lambda: st.write(p, 0, np.zeros(4096, np.uint8)),
        "submit()": lambda: st.submit([ReadRequest(p, 0, 4096)]),
        "read_batch()": lambda: st.read_batch(p, [0, 4096], 4096),
        "warm_up()": lambda: st.warm_up(),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError) as ei:
            call()
        assert str(ei.value) == (f"storage is closed: {name} after Storage.close() is not "
                                 f"allowed; open a new Storage")
        assert _storage_threads() == before, f"{name} started storage threads after close"
    with pytest.raises(RuntimeError, match=r"storage is closed: read\(\)"):
        st.read(tmp_path / "missing.bin")           # closed first, not the file's not_found


def test_read_batch_overtaken_by_close_ends_cancelled_without_threads(tmp_path, held_path):
    p, _ = _file(tmp_path)
    slow = held_path(p)                             # holds read_batch after its closed check
    before = _storage_threads()
    st = Storage(workers=1, fast_threads=3)
    box = {}
    th = threading.Thread(target=lambda: box.setdefault(
        "b", st.read_batch(slow, [0, 4096, 8192], 4096)))
    th.start()
    assert slow.entered.wait(30)
    st.close(timeout=30)
    slow.go.set()
    th.join(30)
    b = box["b"]
    assert b.done() and (b.status == CANCELLED).all() and (b.nbytes == 0).all()
    assert {e.kind for _, e in b.errors()} == {"cancelled"}
    assert st.wait_idle(0)                          # counted out: nothing left in flight
    assert _storage_threads() == before


def test_direct_read_queued_when_a_callback_closes_runs_without_restarting_the_pool(disk_dir):
    p, data = _file(disk_dir)
    before = _storage_threads()
    st = Storage(workers=1, fast_threads=2)

    def close_it(_r):
        st.close(timeout=30)

    # one worker: the second read is still queued when the first one's callback closes
    b = st.submit([ReadRequest(p, 0, 4096, on_complete=close_it), ReadRequest(p, 0, 1 << 20)])
    res = b.wait(30)
    assert [r.status for r in res] == ["ok", "ok"]
    assert res[1].io_path == "direct" and np.array_equal(res[1].data(), data)
    for t in st._threads:
        t.join(30)
    assert _storage_threads() == before


def test_a_closed_file_handle_is_the_same_error_from_every_call(tmp_path):
    p, _ = _file(tmp_path)
    with Storage(workers=1, fast_threads=2) as st:
        before = _storage_threads()
        fh = st.open(p)
        fh.close()
        errs = {}
        for name, call in (("read", lambda: st.read(fh, 0, 4096)),
                           ("read whole", lambda: st.read(fh)),
                           ("write", lambda: st.write(fh, 0, np.zeros(4096, np.uint8)))):
            with pytest.raises(StorageError) as ei:
                call()
            errs[name] = ei.value
        errs["submit read"] = st.submit([ReadRequest(fh, 0, 4096)]).wait(30)[0].error
        w = WriteRequest(fh, 0, np.zeros(4096, np.uint8))
        errs["submit write"] = st.submit([w]).wait(30)[0].error
        b = st.read_batch(fh, [0, 4096], 4096)
        assert (b.status > OK).all() and (b.errno == errno.EBADF).all()
        errs["read_batch"] = b.error(0)
        for name, e in errs.items():
            assert (e.kind, e.errno) == ("bad_request", errno.EBADF), (name, e)
            assert "the FileHandle is closed" in str(e) and str(p) in str(e), (name, e)
        # a batch with nothing to read finishes without starting the pool's threads
        assert _storage_threads() == before
