"""Fixtures for the virtio-gpu tests: each test gets its own vhost-user-gpu process (it serves one
connection) in its tmp_path, and the process is always killed at teardown."""
from __future__ import annotations

import os

import pytest

from ggmk.drivers.virtio.backend import BackendNotFound, find_backend

try:
    BACKEND = find_backend()
except BackendNotFound:
    BACKEND = None

needs_backend = pytest.mark.skipif(
    BACKEND is None,
    reason="QEMU's vhost-user-gpu is not installed (/usr/lib/qemu/vhost-user-gpu); "
           "`apt-get install --no-install-recommends qemu-system-gui` or `make system-deps`")


def _launch(request, tmp_path, **kw):
    from ggmk.drivers.virtio.gpu import VirtioGpu

    gpu = VirtioGpu.launch(workdir=tmp_path, timeout=kw.pop("timeout", 5.0), **kw)

    def fin():
        gpu.close()
        if gpu.backend is not None and gpu.backend.proc.poll() is None:
            gpu.backend.kill()
            gpu.backend.proc.wait(5)
    request.addfinalizer(fin)
    return gpu


@pytest.fixture
def launch_gpu(request, tmp_path):
    """Factory: launch_gpu(monitors=[...], timeout=...) -> VirtioGpu, closed at teardown."""
    return lambda monitors=None, **kw: _launch(request, tmp_path, monitors=monitors, **kw)
