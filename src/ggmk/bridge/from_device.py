"""The bridge's GPU -> CPU path (a mixin of :class:`ggmk.bridge.pump.Bridge`; the design is in
that module's docstring): records received from the device (``_receive``) dispatched by kind,
GPU -> CPU messages put back in channel-sequence order, their payloads copied into the CPU
arena, emitted into the CPU channels (``_deliver_out``) with credits and releases sent back,
and the device's dead letters brought to the CPU kernel's ``sys.error`` / ``sys.dropped``.
"""
from __future__ import annotations

import time

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge.codes import BRIDGE_PAYLOAD_TOO_LARGE, BRIDGE_TRANSFER_FAILED
from ggmk.bridge.flow import CLEAR_FLAGS, Outbound, grant_due, near_seq
from ggmk.bridge.plan import GPU
from ggmk.bridge.records import fields1, record1, service_records
from ggmk.bridge.transport import TransferError
from ggmk.core.alloc import MAX_ALLOC
from ggmk.device import layout
from ggmk.errors import GgmkError, KernelStopped
from ggmk.task import ALLOC_FAIL, CHAN_CLOSED, CHAN_FULL

_MARK0 = ds.BASE + 0x3000             # GPU -> CPU mark record types: MARK(0) .. MARK(0xFFF)
_MARK1 = ds.BASE + 0x4000
SYS_ERROR = layout.CH_SYS_ERROR
SYS_DROPPED = layout.CH_SYS_DROPPED


