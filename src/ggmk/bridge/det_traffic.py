"""Deterministic bridge channels: what the bridge holds and moves at tick fences
(:class:`~ggmk.bridge.fences.Fences` drives these)."""
from __future__ import annotations

import hashlib

import numpy as np

from ggmk import task as T
from ggmk.bridge.flow import Outbound
from ggmk.task import FLAG_DETERMINISTIC


class DeterministicTraffic:
    """:class:`~ggmk.bridge.pump.Bridge`'s tick-fence methods (a mixin: they use its state)."""

    def det_hold_inbound(self) -> int:
        """At a CPU kernel tick boundary (``DualSystem`` hooks it into the tick stage's
        boundary, after the CPU channels delivered the tick): take what deterministic CPU ->
        GPU channels' bridge rings hold and keep it for the next fence, in channel order. The
        ring has room again, so a producer that found it full (CHAN_FULL, ``wait_``) gets in on
        a later CPU tick instead of keeping the CPU kernel busy forever; which messages are
        held depends only on the CPU's deterministic ticks. Returns how many were taken."""
        n = 0
        with self._det_lock:
            for st in self.ins:
                if st.det:
                    recs = st.sub.take()
                    if len(recs):
                        st.det_held.append(T.copy(recs))
                        st.det_held_n += len(recs)
                        n += len(recs)
        return n

    def det_take_inbound(self) -> list:
        """Every message waiting on deterministic CPU -> GPU channels (held at CPU tick
        boundaries, then what the bridge ring holds), in (channel, seq) order, as
        [(channel, records)]."""
        out = []
        with self.lock, self._det_lock:
            for st in self.ins:
                if st.det:
                    parts, st.det_held, st.det_held_n = st.det_held, [], 0
                    recs = st.sub.take()
                    if len(recs):
                        parts.append(T.copy(recs))
                    if parts:
                        out.append((st, T.concat(parts) if len(parts) > 1 else parts[0]))
        return out

    def det_push(self, batches) -> int:
        n = 0
        with self.lock:
            for st, recs in batches:
                self._admit_in(st, recs)
                n += len(recs)
        return n

    def det_pump_inbound(self) -> None:
        with self.lock:
            for st in self.ins:
                if st.det:
                    self._fifo_to_stage(st)
            self._flush(True)

    def det_digests(self, recs: np.ndarray, *, device: bool) -> np.ndarray:
        """A 64-bit digest of each record's payload bytes (0: none), read from the GPU
        kernel's arena (``device``: a GPU -> CPU record not copied in yet) or the CPU
        kernel's: what the fences sort and hash by, besides the inline words. A payload that
        cannot be read digests as its length only (the bridge names it when it copies)."""
        out = np.zeros(len(recs), np.uint64)
        lens = recs["payload_len"]
        ptrs = recs["payload_ptr"]
        for i in np.flatnonzero(lens).tolist():
            n, ptr = int(lens[i]), int(ptrs[i])
            try:
                b = bytes(self.tx.read_payload(ptr, n) if device
                          else self.sys.arena.view(ptr, n))
            except Exception:   # noqa: BLE001 - unreadable: the copy names it
                b = b""
            out[i] = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")
        return out

    def det_take_outbound(self) -> list:
        """This epoch's records of deterministic GPU -> CPU channels, per channel, sorted by
        content, payload bytes included (the device's own order depends on its worker
        interleaving), as [(channel, records, payload digests)]."""
        out = []
        with self.lock:
            for st in self.outs.values():
                if st.det and st.fence_buf:
                    recs = T.concat(st.fence_buf)
                    st.fence_buf = []
                    dig = self.det_digests(recs, device=True)
                    order = np.lexsort((dig, recs["payload_len"], recs["tenant"],
                                        recs["flags"] & 3, recs["meta1"], recs["meta0"]))
                    out.append((st, recs[order], dig[order]))
        return out

    def det_pending(self) -> bool:
        """Deterministic traffic waits for a fence: messages on a deterministic CPU -> GPU
        channel's bridge ring or held at a CPU tick boundary, or GPU output of a deterministic
        GPU -> CPU channel not delivered yet."""
        for st in self.ins:
            if st.det and (st.det_held_n or st.sub.ring.tail != st.sub.ring.head):
                return True
        return any(st.det and st.fence_buf for st in self.outs.values())

    def det_deliver(self, st: Outbound, recs: np.ndarray) -> int:
        """Emit a fence's records into the CPU channel in the given order (canonical)."""
        recs = T.copy(recs)
        recs["seq"] = np.arange(len(recs), dtype=np.int64)
        recs["flags"] |= FLAG_DETERMINISTIC
        with self.lock:
            self._in_order(st, recs)
            self._deliver_out()
        return len(recs)
