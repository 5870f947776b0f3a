"""The GPU kernel's trace ring protocol, host half (``host.drain_trace_ring``), against writer
threads that follow the device half (``trace_event`` in ``kernel_src``: reserve a position,
clear the slot's sequence, write the 32-byte record, set the sequence to position + 1) on a
small ring, so it wraps while the host drains: every record is drained intact and in order,
or counted lost; none is drained twice or half overwritten. No kernel is compiled here."""
import threading
import types

import numpy as np

from ggmk.device import host, layout

CAP = 64


def _record(p: int) -> list:
    """Every word derived from the position: a record mixing two writers shows."""
    return [1000 + p, (2 | (p & 0xFFFF) << 16) | (p << 32), p | (p << 32), (p % 7) | (p << 32)]


def _check(recs, start_after: int) -> list:
    pos = []
    for r in recs:
        p = int(r["ts"]) - 1000
        assert int(r["arg0"]) == p & 0xFFFFFFFF and int(r["arg1"]) == p
        assert int(r["task_type"]) == p and int(r["tenant"]) == p & 0xFFFF
        assert int(r["worker"]) == p % 7 and int(r["n"]) == p and int(r["event"]) == 2
        pos.append(p)
    assert pos == sorted(pos) and len(set(pos)) == len(pos)
    assert not pos or pos[0] > start_after
    return pos


def test_drain_sees_complete_records_in_order_and_waits_for_a_reserved_slot():
    tr = np.zeros(CAP * layout.TW, np.int64)
    seq = np.zeros(CAP, np.int64)

    def write(p, publish=True):
        s = p % CAP
        seq[s] = 0
        tr[s * layout.TW:(s + 1) * layout.TW] = _record(p)
        if publish:
            seq[s] = p + 1

    for p in range(5):
        write(p)
    recs, cur, lost, pending = host.drain_trace_ring(tr, seq, 0)
    assert [int(x) for x in recs["ts"] - 1000] == [0, 1, 2, 3, 4]   # positions 0..4
    assert (cur, lost, pending) == (5, 0, None)
    _check(recs, -1)
    write(5, publish=False)            # reserved, being written
    write(6)
    recs, cur, lost, pending = host.drain_trace_ring(tr, seq, cur)
    assert len(recs) == 0 and (cur, lost, pending) == (5, 0, 6)  # waits for position 5
    seq[5] = 6
    recs, cur, lost, pending = host.drain_trace_ring(tr, seq, cur)
    assert _check(recs, 4) == [5, 6] and (cur, lost, pending) == (7, 0, None)
    # the host fell behind by more than the ring: the overwritten ones are counted lost
    for p in range(7, 7 + 3 * CAP):
        write(p)
    recs, cur, lost, pending = host.drain_trace_ring(tr, seq, cur)
    assert len(recs) == CAP and lost == 2 * CAP and cur == 7 + 3 * CAP
    assert _check(recs, 6) == list(range(7 + 2 * CAP, 7 + 3 * CAP))
    recs, cur2, lost, pending = host.drain_trace_ring(tr, seq, cur)
    assert len(recs) == 0 and cur2 == cur and lost == 0


def _kernel_view(tr, seq):
    """Just what ``DeviceKernel.drain_trace`` uses of a kernel (its ring cursor and lock)."""
    return types.SimpleNamespace(_h={"tr": tr, "trseq": seq}, _tr_cursor=0, _tr_pending={},
                                 _tr_lock=threading.Lock(), trace_lost=0,
                                 _check=lambda: None)


