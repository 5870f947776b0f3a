"""Storage call arguments the nvme module's storage layer checks up front (audit s17):
``timeout`` of read()/write()/read_batch(), and read_batch's ``wait`` and ``on_done``. Before,
a bad one was noticed only after the I/O had started (timeout="1": a TypeError from a
comparison, the batch running on with nobody holding it; timeout=-1: a TimeoutError), or not
at all (wait="no" waited; on_done=5 failed later in a storage thread)."""
from __future__ import annotations

import numpy as np
import pytest

from ggmk.storage import Storage


@pytest.fixture
def st():
    s = Storage(workers=2, fast_threads=2)
    yield s
    s.close()


def _nothing_started(s: Storage, before: dict) -> None:
    assert s.stats()["batches"] == before["batches"]
    assert s._fast_inflight == 0 and not s._live and not s._pending


def test_bad_timeout_wait_on_done_refused_before_any_io(tmp_path, st):
    p = tmp_path / "a.bin"
    np.arange(10_000, dtype=np.uint8).tofile(p)
    before = st.stats()
    for bad in (-1, "1", True, float("nan")):
        with pytest.raises(ValueError) as ei:
            st.read_batch(p, [0, 100], 10, timeout=bad)
        assert "read_batch()" in str(ei.value) and f"timeout={bad!r}" in str(ei.value)
        assert "seconds >= 0" in str(ei.value)
        with pytest.raises(ValueError) as ei:
            st.read(p, 0, 10, timeout=bad)
        assert "read()" in str(ei.value) and f"timeout={bad!r}" in str(ei.value)
        with pytest.raises(ValueError) as ei:
            st.write(tmp_path / "w.bin", 0, b"abc", timeout=bad)
        assert "write()" in str(ei.value) and f"timeout={bad!r}" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        st.read_batch(p, [0], 10, wait="no")
    assert "wait='no'" in str(ei.value) and "True or False" in str(ei.value)
    with pytest.raises(TypeError) as ei:
        st.read_batch(p, [0], 10, on_done=5)
    assert "on_done" in str(ei.value) and "int 5" in str(ei.value)
    _nothing_started(st, before)
    assert not (tmp_path / "w.bin").exists()
    # the good ones still work
    b = st.read_batch(p, [0, 100], 10, timeout=30, wait=np.bool_(True), on_done=lambda b: None)
    assert bytes(b.data(1)) == bytes(range(100, 110))
    assert st.read(p, 5, 3, timeout=0.0 + 30).data().tolist() == [5, 6, 7]
