"""``Storage.read(timeout=)`` and ``Storage.write(timeout=)`` that time out (audit s18, storage
defect 1 after the read_batch fix): they raised TimeoutError while the I/O went on (a queued
write ran later, reading a source buffer the caller had changed; a running read went on
writing into the caller's array) and nobody learnt its outcome. Now the I/O is cancelled and
ended before the TimeoutError is raised: not started, it ends CANCELLED naming the timeout (the
caller's thread ends it: the workers may be busy for long); running, it stops at its next
chunk boundary. The error's ``result`` is the finished IoResult, and nothing touches the
caller's buffer after the call."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from storage_helpers import make_file

from ggmk.core.alloc import Arena
from ggmk.storage import IoState, ReadRequest, Storage

WAIT = 30.0
CH = 4096                                  # direct_chunk: the hook runs between chunks
RUN = 1.0                                  # long enough for an I/O to start on a busy box


def _cancelled(st) -> bool:
    with st._cond:
        return any(io.cell.state is IoState.TERMINATE_REQ for io in st._live)


class _Hold:
    """A chunk_hook that holds the first I/O to reach it (``running`` set) until ``go`` or,
    with ``until_cancelled``, until an I/O of the storage is cancelled: a chunk in flight when
    the timeout runs out (a slow pread / pwrite) that then completes."""

    def __init__(self, until_cancelled: bool = False):
        self.running, self.go = threading.Event(), threading.Event()
        self.st = None
        self._first, self._until = True, until_cancelled

    def __call__(self, index, pos):
        if self._first:
            self._first = False
            self.running.set()
            while not self.go.wait(0.005):
                if self._until and _cancelled(self.st):
                    return


def _storage(hook, **kw):
    st = Storage(workers=1, direct_chunk=CH, bounce_size=CH, bounce_count=2, chunk_hook=hook,
                 **kw)
    hook.st = st
    return st


def _busy(st, hook, p):
    """Hold the only worker in a read of ``p`` (the next I/O waits in the queue)."""
    held = st.submit([ReadRequest(p, 0, 16 * CH, dest="device")])
    assert hook.running.wait(WAIT)
    return held


def _timeout(call, *a, **k):
    with pytest.raises(TimeoutError) as ei:
        call(*a, **k)
    return ei.value


def test_queued_write_that_times_out_is_cancelled_and_never_reads_the_buffer(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(1 << 20, np.uint8))
    hook = _Hold()
    st = _storage(hook)
    try:
        held = _busy(st, hook, p)
        src = np.full(2 * CH, 0x11, np.uint8)
        err = _timeout(st.write, p, 0, src, timeout=0.05)
        src[:] = 0x99                              # the caller reuses its buffer at once
        r = err.result
        assert r.status == "cancelled" and r.nbytes == 0 and r.regions == []
        assert "write() timed out after 0.05 s: cancelled while queued" in str(r.error)
        assert "cancelled" in str(err) and ".result" in str(err)
        hook.go.set()
        assert held.wait(WAIT)[0].status == "ok"
        assert st.wait_idle(WAIT)
        assert (np.fromfile(p, np.uint8, 2 * CH) == 0).all()    # the write never ran
        s = st.stats()
        assert s["errors"]["cancelled"] == 1 and s["bytes"]["written"] == 0
        assert s["ops"]["write"] == 1 and s["inflight"] == 0
    finally:
        hook.go.set()
        st.close()


def test_running_write_that_times_out_stops_and_says_what_reached_the_file(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(1 << 20, np.uint8))
    hook = _Hold(until_cancelled=True)           # held after its first chunk was written
    st = _storage(hook, o_direct=False)
    try:
        src = np.full(8 * CH, 0x11, np.uint8)
        err = _timeout(st.write, p, CH, src, timeout=RUN)
        src[:] = 0x99
        r = err.result
        assert r.status == "cancelled" and "mid-flight" in str(r.error)
        assert f"write() timed out after {RUN} s" in str(r.error)
        assert r.nbytes == CH and r.error.written == CH           # the first chunk only
        assert r.regions == [(CH, CH, "written")]
        assert f"{CH} of its {8 * CH} bytes reached the file: [{CH}, {2 * CH})" in str(r.error)
        assert st.wait_idle(WAIT)
        f = np.fromfile(p, np.uint8)
        assert (f[CH:2 * CH] == 0x11).all()
        assert (f[2 * CH:] == 0).all() and (f[:CH] == 0).all()  # nothing written after
        s = st.stats()
        assert s["errors"]["cancelled"] == 1 and s["bytes"]["written"] == CH
    finally:
        hook.go.set()
        st.close()


def test_queued_read_into_a_callers_array_that_times_out(tmp_path):
    data = (np.arange(1 << 20) % 251 + 1).astype(np.uint8)
    p = make_file(tmp_path / "f.bin", data)
    hook = _Hold()
    st = _storage(hook)
    try:
        held = _busy(st, hook, p)
        dest = np.full(4 * CH, 0xEE, np.uint8)
        err = _timeout(st.read, p, 0, 4 * CH, dest=dest, timeout=0.05)
        r = err.result
        assert r.status == "cancelled" and r.nbytes == 0 and r.dest is None
        assert "read() timed out after 0.05 s: cancelled while queued" in str(r.error)
        assert st.stats()["inflight"] == 1               # only the held read: ours is over
        hook.go.set()
        held.wait(WAIT)
        assert st.wait_idle(WAIT)
        assert (dest == 0xEE).all()
        assert st.stats()["errors"]["cancelled"] == 1
    finally:
        hook.go.set()
        st.close()


@pytest.mark.parametrize("o_direct", [False, "auto"])
def test_running_read_that_times_out_stops_and_nothing_writes_later(tmp_path, o_direct):
    data = (np.arange(1 << 20) % 251 + 1).astype(np.uint8)
    p = make_file(tmp_path / "f.bin", data)
    hook = _Hold(until_cancelled=True)
    st = _storage(hook, o_direct=o_direct)
    try:
        dest = np.full(16 * CH + 100, 0xEE, np.uint8)       # off by 100: not the direct path
        err = _timeout(st.read, p, 0, 16 * CH, dest=dest, dest_offset=100, timeout=RUN)
        r = err.result
        assert r.status == "cancelled" and "mid-flight" in str(r.error)
        assert r.io_path in ("buffered", "bounce")
        assert r.nbytes == CH and r.error.written == CH       # the chunk that landed
        assert f"{CH} of its {16 * CH} bytes landed in the destination" in str(r.error)
        snap = dest.copy()
        assert np.array_equal(dest[100:100 + CH], data[:CH])
        assert st.wait_idle(WAIT)
        assert np.array_equal(dest, snap) and (dest[100 + CH:] == 0xEE).all()
        s = st.stats()
        assert s["errors"]["cancelled"] == 1 and s["bytes"]["read"] == CH
    finally:
        hook.go.set()
        st.close()


def test_timed_out_arena_read_frees_its_block_before_raising(tmp_path):
    p = make_file(tmp_path / "f.bin", np.zeros(1 << 20, np.uint8))
    arena = Arena(16 << 20)
    hook = _Hold()
    st = _storage(hook, arena=arena)
    try:
        held = _busy(st, hook, p)
        for _ in range(3):
            err = _timeout(st.read, p, 0, 100_000, dest="arena", timeout=0.01)
            assert err.result.status == "cancelled" and err.result.dest is None
        assert arena.live_count() == 0          # freed when each call raised
        hook.go.set()
        held.wait(WAIT)
        assert st.wait_idle(WAIT)
        r = st.read(p, 0, 1000, dest="arena", timeout=WAIT)
        assert arena.live_count() == 1 and r.dest.owned
        r.dest.release()
    finally:
        hook.go.set()
        st.close()
