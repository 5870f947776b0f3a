"""Shared fixtures and helpers: ``hal`` runs a test on both HALs (real threads, and the seeded
sim); the ``wait_until`` fixture is the one way a test waits for something to happen (no sleeps as
synchronization, no hand-written poll loops)."""
import os
import sys
import time

import pytest

# The reference device workloads (test and benchmark scaffolding, not part of the package) are
# imported as ``workloads`` by tests/device and tests/acceptance alike
_DEVICE_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device")
if _DEVICE_TESTS not in sys.path:
    sys.path.insert(0, _DEVICE_TESTS)

HALS = ["threads", "sim"]

_GPU_WHY: list = []        # cached: why the cuda target is not usable here ("" = it is)


def _no_gpu_why() -> str:
    if not _GPU_WHY:
        from ggmk.device.host import resolve_target
        why = ""
        if resolve_target("auto") != "cuda":
            from ggmk.drivers.gpu import cuda
            why = cuda.available(0)[1] or "the cuda target is not usable here"
        _GPU_WHY.append(why)
    return _GPU_WHY[0]


def pytest_runtest_setup(item):
    """The ``cuda`` marker's promise, in one place: a test marked ``cuda`` (or a ``cuda``
    parameter of one) needs a real NVIDIA GPU and is skipped, with the reason, without one."""
    if item.get_closest_marker("cuda") is not None:
        why = _no_gpu_why()
        if why:
            pytest.skip(f"no usable NVIDIA GPU here: {why}")


@pytest.fixture(params=HALS)
def hal(request):
    return request.param


def _wait_until(predicate, timeout: float = 10.0, *, step=None) -> bool:
    """Call ``step()`` (if given, e.g. a driver's ``service``) and poll ``predicate()`` until it
    holds or ``timeout`` seconds pass; return the predicate's last value. A test asserts on the
    result: ``assert wait_until(lambda: d.updates, step=d.service)``."""
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while True:
        if step is not None:
            step()
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        if step is None:               # nothing to drive: back off instead of spinning
            time.sleep(delay)
            delay = min(delay * 2, 0.01)


@pytest.fixture
def wait_until():
    """The ``_wait_until`` helper, as a fixture (conftest modules are not importable by name)."""
    return _wait_until


@pytest.fixture
def open_display(request, tmp_path):
    """Factory: open_display(displays=[(w, h)], ...) -> DisplayModule over a real virtio-gpu back
    end (QEMU's vhost-user-gpu, one process per test in tmp_path), closed and killed at teardown.
    Skips the test when the back end is not installed (`make system-deps` installs it)."""
    from ggmk.drivers.virtio.backend import BackendNotFound, find_backend
    from ggmk.modules.display import DisplayModule

    try:
        find_backend()
    except BackendNotFound:
        pytest.skip("QEMU's vhost-user-gpu is not installed (/usr/lib/qemu/vhost-user-gpu); "
                    "`apt-get install --no-install-recommends qemu-system-gui` or `make system-deps`")

    def make(displays=((320, 200),), **kw):
        d = DisplayModule.open(displays, workdir=tmp_path, **kw)

        def fin():
            d.close()
            proc = d.gpu.backend.proc
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        request.addfinalizer(fin)
        return d
    return make
