"""Closing files and the storage while I/O is queued or from a storage thread (audit V):
a closed FileHandle's queued reads never read another file that reuses its fd numbers; a
submit racing close() completes every I/O (cancelled); read(missing) is a StorageError;
close() from a callback neither hangs nor joins its own thread."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ggmk.storage import ReadRequest, Storage, StorageError
from ggmk.storage.fast import CANCELLED, OK


def _files(tmp_path, n=1 << 20):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    np.full(n, 0xAA, np.uint8).tofile(a)
    np.full(n, 0xBB, np.uint8).tofile(b)
    return a, b


class _Blocker:
    """A fast-pool job that holds one fast thread until ``go`` is set."""
    _nchunks = 1

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    def _work(self):
        self.entered.set()
        self.go.wait(30)


def test_read_batch_file_closed_while_queued_never_reads_a_reused_fd(tmp_path):
    a, b = _files(tmp_path)
    with Storage(workers=1, fast_threads=1) as st:
        blk = _Blocker()
        st._fast.dispatch(blk)
        assert blk.entered.wait(30)            # the only fast thread is busy: reads queue
        fa = st.open(a)
        offs = np.arange(64, dtype=np.int64) * 4096
        batch = st.read_batch(fa, offs, 4096, wait=False)
        fa.close()
        fb = st.open(b)                        # gets fa's fd numbers (the lowest free)
        try:
            blk.go.set()
            batch.wait(30)
            first = batch.dest.view(0, batch.dest.nbytes).reshape(-1, 4096)[:, 0]
            ok = batch.status == OK
            assert not (ok & (first == 0xBB)).any(), "read file B's bytes for file A"
            assert ((batch.status == CANCELLED) | (ok & (first == 0xAA))).all()
        finally:
            fb.close()
        with pytest.raises(OSError):
            fa.size()                          # its descriptors are closed now


def test_read_batch_on_closed_handle_fails(tmp_path):
    a, b = _files(tmp_path)
    with Storage(workers=1, fast_threads=1) as st:
        fa = st.open(a)
        fa.close()
        fb = st.open(b)
        try:
            batch = st.read_batch(fa, [0, 4096], 4096)
            assert (batch.status > 1).all()
            assert batch.error(0).kind == "bad_request"
            r = st.submit([ReadRequest(fa, 0, 4096)]).wait(30)[0]
            assert r.status == "error" and r.error.kind == "bad_request"
        finally:
            fb.close()


def test_submit_file_closed_while_queued_never_reads_a_reused_fd(tmp_path):
    a, b = _files(tmp_path)
    go, entered = threading.Event(), threading.Event()

    def hold(_r):
        entered.set()
        go.wait(30)

    with Storage(workers=1, o_direct=False) as st:
        first = st.submit([ReadRequest(a, 0, 4096, on_complete=hold)])
        assert entered.wait(30)                # the only worker is in a callback
        fa = st.open(a)
        batch = st.submit([ReadRequest(fa, i * 4096, 4096) for i in range(8)])
        fa.close()
        fb = st.open(b)
        try:
            go.set()
            first.wait(30)
            for r in batch.wait(30):
                assert r.status in ("ok", "cancelled"), r.error
                if r.status == "ok":
                    assert (r.data() == 0xAA).all()
        finally:
            fb.close()


def test_close_during_submit_cancels_what_it_queues_late(tmp_path, held_path):
    p = tmp_path / "f.bin"
    np.zeros(1 << 16, np.uint8).tofile(p)
    slow = held_path(p)                        # holds submit() after its closed check
    st = Storage(workers=2)
    box = {}
    th = threading.Thread(target=lambda: box.setdefault(
        "b", st.submit([ReadRequest(slow, i * 4096, 4096) for i in range(50)])))
    th.start()
    assert slow.entered.wait(30)
    st.close(timeout=30)
    slow.go.set()
    th.join(30)
    res = box["b"].wait(10)                    # never lost: every I/O completes
    assert {r.status for r in res} == {"cancelled"}
    assert st.stats()["queued_now"] == 0


def test_read_missing_path_without_length_is_storage_error(tmp_path):
    with Storage(workers=1) as st:
        with pytest.raises(StorageError) as ei:
            st.read(tmp_path / "missing.bin")
        assert ei.value.kind == "not_found"
        with pytest.raises(StorageError) as ei:
            st.read(tmp_path / "missing.bin", 0, 10)
        assert ei.value.kind == "not_found"


@pytest.mark.parametrize("fast", [False, True])
def test_close_from_callback_returns_without_joining_itself(tmp_path, fast):
    p = tmp_path / "f.bin"
    np.zeros(1 << 16, np.uint8).tofile(p)
    st = Storage(workers=2, fast_threads=2)
    out = {}

    def cb(_r):
        try:
            st.close(timeout=5)
            out["r"] = "returned"
        except BaseException as e:  # noqa: BLE001
            out["r"] = repr(e)

    if fast:
        st.read_batch(p, [0, 4096], 4096, wait=True, on_done=cb)
    else:
        st.submit([ReadRequest(p, 0, 4096, on_complete=cb)]).wait(30)
    assert out["r"] == "returned"
    assert st._closed
    for t in st._threads:
        t.join(30)
        assert not t.is_alive()
    with pytest.raises(RuntimeError):
        st.submit([ReadRequest(p, 0, 4096)])


def test_nvme_unregister_while_reads_queued_never_answers_another_files_bytes(tmp_path):
    import ggmk
    from ggmk.modules.nvme import NvmeModule

    a, b = _files(tmp_path)
    nvme = NvmeModule(workers=1, fast_threads=1)
    fa = nvme.register(a)
    app = ggmk.Module("client")
    rd = app.produces("disk.read", "DISK_READ")
    got, swapped = [], {}

    @app.handler("KICK")
    def kick(ctx):
        for tag in range(16):
            assert ctx.emit(rd, payload={"tag": tag, "offset": tag * 8192, "file": fa,
                                         "length": 8192}) == ggmk.OK

    @app.handler("CLIENT_READ", batch=True, consumes="disk.read.resp", message="DISK_READ_RESP")
    def on_read(ctx, batch):
        info = ctx.system.types.info("DISK_READ_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            got.append(info.decode(bytes(ctx.system.arena.view(ptr, ln))))

    with ggmk.boot([nvme, app], workers=2) as system:
        st = nvme.storage
        blk = _Blocker()
        st._fast.dispatch(blk)
        assert blk.entered.wait(30)            # the reads queue behind it
        orig = st.read_batch

        def read_batch(*args, **kw):           # unregister + register while they are queued
            out = orig(*args, **kw)
            if not swapped:
                nvme.unregister(fa)
                swapped["fid"] = nvme.register(b)
                blk.go.set()
            return out

        st.read_batch = read_batch
        system.submit("KICK")
        assert system.run(timeout=60)
        blk.go.set()
    assert swapped and len(got) == 16
    for d in got:
        assert d["status"] != 0 or set(bytes(d["data"])) == {0xAA}, d["status"]
