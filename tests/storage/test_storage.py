"""ggmk.storage on real files: dense, unaligned, larger than the bounce buffers, sparse,
O_DIRECT and its counted fallback, batches, writes; every read verified byte for byte."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from ggmk.storage import (ArenaDest, DeviceDest, HostDest, ReadRequest, Storage, StorageError,
                          WriteRequest)
from ggmk.storage import engine as engine_mod
from ggmk.storage.states import IoState

from storage_helpers import make_file, punch_hole


def _data(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8)


def test_dense_read_direct(storage, disk_dir, rng):
    data = _data(rng, 3 << 20)
    p = make_file(disk_dir / "dense.bin", data)
    r = storage.read(p, 0, len(data))
    assert r.status == "ok" and r.nbytes == len(data)
    assert r.io_path == "direct" and r.o_direct and r.fallback is None
    assert np.array_equal(r.data(), data)
    s = storage.stats()
    assert s["o_direct"]["used"] == 1 and s["o_direct"]["fallbacks"] == 0
    assert s["paths"]["direct"] == 1 and s["bytes"]["read"] == len(data)
    assert s["states"]["block"]["DMA_START->DONE"] == (3 << 20) // 4096
    assert s["states"]["io"]["CALLBACK_END->FREE"] == 1


def test_tmpfs_refuses_o_direct_fallback_counted(storage, shm_dir, disk_dir, rng):
    data = _data(rng, 200_000)
    p = make_file(os.path.join(shm_dir, "f.bin"), data)
    r = storage.read(p, 0, len(data))
    assert r.io_path == "buffered" and not r.o_direct
    assert r.fallback == "fs_refuses_o_direct"
    assert np.array_equal(r.data(), data)
    r2 = storage.read(p, 10, 1000)
    assert np.array_equal(r2.data(), data[10:1010])
    s = storage.stats()
    assert s["o_direct"]["fallback"] == {"fs_refuses_o_direct": 2}
    assert s["o_direct"]["fallbacks"] == 2 and s["o_direct"]["used"] == 0
    # the other branch: ext4 takes O_DIRECT, the counter does not move
    q = make_file(disk_dir / "f.bin", data)
    assert storage.read(q, 0, 8192).o_direct
    assert storage.stats()["o_direct"]["fallbacks"] == 2


@pytest.mark.parametrize("off,length,doff", [
    (0, 1, 0), (1, 4095, 0), (4095, 2, 0), (123, 100_001, 0), (4096, 8192, 0),
    (5000, 70_000, 3), (4096 * 3, 65_536 * 2 + 17, 4096), (777, 1_000_000, 13),
])
@pytest.mark.parametrize("kind", ["host", "device", "arena"])
def test_unaligned_reads(storage, disk_dir, rng, off, length, doff, kind):
    data = _data(rng, 1_200_000)
    p = make_file(disk_dir / "u.bin", data)
    if kind == "host":
        buf = np.full(length + doff + 5, 0xAA, np.uint8)
        dest = HostDest(buf)
    elif kind == "device":
        dest = DeviceDest.alloc(length + doff + 5, target="cpu")
        dest.view()[:] = 0xAA
    else:
        from ggmk.core.alloc import MAX_ALLOC, Arena
        if length + doff + 5 > MAX_ALLOC:
            pytest.skip("larger than one arena payload")
        arena = Arena(8 << 20)
        dest = ArenaDest(arena, arena.alloc(length + doff + 5))
        dest.view()[:] = 0xAA
    r = storage.read(p, off, length, dest=dest, dest_offset=doff)
    assert r.status == "ok" and r.nbytes == length
    got = dest.view() if kind != "device" else dest.to_host()
    assert np.array_equal(got[doff:doff + length], data[off:off + length])
    assert (got[:doff] == 0xAA).all() and (got[doff + length:] == 0xAA).all()
    assert r.io_path == ("bounce" if kind == "device" else r.io_path)


def test_larger_than_bounce_buffers_pipelined(disk_dir, rng):
    data = _data(rng, (5 << 20) + 333)
    p = make_file(disk_dir / "big.bin", data)
    with Storage(workers=2, bounce_size=64 << 10, bounce_count=3, segment_size=1 << 20) as st:
        d = DeviceDest.alloc(len(data) - 100, target="cpu")
        r = st.read(p, 100, len(data) - 100, dest=d)
        assert r.io_path == "bounce" and r.o_direct
        assert np.array_equal(d.to_host(), data[100:])
        b = st.stats()["bounce"]
        assert b["acquires"] >= len(data) // (64 << 10)      # each buffer reused many times
        assert st.stats()["states"]["block"]["QUEUED->DMA_START"] == -(-(len(data) - 100) // 4096)


def _sparse_file(path, rng, size, holes):
    data = _data(rng, size)
    data.tofile(path)
    for off, n in holes:
        punch_hole(path, off, n)
        data[off:off + n] = 0
    return data


def test_sparse_holes_zero_filled_without_reading(storage, disk_dir, rng):
    p = disk_dir / "sparse.bin"
    size = 2 << 20
    holes = [(64 << 10, 256 << 10), (1 << 20, 512 << 10)]
    data = _sparse_file(p, rng, size, holes)
    # a truncate-extended tail is a hole too
    os.truncate(p, size + (300 << 10))
    data = np.concatenate([data, np.zeros(300 << 10, np.uint8)])
    for dest_kind in ("host", "device"):
        dest = (HostDest(np.full(len(data), 0xAA, np.uint8)) if dest_kind == "host"
                else DeviceDest.alloc(len(data)))
        if dest_kind == "device":
            dest.view()[:] = 0xAA
        r = storage.read(p, 0, len(data), dest=dest)
        got = dest.view() if dest_kind == "host" else dest.to_host()
        assert np.array_equal(got, data)
        kinds = [k for _, _, k in r.regions]
        assert kinds == ["data", "hole", "data", "hole", "data", "hole"]
        assert r.holes == 3 and r.hole_bytes == (256 << 10) + (512 << 10) + (300 << 10)
    s = storage.stats()
    assert s["sparse"]["holes"] == 6 and s["sparse"]["sparse_reads"] == 2
    assert s["sparse"]["hole_bytes_skipped"] == 2 * ((256 << 10) + (512 << 10) + (300 << 10))
    assert s["bytes"]["zero_filled"] == s["sparse"]["hole_bytes_skipped"]
    # an unaligned window across a hole boundary
    r = storage.read(p, (64 << 10) - 1000, 300_000)
    assert np.array_equal(r.data(), data[(64 << 10) - 1000:(64 << 10) - 1000 + 300_000])


def test_no_hole_support_dense_fallback(storage, disk_dir, rng, monkeypatch):
    p = disk_dir / "sp.bin"
    data = _sparse_file(p, rng, 1 << 20, [(256 << 10, 256 << 10)])
    real = os.lseek

    def no_seek_data(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "SEEK_DATA not supported")
        return real(fd, pos, how)

    monkeypatch.setattr(engine_mod.os, "lseek", no_seek_data)
    r = storage.read(p, 0, len(data))
    assert r.dense_fallback and r.holes == 0 and r.regions == [(0, len(data), "data")]
    assert np.array_equal(r.data(), data)
    assert storage.stats()["sparse"]["dense_fallbacks"] == 1


def test_short_read_reported_not_padded(storage, disk_dir, rng):
    data = _data(rng, 10_000)
    p = make_file(disk_dir / "s.bin", data)
    buf = np.full(8192, 0xAA, np.uint8)
    r = storage.read(p, 6000, 8192, dest=buf)
    assert r.status == "short" and r.nbytes == 4000 and r.requested == 8192
    assert np.array_equal(buf[:4000], data[6000:]) and (buf[4000:] == 0xAA).all()
    r = storage.read(p, 20_000, 100, dest=buf)             # entirely beyond EOF
    assert r.status == "short" and r.nbytes == 0 and (buf[4000:] == 0xAA).all()
    s = storage.stats()["short_reads"]
    assert s == {"count": 2, "bytes_missing": 4192 + 100}


def test_batch_any_order_own_status_and_cap(disk_dir, rng):
    data = _data(rng, 1 << 20)
    p = make_file(disk_dir / "b.bin", data)
    with Storage(workers=3, max_batch=4) as st, st.open(p) as fh:
        offs = rng.integers(0, (1 << 20) - 4096, 40).tolist()
        reqs = [ReadRequest(fh, o, 4096, tag=i) for i, o in enumerate(offs)]
        reqs.insert(7, ReadRequest(disk_dir / "missing.bin", 0, 10, tag="missing"))
        b = st.submit(reqs)
        seen = [r.tag for r in b.as_completed(timeout=30)]
        assert sorted(map(str, seen)) == sorted(str(r.tag) for r in reqs)
        res = b.wait(5)
        for req, r in zip(reqs, res):
            if req.tag == "missing":
                assert r.status == "error" and r.error.kind == "not_found"
                assert "missing.bin" in str(r.error) and "[0, 10)" in str(r.error)
            else:
                assert r.status == "ok" and np.array_equal(r.data(), data[req.offset:req.offset + 4096])
        s = st.stats()
        assert s["batches"]["count"] == 1 and s["batches"]["max"] == 41
        assert s["batches"]["queued"] == 41 - 4 and s["batches"]["queue_high_watermark"] == 37
        assert s["errors"]["not_found"] == 1 and s["ops"]["read"] == 41
        assert s["latency"]["count"] == 41 and sum(s["latency"]["histogram_us"].values()) == 41


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st_.lists(st_.tuples(st_.integers(0, 600_000), st_.integers(0, 150_000),
                            st_.sampled_from(["host", "device"])), min_size=1, max_size=12))
def test_hypothesis_random_batches(storage, disk_dir, ranges):
    path = disk_dir / "h.bin"
    if not path.exists():
        np.random.default_rng(7).integers(0, 256, 500_000, dtype=np.uint8).tofile(path)
    data = np.fromfile(path, np.uint8)
    reqs = [ReadRequest(path, o, n, dest=DeviceDest.alloc(n) if k == "device" else None)
            for o, n, k in ranges]
    for req, r in zip(reqs, storage.submit(reqs).wait(60)):
        want = data[req.offset:req.offset + req.length]
        assert r.nbytes == len(want)
        assert r.status == ("ok" if len(want) == req.length else "short")
        got = r.dest.to_host()[:r.nbytes] if isinstance(r.dest, DeviceDest) else r.data()
        assert np.array_equal(got, want)


def test_writes_round_trip(storage, disk_dir, shm_dir, rng):
    data = _data(rng, 1 << 20)
    p = disk_dir / "w.bin"
    src = HostDest.alloc(len(data))
    src.view()[:] = data
    r = storage.write(p, 0, src, sync=True)                 # aligned: O_DIRECT
    assert r.io_path == "direct" and r.o_direct and r.nbytes == len(data)
    r = storage.write(p, 100, data[:5000].tobytes())        # unaligned: counted fallback
    assert r.io_path == "buffered" and r.fallback == "unaligned"
    expect = data.copy()
    expect[100:5100] = data[:5000]
    dev = DeviceDest.alloc(300_000)
    dev.view()[:] = data[:300_000][::-1]
    r = storage.write(p, 1 << 20, dev)                      # from device memory: bounce
    assert r.io_path == "bounce"
    expect = np.concatenate([expect, data[:300_000][::-1]])
    assert np.array_equal(np.fromfile(p, np.uint8), expect)
    s = storage.stats()
    assert s["ops"]["write"] == 3 and s["bytes"]["written"] == len(data) + 5000 + 300_000
    assert s["o_direct"]["fallback"]["unaligned"] == 2      # unaligned + device tail
    q = os.path.join(shm_dir, "w.bin")
    storage.write(q, 0, data)
    assert np.array_equal(np.fromfile(q, np.uint8), data)
    assert storage.stats()["o_direct"]["fallback"]["fs_refuses_o_direct"] == 1
