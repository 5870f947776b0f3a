"""The bridge's CPU -> GPU path (a mixin of :class:`ggmk.bridge.pump.Bridge`; the design is in
that module's docstring): a CPU channel's messages taken from the bridge's subscriber ring
against credits (``_take_in``), sent from the emitting thread while the pump sleeps
(``_after_emit``), their payloads given device blocks (ALLOC requests and replies), staged and
sent in batches (``_flush``, ``_send``), failed transfers retried, then dead-lettered.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge.codes import (BRIDGE_DEVICE_STOPPED, BRIDGE_PAYLOAD_TOO_LARGE,
                               BRIDGE_TRANSFER_FAILED)
from ggmk.bridge.flow import CLEAR_FLAGS, RX0, RX1, Inbound, PendingPayload
from ggmk.bridge.records import fields1, record1, service_records
from ggmk.bridge.transport import TransferError
from ggmk.device import layout
from ggmk.errors import KernelStopped
from ggmk.task import ALLOC_FAIL


class ToDevice:
    """CPU -> GPU (mixed into ``Bridge``)."""

    def _on_push(self, st: Inbound) -> None:
        """The notify hook of a CPU -> GPU channel's bridge ring (under the channel's lock).
        While the pump sleeps, the emitting thread sends the message itself right after the
        emit (``_after_emit``, outside the lock): waking the pump would cost a thread wake-up
        (~100 us on this VM) before the message even leaves. Otherwise wake the pump."""
        if self._asleep and self.direct and not st.det and self.paused is None and \
                threading.get_ident() != self._pump_ident:
            return
        self._wake.set()

    def _after_emit(self, st: Inbound) -> None:
        """After an emit into a CPU -> GPU bridge channel, on the emitting thread, outside the
        channel's lock: while the pump sleeps, take the bridge's lock if it is free at once and
        do the pump's host -> device half (take against credits, stage, send: the same code
        under the same lock as a pump step, so order, credits and the send log stay the
        pump's). A pump that is awake (a busy bridge) or a bulk emit (more than
        ``DIRECT_MAX`` waiting) is left to the pump, which batches: two threads taking turns
        at the lock cost more than they save there. Whenever it does not send (the pump is
        awake; a bulk emit; the lock is busy: another emitter is in a step; paused; the pump's
        own thread; a failed batch waits for its retry, which is the pump's) or something is
        left (no credit, a full rx ring, a failed send, payloads waiting for device blocks),
        the pump is woken, so nothing waits on a wake-up that ``_on_push`` skipped."""
        ring = st.sub.ring
        if ring.tail == ring.head:
            return                        # taken already (the pump or another emitter)
        if len(ring) > self.DIRECT_MAX or not self._asleep or not self.direct or st.det or \
                self.paused is not None or self._stop.is_set() or self._retry_n or \
                threading.get_ident() == self._pump_ident or not self.lock.acquire(False):
            self._wake.set()
            return
        try:
            if self.paused is None:
                # the doorbell (a futex wake: ~5-40 us here, longer when the woken device
                # thread takes this core) is rung once the lock is let go: the pump, woken by
                # the reply, must not wait for this thread to take the lock back
                # (looked up each time: ``tx`` may be swapped, e.g. for a wrapper without it)
                self._defer_ring = getattr(type(self.tx), "RING_LATER", False) is True
                self._take_in()
                self._flush(self._drained())
                self.c["direct_sends"] += 1
        except Exception as e:   # noqa: BLE001 - the emit was accepted: the pump goes on
            self.errors.append(f"bridge: sending from the emitting thread: {e!r}")
        finally:
            self._defer_ring = False
            due, self._ring_due = self._ring_due, False
            self.lock.release()
        if due:
            try:
                self.tx.ring()
            except Exception as e:   # noqa: BLE001 - a stopped kernel: the pump reports it
                self.errors.append(f"bridge: ringing the GPU kernel from the emitting thread: "
                                   f"{e!r}")
        if self._stage_n or ring.tail != ring.head or self._pending_alloc or \
                self._wake.bell() is None:
            # without a device -> host bell the pump must watch the ring for the reply
            self._wake.set()

    def _ask_again(self, st: Inbound, x: PendingPayload) -> int:
        """Payload message ``x`` gives up its device block (or a dead kernel's) and waits for a
        new one: a fresh ALLOC tag, returned."""
        x.dptr = 0
        x.rec["payload_ptr"] = 0
        x.done = False
        st.waiting += 1
        self._tag += 1
        self._pending_alloc[self._tag] = (st, x)
        return self._tag

    def _alloc_replies(self, part: np.ndarray) -> None:
        for ptr, tag in zip(part["meta0"].tolist(), part["meta1"].tolist()):
            ent = self._pending_alloc.pop(int(tag), None)
            if ent is None:
                if ptr:
                    self._release_device(int(ptr))
                continue
            st, pay = ent
            if not ptr and st.bc.lossless and not self._stop.is_set():
                # the device arena is full for now: ask again later (backpressure)
                self._pending_alloc[int(tag)] = ent
                self._alloc_retry.append((pay.n, int(tag)))
                self.c["alloc_retries"] += 1
                self._yield_blocks(st)
                continue
            st.waiting -= 1
            arena = self.sys.arena
            if not ptr:
                self.c["alloc_fail"] += 1
                rec = T.copy(pay.rec)
                rec["type"] = st.bc.type_id
                rec["payload_ptr"] = pay.cptr
                self._to_sys_error(rec, ALLOC_FAIL, release=True)
                st.dead += 1
                pay.dptr = 0
                pay.done = True
                pay.rec = None
                continue
            self.tx.write_payload(int(ptr), arena.view(pay.cptr, pay.n))
            # the CPU block is kept until the message is staged (see _yield_blocks)
            self.c["payload_copies"] += 1
            self.c["payload_bytes"] += pay.n
            pay.rec["payload_ptr"] = int(ptr)
            pay.dptr = int(ptr)
            pay.done = True

    def _yield_blocks(self, st: Inbound) -> None:
        """A device block request of ``st`` failed (device arena full). Messages behind it in
        channel order that got their blocks cannot go before it, and may hold the very blocks
        it needs: give those blocks back and ask again for them after it (their bytes are
        still in their CPU blocks)."""
        behind = False
        for x in st.fifo:
            if isinstance(x, np.ndarray):
                continue
            if not x.done:
                behind = True
                continue
            if behind and x.rec is not None and x.dptr:
                self._release_device(x.dptr)
                self._alloc_retry.append((x.n, self._ask_again(st, x)))

    def _refresh_done(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._counts_t < 0.0001:
            return
        self._counts_t = now
        if not self.ins:
            return
        dc = getattr(self.tx, "done_counts", None)
        try:
            if dc is not None:
                done = dc(self._rx_types).tolist()
            else:
                counts = self.tx.type_counts()
                done = [int(counts[t]["ok"]) + int(counts[t]["fail"]) if t in counts else None
                        for t in self._rx_types]
        except Exception:   # noqa: BLE001 - a stopped kernel: keep the last counts
            return
        for st, d in zip(self.ins, done):
            if d is not None:
                st.done = int(d)

    def _take_in(self) -> bool:
        did = False
        for st in self.ins:
            if st.det:
                # (a fence's messages are taken by det_take_inbound; those whose payload
                # blocks came later go on to the device here, in channel order)
                if st.fifo:
                    did |= self._fifo_to_stage(st)
                continue
            room = st.window - st.inflight() - st.fifo_n
            if room <= 0 or st.sub.ring.tail == st.sub.ring.head:
                if room <= 0:
                    self._refresh_done()
                    room = st.window - st.inflight() - st.fifo_n
                if room <= 0 or st.sub.ring.tail == st.sub.ring.head:
                    did |= self._fifo_to_stage(st)
                    continue
            recs = st.sub.take(min(room, self.batch * 4))
            if len(recs):
                did = True
                self._admit_in(st, recs)
            did |= self._fifo_to_stage(st)
        return did

    def _drained(self) -> bool:
        for st in self.ins:
            if st.fifo or (not st.det and st.sub.ring.tail != st.sub.ring.head):
                return False
        return True

    def _admit_in(self, st: Inbound, recs: np.ndarray) -> None:
        """Turn taken CPU channel messages into ingress records (payloads: ask for blocks)."""
        if len(recs) == 1:
            f = fields1(recs)
            if f is not None and not f[6]:       # one inline message (a round trip's)
                st.fifo.append(record1(st.rx_type, f))
                st.fifo_n += 1
                return
        recs = T.copy(recs)
        plen = recs["payload_len"]
        recs["type"] = st.rx_type
        recs["channel"] = 0
        recs["seq"] = 0
        recs["flags"] &= CLEAR_FLAGS
        st.fifo_n += len(recs)
        if not plen.any():
            st.fifo.append(recs)
            return
        start = 0
        for i in np.flatnonzero(plen).tolist():
            if i > start:
                st.fifo.append(recs[start:i])
            start = i + 1
            n = int(plen[i])
            cptr = int(recs["payload_ptr"][i])
            if n > ds.DEVICE_MAX_PAYLOAD:
                r = T.copy(recs[i:i + 1])
                r["type"] = st.bc.type_id
                self.errors.append(
                    f"bridge channel {st.bc.name!r} (CPU -> GPU): a {n}-byte payload is larger "
                    f"than the GPU kernel's largest payload block ({ds.DEVICE_MAX_PAYLOAD} "
                    "bytes); the message is on sys.error with BRIDGE_PAYLOAD_TOO_LARGE")
                self._to_sys_error(r, BRIDGE_PAYLOAD_TOO_LARGE, release=True)
                st.dead += 1
                st.fifo_n -= 1
                continue
            pay = PendingPayload(T.copy(recs[i:i + 1]), cptr, n)
            pay.rec["payload_ptr"] = 0
            st.waiting += 1
            st.unasked += 1
            st.fifo.append(pay)
        if start < len(recs):
            st.fifo.append(recs[start:])
        self._ask_blocks(st)

    #: device blocks asked for ahead, per CPU -> GPU channel, in payload bytes (at least one
    #: message): more would not come back sooner, and when the device arena is full every
    #: block a message behind a refused one got is given back and asked again (see
    #: ``_yield_blocks``): with no limit, 10,000 4 KiB payloads in flight cost 7 payload
    #: copies a message (2 needed); 2.75 with 1 MiB ahead, 2 with 256 KiB
    ASK_AHEAD_BYTES = 256 << 10

    def _ask_blocks(self, st: Inbound) -> None:
        """Ask the device for blocks for the next payload messages in channel order, while
        less than ``ASK_AHEAD_BYTES`` of them are asked for and not staged."""
        if not st.unasked:
            return
        pairs = []
        for x in st.fifo:
            if st.asked_bytes >= self.ASK_AHEAD_BYTES:
                break
            if isinstance(x, np.ndarray) or x.asked or x.rec is None:
                continue
            x.asked = True
            st.unasked -= 1
            st.asked_bytes += x.n
            self._tag += 1
            self._pending_alloc[self._tag] = (st, x)
            pairs.append((x.n, self._tag))
            if not st.unasked:
                break
        if pairs:
            self._stage_add(service_records(ds.ALLOC, pairs))
            self.c["service_records"] += len(pairs)

    def _fifo_to_stage(self, st: Inbound) -> bool:
        did = asked = False
        fifo = st.fifo
        while fifo:
            x = fifo[0]
            if isinstance(x, np.ndarray):
                fifo.popleft()
                st.fifo_n -= len(x)
                self._stage_add(x)
                st.pushed += len(x)          # counted at staging; un-counted if it fails
                self.c["inline_crossings"] += len(x)
                did = True
                continue
            if not x.done:
                break
            fifo.popleft()
            st.fifo_n -= 1
            st.asked_bytes -= x.n
            asked = True                     # (room to ask for the next blocks)
            if x.rec is not None:
                self._stage_add(x.rec)
                st.pushed += 1
                did = True
                self._cpu_done.append(x.cptr)    # its bytes are on the device now
        if self._cpu_done:
            done, self._cpu_done = self._cpu_done, []
            self.sys.arena.release_many(done)
        if asked:
            self._ask_blocks(st)
        return did

    def _stage_add(self, recs: np.ndarray) -> None:
        if not self._stage_n:
            self._stage_t = time.monotonic_ns()
        self._stage.append(recs)
        self._stage_n += len(recs)

    #: the shortest time between two repeats of device block requests that failed (s)
    ALLOC_RETRY_S = 0.0002
    #: at most this many repeated device block requests per round
    ALLOC_RETRY_MAX = 32

    def _stage_alloc_retries(self) -> None:
        now = time.monotonic()
        if now - self._alloc_retry_t < self.ALLOC_RETRY_S:
            return
        self._alloc_retry_t = now
        # the oldest first (smallest tag ~ earliest in channel order), a few per round: a
        # full device arena frees blocks a few at a time, more requests would only fail again
        self._alloc_retry.sort(key=lambda e: e[1])
        r = self._alloc_retry[:self.ALLOC_RETRY_MAX]
        self._alloc_retry = self._alloc_retry[self.ALLOC_RETRY_MAX:]
        n, tags = zip(*r)
        self._stage_add(T.make(len(r), type=ds.ALLOC, meta0=np.array(n, np.uint64),
                               meta1=np.array(tags, np.uint64)))
        self.c["service_records"] += len(r)

    def _flush(self, force: bool) -> bool:
        if self._releases:
            self._stage_releases()           # they ride with the next batch
        if self._alloc_retry:
            self._stage_alloc_retries()
        if not self._stage_n:
            return False
        if self._retry_n and time.monotonic() < self._retry_at:
            return False                     # a failed batch waits for its retry (_send)
        if not force and self._stage_n < self.batch and \
                time.monotonic_ns() - self._stage_t < self.flush_ns:
            return False
        allrec = T.concat(self._stage) if len(self._stage) > 1 else self._stage[0]
        self._stage = []
        self._stage_n = 0
        pos = 0
        n = len(allrec)
        did = False
        while pos < n:
            chunk = allrec if pos == 0 and n <= self.batch else allrec[pos:pos + self.batch]
            sent = self._send(chunk)
            if sent is None:                 # persistent failure: dead-lettered
                pos += len(chunk)
                continue
            if sent == 0:
                break                        # the rx ring is full, or a failed send: the rest waits
            did = True
            pos += sent
        if pos < n:
            rest = allrec[pos:]
            self._stage = [rest]
            self._stage_n = len(rest)
            self._stage_t = time.monotonic_ns() - self.flush_ns   # due at once next time
        return did

    def _send(self, chunk: np.ndarray):
        """One attempt to send ``chunk``: how many records went (0: the rx ring is full, or
        the transfer failed and ``chunk`` stays staged for a retry), or None (on sys.error).
        A failed transfer is retried after a backoff (``_retry_at``, doubling up to 64
        times ``retry_backoff_us``) by a later flush, never slept for here: this runs under
        the bridge's lock, maybe on an emitting thread (a host ``publish``: _after_emit)."""
        try:
            if self._defer_ring:
                k = self.tx.send(chunk, doorbell=False)
                self._ring_due |= k > 0
            else:
                k = self.tx.send(chunk)
        except TransferError as e:
            self.c["retries"] += 1
            if self._retry_n < self.max_retries:
                self._retry_at = time.monotonic() + self.backoff * (1 << min(self._retry_n, 6))
                self._retry_n += 1
                return 0
            self._retry_n = 0
            self._failed_batch(chunk, f"{e}")
            return None
        except KernelStopped as e:
            self._retry_n = 0
            self._failed_batch(chunk, f"{e}", code=BRIDGE_DEVICE_STOPPED)
            return None
        except Exception as e:   # noqa: BLE001 - a transport's bug: the staged batch was
            # already taken off the stage (_flush), so a raise lost it unaccounted: it is a
            # failed transfer (a send that raises moved nothing): retried, then sys.error
            self.c["retries"] += 1
            self.errors.append(f"bridge: send raised {e!r}; retried as a failed transfer")
            if self._retry_n < self.max_retries:
                self._retry_at = time.monotonic() + self.backoff * (1 << min(self._retry_n, 6))
                self._retry_n += 1
                return 0
            self._retry_n = 0
            self._failed_batch(chunk, f"send raised {e!r}")
            return None
        self._retry_n = 0
        if k:
            self._log_sent(chunk if k == len(chunk) else chunk[:k])
            self._last_io = time.monotonic()
            self.c["transfers"] += 1
            self.c["transfers_out"] += 1
            self.c["records"] += k
            self.c["records_out"] += k
            self.crossings.append((time.perf_counter_ns(), "out", k))
        return k

    def _log_sent(self, recs: np.ndarray) -> None:
        """Keep the ingress records of a sent batch (see ``Inbound.sent``): one copy per batch."""
        if len(recs) == 1:
            b = recs.tobytes()                 # (one record: its type and copy from bytes)
            tid = int.from_bytes(b[:4], "little")
            if not RX0 <= tid < RX1:
                return
            self._log_group(tid, np.frombuffer(bytearray(b), T.TASK_DTYPE))
            return
        t = recs["type"]
        t0 = int(t[0])
        if RX0 <= t0 < RX1 and not np.count_nonzero(t != t0):
            groups = [(t0, T.copy(recs))]      # the common case: one channel's ingress only
        else:
            m = (t >= RX0) & (t < RX1)
            if not np.count_nonzero(m):
                return
            part = T.select(recs, m)           # (a copy: kept as it is)
            pt = part["type"]
            groups = [(int(pt[0]), part)] if not np.count_nonzero(pt != pt[0]) else \
                [(int(u), T.select(part, pt == u)) for u in np.unique(pt).tolist()]
        for tid, g in groups:
            self._log_group(tid, g)

    def _log_group(self, tid: int, g: np.ndarray) -> None:
        st = self._in_by_k.get(ds.rx_index(tid))
        if st is None:
            return
        st.sent.append(g)
        st.sent_n += len(g)
        while st.sent_n - len(st.sent[0]) >= st.log_cap:
            st.sent_n -= len(st.sent.popleft())

    def _failed_batch(self, chunk: np.ndarray, why: str, code: int = BRIDGE_TRANSFER_FAILED):
        """A batch that could not be sent: its messages go to sys.error with ``code``."""
        self.c["failed_transfers"] += 1
        self.errors.append(f"bridge: a {len(chunk)}-record batch to the GPU kernel failed "
                           f"{self.max_retries + 1} times ({why}): on sys.error with "
                           f"{T.code_name(code)}")
        types = chunk["type"]
        for t in np.unique(types).tolist():
            part = T.select(chunk, types == t)
            if ds.BASE + 0x1000 <= t < ds.BASE + 0x2000:
                st = self._in_by_k[ds.rx_index(t)]
                st.pushed -= len(part)
                st.dead += len(part)
                part["type"] = st.bc.type_id
                self._to_sys_error(part, code)
            elif t == ds.ALLOC:
                for tag in part["meta1"].tolist():
                    ent = self._pending_alloc.pop(int(tag), None)
                    if ent is not None:
                        st, pay = ent
                        st.waiting -= 1
                        rec = T.copy(pay.rec)
                        rec["type"] = st.bc.type_id
                        rec["payload_ptr"] = pay.cptr
                        self._to_sys_error(rec, code, release=True)
                        st.dead += 1
                        pay.done = True
                        pay.rec = None
            elif t == ds.CREDIT:
                for w, d in zip(part["meta0"].tolist(), part["meta1"].tolist()):
                    k = (layout.USER_WORDS - 1 - int(w)) // 2
                    if k in self.outs:
                        self.outs[k].grant += int(d)       # grant again later
            # RELEASE records: the device keeps those blocks (counted in errors)
