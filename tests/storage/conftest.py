"""Fixtures for the storage tests: real files in temp dirs on a file system that takes
O_DIRECT (ext4 here) and on tmpfs (which refuses it)."""
from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import threading

import numpy as np
import pytest
from storage_helpers import odirect_ok

from ggmk.storage import Storage
from ggmk.storage import engine

@pytest.fixture
def disk_dir(tmp_path):
    """A temp dir on a file system that accepts O_DIRECT."""
    if not odirect_ok(tmp_path):
        pytest.skip(f"{tmp_path} does not accept O_DIRECT")
    return tmp_path


@pytest.fixture
def shm_dir(tmp_path, monkeypatch):
    """A temp dir on a file system that refuses O_DIRECT: tmpfs (before Linux 6.6 it refuses
    O_DIRECT), else a ramfs mounted here (root only; ramfs has no direct I/O), else, as a last
    resort, tmp_path with O_DIRECT opens made to fail with EINVAL the way tmpfs's do."""
    if os.path.isdir("/dev/shm"):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            if not odirect_ok(d):
                yield d
                return
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)],
                                            capture_output=True).returncode == 0:
        try:
            assert not odirect_ok(mnt)
            yield str(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        return
    real_open = os.open

    def refuse_direct(path, flags, *a, **k):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument (O_DIRECT refused)", path)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(engine.os, "open", refuse_direct)
    yield str(tmp_path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def storage():
    st = Storage(workers=3, bounce_size=64 << 10, bounce_count=4, segment_size=256 << 10,
                 direct_chunk=128 << 10)
    yield st
    st.close(cancel=True)


@pytest.fixture(autouse=True)
def _skip_cuda_without_gpu(request):
    """``cuda``-marked tests here need an NVIDIA driver and device."""
    if request.node.get_closest_marker("cuda") and not (
            os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")):
        pytest.skip("needs an NVIDIA GPU (cuda marker)")


class HeldPath:
    """A path whose first ``os.fspath`` blocks until ``go`` is set (``entered`` says it got
    there): holds a storage call right after its closed check, so a test can close the
    storage in between."""

    def __init__(self, path):
        self.path = str(path)
        self.entered, self.go = threading.Event(), threading.Event()
        self.calls = 0

    def __fspath__(self):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.go.wait(30)
        return self.path


@pytest.fixture
def held_path():
    """``held_path(path)``: a :class:`HeldPath`."""
    return HeldPath
