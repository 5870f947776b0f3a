"""``read_batch(wait=True)`` that times out (audit s18, storage defect 2): the caller got a
TimeoutError while the batch ran on, later writing into a destination the caller may have
reused, its reads' outcomes known to nobody. Now the reads not started end CANCELLED (naming
the timeout), the ones already running are waited for, and the TimeoutError hands back the
finished batch (``.batch``): every read completed or was cancelled with a reason, and nothing
writes into the destination after the call returns."""
from __future__ import annotations

import threading

import numpy as np
from storage_helpers import make_file

from ggmk.storage import Storage
from ggmk.storage.fast import CANCELLED, OK

WAIT = 30.0


def test_timeout_behind_a_busy_pool_cancels_every_read_and_nothing_writes_later(tmp_path):
    data = (np.arange(1 << 16) % 253).astype(np.uint8)
    p = make_file(tmp_path / "a.bin", data)
    entered, gate = threading.Event(), threading.Event()

    def hold(b):                       # the only fast thread stays in here until gate is set
        entered.set()
        gate.wait(WAIT)

    st = Storage(workers=1, fast_threads=1)
    try:
        first = st.read_batch(p, [0], 4096, wait=False, on_done=hold)
        assert entered.wait(WAIT)
        dest = np.full(16 * 4096, 0xEE, np.uint8)
        try:
            st.read_batch(p, np.arange(16) * 4096, 4096, dest=dest, timeout=0.05)
        except TimeoutError as e:
            err = e
        else:
            raise AssertionError("read_batch behind a held pool did not time out")
        b = err.batch
        assert b.done() and b.count(CANCELLED) == 16           # every read has its outcome
        assert "16 not started were cancelled" in str(err)
        for i, e in b.errors():
            assert e.kind == "cancelled" and "timed out after 0.05 s" in str(e)
            assert e.path == str(p) and e.offset == i * 4096
        assert (b.nbytes == 0).all() and (dest == 0xEE).all()
        gate.set()
        assert first.wait(WAIT).status[0] == OK
        assert st.wait_idle(WAIT)
        assert (dest == 0xEE).all()     # the pool's queued turn at the batch read nothing
        s = st.stats()
        assert s["errors"]["cancelled"] == 16 and s["bytes"]["read"] == 4096
    finally:
        gate.set()
        st.close()


def test_timeout_mid_batch_waits_for_running_reads_and_accounts_each(tmp_path):
    data = (np.arange(1 << 20) % 251).astype(np.uint8)
    p = make_file(tmp_path / "b.bin", data)
    n, ln = 100_000, 512
    offs = (np.arange(n, dtype=np.int64) * 4099) % ((1 << 20) - ln)
    dest = np.full(n * ln, 0xEE, np.uint8)
    with Storage(workers=1, fast_threads=2) as st:
        st.warm_up()
        try:
            st.read_batch(p, offs, ln, dest=dest, timeout=0)
        except TimeoutError as e:
            b = e.batch
        else:
            raise AssertionError("100000 reads finished in no time")
        assert b.done()
        snap = dest.copy()
        ok, cancelled = b.status == OK, b.status == CANCELLED
        assert (ok | cancelled).all() and cancelled.any()       # nothing half-known
        for i in np.flatnonzero(ok)[:: max(1, ok.sum() // 200)]:
            assert np.array_equal(b.data(int(i)), data[offs[i]:offs[i] + ln])
        assert (dest.reshape(n, ln)[cancelled] == 0xEE).all()  # cancelled: never written
        assert (b.nbytes[cancelled] == 0).all() and (b.nbytes[ok] == ln).all()
        assert st.wait_idle(WAIT)
        assert np.array_equal(dest, snap)                      # nothing wrote afterwards
        s = st.stats()
        assert s["errors"]["cancelled"] == int(cancelled.sum())
        assert s["bytes"]["read"] == int(ok.sum()) * ln


def test_timeout_of_a_batch_in_stages_ends_every_stage(tmp_path):
    data = (np.arange(1 << 18) % 241).astype(np.uint8)
    paths = [make_file(tmp_path / f"s{k}.bin", data) for k in range(4)]
    n, ln = 40_000, 512
    offs = (np.arange(n, dtype=np.int64) * 4099) % ((1 << 18) - ln)
    fids = np.arange(n) % 4
    with Storage(workers=1, fast_threads=2) as st:
        st._files_per_stage = 1                     # four stages, one file each
        st.warm_up()
        try:
            st.read_batch(paths, offs, ln, file_ids=fids, timeout=0)
        except TimeoutError as e:
            b = e.batch
        else:
            raise AssertionError("40000 reads in four stages finished in no time")
        assert b.done()
        ok, cancelled = b.status == OK, b.status == CANCELLED
        assert (ok | cancelled).all() and cancelled.any()
        assert st.wait_idle(WAIT)
        s = st.stats()
        assert s["errors"]["cancelled"] == int(cancelled.sum())
        assert s["bytes"]["read"] == int(ok.sum()) * ln
