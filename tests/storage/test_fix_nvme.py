"""Fixes in the nvme module (audit s15): lazy registrations keep write= and create=, a bad
file is refused at register, a failing read_batch answers every request (nothing leaks), a
write response that cannot be allocated is ALLOC_FAIL, error responses report the length
asked for."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
from storage_helpers import make_file

import ggmk
from ggmk import ALLOC_FAIL
from ggmk.modules.nvme import E_BADREQ, E_CANCELLED, E_NOFILE, NvmeModule
from ggmk.storage import Storage

WAIT = 30.0


def _client():
    """Collects every response (decoded) in ``got`` / ``wrote``."""
    app = ggmk.Module("client")
    got, wrote = [], []

    @app.handler("CLIENT_READ", batch=True, consumes="disk.read.resp", message="DISK_READ_RESP")
    def on_read(ctx, batch):
        info = ctx.system.types.info("DISK_READ_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            got.append(info.decode(bytes(ctx.system.arena.view(ptr, ln))))

    @app.handler("CLIENT_WROTE", batch=True, consumes="disk.write.resp",
                 message="DISK_WRITE_RESP")
    def on_wrote(ctx, batch):
        info = ctx.system.types.info("DISK_WRITE_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            wrote.append(info.decode(bytes(ctx.system.arena.view(ptr, ln))))

    return app, got, wrote


def _write(system, tag, fid, data, offset=0):
    system.channel("disk.write").publish(payload={"tag": tag, "offset": offset, "file": fid,
                                                  "flags": 0, "data": data})


# ------------------------------------------------------------------ 3: lazy write / create
def test_lazy_registration_keeps_write_and_create(tmp_path):
    nvme = NvmeModule(workers=2)
    p_new = tmp_path / "lazy_create.bin"                    # missing; create=True
    f_new = nvme.register(p_new, write=True, create=True, lazy=True)
    p_ro = tmp_path / "lazy_ro.bin"
    p_ro.write_bytes(b"original")
    f_ro = nvme.register(p_ro, lazy=True)                    # read-only
    p_ero = tmp_path / "eager_ro.bin"
    p_ero.write_bytes(b"original")
    f_ero = nvme.register(p_ero)                             # read-only, opened now
    p_nc = tmp_path / "lazy_nocreate.bin"
    f_nc = nvme.register(p_nc, write=True, lazy=True)        # missing, create=False
    app, got, wrote = _client()
    with ggmk.boot([nvme, app], workers=2) as system:
        for tag, fid in ((1, f_new), (2, f_ro), (3, f_ero), (4, f_nc)):
            _write(system, tag, fid, b"NEWDATA")
        assert system.run(timeout=WAIT)
        system.channel("disk.read").publish(payload={"tag": 5, "offset": 0, "file": f_new,
                                                     "length": 100})
        assert system.run(timeout=WAIT)
        w = {d["tag"]: d for d in wrote}
        assert (w[1]["status"], w[1]["length"]) == (0, 7)
        assert p_new.read_bytes() == b"NEWDATA"
        assert bytes(got[0]["data"]) == b"NEWDATA"
        for tag in (2, 3):                     # read-only, lazy or not: refused, untouched
            assert (w[tag]["status"], w[tag]["errno"], w[tag]["length"]) == \
                (E_BADREQ, errno.EBADF, 0), w[tag]
        assert p_ro.read_bytes() == b"original" and p_ero.read_bytes() == b"original"
        assert w[4]["status"] == E_NOFILE and not p_nc.exists()
        assert nvme.stats()["in_flight"] == 0


# ------------------------------------------------------------------ 6: bad files, failures
def test_register_refuses_what_is_not_a_path(tmp_path):
    nvme = NvmeModule(workers=1)
    for lazy in (True, False):
        with pytest.raises(TypeError) as ei:
            nvme.register(12345, lazy=lazy)
        assert "path" in str(ei.value) and "12345" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        nvme.register("a\0b", lazy=True)
    assert "NUL" in str(ei.value)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError) as ei:
        nvme.register(fifo, lazy=True)
    assert "FIFO" in str(ei.value) and "regular file" in str(ei.value)
    for kw in ({"write": "yes"}, {"create": 1}, {"lazy": None}):
        with pytest.raises(TypeError) as ei:
            nvme.register(tmp_path / "x.bin", **kw)
        name, val = next(iter(kw.items()))
        assert name in str(ei.value) and repr(val) in str(ei.value)
    assert nvme._files == {}                          # nothing registered by the refusals


def test_failing_storage_answers_every_request_and_leaks_nothing(tmp_path):
    """The storage given to the module was closed: read_batch and submit raise. Every read and
    write gets its own error response; nothing stays in flight, no payload leaks, no handler
    exception."""
    p = make_file(tmp_path / "a.bin", np.arange(100_000, dtype=np.uint32).view(np.uint8))
    st = Storage(workers=1)
    nvme = NvmeModule(storage=st)
    fid = nvme.register(p, write=True)
    app, got, wrote = _client()
    with ggmk.boot([nvme, app], workers=2) as system:
        base = system.arena.live_count()
        st.close()
        for t in range(6):
            system.channel("disk.read").publish(payload={"tag": t, "offset": t * 1000,
                                                         "file": fid, "length": 1000})
        _write(system, 100, fid, b"abc")
        assert system.run(timeout=WAIT)
        assert sorted(d["tag"] for d in got) == list(range(6))
        assert all(d["status"] == E_CANCELLED and d["requested"] == 1000 for d in got)
        assert [(d["tag"], d["status"]) for d in wrote] == [(100, E_CANCELLED)]
        s = nvme.stats()
        assert s["in_flight"] == 0 and s["errors"] == 7
        assert system.arena.live_count() == base
        recs, codes = system.dead_letters("sys.error")
        assert len(recs) == 0, list(codes)
        assert system.stats()["exceptions"] == 0


def test_one_bad_lazy_file_fails_alone(tmp_path):
    data = np.arange(100_000, dtype=np.uint32).view(np.uint8)
    p = make_file(tmp_path / "a.bin", data)
    (tmp_path / "dir").mkdir()
    nvme = NvmeModule(workers=2)
    good = nvme.register(p)
    gone = nvme.register(tmp_path / "gone.bin", lazy=True)
    adir = nvme.register(tmp_path / "dir", lazy=True)
    app, got, _ = _client()
    with ggmk.boot([nvme, app], workers=2) as system:
        base = system.arena.live_count()
        for t in range(12):
            fid = (good, gone, adir)[t % 3]
            system.channel("disk.read").publish(payload={"tag": t, "offset": t * 1000,
                                                         "file": fid, "length": 1000})
        assert system.run(timeout=WAIT)
        by = {d["tag"]: d for d in got}
        assert sorted(by) == list(range(12))
        for t, d in by.items():
            if t % 3 == 0:
                assert d["status"] == 0
                assert bytes(d["data"]) == data[t * 1000:t * 1000 + 1000].tobytes()
            elif t % 3 == 1:
                assert (d["status"], d["errno"]) == (E_NOFILE, errno.ENOENT)
            else:
                assert (d["status"], d["errno"]) == (E_BADREQ, errno.EISDIR)
            assert d["requested"] == 1000
        assert nvme.stats()["in_flight"] == 0
        assert system.arena.live_count() == base
        assert len(system.dead_letters("sys.error")[0]) == 0


# ------------------------------------------------------------------ 7: write resp alloc fail
def test_write_response_that_cannot_be_allocated_is_alloc_fail(tmp_path):
    pw = tmp_path / "w.bin"
    pw.write_bytes(b"")
    running, go = threading.Event(), threading.Event()
    first = [True]

    def hook(index, pos):                 # hold the write mid-flight once
        if first[0]:
            first[0] = False
            running.set()
            go.wait(WAIT)
    st = Storage(workers=1, direct_chunk=4096, chunk_hook=hook)
    nvme = NvmeModule(storage=st)
    fw = nvme.register(pw, write=True)
    app, got, wrote = _client()
    try:
        with ggmk.boot([nvme, app], workers=2, arena_size=8 << 20) as system:
            _write(system, 7, fw, bytes(range(256)) * 64)
            assert running.wait(WAIT)
            held = []
            for size in (131072, 16384, 4096, 1024, 256, 64, 16, 1):
                while (ptr := system.arena.alloc(size)):
                    held.append(ptr)
            go.set()
            assert system.run(timeout=WAIT)
            s = nvme.stats()
            assert s["in_flight"] == 0 and wrote == []
            recs, codes = system.dead_letters("sys.error")
            assert list(codes) == [ALLOC_FAIL]
            assert system.stats()["exceptions"] == 0
            assert pw.read_bytes() == bytes(range(256)) * 64     # the write itself was done
            system.arena.release_many(np.array(held, np.uint64))
    finally:
        go.set()
        st.close()


# ------------------------------------------------------------------ 14: requested in errors
def test_error_responses_report_the_requested_length(tmp_path):
    p = make_file(tmp_path / "a.bin", np.zeros(5000, np.uint8))
    nvme = NvmeModule(workers=1)
    fid = nvme.register(p)
    app, got, _ = _client()
    with ggmk.boot([nvme, app], workers=2) as system:
        for tag, off, f, ln in ((1, 0, 999, 10), (2, (1 << 64) - 1, fid, 5),
                                (3, (1 << 63) - 1, fid, 1), (4, 6000, fid, 77)):
            system.channel("disk.read").publish(payload={"tag": tag, "offset": off,
                                                         "file": f, "length": ln})
        assert system.run(timeout=WAIT)
        by = {d["tag"]: d for d in got}
        assert (by[1]["status"], by[1]["requested"]) == (E_NOFILE, 10)
        assert (by[2]["status"], by[2]["requested"]) == (E_BADREQ, 5)
        assert (by[3]["status"], by[3]["requested"]) == (E_BADREQ, 1)
        assert (by[4]["status"], by[4]["requested"], by[4]["length"]) == (0, 77, 0)
