"""The bridge's part in a reset of the GPU kernel (the watchdog) and in a halt: hold the
channels, then account for everything that was inside the dead kernel or on its way."""
from __future__ import annotations

import time
import weakref

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge import device_tasks
from ggmk.bridge.flow import CLEAR_FLAGS, RX0, RX1, Outbound


class ResetAccounting:
    """:class:`~ggmk.bridge.pump.Bridge`'s reset methods (a mixin: they use its state)."""

    def begin_reset(self, reason: str) -> None:
        """Hold every transfer and make the CPU -> GPU bridge channels refuse new messages with
        CHAN_CLOSED (their producers retry or report it) until :meth:`end_reset`
        (``Channel.suspend`` / ``resume``). What the channels already accepted stays queued on
        the CPU side and crosses afterwards."""
        self.paused = reason
        for st in self.ins:                 # (a retried reset keeps the first one's list)
            if st.ch.suspend():
                self._suspended.append(st.ch)
        with self.lock:                  # a pump step in progress finishes first
            pass

    def end_reset(self) -> None:
        for ch in self._suspended:
            ch.resume()
        self._suspended = []
        self.paused = None
        self._last_io = time.monotonic()
        self.poke()

    def reset_device(self, code: int, *, reset: bool = True) -> dict:
        """The GPU kernel behind the transport is gone (killed); the transport still reads its
        last published words. Account for everything that was inside it or on its way:

        * what it published before it died is received and delivered first;
        * CPU -> GPU: the records it had not finished (ingress tasks not done, plus messages
          still queued or running on the device channel: ``chan_depth``) go to sys.error with
          ``code``, named from the send log (the most recent ones: the device finishes out of
          order, so which ones is exact only when it had finished none of the later ones);
          their device payloads are gone (``payload_ptr`` 0);
        * staged, unsent records: inline ingress records are kept and sent to the new kernel
          (redelivered); ones whose payload was already in the old device arena go to
          sys.error with ``code``; service records (ALLOC, RELEASE, CREDIT) are dropped and
          block requests still waiting are asked again of the new kernel;
        * GPU -> CPU: records waiting for a sequence gap are delivered in order; every seq the
          device channel assigned (as last published) that the host never received was
          inside the old kernel: each goes to sys.error with ``code`` as a record carrying
          its channel seq (``_lost_on_device``; the gaps also counted in ``gaps``); credits
          start again;
        * the GPU kernel's own unfinished tasks (``push_device``, follow-ons, device-only
          channels) go to sys.error with ``code``, one record of their type each
          (``_lost_tasks_on_device``).

        ``reset=False``: the same accounting when the GPU kernel stopped for good (halt), not
        counted as a reset. Returns {"lost", "redelivered", "gaps", "per_channel",
        "device_tasks"}."""
        acct = {"lost": 0, "redelivered": 0, "gaps": 0, "per_channel": {}}
        with self.lock:
            try:
                for _ in range(8):
                    if not self._receive():
                        break
                self._deliver_out()
            except Exception as e:   # noqa: BLE001 - the pages may be unreadable: go on
                self.errors.append(f"bridge: reading the reset kernel's ring: {e!r}")
            self._refresh_done(force=True)
            staged = T.concat(self._stage) if self._stage_n else T.empty(0)
            self._stage, self._stage_n = [], 0
            self._retry_n = 0             # (the new kernel gets what is kept at once)
            st_types = staged["type"]
            is_rx = (st_types >= RX0) & (st_types < RX1)
            kernel = getattr(self.tx, "kernel", None)
            for st in self.ins:
                mine = is_rx & (st_types == st.rx_type)
                n_staged = int(mine.sum())
                sent_total = st.pushed - n_staged
                depth = 0
                if kernel is not None:
                    try:
                        depth = kernel.chan_depth(st.bc.name)
                    except Exception:   # noqa: BLE001
                        depth = 0
                lost = max(0, sent_total - st.done - st.shed) + max(0, depth)
                lost = min(lost, max(0, sent_total))
                named = min(lost, st.sent_n)
                if named:
                    log = T.copy(T.concat(list(st.sent))[-named:])
                    log["type"] = st.bc.type_id
                    log["payload_ptr"] = 0
                    self._to_sys_error(log, code)
                if lost > named:
                    self.errors.append(
                        f"bridge channel {st.bc.name!r}: {lost - named} record(s) lost in the "
                        f"GPU kernel reset could not be named (older than the send log)")
                st.dead += lost
                acct["lost"] += named
                acct["per_channel"][st.bc.name] = {"lost": lost, "named": named}
                st.sent.clear()
                st.sent_n = 0
                # the dead kernel's counts go to the cumulative base; the new kernel's
                # bookkeeping (credits, in flight) starts from 0
                st.base_pushed += max(0, sent_total)
                st.base_done += st.done
                st.base_shed += st.shed
                st.done = 0
                st.shed = 0
                st.pushed = 0
            if len(staged):
                keep = ~is_rx.copy()
                plen = staged["payload_len"]
                keep[:] = False
                for st in self.ins:
                    mine = is_rx & (st_types == st.rx_type)
                    ok = mine & (plen == 0)
                    bad = mine & (plen != 0)
                    keep |= ok
                    st.pushed += int(ok.sum())
                    if bad.any():
                        r = T.select(staged, bad)
                        r["type"] = st.bc.type_id
                        self._to_sys_error(r, code)
                        st.dead += len(r)
                        acct["lost"] += len(r)
                    acct["redelivered"] += int(ok.sum())
                if keep.any():
                    rest = T.select(staged, keep)
                    self._stage = [rest]
                    self._stage_n = len(rest)
                    self._stage_t = time.monotonic_ns() - self.flush_ns
            # payload messages: block requests are asked again; blocks of the old arena too
            for st in self.ins:
                for x in st.fifo:
                    if isinstance(x, np.ndarray) or x.rec is None or not x.done:
                        continue
                    self._ask_again(st, x)
            self._alloc_retry = [(pay.n, tag) for tag, (st, pay)
                                 in sorted(self._pending_alloc.items())]
            self._alloc_retry_t = 0.0
            for st in self.outs.values():
                seen = st.next_seq - 1         # the last channel seq delivered in order
                missing: list = []
                if st.reorder:
                    recs, keys, live = st.reorder.merged()
                    # the gaps before the records that wait for them were inside the old kernel
                    missing = sorted(set(range(st.next_seq, int(keys[-1]) + 1))
                                     - set(keys.tolist()))
                    acct["gaps"] += len(missing)
                    seen = int(keys[-1])
                    st.reorder.clear()
                    arr = recs[live]
                    if len(arr):
                        st.uncopied.append(arr)
                        st.uncopied_n += len(arr)
                self._lost_on_device(st, missing, seen, kernel, code, acct)
                # payloads still in the old device arena: copied now or on sys.error
                dead0 = st.dead
                self._copy_waiting(st, final=code)
                st.fence_buf = [self._copy_in(st, a, code)[0] for a in st.fence_buf]
                acct["lost"] += st.dead - dead0
                st.next_seq = 1
                st.grant = 0
                st.pregranted = 0
            self._releases = []           # (blocks of the old device arena)
            self._counts_t = 0.0
            self._lost_tasks_on_device(kernel, code, acct)
            if reset:                     # (halt uses the same accounting, with HALTED)
                self.c["resets"] += 1
                self.c["reset_lost"] += acct["lost"]
                self.c["reset_redelivered"] += acct["redelivered"]
        return acct

    def _lost_on_device(self, st: Outbound, missing: list, seen: int, kernel, code: int,
                        acct: dict) -> None:
        """``reset_device``'s GPU -> CPU part: messages the old GPU kernel had accepted on the
        device channel but never forwarded are gone with it: every seq up to the channel's
        last assigned one (``chan_seq``, as the kernel last published it) or the highest the
        host received (``seen``), whichever is higher, that the host never received: the gaps
        (``missing``) and the seqs after ``seen``. Each of them was assigned and none was
        received: no message is counted twice. Seqs assigned after the last publication and
        never forwarded cannot be known (a killed kernel publishes every few loops): they are
        missed; once the kernel stopped (halt) the publication is final and this is exact.
        Deterministic channels keep no seqs on the host: their egress depth is counted
        instead. Their contents are gone; each goes to sys.error with ``code`` as a record of
        the channel's type carrying its seq, so every one is accounted."""
        top = seen
        extra = []
        if kernel is not None:
            try:
                if st.det:
                    # (fence_buf holds their records unnumbered: ``seen`` is not theirs)
                    depth = max(0, kernel.chan_depth(st.bc.name, ds.TX(st.k)))
                    extra = list(range(seen + 1, seen + 1 + max(0, depth - len(missing))))
                else:
                    top = max(seen, kernel.chan_seq(st.bc.name))
            except Exception:   # noqa: BLE001 - the pages may be unreadable: count the gaps
                top = seen
        seqs = list(missing) + extra + list(range(seen + 1, top + 1))
        if not seqs:
            return
        recs = T.make(len(seqs), type=st.bc.type_id,
                      seq=np.array(seqs, np.int64) & 0xFFFFFFFF)
        self._to_sys_error(recs, code)
        st.dead += len(seqs)
        acct["lost"] += len(seqs)
        acct["per_channel"][st.bc.name] = {"lost": len(seqs), "named": len(seqs),
                                           "gaps": len(missing)}

    def _lost_tasks_on_device(self, kernel, code: int, acct: dict) -> None:
        """``reset_device``'s last part: the old GPU kernel's own unfinished tasks (given with
        ``push_device``, emitted by its handlers, on device-only channels: nothing the bridge
        names) go to sys.error with ``code``, one record of its type per task (contents died
        with the kernel), counted in ``acct["lost"]`` and
        ``acct["device_tasks"]`` ({type: n}). See ``device_tasks.unfinished_tasks``. A task on
        its event queue (an ``emit_at`` timer, a RETRY backoff) is named as the kernel holds it
        (``device_tasks.pending_events``: type, meta0, meta1) where this process can read the
        kernel's device words or a device process handed them back: with its stop reply (a halt,
        a requested reset) or, its kernel hung, just before it was killed (read while the
        kernel ran: which records are named is a snapshot, how many comes from the counters;
        see ``device_tasks._settled``); a device process killed unread (it did not answer
        within ``DeviceProcess.handback_s``: ``kernel.held_note``, put in ``errors``) leaves
        one record of type 0 per event. Records
        still on the host -> device ring (pushed while GPU worker 0, the one that takes them
        in, was stuck) are named as they are (``device_tasks.host_ring_left``). Once per
        kernel: a reset tried again after a failed reboot, or a halt after it, finds the same
        dead kernel and must not name its tasks twice."""
        acct["device_tasks"] = {}
        if kernel is None or (self._tasks_named is not None and self._tasks_named() is kernel):
            return
        self._tasks_named = weakref.ref(kernel)
        note = getattr(kernel, "held_note", None)
        if note:                            # (killed unread: why its events are type 0)
            self.errors.append(f"bridge: {note}")
        try:
            left = device_tasks.unfinished_tasks(kernel, [st.bc.name for st in self.ins])
        except Exception as e:   # noqa: BLE001 - its pages may be unreadable: say so
            self.errors.append(f"bridge: counting the GPU kernel's unfinished tasks: {e!r}")
            left = {}
        ev = None
        if left.get(0):
            try:
                ev = device_tasks.pending_events(kernel)
            except Exception as e:   # noqa: BLE001 - see above
                self.errors.append(f"bridge: reading the GPU kernel's event queue: {e!r}")
        if ev is not None and len(ev):
            # the pending events as the kernel held them, with their type and meta words (an
            # armed timer's tick, a reduce's timeout check); any rest stays counted as type 0
            ev = ev[:left[0]]
            ev["channel"] = 0
            ev["flags"] &= CLEAR_FLAGS
            ev["payload_ptr"] = 0          # (the device arena is gone: no payload to name)
            ev["payload_len"] = 0
            self._to_sys_error(ev, code)
            acct["lost"] += len(ev)
            left[0] -= len(ev)
        for t, n in sorted(left.items()):
            if n > 0:
                self._to_sys_error(T.make(n, type=t), code)
                acct["lost"] += n
        left = {t: n for t, n in left.items() if n > 0}
        if ev is not None:
            for t, n in zip(*np.unique(ev["type"], return_counts=True)):
                left[int(t)] = left.get(int(t), 0) + int(n)
        try:
            ring = device_tasks.host_ring_left(kernel)
        except Exception as e:   # noqa: BLE001 - see above
            self.errors.append(f"bridge: reading the GPU kernel's host -> device ring: {e!r}")
            ring = T.empty(0)
        if len(ring):
            ring["channel"] = 0
            ring["flags"] &= CLEAR_FLAGS
            self._to_sys_error(ring, code)
            acct["lost"] += len(ring)
            for t, n in zip(*np.unique(ring["type"], return_counts=True)):
                left[int(t)] = left.get(int(t), 0) + int(n)
        acct["device_tasks"] = left
