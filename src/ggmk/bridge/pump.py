"""The bridge: carries bridge channels between the CPU kernel and the GPU kernel.

What crosses, and how
---------------------
One pump thread (``ggmk-bridge``) moves **batches** of 48-byte task records over a
:class:`~ggmk.bridge.transport.BridgeTransport`: host -> device on ``host.rx`` (``send``, one
copy per batch) and device -> host on ``host.tx`` (``recv``, one copy per batch). A batch goes
when it holds ``batch`` records (default 256), when its oldest record has waited ``flush_us``
(default 10 us), or at once when no more CPU -> GPU messages are waiting (a lone message does
not wait for company). ``stats()["transfers"]`` / ``["records"]`` count them: never a
transfer per task.

Waking the pump: a CPU channel delivering to the bridge's subscriber ring wakes it at once
(its notify hook, ``Subscriber.add_notify``), and so do ``push_device``, ``resume_device`` and
``stop``. While the pump sleeps, a small emit is not a wake-up: the emitting thread sends it
to the device itself once the channel's lock is let go (``Subscriber.add_after``,
:meth:`Bridge._after_emit`), one thread wake-up less per round trip. GPU -> CPU, with
``bridge={"pump_helps": True}`` (and the CPU kernel's caller runs on), the pump runs the
handler of a small delivery itself on a parked worker instead of waking it; after a small
delivery it blocks at once (``_hand_off``) so the thread it woke gets the GIL.
The device wakes the pump too where the target rings a device -> host bell (``cpu``:
``DeviceKernel.tx_bell``, a futex the device rings after a tx publish while the pump says it
sleeps): host wake-ups and the bell meet in one wait (:class:`PumpWake`), so a record the device
publishes is taken at once, not at the next look. Without a bell (``sim``, ``cuda``) the device
publishes into host memory silently, and after any transfer the pump watches the device ->
host ring closely for ``HOT_S`` (5 ms: waits of 5..100 us between looks at the next slot),
and while ingress tasks are unfinished on the device. Otherwise it sleeps until woken (2 ms at
most). Completions (credits) are read with ``done_counts`` (a few published counters), not
``metrics()``.

CPU -> GPU channel (produced on the CPU kernel): the bridge is a host-side subscriber of the CPU
channel (so the CPU producer's lossless backpressure sees the bridge's ring). It takes
messages only against **credits**: at most ``window`` (and at most the device channel's
capacity) ingress tasks of the channel may be on the device unfinished (their completion is
the device's published ``ok + fail`` count of the channel's ingress type). An ingress task
that cannot emit on the full device channel waits there (WAIT), holding its credit, so a slow
GPU consumer stops the bridge, the bridge's CPU ring fills and the CPU producer gets
CHAN_FULL: lossless end to end.

GPU -> CPU channel: the device egress handler needs a credit per message (a device user word
the host raises with CREDIT records as the CPU channel *accepts* messages: ``window`` at most in
flight). The host restores channel-sequence order (the device channel seq travels in the
record's ``channel`` field) and emits into the CPU channel; a refused (CHAN_FULL) suffix waits
and no credit is granted for it, so the device egress waits, the device channel fills and the
GPU producer gets CHAN_FULL. Records held for a sequence gap get their credits when held (the
device's egress tasks take credits out of order: held records must not keep the gap's own
message from getting one, :meth:`Bridge._hold_credit`). Lossy channels skip credits; full
subscribers drop to ``sys.dropped`` on whichever kernel they live (device drops come back to
the CPU kernel's ``sys.dropped`` with their reason).

Payloads: a payload crossing is copied into the receiving kernel's arena and ``payload_ptr``
rewritten to the local address; the sender's reference is released (CPU -> GPU: the device
block comes from an ALLOC request to the device, the bytes are written there, the CPU reference
is released; GPU -> CPU: the egress handler retains the device block, the host copies it into
the CPU arena, in channel order, when the message is next in line for its CPU channel, and
sends RELEASE). A full receiving arena on a lossless channel is backpressure, not a loss:
CPU -> GPU, a device block request that failed (the device arena is full for now: its blocks
come back as GPU -> CPU copies finish) is repeated (at most every ``ALLOC_RETRY_S``,
``stats()["alloc_retries"]``) while the message holds its place and its credit; messages
behind it that got blocks give them back and ask again after it (CPU blocks are kept until a
message is staged). GPU -> CPU, a copy that finds no host memory waits with everything behind
it and no credit is granted for it (``_copy_waiting``); the copies may take the CPU arena's
reserve (``arena_reserve``, 1/16 by default: ``Arena.set_reserve``), which host producers
cannot, so the two directions never wait on each other's memory. On a lossy channel the
message goes to ``sys.error`` with ALLOC_FAIL. Inline-only tasks (``payload_len`` 0) cross
with no payload copy (``stats()["payload_copies"]`` counts copies).

Transfers that fail are retried (``max_retries`` times, with a short backoff: the batch stays
staged and the pump sends it again once the backoff passed; no thread sleeps for it); a batch
that still fails goes to ``sys.error`` with BRIDGE_TRANSFER_FAILED.

Deterministic bridge channels (a deterministic type, in determinism mode) are not pumped: the
dual system moves them at **tick fences** (:class:`Fences`, ``DualSystem.run``).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge.codes import (BRIDGE_DEVICE_STOPPED, BRIDGE_PAYLOAD_TOO_LARGE,
                               BRIDGE_TRANSFER_FAILED)
from ggmk.bridge.det_traffic import DeterministicTraffic
from ggmk.bridge.flow import (CLEAR_FLAGS, RX0, RX1, Inbound, Outbound, PendingPayload, grant_due,
                              near_seq)
from ggmk.bridge.options import check_options
from ggmk.bridge.plan import GPU, credit_window
from ggmk.bridge.reset import ResetAccounting
from ggmk.bridge.transport import TransferError
from ggmk.bridge.wake import PumpWake, no_bell, tight_timer_slack
from ggmk.core.alloc import MAX_ALLOC
from ggmk.device import layout
from ggmk.errors import GgmkError, KernelStopped
from ggmk.task import ALLOC_FAIL, CHAN_CLOSED, CHAN_FULL

_MARK0 = ds.BASE + 0x3000             # GPU -> CPU mark record types: MARK(0) .. MARK(0xFFF)
_MARK1 = ds.BASE + 0x4000
SYS_ERROR = layout.CH_SYS_ERROR
SYS_DROPPED = layout.CH_SYS_DROPPED
_REC = T.RECORD_STRUCT
_CLEAR = int(CLEAR_FLAGS)           # (a plain int for struct packing)


def _fields(recs: np.ndarray):
    """The fields of a 1-record array as plain ints (``_REC`` order), or None for a view
    the buffer protocol cannot read at once (strided): the caller takes its array path."""
    try:
        return _REC.unpack_from(recs)
    except (BufferError, TypeError, ValueError):
        return None


def _record(t, f) -> np.ndarray:
    """One record with fields ``f`` (``_REC`` order) as a bridge hop rewrites it: type ``t``,
    no channel, no seq, FLAG_CHANNEL_MSG cleared (what ``_admit_in`` and ``_marks`` do with
    column sets on a copy, ~5 us for one record)."""
    return np.frombuffer(bytearray(_REC.pack(t, f[1] & _CLEAR, f[2], 0, 0, f[5], f[6], f[7],
                                             f[8], f[9], f[10])), T.TASK_DTYPE)


def _service(tid: int, pairs) -> np.ndarray:
    """A few service records (CREDIT, ALLOC: (meta0, meta1) pairs of plain ints we made),
    packed as bytes: ``make``'s column checks cost several times these records."""
    return np.frombuffer(bytearray(b"".join([_REC.pack(tid, 0, 0, 0, 0, 0, 0, 0, 0, a, b)
                                             for a, b in pairs])), T.TASK_DTYPE)


