"""Storage errors: each a StorageError with a kind, naming file and range; an owned
destination is never left half-owned."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from storage_helpers import make_file

from ggmk import ALLOC_FAIL
from ggmk.core.alloc import Arena
from ggmk.storage import ReadRequest, Storage, StorageError


def test_missing_file(storage, tmp_path):
    p = tmp_path / "nope.bin"
    with pytest.raises(StorageError) as ei:
        storage.read(p, 100, 50)
    e = ei.value
    assert e.kind == "not_found" and e.errno == 2 and e.path == str(p)
    assert str(p) in str(e) and "[100, 150)" in str(e)
    assert storage.stats()["errors"]["not_found"] == 1


def test_dest_too_small(storage, disk_dir, rng):
    p = make_file(disk_dir / "f.bin", rng.integers(0, 256, 10_000, dtype=np.uint8))
    buf = np.zeros(100, np.uint8)
    with pytest.raises(StorageError, match=r"dest_too_small: read .*f\.bin \[0, 200\)"):
        storage.read(p, 0, 200, dest=buf)
    r = storage.submit([ReadRequest(p, 0, 50, dest=buf, dest_offset=60)]).wait(5)[0]
    assert r.error.kind == "dest_too_small" and "room for 40 bytes" in str(r.error)
    assert (buf == 0).all()
    assert storage.stats()["errors"]["dest_too_small"] == 2


def test_arena_full_alloc_fail(disk_dir, rng):
    p = make_file(disk_dir / "f.bin", rng.integers(0, 256, 200_000, dtype=np.uint8))
    arena = Arena(4 << 20)
    held = []
    while True:                               # fill the largest bin (nothing spills past it)
        ptr = arena.alloc(100 << 10)
        if not ptr:
            break
        held.append(ptr)
    with Storage(arena=arena) as st:
        with pytest.raises(StorageError) as ei:
            st.read(p, 0, 100 << 10, dest="arena")
        assert ei.value.kind == "alloc_fail" and ei.value.code == ALLOC_FAIL
        assert "f.bin" in str(ei.value) and f"[0, {100 << 10})" in str(ei.value)
        arena.release(held.pop())
        r = st.read(p, 0, 100 << 10, dest="arena")     # room again: the caller owns it
        assert r.dest.owned and arena.refcount(r.dest.ptr) == 1
        r.dest.release()
        assert st.stats()["errors"]["alloc_fail"] == 1


_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, {src!r})
    from ggmk.storage import Storage, StorageError
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "nobody":
        os.setgid(65534); os.setuid(65534)
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    st = Storage(workers=1)
    try:
        if mode == "nobody":
            st.read(path, 0, 10)
        else:
            st.write(path, 0, bytes(2 << 20))
        print(json.dumps({{"ok": True}}))
    except StorageError as e:
        print(json.dumps({{"kind": e.kind, "errno": e.errno, "msg": str(e)}}))
    st.close()
""")


def _child(mode, path):
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(src=os.path.abspath(src)), mode,
                          str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_permission_denied(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(b"x" * 100)
    os.chmod(p, 0)
    if os.geteuid() != 0:
        with pytest.raises(StorageError) as ei, Storage() as st:
            st.read(p, 0, 10)
        assert ei.value.kind == "permission"
        return
    # root bypasses file modes: read as `nobody` in a child process
    os.chmod(tmp_path, 0o755)
    got = _child("nobody", p)
    assert got.get("kind") == "permission" and got["errno"] == 13, got
    assert "secret.bin" in got["msg"] and "[0, 10)" in got["msg"]


def test_disk_full_enospc(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a 1 MiB tmpfs (needs root); see test_file_too_large_efbig")
    try:
        with Storage() as st:
            with pytest.raises(StorageError) as ei:
                st.write(mnt / "big.bin", 0, np.ones(2 << 20, np.uint8))
            assert ei.value.kind == "no_space" and ei.value.errno == 28
            assert "big.bin" in str(ei.value) and f"[0, {2 << 20})" in str(ei.value)
            assert st.stats()["errors"]["no_space"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_file_too_large_efbig(tmp_path):
    """RLIMIT_FSIZE in a child: writes past it fail with EFBIG (SIGXFSZ ignored)."""
    got = _child("fsize", tmp_path / "big.bin")
    assert got.get("kind") == "file_too_large" and got["errno"] == 27, got
    assert "big.bin" in got["msg"]


def _gate():
    started, go = threading.Event(), threading.Event()

    def hook(index, pos):
        if not started.is_set():
            started.set()
            assert go.wait(30)
    return started, go, hook


def test_cancel_mid_flight_releases_owned_dest(disk_dir, rng):
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "c.bin", data)
    arena = Arena(8 << 20)
    started, go, hook = _gate()
    with Storage(workers=2, arena=arena, bounce_size=4096, chunk_hook=hook) as st:
        b = st.submit([ReadRequest(p, 0, 120_000, dest="arena")])
        assert started.wait(30)
        assert arena.live_count() == 1                  # allocated, in flight
        assert b.cancel() == 1
        go.set()
        r = b.wait(30)[0]
        assert r.status == "cancelled" and r.error.kind == "cancelled"
        assert "mid-flight" in str(r.error) and "[0, 120000)" in str(r.error)
        assert r.dest is None and arena.live_count() == 0     # released, not half-owned
        s = st.stats()
        assert s["errors"]["cancelled"] == 1
        assert s["states"]["io"]["IN_PROGRESS->TERMINATE_REQ"] == 1
        assert s["states"]["io"]["TERMINATE_REQ->TERMINATED"] == 1
        assert b.cancel() == 0                          # finished: nothing to cancel


def test_cancel_while_queued(disk_dir, rng):
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    p = make_file(disk_dir / "q.bin", data)
    started, go, hook = _gate()
    with Storage(workers=1, max_batch=1, bounce_size=4096, chunk_hook=hook) as st:
        b = st.submit([ReadRequest(p, 1, 50_000), ReadRequest(p, 0, 4096)])
        assert started.wait(30)
        second = b._ios[1]
        assert second.cancel()
        go.set()
        r0, r1 = b.wait(30)
        assert r0.status == "ok" and np.array_equal(r0.data(), data[1:50_001])
        assert r1.status == "cancelled" and "while queued" in str(r1.error)
        assert st.stats()["states"]["io"]["READY->TERMINATE_REQ"] == 1
