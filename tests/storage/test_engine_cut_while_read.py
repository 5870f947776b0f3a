"""A file cut (truncated by another writer) while it is read: the read reports exactly what the
file had, ``short`` with the true length, on every read form.

The defect (audit s19): a read whose hole map was taken before the cut zero-filled the hole,
then found the end of the file at the next data region's start and said ``short`` with that
offset: ``nbytes`` past the file's real end (a cut inside the hole), bytes that were never in
the file counted as read, on the direct, bounce, buffered and device paths alike. Now a short
read ends where the file ends.

read_batch reads no hole map (the kernel returns a hole's zeros, counted exactly): its count
was right; kept here as a regression test of the same cut, with what it may and may not write.

The cut is a real truncate at the seam where the read starts reading the file (after sizing it
and mapping its holes): the first ``pread`` (``os.preadv``, or the fast pool's native loop)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from storage_helpers import make_file, punch_hole

from ggmk.storage import DeviceDest, Storage, _native, aligned_empty
from ggmk.storage.fast import OK, SHORT

P = 4096


@pytest.fixture
def cut_at_first_read(monkeypatch):
    """``cut_at_first_read(path, size)``: the first pread of any file (buffered or O_DIRECT,
    Python or native) truncates ``path`` to ``size`` first."""
    plan = {}
    real_preadv, real_native = os.preadv, _native.read_range

    def cut():
        if plan and not plan.get("done"):
            plan["done"] = True
            os.truncate(plan["path"], plan["size"])

    def preadv(*a, **k):
        cut()
        return real_preadv(*a, **k)

    def read_range(*a):
        cut()
        return real_native(*a)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(_native, "read_range", read_range)

    def arm(path, size):
        plan.update(path=path, size=size)
        return plan
    return arm


@pytest.fixture
def holed(tmp_path):
    """12 pages: data, a hole over pages 4-7, data (its hole map: data, hole, data)."""
    data = (np.arange(12 * P) % 251 + 1).astype(np.uint8)
    p = make_file(tmp_path / "holed.bin", data)
    punch_hole(p, 4 * P, 4 * P)
    data[4 * P:8 * P] = 0
    return p, data


@pytest.mark.parametrize("cut", [5 * P + 7, 4 * P, 6 * P])     # inside the hole, at its start
@pytest.mark.parametrize("form", ["direct", "bounce", "buffered", "device"])
def test_a_cut_inside_a_hole_reads_short_with_the_true_length(holed, cut_at_first_read,
                                                               form, cut):
    p, data = holed
    kw = {"o_direct": False} if form == "buffered" else {}
    if form == "device":
        dest = DeviceDest.alloc(12 * P)                # cpu target: the device's bounce path
        view = dest.array
    else:
        view = aligned_empty(13 * P)[16 if form == "bounce" else 0:][:12 * P]
        dest = view
    view[:] = 0xEE
    plan = cut_at_first_read(p, cut)
    with Storage(**kw) as st:
        r = st.read(p, 0, 12 * P, dest=dest)
        assert plan.get("done") and os.path.getsize(p) == cut
        assert r.io_path == ("buffered" if form == "buffered" else
                             "direct" if form == "direct" else "bounce")
        assert r.holes == 1                            # the map was taken before the cut
        assert r.status == "short" and r.nbytes == cut, (r.status, r.nbytes)
        assert np.array_equal(view[:cut], data[:cut])
        assert st.stats()["bytes"]["read"] == cut


@pytest.mark.parametrize("cut", [5 * P + 7, 2 * P, 0])
def test_read_batch_cut_after_sizing_reads_short_with_the_true_length(tmp_path,
                                                                      cut_at_first_read, cut):
    data = (np.arange(12 * P) % 251 + 1).astype(np.uint8)
    p = make_file(tmp_path / "f.bin", data)
    dest = aligned_empty(13 * P)
    dest[:] = 0xEE
    plan = cut_at_first_read(p, cut)
    with Storage() as st:
        # read 0 crosses the cut (O_DIRECT straight into dest: the file was sized before it),
        # read 1 lies before it
        b = st.read_batch(p, [0, 0], [10 * P, P], dest=dest, dest_offsets=[0, 10 * P])
    assert plan.get("done") and b.direct[0]
    assert b.status[0] == SHORT and b.nbytes[0] == cut
    assert np.array_equal(b.data(0), data[:cut])
    assert b.status[1] == (OK if cut >= P else SHORT) and b.nbytes[1] == min(cut, P)
    assert np.array_equal(b.data(1), data[:min(cut, P)])
    # nothing outside a read's own range is written (past nbytes inside it, O_DIRECT may have
    # put the zeros of the cut: the kernel fills a transfer past the new end with them)
    assert (dest[10 * P + min(cut, P):] == 0xEE).all()
