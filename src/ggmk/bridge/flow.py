"""Per bridge channel flow state: a CPU -> GPU channel's credits, send log and payloads
waiting for device blocks (:class:`Inbound`); a GPU -> CPU channel's order restore and
credits (:class:`Outbound`)."""
from __future__ import annotations

from collections import deque

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.task import FLAG_CHANNEL_MSG

RX0 = ds.BASE + 0x1000              # ingress record types: RX(0) .. RX(0xFFF)
RX1 = ds.BASE + 0x2000
CLEAR_FLAGS = np.uint16(0xFFFF ^ FLAG_CHANNEL_MSG)


class PendingPayload:
    """A CPU -> GPU message with a payload, waiting for its device block."""
    __slots__ = ("rec", "cptr", "n", "dptr", "done", "asked")

    def __init__(self, rec, cptr, n):
        self.rec = rec          # 1-record ingress array
        self.cptr = cptr
        self.n = n
        self.dptr = 0
        self.done = False
        self.asked = False      # its block was asked for (see Bridge._ask_blocks)


class Inbound:
    """A CPU -> GPU bridge channel."""

    def __init__(self, bc, ch, sub, window):
        self.bc = bc
        self.k = bc.k
        self.ch = ch
        self.sub = sub
        self.rx_type = ds.RX(bc.k)
        self.window = window
        # ndarray (ready) or PendingPayload segments, in channel order
        self.fifo: deque = deque()
        self.fifo_n = 0                # records in fifo
        self.waiting = 0               # PendingPayload entries not resolved
        # payload bytes of the PendingPayload entries asked for, unstaged
        self.asked_bytes = 0
        self.unasked = 0               # PendingPayload entries in fifo not asked for yet
        # per GPU kernel (credits, in flight; zeroed when a reset boots a new kernel):
        self.pushed = 0
        self.done = 0                  # ingress tasks finished on the device (ok + fail)
        self.shed = 0                  # ingress records the device dropped at its door
        # what the kernels before the current one did (reset_device adds the dead kernel's
        # counts here): stats() shows base + current, so its counters never go back
        self.base_pushed = 0
        self.base_done = 0
        self.base_shed = 0
        self.crossed = 0
        self.dead = 0
        self.det = False
        # deterministic: messages taken off the bridge ring at the CPU kernel's tick
        # boundaries (``Bridge.det_hold_inbound``), for the next fence, in channel order
        self.det_held: list = []
        self.det_held_n = 0
        # the last records sent to the device (ingress, in send order), kept so that a reset
        # can name what was inside the GPU kernel: at most window + the device channel's
        # capacity can be unfinished there (credits), so that many are kept
        self.sent: deque = deque()
        self.sent_n = 0
        self.log_cap = window + max(int(getattr(bc, "capacity", 0) or 0), 64)

    def inflight(self) -> int:
        # a record dropped at the door never runs: it is neither ok nor fail on the device
        return self.pushed - self.done - self.shed


def grant_due(st) -> int:
    """Credits of a GPU -> CPU channel worth a service record: an eighth of its window."""
    return max(1, st.window // 8)


def near_seq(ref: int, low: np.ndarray) -> np.ndarray:
    """Device channel seqs from their low 32 bits (what a record carries): the values nearest
    ``ref`` (the next seq expected). What is in flight is a credit window around it, far less
    than 2**31; comparing the column itself stalled a GPU -> CPU channel for good after 2**32
    messages (its next seq never came: the record said 0)."""
    d = (low.astype(np.int64) - ref + (1 << 31)) & 0xFFFF_FFFF
    return ref + d - (1 << 31)


class Reorder:
    """GPU -> CPU records that arrived ahead of a sequence gap, as NumPy columns (the device's
    workers forward a channel's messages out of order; restoring the order must not cost a
    Python dict entry per record). Chunks are kept as they come (records, their device channel
    seqs, live mask: False = the message died on the device, its seq only closes the gap) and
    sorted together when a run may be complete: one ``argsort`` per batch."""

    __slots__ = ("recs", "seqs", "live", "n")

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.recs: list = []
        self.seqs: list = []
        self.live: list = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, recs: np.ndarray, seqs: np.ndarray, live: np.ndarray | None = None) -> None:
        self.recs.append(recs)
        self.seqs.append(np.asarray(seqs, np.int64))
        self.live.append(np.ones(len(recs), bool) if live is None else live)
        self.n += len(recs)

    def live_n(self) -> int:
        """Live records held (not the dead markers that only close a gap)."""
        return sum(int(x.sum()) for x in self.live)

    def merged(self):
        """(records, seqs, live) of everything held, sorted by seq (kept merged)."""
        if len(self.recs) > 1 or (self.recs and len(self.seqs[0]) > 1
                                  and (np.diff(self.seqs[0]) < 0).any()):
            recs = T.concat(self.recs) if len(self.recs) > 1 else self.recs[0]
            seqs = np.concatenate(self.seqs) if len(self.seqs) > 1 else self.seqs[0]
            live = np.concatenate(self.live) if len(self.live) > 1 else self.live[0]
            o = np.argsort(seqs, kind="stable")
            self.recs, self.seqs, self.live = [T.select(recs, o)], [seqs[o]], [live[o]]
        if not self.recs:
            return T.empty(0), np.zeros(0, np.int64), np.zeros(0, bool)
        return self.recs[0], self.seqs[0], self.live[0]

    def pop_run(self, nxt: int):
        """Take the run of consecutive seqs starting at ``nxt``: (live records of it, the seq
        after it). A seq seen twice (cannot happen: the device numbers each message once) would
        end the run."""
        recs, seqs, live = self.merged()
        if not len(seqs) or seqs[0] != nxt:
            return None, nxt
        k = len(seqs)
        bad = np.flatnonzero(seqs != nxt + np.arange(k, dtype=np.int64))
        if len(bad):
            k = int(bad[0])
        run, rl = recs[:k], live[:k]
        if k == len(seqs):
            self.clear()
        else:
            self.recs, self.seqs, self.live = [recs[k:]], [seqs[k:]], [live[k:]]
            self.n = len(seqs) - k
        if not rl.all():
            run = T.select(run, rl)
        return run, nxt + k


class Outbound:
    """A GPU -> CPU bridge channel."""

    def __init__(self, bc, ch, window):
        self.bc = bc
        self.k = bc.k
        self.ch = ch
        self.window = window
        self.next_seq = 1
        self.reorder = Reorder()      # ahead of a sequence gap (columns)
        self.ready: deque = deque()    # arrays in channel order, waiting for room
        self.ready_n = 0
        # in channel order, before ``ready``: records whose payloads are still in the device
        # arena (a lossless channel's, from the first that found no host memory on)
        self.uncopied: deque = deque()
        self.uncopied_n = 0
        self.grant = 0
        # credits granted ahead for live records held in ``reorder`` (see Bridge._hold_credit)
        self.pregranted = 0
        self.crossed = 0
        self.dead = 0
        self.full = 0
        self.det = False
        self.fence_buf: list = []      # deterministic: this epoch's records (any order)