class FromDevice:
    """GPU -> CPU (mixed into ``Bridge``)."""

    def _receive(self) -> bool:
        did = False
        for _ in range(64):
            try:
                recs = self.tx.recv(self.batch)
            except TransferError as e:
                self.c["retries"] += 1
                self.errors.append(f"bridge: receive failed, retried: {e}")
                return did
            except KernelStopped:
                return did
            n = len(recs)
            if not n:
                break
            did = True
            self._last_io = time.monotonic()
            self.c["transfers"] += 1
            self.c["transfers_in"] += 1
            self.c["records"] += n
            self.c["records_in"] += n
            self.crossings.append((time.perf_counter_ns(), "in", n))
            self._dispatch(recs)
            if n < self.batch:
                break
        return did

    def _dispatch(self, recs: np.ndarray) -> None:
        if len(recs) == 1:
            f = fields1(recs)
            if f is not None and _MARK0 <= f[0] < _MARK1:
                # (a mark is never dead-lettered by the device: see below)
                self._mark1(self.outs[ds.mark_index(f[0])], f)
                return
        types = recs["type"]
        chans = recs["channel"]
        # (a mark's channel column is its device channel seq, which takes these values too
        # once in 2**32 messages; the device never dead-letters a mark record)
        sysm = ((chans == SYS_ERROR) | (chans == SYS_DROPPED)) & \
            ((types < _MARK0) | (types >= _MARK1))
        if sysm.any():
            self._dead_from_device(T.select(recs, sysm))
            recs = T.select(recs, ~sysm)
            types = recs["type"]
            if not len(recs):
                return
        t0 = types[0]
        utypes = [int(t0)] if (types == t0).all() else np.unique(types).tolist()
        for t in utypes:
            part = recs if len(utypes) == 1 else T.select(recs, types == t)
            if _MARK0 <= t < _MARK1:
                self._marks(self.outs[ds.mark_index(t)], part)
            elif t == ds.ALLOC_REPLY:
                self._alloc_replies(part)
            else:
                self._foreign(part)

    def _marks(self, st: Outbound, part: np.ndarray) -> None:
        part = T.copy(part)
        seqs = near_seq(st.next_seq, part["channel"])
        part["type"] = st.bc.type_id
        part["channel"] = 0
        part["seq"] = 0
        part["flags"] &= CLEAR_FLAGS
        if st.det:
            st.fence_buf.append(part)
            self._grant(st, len(part))
            return
        if not st.reorder and len(seqs) and seqs[0] == st.next_seq and \
                (len(seqs) == 1 or (np.diff(seqs) == 1).all()):
            self._in_order(st, part)              # the common case: already in order
            st.next_seq = int(seqs[-1]) + 1
            return
        st.reorder.add(part, seqs)
        self._drain_reorder(st)

    def _mark1(self, st: Outbound, f) -> None:
        """``_marks`` of one record given as its fields: plain int work (near_seq's arithmetic
        on one seq; the record rebuilt packed), the same outcome."""
        ref = st.next_seq
        seq = ref + ((f[3] - ref + (1 << 31)) & 0xFFFF_FFFF) - (1 << 31)
        part = record1(st.bc.type_id, f)
        if st.det:
            st.fence_buf.append(part)
            self._grant(st, 1)
            return
        if not st.reorder and seq == ref:
            self._in_order(st, part, f[6] != 0)
            st.next_seq = seq + 1
            return
        st.reorder.add(part, np.array([seq], np.int64))
        self._drain_reorder(st)

    def _drain_reorder(self, st: Outbound) -> None:
        arr, st.next_seq = st.reorder.pop_run(st.next_seq)
        if arr is not None and len(arr):
            self._in_order(st, arr)
        if st.reorder and st.bc.lossless:
            self._hold_credit(st)

    def _in_order(self, st: Outbound, arr: np.ndarray, payload: bool | None = None) -> None:
        """GPU -> CPU records now in channel order: to ``ready`` once their payloads are in
        the CPU arena (``_copy_waiting``). ``payload``: whether any has one, if known."""
        if st.uncopied or (arr["payload_len"].any() if payload is None else payload):
            st.uncopied.append(arr)
            st.uncopied_n += len(arr)
            self._copy_waiting(st)
        else:
            st.ready.append(arr)
            st.ready_n += len(arr)

    def _copy_waiting(self, st: Outbound, final: int | None = None) -> None:
        """Copy the payloads of ``st.uncopied`` into the CPU arena, in channel order, and move
        the records to ``ready``. Why here, in order, and not as they arrive: host memory is
        then only held by records next in line for the CPU channel, whose handlers free it,
        never by records parked behind a sequence gap (which could hold all of it while the
        gap's own message waits). The copies may take the arena's reserve (the host producer
        cannot: ``Arena.set_reserve``). A copy that finds no memory: a lossy channel's record
        goes to sys.error with ALLOC_FAIL; a lossless channel's waits with every record behind
        it (its credit is not granted, so the device's egress stops in time) and is tried
        again each pump step. ``final`` (a reset or halt: the device arena is going): whatever
        cannot be copied now goes to sys.error with that code."""
        while st.uncopied:
            arr = st.uncopied.popleft()
            st.uncopied_n -= len(arr)
            ready, rest = self._copy_in(st, arr, final)
            if len(ready):
                st.ready.append(ready)
                st.ready_n += len(ready)
            if rest is not None:
                st.uncopied.appendleft(rest)
                st.uncopied_n += len(rest)
                return

    def _hold_credit(self, st: Outbound) -> None:
        """Records held for a sequence gap get their credits now, not when the CPU channel
        accepts them. Why: the device's egress tasks take credits out of channel order, so
        the records behind a gap can hold every credit of the window while the gap's own
        message waits for one on the device: a stall (seen with an 8-credit window and three
        publishers). ``pregranted`` counts these early credits; acceptances use them up first
        (``_grant_taken``), so the credits granted are the messages accepted plus
        ``pregranted`` (at least the live records held), and at most ``window`` + the live
        records held for a gap are on the host. What is left of ``pregranted`` once the gap
        closed is used up by the next acceptances."""
        held = st.reorder.live_n()
        if held > st.pregranted:
            st.grant += held - st.pregranted
            st.pregranted = held

    def _grant_taken(self, st: Outbound, n: int) -> None:
        """Credits for ``n`` records the CPU channel took (or dropped, closed), less the ones
        granted ahead while they were held for a gap."""
        if st.pregranted and n:
            k = min(n, st.pregranted)
            st.pregranted -= k
            n -= k
            if st.reorder:
                # (the early credits are counted, not tied to records: ones used up by
                # records that had none leave held records without: top them up)
                self._hold_credit(st)
        self._grant(st, n)

    def _copy_in(self, st: Outbound, part: np.ndarray, final: int | None):
        """Copy ``part``'s device payloads into the CPU arena in order (``_copy_waiting``):
        (the records copied, with local addresses; the rest, still uncopied, or None)."""
        arena = self.sys.arena
        ptrs = part["payload_ptr"]
        lens = part["payload_len"]
        dead = None
        for i in np.flatnonzero(lens).tolist():
            dptr = int(ptrs[i])
            n = int(lens[i])
            # a span no host block can hold, or one the device's arena does not have (a GPU
            # handler's bad emit) can never be copied: sys.error whatever the guarantee
            cptr, code = 0, BRIDGE_PAYLOAD_TOO_LARGE
            if n <= MAX_ALLOC:
                cptr, code = arena.alloc(max(n, 1), reserve=True), ALLOC_FAIL
            if cptr:
                try:
                    arena.view(cptr, n)[:] = self.tx.read_payload(dptr, n)
                except Exception as e:   # noqa: BLE001 - see above; or a stopped kernel
                    self.errors.append(f"bridge channel {st.bc.name!r}: the {n}-byte payload "
                                       f"at device address 0x{dptr:x} cannot be read: {e!r}")
                    arena.release(cptr)
                    cptr, code = 0, BRIDGE_TRANSFER_FAILED if final is None else final
            if cptr:
                self.c["payload_copies"] += 1
                self.c["payload_bytes"] += n
                ptrs[i] = cptr
            elif code == ALLOC_FAIL and final is None and st.bc.lossless:
                done = part[:i] if dead is None else T.select(part[:i], ~dead[:i])
                return done, part[i:]
            else:
                # lossy, never copyable, or the device arena is going: sys.error
                if code == ALLOC_FAIL:
                    self.c["alloc_fail"] += 1
                self._to_sys_error(part[i:i + 1], code)
                st.dead += 1
                self._grant(st, 1)
                if dead is None:
                    dead = np.zeros(len(part), bool)
                dead[i] = True
            if final is None:
                self._release_device(dptr)
        return (part if dead is None else T.select(part, ~dead)), None

    def _release_device(self, dptr: int) -> None:
        if dptr:
            self._releases.append(dptr)
            if len(self._releases) >= 2 * self.batch:
                self._stage_releases()

    def _stage_releases(self) -> None:
        r = self._releases
        if not r:
            return
        if len(r) % 2:
            r.append(0)
        m = len(r) // 2
        arr = np.asarray(r, dtype=np.uint64).reshape(m, 2)
        self._stage_add(T.make(m, type=ds.RELEASE, meta0=arr[:, 0], meta1=arr[:, 1]))
        self.c["service_records"] += m
        self._releases = []

    def _grant(self, st: Outbound, n: int) -> None:
        if st.bc.lossless and n:
            st.grant += n

    def _stage_grants(self, force: bool = False) -> None:
        """Send the credits of GPU -> CPU channels once an eighth of the window is due; on an
        idle step (``force``) also the ones granted ahead for records held behind a sequence
        gap (the gap's own message may wait for one). Fewer stay on the host, unsent: the
        device then still has 7/8 of its window, so it never waits for them; sending each
        one on an idle step cost a doorbell and a device wake-up per round trip."""
        recs = []
        for st in self.outs.values():
            if st.grant and (st.grant >= grant_due(st) or (force and (st.reorder or
                                                                        st.pregranted))):
                recs.append((ds.limit_word(st.k), st.grant))
                self.c["credits_granted"] += st.grant
                st.grant = 0
        if recs:
            self._stage_add(service_records(ds.CREDIT, recs))
            self.c["service_records"] += len(recs)

    #: GPU -> CPU arrays waiting for one channel are joined into one emit up to this many
    COALESCE = 8192

    def _deliver_out(self) -> bool:
        did = False
        for st in self.outs.values():
            if st.uncopied:
                self._copy_waiting(st)
            if len(st.ready) > 1 and st.ready_n <= self.COALESCE:
                # one emit (one channel lock, one scheduler wake-up) for what arrived this round
                arr = T.concat(st.ready)
                st.ready.clear()
                st.ready.append(arr)
            while st.ready:
                arr = st.ready[0]
                f = fields1(arr) if len(arr) == 1 else None
                try:
                    acc = self._emit(st.ch, arr, f)
                except GgmkError as e:
                    self.errors.append(f"bridge: channel {st.bc.name!r}: {e}")
                    acc = 0
                    self._to_sys_dropped(arr, T.CHAN_TYPE_MISMATCH)
                    st.ready.popleft()
                    st.ready_n -= len(arr)
                    continue
                if acc == 0 and st.ch.closed:
                    self._to_sys_dropped(arr, CHAN_CLOSED)
                    st.ready.popleft()
                    st.ready_n -= len(arr)
                    self._grant_taken(st, len(arr))
                    continue
                if acc:
                    did = True
                    self._handoff += acc
                    st.crossed += acc
                    self.c["inline_crossings"] += (0 if f[6] else 1) if f is not None else \
                        int((arr["payload_len"][:acc] == 0).sum())
                    self._grant_taken(st, acc)
                if acc < len(arr):
                    st.ready[0] = T.copy(arr[acc:])
                    st.ready_n -= acc
                    st.full += 1
                    break
                st.ready.popleft()
                st.ready_n -= len(arr)
        self._stage_grants(force=not did)
        return did

    @staticmethod
    def _emit(ch, arr: np.ndarray, f=None) -> int:
        """Emit GPU -> CPU records into their CPU channel; the accepted count (a prefix).
        One record (a round trip's) goes as plain ints through ``emit_one``: no NumPy
        column passes (~20-40 us of a round trip here). ``f``: its fields, if read."""
        if len(arr) == 1:
            if f is None:
                f = fields1(arr)
            if f is not None and not f[7]:                  # (no yield count to carry)
                return 1 if ch.emit_one(f[0], f[1], f[2], f[5], f[6], f[9], f[10]) == 0 else 0
        return ch.emit(arr)

    def _foreign(self, part: np.ndarray) -> None:
        """Device records for the host that are not bridge traffic: tasks for a CPU handler go
        to the CPU kernel (inline ones), everything else waits in ``device_out``."""
        k = self.sys
        t = int(part["type"][0])
        if t < len(k.handler_of) and k.handler_of[t] is not None and \
                not part["payload_len"].any() and not k.halted:
            p = T.copy(part)
            p["channel"] = 0
            p["flags"] &= CLEAR_FLAGS
            k.submit_batch(p)
            return
        self.device_out.append(T.copy(part))

    def _failure_channels(self, system) -> dict:
        """{GPU handler type id: the CPU -> GPU channel it alone consumes}: a GPU consumer's
        failure goes to that channel's ``error_handler`` as a CPU consumer's does (the channel
        is declared once, on the CPU side; before, the failure went to sys.error)."""
        out: dict = {}
        for st in self.ins:
            for e in st.bc.consumers:
                ht = (e.options or {}).get("handler_type")
                if e.kernel != GPU or ht is None:
                    continue
                try:
                    t = system.type_id(ht)
                except Exception:   # noqa: BLE001 - not routable: sys.error as before
                    continue
                # (a handler consuming two channels: which one failed is not known)
                out[t] = st if t not in out else None
        return {t: st for t, st in out.items() if st is not None}

    def _dead_from_device(self, recs: np.ndarray) -> None:
        codes = recs["_pad"].astype(np.int16).astype(np.int64)
        for i in range(len(recs)):
            r = T.copy(recs[i:i + 1])
            code = int(codes[i])
            t = int(r["type"][0])
            where = SYS_ERROR if int(r["channel"][0]) == SYS_ERROR else SYS_DROPPED
            dptr = int(r["payload_ptr"][0])
            r["payload_ptr"] = 0
            r["_pad"] = 0
            if ds.BASE + 0x2000 <= t < ds.BASE + 0x3000:         # egress copy of an outbound
                st = self.outs[ds.tx_index(t)]
                r["type"] = st.bc.type_id
                r["channel"] = 0
                seq = int(near_seq(st.next_seq, r["seq"])[0])
                st.dead += 1
                if where == SYS_ERROR:
                    self._grant(st, 1)    # the egress took its credit before it failed
                if not st.det:
                    st.reorder.add(r, np.array([seq], np.int64), np.zeros(1, bool))
                    self._drain_reorder(st)
            elif ds.BASE + 0x1000 <= t < ds.BASE + 0x2000:       # ingress failed on the device
                st = self._in_by_k[ds.rx_index(t)]
                r["type"] = st.bc.type_id
                r["channel"] = 0
                st.dead += 1
                if where == SYS_DROPPED:
                    st.shed += 1          # refused at the door (its bucket was full): never run
                if dptr and code != ALLOC_FAIL:
                    self._release_device(dptr)
            elif ds.is_bridge_type(t):
                if where == SYS_DROPPED and code == CHAN_FULL:
                    # refused at the device's door (its type bucket was full), never run: a
                    # lost RELEASE would leak a device block, a lost CREDIT or ALLOC stall a
                    # channel for good; CREDIT adds up, RELEASE and ALLOC (matched by tag) need
                    # no order, so the same record simply goes again with the next batch
                    self._stage_add(T.make(1, type=t, meta0=r["meta0"], meta1=r["meta1"]))
                    self.c["service_resent"] += 1
                    continue
                self.errors.append(f"bridge: service record type {t:#x} failed with "
                                   f"{T.code_name(code)}")
                continue
            else:
                r["channel"] = 0
                st = self._fail_to.get(t)
                if where == SYS_ERROR and st is not None and st.ch.error_handler is not None \
                        and self.sys.channels is not None:
                    # a GPU consumer's failure: its channel's error handler, if it has one
                    r["channel"] = st.ch.id
                    r["flags"] = (r["flags"] & CLEAR_FLAGS) | T.FLAG_CHANNEL_MSG
                    r, left = self.sys.channels.route_failures(r, code)
                    if not len(r):
                        continue
                    r["channel"] = 0
                    code = int(left[0])
            r["flags"] &= CLEAR_FLAGS
            if where == SYS_ERROR:
                self._to_sys_error(r, code)
            else:
                self._to_sys_dropped(r, code)

    def _to_sys_error(self, recs, code, release: bool = False) -> None:
        if not release:
            recs = T.copy(recs)
            recs["payload_ptr"] = 0
        self.c["dead_lettered"] += len(recs)
        self.sys.dead_letter(recs, code)

    def _to_sys_dropped(self, recs, code) -> None:
        recs = T.copy(recs)
        recs["payload_ptr"] = 0             # the payload is not this copy's to release
        self.c["dead_lettered"] += len(recs)
        self.sys.dead_letter(recs, code, which="sys.dropped")
