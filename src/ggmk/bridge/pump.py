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

Files: this one is the pump (lifecycle, the loop and its waits, one step, state); the CPU ->
GPU path is :mod:`ggmk.bridge.to_device`, the GPU -> CPU path :mod:`ggmk.bridge.from_device`,
reset accounting :mod:`ggmk.bridge.reset`, deterministic traffic
:mod:`ggmk.bridge.det_traffic` (mixins of :class:`Bridge`).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.bridge.det_traffic import DeterministicTraffic
from ggmk.bridge.flow import Inbound, Outbound, grant_due
from ggmk.bridge.from_device import FromDevice
from ggmk.bridge.options import check_options
from ggmk.bridge.plan import credit_window
from ggmk.bridge.reset import ResetAccounting
from ggmk.bridge.to_device import ToDevice
from ggmk.bridge.wake import PumpWake, no_bell, tight_timer_slack
from ggmk.errors import GgmkError


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


class Bridge(ToDevice, FromDevice, ResetAccounting, DeterministicTraffic):
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