class _Kept(deque):
    """A bounded deque (the newest ``maxlen`` kept) that counts every append in ``total``."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.total = len(self)

    def append(self, x) -> None:
        super().append(x)
        self.total += 1


class BridgeError(GgmkError):
    """Bad use of the bridge (e.g. pushing while the GPU kernel is being reset)."""


class Bridge(ResetAccounting, DeterministicTraffic):
    """The bridge between a booted CPU ``System`` and a GPU kernel behind ``transport``.

    ``channels``: the :class:`~ggmk.bridge.plan.BridgeChannel` list. ``batch`` records per
    transfer (default 256), ``flush_us`` the longest a partial batch waits (10), ``window``
    credits per channel (default: per channel, ``plan.credit_window``; a GPU -> CPU channel's
    is a compile-time constant of the GPU kernel: each value builds one), ``max_retries`` per
    failed transfer (``retry_backoff_us`` before the first retry). ``pump_helps``:
    the pump runs the CPU handler of what it delivers itself (see ``_helper``; off by
    default: a CPU handler that waits on the bridge would then wait on its own thread).
    ``arena_reserve``: the share of the CPU arena kept for payloads arriving from the GPU.
    ``ingress_room``: how many ingress tasks of one channel the GPU kernel holds
    (``plan.ingress_room``; None: no bound but the channel's)."""

    def __init__(self, system, transport, channels, *, batch: int = 256, flush_us: float = 10.0,
                 window: int | None = None, max_retries: int = 8, retry_backoff_us: float = 50.0,
                 deterministic: bool = False, autostart: bool = True, pump_helps: bool = False,
                 arena_reserve: float = 1 / 16, ingress_room: int | None = None):
        check_options(dict(batch=batch, flush_us=flush_us, window=window,
                           max_retries=max_retries, retry_backoff_us=retry_backoff_us,
                           pump_helps=pump_helps, arena_reserve=arena_reserve))
        self.sys = system
        self.tx = transport
        self.batch = int(batch)
        self.flush_ns = int(flush_us * 1000)
        self.window = None if window is None else int(window)   # None: per channel
        self.max_retries = int(max_retries)
        self.backoff = retry_backoff_us * 1e-6
        self.lock = threading.RLock()
        self._det_lock = threading.Lock()  # deterministic bridge rings (det_hold_inbound)
        self.ins: list[Inbound] = []
        self.outs: dict[int, Outbound] = {}
        self.by_name = {}
        self._stop = threading.Event()
        self._wake = PumpWake(lambda: getattr(self.tx, "tx_bell", no_bell)())
        self.direct = self.DIRECT
        self.pump_helps = bool(pump_helps)
        self._pump_ident = None            # the pump thread's ident (see _after_emit)
        self._asleep = False               # the pump waits (it is not in a step)
        self._handoff = 0                  # messages the last step emitted into CPU channels
        # the emitting thread's sends ring the device's doorbell after the bridge's lock is let
        # go (see _after_emit) where the transport can (``RING_LATER``); _ring_due: one is owed
        self._defer_ring = False
        self._ring_due = False
        for bc in channels:
            ch = system.channel(bc.name)
            if bc.direction == "c2g":
                st = Inbound(bc, ch, None, credit_window(bc, self.window, ingress_room))
                st.det = deterministic and bc.deterministic
                st.sub = ch.subscribe(None, name="bridge->gpu",
                                      notify=lambda st=st: self._on_push(st))
                st.sub.add_after(lambda st=st: self._after_emit(st))
                self.ins.append(st)
            else:
                st = Outbound(bc, ch, credit_window(bc, self.window))
                st.det = deterministic and bc.deterministic
                self.outs[bc.k] = st
            self.by_name[bc.name] = st
        self._in_by_k = {s.k: s for s in self.ins}
        if self.outs:
            # host memory for payloads arriving from the GPU that a host producer cannot take
            # (see _copy_waiting and Arena.set_reserve)
            system.arena.set_reserve(arena_reserve)
        # staging (host -> device)
        self._stage: list[np.ndarray] = []
        self._stage_n = 0
        self._stage_t = 0
        self._pending_alloc: dict[int, tuple] = {}   # tag -> (Inbound, PendingPayload)
        self._alloc_retry: list = []                  # (bytes, tag): ALLOCs to ask again
        self._cpu_done: list = []                     # CPU blocks of staged payloads
        self._alloc_retry_t = 0.0
        self._retry_n = 0                  # failed sends of the staged batch in front (_send)
        self._retry_at = 0.0               # ... and when it may go again (monotonic s)
        self._tag = 0
        self._releases: list[int] = []
        self._counts = {}
        self._counts_t = 0.0
        # host records from the device that are not bridge traffic
        self.device_out: deque = deque()
        # the newest 256 messages kept; stats()["errors"] counts every one (a persistent
        # fault must not leave the count stuck at the bound), "errors_kept" what is held
        self.errors: _Kept = _Kept(maxlen=256)
        self.paused = None                 # a reason while the GPU kernel is being reset
        self._suspended: list = []         # CPU channels closed by begin_reset
        self.failed = None
        # each transfer as (perf_counter_ns, "out" | "in", records): the control plane draws
        # them as flows between the kernels in a Perfetto trace (bounded: the newest 8192)
        self.crossings: deque = deque(maxlen=8192)
        self.c = dict(transfers=0, transfers_out=0, transfers_in=0, records=0, records_out=0,
                      records_in=0, retries=0, failed_transfers=0, payload_copies=0,
                      payload_bytes=0, inline_crossings=0, alloc_fail=0, dead_lettered=0,
                      credits_granted=0, service_records=0, service_resent=0, alloc_retries=0,
                      resets=0, reset_lost=0, reset_redelivered=0, direct_sends=0, helped=0,
                      halt_leftovers=0)
        self._rx_types = [st.rx_type for st in self.ins]
        self._fail_to = self._failure_channels(system)
        self._last_io = 0.0                # monotonic time of the last transfer either way
        self._thread = None
        self._stopped_device = False
        self._tasks_named = None           # weakref: the GPU kernel whose own tasks were named
        if autostart:
            self.start()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ggmk-bridge", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the pump thread (after one last step)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def poke(self, expect_output: bool = False) -> None:
        """Wake the pump; ``expect_output``: the device was given work outside the bridge
        (``push_device``), so poll its ring closely for a while."""
        if expect_output:
            self._last_io = time.monotonic()
        self._wake.set()

    #: after a transfer, the pump watches the device -> host ring this long (s) before it only
    #: waits for a wake-up (with a bell: sleeps of BELL_SPAN_S on it, without: short looks)
    HOT_S = 0.005
    #: polls that only yield the GIL (``sleep(0)``) before the waits between polls grow
    #: (transports without ``tx_ready``)
    SPIN = 32
    #: while hot, the longest sleep (s) between two looks at the next device -> host slot
    WATCH_MAX_S = 100e-6
    #: ... and the longest watch (s) before the next whole pump step
    WATCH_SPAN_S = 200e-6
    #: with a device -> host bell (cpu): the longest sleep on it (s) before the next whole
    #: pump step (one is due that often for what no tx record announces: room in a CPU
    #: channel for waiting GPU -> CPU records, finished ingress tasks' credits)
    BELL_SPAN_S = 500e-6

    #: CPU -> GPU messages go to the device from the emitting thread when it can take the
    #: bridge's lock at once (``_after_emit``); False: the pump sends everything (set
    #: ``bridge.direct`` on one bridge)
    DIRECT = True
    #: ... for at most this many messages waiting in the bridge's ring (a bulk emit is left to
    #: the pump, which batches it with what follows: the figure is about latency)
    DIRECT_MAX = 64
    #: ``pump_helps`` (with the CPU kernel's caller runs): after emitting GPU ->
    #: CPU messages, the pump runs one step of a parked CPU worker itself instead of waking
    #: the worker, for at most this long (s)
    HELP_S = 0.0002

    # -- CPU -> GPU from the emitting thread ------------------------------------------------------
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

    def _loop(self) -> None:
        tight_timer_slack()             # its short sleeps (_watch) end on time
        self._pump_ident = threading.get_ident()
        idle = 0
        wake = self._wake
        ready = getattr(self.tx, "tx_ready", None)    # the cheap "anything to receive?" look
        self._pause = 5e-6
        while not self._stop.is_set():
            wake.clear()                 # before the step: a wake-up during it is not lost
            try:
                did = self.step()
            except Exception as e:   # noqa: BLE001 - keep pumping; report it
                self.errors.append(f"bridge pump: {e!r}")
                did = False
                time.sleep(0.001)
            if did:
                idle = 0
                self._pause = 5e-6
                n, self._handoff = self._handoff, 0
                if 0 < n <= self.HANDOFF_MAX:
                    self._hand_off(wake, ready)
                continue
            idle += 1
            self._asleep = True
            try:
                self._idle_wait(idle, wake, ready)
            finally:
                self._asleep = False

    #: after a step that emitted into CPU channels, the pump sleeps this long at most (s)
    #: unless the device rings or a host waker comes (see ``_hand_off``)
    HANDOFF_S = 100e-6
    #: ... when it emitted at most this many (a latency hand-off: a busy bridge goes on
    #: stepping, as its sleeps would cost more wake-ups and smaller batches)
    HANDOFF_MAX = 64

    def _hand_off(self, wake, ready) -> None:
        """The step just emitted into CPU channels: a CPU worker was woken for the messages (or,
        caller runs, the pump ran their handler, which may have woken a host thread). That
        thread needs the GIL, which this thread holds until it blocks; another whole pump
        step first (~50-100 us of Python here: the credits it grants, a send) would be paid
        by every GPU -> CPU round trip. So block now, for ``HANDOFF_S`` at most (the device's
        bell or a host waker ends it sooner), unless a device record is already waiting
        (throughput: no sleep then)."""
        b = None if ready is None else wake.bell()
        if b is None or self._safe_ready():
            # (no device -> host bell: sim, cuda: a sleep here would not end when the device
            # publishes, so the pump goes on as before)
            return
        self._asleep = True
        try:
            wake.wait(self.HANDOFF_S, self._safe_ready, b)
        finally:
            self._asleep = False

    def _idle_wait(self, idle, wake, ready) -> None:
        """One wait of the pump between steps that moved nothing."""
        if self._stage_n and not self._retry_n:
            # a partial batch waits at most flush_us (new messages wake the pump sooner; a
            # failed one waits for its retry below, the device's output still looked at)
            wake.wait(max(self.flush_ns / 1e9, 1e-6))
        elif self._hot():
            if ready is not None:
                self._watch(ready, wake)
            elif idle < self.SPIN:
                time.sleep(0)        # let the CPU workers and the device thread run
            else:
                wake.wait(min(20e-6 * (idle - self.SPIN + 1), 200e-6))
        else:
            # nothing on its way: CPU -> GPU messages (the subscriber ring's push),
            # push_device, resume and stop wake the pump, and so does the device's bell
            # where it has one (cpu); the timeout is a safety net (and a failed batch's retry)
            t = 0.002 if not self._retry_n else \
                min(0.002, max(self._retry_at - time.monotonic(), 1e-6))
            wake.wait(t, None if ready is None else self._safe_ready)

    def _watch(self, ready, wake) -> None:
        """Wait for the device's next record without a whole pump step per look: the next
        device -> host slot's sequence word is read between short waits on the wake event (5 us
        growing to ``WATCH_MAX_S``; the thread's timer slack is 1 us) until a record is there,
        a CPU -> GPU message woke the pump (at once), or ``WATCH_SPAN_S`` passed. Why sleeps
        and not a yield loop: a thread that drops the GIL and takes it straight back (``sleep(0)``,
        ``sched_yield``) keeps it from the thread that wants it for up to the switch interval
        (5 ms): the CPU worker that must run the reply. A sleep leaves the GIL free for its
        whole length. With a device -> host bell (``cpu``) there are no looks: one sleep on the
        bell, which the device rings when it publishes, of ``BELL_SPAN_S`` at most."""
        # at most WATCH_SPAN_S per call: a step is still due that often for what no tx record
        # announces (CPU channel room for waiting GPU -> CPU records, finished ingress credits)
        # the pause grows across calls and starts again at 5 us after a step that moved
        # something (_loop): a long wait on the device costs a look per 100 us, not 40 per ms
        b = wake.bell()
        if b is not None:
            # the device rings when it publishes: one sleep, no looks in between
            wake.wait(self.BELL_SPAN_S, self._safe_ready, b)
            return
        end = time.monotonic() + self.WATCH_SPAN_S
        pause = self._pause
        mono = time.monotonic
        try:
            while not ready() and not wake.is_set():
                if mono() >= end or self._stop.is_set():
                    return
                wake.wait(pause)
                if pause < self.WATCH_MAX_S:
                    pause = self._pause = min(pause * 1.5, self.WATCH_MAX_S)
        except Exception:   # noqa: BLE001 - a stopped kernel: the step reports it
            return

    def _safe_ready(self) -> bool:
        """``tx_ready`` of the transport; True (look now) when it cannot say (a stopped
        kernel: the step reports it)."""
        try:
            return self.tx.tx_ready()
        except Exception:   # noqa: BLE001
            return True

    def _hot(self) -> bool:
        """Something is on its way through the device (poll its ring closely)."""
        if time.monotonic() - self._last_io < self.HOT_S or self._pending_alloc:
            return True
        for st in self.outs.values():
            if st.reorder or st.ready or st.uncopied:
                return True
        if any(st.inflight() > 0 for st in self.ins):
            with self.lock:
                self._refresh_done()
            return any(st.inflight() > 0 for st in self.ins)
        return False

    # -- one pump step --------------------------------------------------------------------------
    def step(self, *, force_flush: bool = False) -> bool:
        """Receive, deliver, take, send. Returns whether anything moved."""
        if self.paused is not None:
            return False
        with self.lock:
            did = self._receive()
            hal = self._helper()
            if hal is None:
                did |= self._deliver_out()
        if hal is not None:               # (the bridge's lock let go: handlers run here)
            did |= self._deliver_helping(hal)
        with self.lock:
            if self.paused is not None:    # begin_reset came between (it waits for the lock)
                return did
            did |= self._take_in()
            # a partial batch goes at once when no more CPU -> GPU messages are waiting
            # (waiting flush_us would only add latency); else when full or flush_us old
            did |= self._flush(force_flush or self._drained())
            return did

    def _helper(self):
        """The CPU kernel's HAL when the pump may run a parked CPU worker's steps itself
        (``bridge={"pump_helps": True}`` and the CPU kernel's caller runs on, a worker parked,
        GPU -> CPU messages waiting to be emitted, on the pump's own thread); else None.
        Opt-in, unlike a host's caller runs: the pump is no host waiting for its own work,
        and a CPU handler that waits for the GPU (a request over the bridge) would wait for
        the very thread it runs on."""
        hal = self.sys.hal
        if not self.pump_helps or not getattr(hal, "helping", False) or not getattr(hal, "parked", 0) or \
                threading.get_ident() != self._pump_ident:
            return None
        for st in self.outs.values():
            if st.ready and not st.det:
                return hal
        return None

    def _deliver_helping(self, hal) -> bool:
        """``_deliver_out`` as the ``before`` of a caller-runs help: the emits into the CPU
        channels wake no worker; the pump thread then runs one step of the borrowed worker
        (the handler of what it emitted; at most ``HELP_S``), with the bridge's lock let go
        meanwhile (a handler may emit into a CPU -> GPU bridge channel, or wait on the
        bridge). One thread wake-up less per GPU -> CPU message that finds an idle CPU
        kernel; a busy one (no worker parked) is woken as before."""
        got = [False]

        def deliver():
            got[0] = self._deliver_out()

        looks = [0]

        def one_step() -> bool:          # help's predicate: True once one step ran
            looks[0] += 1
            return looks[0] > 1

        # one step: the handler batch of what was emitted (a bigger delivery's leftovers
        # wake the worker, as help hands it back): a look for more work that finds none
        # costs ~70 us here, all of it before the thread the handler woke gets the GIL
        hal.help(one_step, time.monotonic() + self.HELP_S,
                 before=lambda: self._locked(deliver))
        self.c["helped"] += 1
        return got[0]

    def _locked(self, fn):
        with self.lock:
            return fn()

    # -- device -> host -------------------------------------------------------------------------
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
            f = _fields(recs)
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
        part = _record(st.bc.type_id, f)
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
            self._stage_add(_service(ds.CREDIT, recs))
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
                f = _fields(arr) if len(arr) == 1 else None
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
                f = _fields(arr)
            if f is not None and not f[7]:                  # (no yield count to carry)
                return 1 if ch.emit_one(f[0], f[1], f[2], f[5], f[6], f[9], f[10]) == 0 else 0
        return ch.emit(arr)

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

    # -- host -> device -------------------------------------------------------------------------
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
            f = _fields(recs)
            if f is not None and not f[6]:       # one inline message (a round trip's)
                st.fifo.append(_record(st.rx_type, f))
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
            self._stage_add(_service(ds.ALLOC, pairs))
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

    # -- state ----------------------------------------------------------------------------------
    def idle(self, *, refresh: bool = True, fenced: bool = True) -> bool:
        """Nothing on its way in either direction (device-side work aside). ``fenced``
        (default): deterministic traffic waiting for a tick fence (``det_pending``) counts as
        on its way; False: it does not (the fence loop's wait for one fence's transfers)."""
        with self.lock:
            if self._stage_n or self._pending_alloc or self._releases:
                return False
            if fenced and self.det_pending():
                return False
            for st in self.outs.values():
                # (credits below grant_due wait for more: the device never waits for them)
                if st.ready or st.uncopied or st.reorder or st.grant >= grant_due(st):
                    return False
            if refresh:
                self._refresh_done(force=True)
            for st in self.ins:
                if st.fifo or st.inflight() > 0:
                    return False
                if not st.det and st.sub.ring.tail != st.sub.ring.head:
                    return False
            return True

    def stats(self) -> dict:
        with self.lock:
            d = dict(self.c)
            d["batch"] = self.batch
            d["flush_us"] = self.flush_ns / 1000
            d["window"] = self.window
            d["transfers_per_record"] = (d["transfers"] / d["records"]) if d["records"] else 0.0
            chans = {}
            for st in self.ins:
                chans[st.bc.name] = {
                    "direction": "cpu->gpu", "type": st.bc.type_name, "mode": st.bc.mode,
                    "guarantee": st.bc.guarantee, "deterministic": st.det,
                    "window": st.window, "pushed": st.base_pushed + st.pushed,
                    "done_on_device": st.base_done + st.done,
                    "in_flight": st.inflight(), "dropped_on_device": st.base_shed + st.shed,
                    "waiting_payload": st.waiting, "dead": st.dead,
                    "bridge_ring": len(st.sub.ring), "fence_held": st.det_held_n}
            for st in self.outs.values():
                chans[st.bc.name] = {
                    "direction": "gpu->cpu", "type": st.bc.type_name, "mode": st.bc.mode,
                    "guarantee": st.bc.guarantee, "deterministic": st.det,
                    "window": st.window, "crossed": st.crossed, "next_seq": st.next_seq,
                    "reorder": len(st.reorder), "waiting_for_room": st.ready_n,
                    "waiting_for_memory": st.uncopied_n,
                    "refused_batches": st.full, "dead": st.dead,
                    "fence_held": sum(len(a) for a in st.fence_buf)}
            d["channels"] = chans
            d["device_out"] = sum(len(x) for x in self.device_out)
            d["errors"] = self.errors.total
            d["errors_kept"] = len(self.errors)
            d["paused"] = self.paused
            return d

    def drain_leftovers(self, code: int) -> int:
        """After the GPU kernel stopped: whatever the bridge still holds goes to sys.error with
        ``code`` (nothing accepted is lost silently). Returns how many."""
        n = 0
        with self.lock, self._det_lock:
            for st in self.ins:
                n0 = n
                for x in st.fifo:
                    if isinstance(x, np.ndarray):
                        r = T.copy(x)
                        r["type"] = st.bc.type_id
                        self._to_sys_error(r, code)
                        n += len(r)
                    elif x.rec is not None:
                        r = T.copy(x.rec)             # its CPU block is still held
                        r["type"] = st.bc.type_id
                        r["payload_ptr"] = x.cptr
                        self._to_sys_error(r, code, release=True)
                        n += 1
                st.fifo.clear()
                st.fifo_n = st.asked_bytes = st.unasked = st.waiting = 0
                for rest in st.det_held + [st.sub.take()]:
                    if len(rest):                 # (CPU channel messages: payloads theirs)
                        self._to_sys_error(T.copy(rest), code, release=True)
                        n += len(rest)
                st.det_held, st.det_held_n = [], 0
                st.dead += n - n0
            self._pending_alloc.clear()
            self._alloc_retry = []
            for st in self.outs.values():
                n0 = n
                recs, _, live = st.reorder.merged()
                for arr in st.ready:              # (payloads in the CPU arena: theirs now)
                    self._to_sys_error(arr, code, release=True)
                    n += len(arr)
                for arr in list(st.uncopied) + [recs[live]] + st.fence_buf:
                    if len(arr):                  # (payloads in the stopped device's arena)
                        self._to_sys_error(arr, code)
                        n += len(arr)
                st.dead += n - n0
                st.ready.clear()
                st.uncopied.clear()
                st.ready_n = st.uncopied_n = 0
                st.reorder.clear()
                st.fence_buf = []

            if self._stage_n:
                allrec = T.concat(self._stage)
                self._stage, self._stage_n = [], 0
                m = (allrec["type"] >= ds.BASE + 0x1000) & (allrec["type"] < ds.BASE + 0x2000)
                for t in np.unique(allrec["type"][m]).tolist():
                    st = self._in_by_k[ds.rx_index(t)]
                    part = T.select(allrec, allrec["type"] == t)
                    part["type"] = st.bc.type_id
                    self._to_sys_error(part, code)
                    n += len(part)
                    st.dead += len(part)
                    # (counted in ``pushed`` when staged, never sent: not pushed after all)
                    st.pushed = max(0, st.pushed - len(part))
            self.c["halt_leftovers"] += n
        return n