def test_writers_wrap_the_ring_while_the_host_drains():
    """3 writer threads, 20,000 records through a 64-slot ring, a drainer thread
    (``DeviceKernel.drain_trace``): drained + lost == written, every drained record intact,
    positions strictly increasing. (Writers a lap apart can race for one slot and the older
    one write it last: the newer position never appears, and drain_trace skips it after
    ``TRACE_STALL_S`` as lost; without that the drain would wait for it forever.)"""
    tr = np.zeros(CAP * layout.TW, np.int64)
    seq = np.zeros(CAP, np.int64)
    total = 20_000
    head = [0]
    head_lock = threading.Lock()
    writers_done = threading.Event()
    got: list = []
    lost_total = [0]
    errors: list = []

    def writer():
        while True:
            with head_lock:                # the device's atomic fetch-add
                p = head[0]
                if p >= total:
                    return
                head[0] += 1
            s = p % CAP
            seq[s] = 0
            tr[s * layout.TW:(s + 1) * layout.TW] = _record(p)
            seq[s] = p + 1

    k = _kernel_view(tr, seq)

    def drainer():
        try:
            while True:
                done = writers_done.is_set()
                got.append(_check(host.DeviceKernel.drain_trace(k), -1))
                if done and k._tr_cursor == total:
                    lost_total[0] = k.trace_lost
                    return
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)

    d = threading.Thread(target=drainer)
    ws = [threading.Thread(target=writer) for _ in range(3)]
    d.start()
    for w in ws:
        w.start()
    for w in ws:
        w.join(120)
    writers_done.set()
    d.join(120)
    assert not d.is_alive() and not errors, errors
    pos = [p for part in got for p in part]
    assert pos == sorted(pos) and len(set(pos)) == len(pos)
    assert len(pos) + lost_total[0] == total            # accounting: nothing unaccounted
    assert pos and pos[-1] == total - 1


def test_drain_trace_skips_a_slot_left_unwritten(monkeypatch):
    """A worker killed between reserving a slot and writing it: ``DeviceKernel.drain_trace``
    waits ``TRACE_STALL_S`` (here: not at all), then counts it lost and drains past it."""
    monkeypatch.setattr(host, "TRACE_STALL_S", -1.0)
    tr = np.zeros(CAP * layout.TW, np.int64)
    seq = np.zeros(CAP, np.int64)
    for p in (0, 2, 3):                # position 1 never written
        tr[p * layout.TW:(p + 1) * layout.TW] = _record(p)
        seq[p] = p + 1
    k = _kernel_view(tr, seq)
    drain = host.DeviceKernel.drain_trace
    assert _check(drain(k), -1) == [0]
    assert len(drain(k)) == 0 and k.trace_lost == 0            # first seen unwritten
    assert len(drain(k)) == 0 and k.trace_lost == 1            # stalled: skipped, lost
    assert _check(drain(k), 1) == [2, 3] and k._tr_cursor == 4


def test_a_slot_won_by_the_older_of_two_writers_a_lap_apart(monkeypatch):
    """Position 1 reserved, the ring wraps, position 1 + CAP writes the same slot, then the
    slow writer of position 1 finishes last: 1 + CAP never appears and is skipped as lost
    once stalled; every position is drained or lost, once."""
    monkeypatch.setattr(host, "TRACE_STALL_S", -1.0)
    tr = np.zeros(CAP * layout.TW, np.int64)
    seq = np.zeros(CAP, np.int64)

    def write(p):
        s = p % CAP
        seq[s] = 0
        tr[s * layout.TW:(s + 1) * layout.TW] = _record(p)
        seq[s] = p + 1

    k = _kernel_view(tr, seq)
    drain = host.DeviceKernel.drain_trace
    write(0)
    assert _check(drain(k), -1) == [0]
    for p in range(2, CAP + 5):
        write(p)
    write(1)                                   # the slow writer of position 1, last
    got = _check(drain(k), 0)
    # positions 1..4 are older than the ring's last lap: lost (1's record was, in fact, there);
    # then up to the slot that position 1 + CAP never got
    assert got == list(range(5, CAP + 1)) and k.trace_lost == 4
    assert len(drain(k)) == 0 and k.trace_lost == 4        # first seen unwritten
    assert len(drain(k)) == 0 and k.trace_lost == 5        # stalled: skipped, lost
    assert _check(drain(k), CAP + 1) == list(range(CAP + 2, CAP + 5))
    assert 1 + len(got) + (CAP + 5 - (CAP + 2)) + k.trace_lost == CAP + 5
