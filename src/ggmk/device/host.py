"""The host interface of the device kernel: boot, push, pull, metrics, traces, heartbeats, stop.

This is the transport the bridge builds on. None of these calls waits for the kernel: the host
and the resident kernel meet only in the mapped control words and rings (``layout``).

Example::

    import numpy as np
    import ggmk.device as gd
    from ggmk import task
    from ggmk.device import api as g

    m = gd.Module("demo")

    @m.handler(1)
    def double(ctx, task_):
        g.emit(ctx, 2, g.meta0(task_) * 2, 0)       # type 2 has no device handler: to host
        return 0

    with gd.DeviceKernel([m], target="cpu", workers=2) as k:
        k.push(task.make(4, type=1, meta0=np.arange(4)))
        out = k.pull_until(4, timeout=10)            # 4 records of type 2, meta0 0,2,4,6
        print(k.metrics()["types"][1]["ok"])         # 4

Device channels (declared on a module, see ``ggmk.device.module``) get ids when the kernel is
built: ``k.channels`` ({name: id}), ``k.channel_id(name)``, and per-channel counters in
``k.metrics()["channels"][name]`` (depth, high_watermark, emitted, full, dropped, delivered,
subscribers, subs). Copies a lossy channel drops come back from :meth:`pull` with
``channel == SYS_DROPPED``, the subscriber's type and ``error_code(...) == CHAN_FULL``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
import numpy as np

from ggmk import task as taskmod
from ggmk.core import trace as cpu_trace
from ggmk.core.det import check_int
from ggmk.device import codegen, diagnose, layout
from ggmk.device.targets import get_target, option
from ggmk.errors import BootError, DeviceError, KernelStopped
from ggmk.events import Level
from ggmk.task import TASK_DTYPE

SYS_ERROR = layout.CH_SYS_ERROR
SYS_DROPPED = layout.CH_SYS_DROPPED


def resolve_target(target: str) -> str:
    """The name of the target ``target`` resolves to (``"auto"``: ``cuda`` where a usable GPU
    is present, else ``cpu``); kept for callers that want only the name: see
    ``ggmk.device.targets.get_target``."""
    return get_target(target).NAME


def error_code(records: np.ndarray) -> np.ndarray:
    """The error code carried by sys.error / sys.dropped records (the int16 in ``_pad``)."""
    return records["_pad"].astype(np.int16).astype(np.int64)


_REC_BYTES = TASK_DTYPE.itemsize


class _Words:
    """The ring words as plain memoryviews (``DeviceKernel._words``): an int64 word read or
    written through one is a plain int, ~3x cheaper than a NumPy scalar index, and a record
    slot is a 48-byte slice."""

    __slots__ = ("ctl", "txseq", "rx", "tx", "rx_cap", "tx_cap")

    def __init__(self, h, config):
        self.ctl = memoryview(h["ctl"]).cast("B").cast("q")
        self.txseq = memoryview(h["txseq"]).cast("B").cast("q")
        self.rx = memoryview(h["rx"]).cast("B")
        self.tx = memoryview(h["tx"]).cast("B")
        self.rx_cap = config.rx_cap
        self.tx_cap = config.tx_cap


class DeviceKernel:
    """The persistent device kernel for ``modules`` on ``target`` ("auto", "cpu", "sim",
    "cuda"). ``workers`` is the number of worker blocks; any other :class:`DeviceConfig` field
    can be given as a keyword (``batch=``, ``bucket_cap=``, ``aging_interval=``...).

    Records the kernel sends to the host come back from :meth:`pull`: tasks emitted to types
    with no device handler, ``g.emit_host`` records, and failures (``channel == SYS_ERROR``,
    code in ``_pad``, see :func:`error_code`) or undeliverable tasks (``SYS_DROPPED``). None
    of them is dropped when the host falls behind: while the tx ring (``tx_cap``) is full they
    wait in a spill area in device memory (``tx_spill_cap``), and while that is full too their
    producers are held back (``tx_held()``) until the host pulls.
    """

    def __init__(self, modules, target: str = "auto", workers: int | None = None,
                 threads: int | None = None, types=None, noinline=(), view: bool = False,
                 **config):
        # view=True: a host view of a kernel that runs in another process (``attach``): the
        # target need not be usable here (sim's simulator switch is set in that process)
        self.target = get_target(target)
        self.target_name = self.target.NAME
        ok, why = self.target.available()
        if not ok and not view:
            raise DeviceError(f"device target {self.target_name!r} is not usable: {why}")
        modules = list(modules)
        self.handlers = codegen.resolve_handlers(modules, types)
        self.chans = codegen.resolve_channels(modules, self.handlers, types)
        codegen.check_type_policies(modules, self.handlers, types)   # types.toml's, at boot
        base = dict(self.target.DEFAULTS)
        if workers is not None:
            base["blocks"] = workers
        if threads is not None:
            base["threads"] = threads
        unknown = set(config) - set(layout.DeviceConfig.__dataclass_fields__)
        if unknown:
            raise BootError(f"DeviceKernel: unknown config keys {sorted(unknown)}; known: "
                            f"{sorted(layout.DeviceConfig.__dataclass_fields__)}")
        if "trace" not in config:
            # SPEC §7's run switch: GGMK_TRACE=0 strips tracing for the whole process (the
            # CPU kernel's tracer, ggmk.core.trace.ENABLED) and this kernel too
            base["trace"] = cpu_trace.ENABLED
        base.update(config)
        base.update(layout.check_sizes(base))     # (before the target's rules compute with them)
        # the target's own rules (cuda: blocks=0 is one per SM; cpu: its host threads)
        option(self.target, "resolve_config")(base, frozenset(config))
        self.config = layout.DeviceConfig(**base).validate()
        self.plan = layout.plan(self.config, len(self.handlers),
                                codegen.smem_words(self.handlers, self.config.threads),
                                len(self.chans), sum(len(c.subs) for c in self.chans))
        self.type_ids = [int(h.type) for h in self.handlers]
        self._noinline = tuple(noinline)
        self._built = None
        self._launch = None
        self._arrays = None
        self._h = None
        self._tr_cursor = 0
        self._tr_pending: dict = {}       # {position: monotonic time first seen unwritten}
        self._tr_lock = threading.Lock()
        self.trace_lost = 0
        self._stopped = False
        self._notify = None
        self._session = None
        # the rings have one device end each, but the host end may be used by several threads
        # (the bridge pump sends while a caller's ``push_device`` pushes): read index, copy,
        # publish index must not interleave, or two pushes claim the same slots (one record
        # overwritten) and C_RX_TAIL can even move back below C_RX_HEAD (records written where
        # the device already read: skipped). See ``push``.
        self._rx_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        # records for the host held on the host side, under _tx_lock: _tx_front, taken before
        # the ring (what a pull_until that gave up had taken), _tx_back, after it (what the
        # spill area still held when the kernel stopped: ``_settle_tx``)
        self._tx_front = taskmod.empty(0)
        self._tx_back = taskmod.empty(0)
        self._tl_lock = threading.Lock()
        self._trace_sw = codegen.trace_switches(self.config, self.handlers)

    # ------------------------------------------------------------------ lifecycle
    def build(self):
        """Generate and compile (or load from the disk cache) the kernel."""
        if self._built is None:
            self._built = codegen.build(self.handlers, self.plan, self.target,
                                        noinline=self._noinline, chans=self.chans)
        return self._built

    def start(self, timeout: float = 600.0, *, alloc=None) -> "DeviceKernel":
        """Boot: build, allocate device state, launch once; returns when workers run.

        ``alloc``: optional allocation hooks for the mapped words and the arena (an object
        with ``alloc_map(session, image)`` and ``alloc_arena(session, nbytes)``), used in
        place of the target session's own: the device process (``ggmk.bridge.process``)
        puts both in shared memory so its parent reads and writes them directly."""
        if self._stopped:
            raise BootError("DeviceKernel.start: this kernel was stopped, and a stopped kernel "
                            "does not start again: make a new DeviceKernel")
        if self._launch is not None:
            raise BootError("DeviceKernel.start: already started")
        built = self.build()
        # one session per kernel: the target's per-kernel resources (cuda: its non-blocking
        # stream and the deferred-cleanup scope of the resident phase), closed after it exits
        self._session = sess = self.target.open_session(self.plan)
        if alloc is not None:
            sess = _HookedSession(sess, alloc)
        try:
            args = layout.allocate(self.plan, sess.alloc_dev, sess.alloc_map, sess.alloc_arena,
                                   option(self.target, "init_images"))
            self._arrays = args
            hm = self.target.host_view(args[1])
            if type(hm) is not np.ndarray:
                # every host access while resident must be plain memory access (on cuda a device
                # array's views, setitem and copies go through stream 0 and wait for the kernel)
                raise DeviceError(f"device target {self.target_name!r}: host_view returned "
                                  f"{type(hm).__name__}, not a NumPy array")
            offs = layout.offsets(self.plan)
            self._h = {n: hm[o:o + size] for n, (kind, o, size) in offs.items()
                       if kind == "map"}
            self.__dict__.pop("_wv", None)     # (_words' views are of the old words)
            self._h["ctl"][layout.C_ARENA_BASE] = self.target.address_of(args[2])
            self._h["tlv"][:] = self._build_levels()     # run-time trace levels: the builds'
            self._notify = option(self.target, "host_notifier")(self._h["ctl"])
            try:
                sess.prepare(built.kernel, args, built)
            except Exception as e:      # name the handler that does not compile, if it is one
                err = diagnose.explain(e, self.handlers, self.target.NAME)
                if err is None:
                    raise
                raise err from e
            self._launch = sess.launch(built.kernel, args)
        except BaseException:
            self._session = None
            sess.close()                 # nothing was launched: give the resources back
            raise
        self._wait(lambda: self._h["ctl"][layout.C_STARTED] >= 1, timeout, "start")
        return self

    def attach(self, map_words: np.ndarray, arena: np.ndarray, launch, notify=None, *,
               built: dict | None = None) -> "DeviceKernel":
        """Make this (not started) kernel a *host view* of a kernel that runs elsewhere (the
        device process): ``map_words`` and ``arena`` are this process's NumPy views of the
        kernel's mapped words and arena (shared memory), ``launch`` answers ``alive()`` /
        ``wait(timeout)`` / ``error`` for the remote kernel, ``notify`` wakes its parked
        workers. Every host call (push, pull, metrics, heartbeats, arena copies) then works
        on the shared words exactly as in-process: no round trip per call. ``built``:
        ``{"key", "path"}`` of the kernel the other process built, so :attr:`built` describes
        it (without its code: nothing is compiled or loaded here)."""
        if self._launch is not None:
            raise BootError("DeviceKernel.attach: already started")
        nmap = layout.offsets(self.plan)["_total"][2]
        if map_words.dtype != np.int64 or len(map_words) < nmap or \
                arena.dtype != np.uint8 or len(arena) != self.config.arena_bytes:
            raise DeviceError(f"DeviceKernel.attach: need >= {nmap} int64 map words and "
                              f"{self.config.arena_bytes} arena bytes, got {len(map_words)} "
                              f"{map_words.dtype} and {len(arena)} {arena.dtype}")
        self._arrays = (None, map_words, arena)
        offs = layout.offsets(self.plan)
        self._h = {n: map_words[o:o + size] for n, (kind, o, size) in offs.items()
                   if kind == "map"}
        self.__dict__.pop("_wv", None)     # (_words' views are of the old words)
        self._notify = notify
        self._launch = launch
        if built is not None:
            self._built = codegen.Built(
                key=built["key"], path=Path(built["path"]), kernel=None, ns={},
                handlers=self.handlers, plan=self.plan, target=self.target, source="",
                noinline=self._noinline, chans=tuple(self.chans))
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Raise the stop flag and wait for every worker to leave the kernel.

        Not a halt: workers leave at their next iteration and what is still queued stays
        where it is, unrun and unreported: tasks in the device queues (buckets, local, wait
        and overflow queues), tasks that returned WAIT, RETRY backoffs and ``emit_at`` timers
        not yet due, messages on device channels. Their number is in the metrics, final once
        this returns: per type ``enqueued - (ok + fail + retry + yield + wait)``, and
        ``events_pushed - events_fired - events_dropped`` for the event queue;
        ``ggmk.bridge.device_tasks.unfinished_tasks(kernel)`` adds them up. A dual system's
        ``halt()`` names them on sys.error (HALTED). Records already sent to the host are
        not lost: what the tx ring and its spill area hold comes back from :meth:`pull`
        (``tx_lost`` counts what could not be: producers held back when the flag rose)."""
        if self._launch is None or self._stopped:
            return
        self._h["ctl"][layout.C_STOP] = 1
        self._ring()
        done = self._launch.wait(timeout)
        self._stopped = True
        if done:
            self._settle_tx()           # (reads device words: before the session goes)
            if self._session is not None:
                self._session.close()   # never while the kernel may still run
        err = getattr(self._launch, "error", None)
        if err is not None:
            raise DeviceError(f"device kernel ({self.target_name}) failed: {err!r}") from err
        if not done:
            raise DeviceError(f"device kernel ({self.target_name}) did not stop within "
                              f"{timeout} s (heartbeats {self.heartbeats().tolist()})")

    def alive(self) -> bool:
        """Whether the kernel runs: started, not stopped, and it has not failed."""
        return self._launch is not None and not self._stopped and self._launch.alive() \
            and getattr(self._launch, "error", None) is None

    def _failed(self, what: str) -> None:
        """DeviceError naming what the kernel failed with, if it failed (a host thread of
        ``cpu`` that raised: its workers are gone while the kernel's other threads run on)
        and is not stopped yet (:meth:`stop` reports it then)."""
        err = getattr(self._launch, "error", None)
        if err is not None and not self._stopped:
            raise DeviceError(f"{what}: the device kernel ({self.target_name}) failed: "
                              f"{err!r}; stop() it") from err

    def _settle_tx(self) -> None:
        """After the workers left: records still in the tx spill area (device memory: the
        workers only move them onto the ring while the host pulls) go onto the ring where
        their slot is free, in position order, the rest to ``_tx_back`` for :meth:`pull`;
        a position nobody wrote (its producer died mid-way) counts in ``tx_lost``. Nothing
        for a host view (``attach``): the process running the kernel does it."""
        dev = self._arrays[0] if self._arrays is not None else None
        if dev is None:
            return
        offs = layout.offsets(self.plan)

        def words(name):
            _, o, n = offs[name]
            a = dev[o:o + n]
            return a if isinstance(a, np.ndarray) else a.copy_to_host()
        glob, sp, spseq = words("glob"), words("txsp"), words("txspseq")
        ctl, seq = self._h["ctl"], self._h["txseq"]
        cap, scap = self.config.tx_cap, self.config.tx_spill_cap
        ring = self._h["tx"].reshape(cap, layout.W)
        sp = sp.reshape(scap, layout.W)
        back, lost = [], 0
        with self._tx_lock:
            head = int(ctl[layout.C_TX_HEAD])
            for p in range(head, int(glob[layout.G_TX_RES])):
                slot, ss = p & (cap - 1), p & (scap - 1)
                if seq[slot] == p + 1:              # on the ring
                    if back:                        # behind one kept here: pulled from here
                        back.append(ring[slot].copy())
                elif spseq[ss] != p + 1:
                    lost += 1
                elif not back and p - head < cap:   # its ring slot is free (as tx_move does)
                    ring[slot] = sp[ss]
                    seq[slot] = p + 1
                else:
                    back.append(sp[ss].copy())
            if back:
                self._tx_back = np.concatenate(back).view(TASK_DTYPE)
        if lost:
            # published counters: the workers are gone, nothing overwrites them now
            mpub = self._h["mpub"].reshape(self.config.blocks, self.plan.nmet)
            mpub[0, layout.METRIC_NAMES.index("tx_lost")] += lost

    def __enter__(self) -> "DeviceKernel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait(self, cond, timeout, what):
        t_end = time.monotonic() + timeout
        while not cond():
            if self._launch is not None and not self._launch.alive():
                err = getattr(self._launch, "error", None)
                raise DeviceError(f"device kernel ({self.target_name}) exited during {what}: "
                                  f"{err!r}")
            if time.monotonic() > t_end:
                raise DeviceError(f"device kernel ({self.target_name}): {what} timed out "
                                  f"after {timeout} s")
            time.sleep(0.0005)

    def _check(self):
        if self._launch is None:
            raise KernelStopped("DeviceKernel: not started (call start() or use `with`)")

    # ------------------------------------------------------------------ rings
    def push(self, records: np.ndarray, doorbell: bool = True) -> int:
        """Put task records on the host -> device ring; returns how many fitted (the rest
        are for a later call: the ring is bounded and this never waits). The kernel takes
        them in as tasks of their types; one that finds its type's bucket full then is
        dropped at the door (``sys.dropped``, CHAN_FULL), so a producer that must lose none
        keeps fewer in flight than ``bucket_cap`` (the bridge's credits do:
        ``ggmk.bridge.plan.ingress_room``).

        Safe from several host threads at once: the ring's host end (read C_RX_TAIL, copy
        the records, publish C_RX_TAIL) is one critical section. Without it two threads
        (e.g. the bridge pump and ``DualSystem.push_device``) read the same tail, copy into
        the same slots and publish tail + n twice: a record is silently overwritten, and a
        stale tail published after the device consumed past it hides the next records.

        ``doorbell=False``: the doorbell that wakes parked workers is not rung; the caller
        rings it (``_ring``) soon after (the bridge: once it let go of its own lock)."""
        if not isinstance(records, np.ndarray) or (records.dtype is not TASK_DTYPE and
                                                   records.dtype != TASK_DTYPE) \
                or records.ndim != 1:
            got = (type(records).__name__ if not isinstance(records, np.ndarray) else
                   f"an array of dtype {records.dtype}" if records.dtype != TASK_DTYPE else
                   f"a {records.ndim}-D array of shape {records.shape}")
            raise TypeError(f"DeviceKernel.push: records must be a 1-D TASK_DTYPE array "
                            f"(ggmk.task.make), got {got}")
        self._check()
        if self._stopped:
            raise KernelStopped("DeviceKernel.push: the kernel is stopped")
        self._failed("DeviceKernel.push")
        if len(records) == 1:
            # one record (a round trip's): its 48 bytes into the slot, the words read and
            # published as plain ints; no array views (~1 us each for a structured dtype)
            v = self._words()
            ctl, cap = v.ctl, v.rx_cap
            with self._rx_lock:
                tail = ctl[layout.C_RX_TAIL]
                if tail - ctl[layout.C_RX_HEAD] >= cap:
                    return 0
                o = (tail & (cap - 1)) * _REC_BYTES
                v.rx[o:o + _REC_BYTES] = records.tobytes()
                ctl[layout.C_RX_TAIL] = tail + 1    # after the record (see below)
            if doorbell:
                self._ring()
            return 1
        ctl = self._h["ctl"]
        cap = self.config.rx_cap
        with self._rx_lock:
            tail = int(ctl[layout.C_RX_TAIL])
            free = cap - (tail - int(ctl[layout.C_RX_HEAD]))
            n = min(free, len(records))
            if n <= 0:
                return 0
            words = np.ascontiguousarray(records[:n]).view(np.int64).reshape(n, layout.W)
            ring = self._h["rx"].reshape(cap, layout.W)
            s0 = tail & (cap - 1)
            k = min(n, cap - s0)             # up to the ring's end, then from its start:
            ring[s0:s0 + k] = words[:k]      # two slice copies, no index array
            if k < n:
                ring[:n - k] = words[k:]
            ctl[layout.C_RX_TAIL] = tail + n    # after the records: the device reads tail first
        if doorbell:
            self._ring()
        return n

    def _words(self) -> "_Words":
        """Plain memoryviews of the ring words (made once: the mapped words of a started or
        attached kernel never move) for the one-record paths of push / pull / tx_ready."""
        v = self.__dict__.get("_wv")
        if v is None:
            v = self._wv = _Words(self._h, self.config)
        return v

    def tx_bell(self):
        """The host's end of the device -> host bell (the target's ``host_bell``: ``cpu``), or
        None where the device rings none (``sim``, ``cuda``: the host watches the tx ring).
        A host thread with nothing to do until the device publishes sleeps on it (the bridge
        pump): ``b.value()``, ``b.waiting(True)``, a last look at :meth:`tx_ready`,
        ``b.wait(seen, timeout_s)``, ``b.waiting(False)``; another host thread wakes it with
        ``b.ring()``."""
        self._check()
        b = getattr(self, "_bell", False)
        if b is False:
            b = self._bell = option(self.target, "host_bell")(self._h["ctl"])
        return b

    def _ring(self):
        """Tell parked workers there is news (the target's ``host_notifier``, if it has one:
        cpu wakes host threads asleep on its doorbell)."""
        if self._notify is not None:
            self._notify()

    def push_all(self, records: np.ndarray, timeout: float = 30.0) -> None:
        """Push every record, polling while the ring is full."""
        done = 0
        t_end = time.monotonic() + timeout
        while done < len(records):
            k = self.push(records[done:])
            done += k
            if k == 0:
                if time.monotonic() > t_end:
                    raise DeviceError(f"DeviceKernel.push_all: ring full for {timeout} s "
                                      f"({done}/{len(records)} pushed)")
                time.sleep(0.0001)

    def pull(self, max_records: int | None = None) -> np.ndarray:
        """Take the records the kernel has published so far (at most ``max_records``, an int
        >= 0; None: what the ring holds, and every record kept on the host side). Safe from
        several host threads at once (read C_TX_HEAD, copy, publish C_TX_HEAD is one
        critical section: two pullers never both take the same records). Once the kernel
        failed, a pull that finds nothing raises a DeviceError naming the failure."""
        if max_records is not None and (max_records.__class__ is not int or max_records < 0):
            max_records = check_int("DeviceKernel.pull: max_records", max_records, 0)
        self._check()
        with self._tx_lock:
            out = self._pull1() if max_records != 0 and not len(self._tx_front) and \
                not len(self._tx_back) else None
            if out is None:
                out = self._pull_locked(max_records)
        if not len(out):
            self._failed("DeviceKernel.pull")
        return out

    def _pull1(self):
        """``pull`` of a lone record on the ring (a round trip's), under ``_tx_lock``: the
        record as its 48 bytes, the words as plain ints; None when the ring holds none or
        more than one (the general path)."""
        v = self._words()
        ctl, seq, mask = v.ctl, v.txseq, v.tx_cap - 1
        head = ctl[layout.C_TX_HEAD]
        if seq[head & mask] != head + 1 or seq[(head + 1) & mask] == head + 2:
            return None
        o = (head & mask) * _REC_BYTES
        out = np.frombuffer(bytearray(v.tx[o:o + _REC_BYTES]), TASK_DTYPE)
        ctl[layout.C_TX_HEAD] = head + 1
        if v.tx_cap == 1 or ctl[layout.C_TX_HELD] != 0:
            self._ring()                 # (as _pull_ring: spilled records, held producers)
        return out

    def _pull_locked(self, want):
        """``pull`` under ``_tx_lock``: the records kept in front of the ring, the ring, and
        once it has no more (only after a stop), those kept behind it."""
        if not len(self._tx_front) and not len(self._tx_back):
            return self._pull_ring(want)
        parts = []
        for src in ("_tx_front", "ring", "_tx_back"):
            if want == 0 or (src == "_tx_back" and self._tx_ready_ring()):
                break
            if src == "ring":
                r = self._pull_ring(want)
            else:
                held = getattr(self, src)
                r = held if want is None else held[:want]
                setattr(self, src, held[len(r):])
            if len(r):
                parts.append(r)
                want = None if want is None else want - len(r)
        if len(parts) == 1:
            return parts[0]
        return taskmod.concat(parts) if parts else taskmod.empty(0)

    def _pull_ring(self, max_records):
        ctl = self._h["ctl"]
        cap = self.config.tx_cap
        k = cap if max_records is None else min(cap, max_records)
        head = int(ctl[layout.C_TX_HEAD])
        # the records at head, head+1, ... are there while their sequence word says so;
        # the ring as (up to) two slices from head: no index arrays
        s0 = head & (cap - 1)
        k1 = min(k, cap - s0)
        seq = self._h["txseq"]
        exp = np.arange(head + 1, head + 1 + k, dtype=np.int64)
        ready = seq[s0:s0 + k1] == exp[:k1]
        if k1 < k:
            ready = np.concatenate((ready, seq[:k - k1] == exp[k1:]))
        n = k if ready.all() else int(np.argmin(ready))
        out = taskmod.empty(n)
        if not n:
            return out
        dst = out.view(np.int64).reshape(n, layout.W)
        ring = self._h["tx"].reshape(cap, layout.W)
        m = min(n, k1)
        dst[:m] = ring[s0:s0 + m]
        if m < n:
            dst[m:] = ring[:n - m]
        ctl[layout.C_TX_HEAD] = head + n
        if n == cap or ctl[layout.C_TX_HELD] != 0:
            # the ring was full: records may wait in its spill area (device memory) or
            # producers be held back; wake parked workers to move them now (cpu)
            self._ring()
        return out

    def tx_ready(self) -> bool:
        """Whether there is a record for the host that it has not pulled yet (published on
        the ring, or kept on the host side: a word read and two lengths, the cheap check
        before :meth:`pull`)."""
        self._check()
        if len(self._tx_front) or len(self._tx_back):
            return True
        v = self._words()
        head = v.ctl[layout.C_TX_HEAD]
        return v.txseq[head & (v.tx_cap - 1)] == head + 1

    def _tx_ready_ring(self) -> bool:
        head = int(self._h["ctl"][layout.C_TX_HEAD])
        return int(self._h["txseq"][head & (self.config.tx_cap - 1)]) == head + 1

    def rx_unpublished(self) -> int:
        """Records the device took from the host -> device ring that its published metrics do
        not show yet (a block publishes its counters when it parks or every few loops): while
        this is > 0 the published per-type counters miss tasks the device already holds, so
        they cannot say the device is idle."""
        self._check()
        taken = int(self._h["ctl"][layout.C_RX_HEAD])
        col = layout.METRIC_NAMES.index("rx_in")
        rows = self._h["mpub"].reshape(self.config.blocks, self.plan.nmet)
        return taken - int(rows[:, col].sum())

    def rx_pending(self) -> int:
        """Records pushed on the host -> device ring that the device has not taken in yet."""
        self._check()
        ctl = self._h["ctl"]
        return int(ctl[layout.C_RX_TAIL]) - int(ctl[layout.C_RX_HEAD])

    # ------------------------------------------------------------------ the payload arena
    def _arena_span(self, ptr: int, n: int) -> int:
        self._check()
        base = int(self._h["ctl"][layout.C_ARENA_BASE])
        size = int(self._arrays[2].shape[0])
        off = int(ptr) - base
        if n < 0 or off < 0 or off + n > size:
            raise DeviceError(f"DeviceKernel: arena address {int(ptr):#x} (+{n} bytes) is "
                              f"outside the device arena ({base:#x}, {size} bytes)")
        return off

    def _copy_stream(self):
        """cuda: a second non-blocking stream for host <-> arena copies (the kernel's own
        stream is busy with the resident kernel for good: a copy queued on it never runs)."""
        if getattr(self, "_cstream", None) is None:
            self._cstream = self.target.make_stream()
        return self._cstream[1]

    def write_arena(self, ptr: int, data) -> None:
        """Copy ``data`` (bytes or a uint8 array) to device arena address ``ptr`` (an address
        the device gave out, e.g. from ``g.alloc``). cpu / sim: a plain memory copy; cuda: a
        copy on a non-blocking stream of its own, complete when this returns."""
        src = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
            else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        n = len(src)
        off = self._arena_span(ptr, n)
        if not n:
            return
        arena = self._arrays[2]
        host = arena if isinstance(arena, np.ndarray) else (
            self.target.host_view(arena) if self.target_name != "cuda" else None)
        if isinstance(host, np.ndarray):
            host[off:off + n] = src
            return
        s = self._copy_stream()
        arena[off:off + n].copy_to_device(src, stream=s)
        s.synchronize()

    def read_arena(self, ptr: int, n: int) -> np.ndarray:
        """A host copy (uint8 array) of ``n`` bytes at device arena address ``ptr``."""
        n = int(n)
        off = self._arena_span(ptr, n)
        arena = self._arrays[2]
        host = arena if isinstance(arena, np.ndarray) else (
            self.target.host_view(arena) if self.target_name != "cuda" else None)
        if isinstance(host, np.ndarray):
            return host[off:off + n].copy()
        out = np.empty(n, np.uint8)
        if n:
            s = self._copy_stream()
            arena[off:off + n].copy_to_host(out, stream=s)
            s.synchronize()
        return out

    def tx_held(self) -> int:
        """Device producers held back right now because the device -> host ring and its
        spill area are full (they continue as soon as the host pulls)."""
        self._check()
        return int(self._h["ctl"][layout.C_TX_HELD])

    def pull_until(self, count: int, timeout: float = 30.0) -> np.ndarray:
        """Pull until ``count`` records arrived (or raise after ``timeout``, or once the
        kernel stopped or failed: the records taken by then are kept, and the next pull
        returns them first)."""
        count = check_int("DeviceKernel.pull_until: count", count, 0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout >= 0:
            raise ValueError(f"DeviceKernel.pull_until: timeout={timeout!r}: allowed a number "
                             f"of seconds >= 0")
        parts, got = [], 0
        t_end = time.monotonic() + timeout
        while got < count:
            try:
                r = self.pull(count - got)
            except DeviceError as e:        # the kernel failed (``_failed``)
                raise self._give_back(parts, got, count, f"when the device kernel "
                                      f"({self.target_name}) failed: {e.__cause__!r}") from e
            if len(r):
                parts.append(r)
                got += len(r)
                continue
            if not self.alive():
                raise self._give_back(parts, got, count, "and the kernel is not running")
            if time.monotonic() > t_end:
                raise self._give_back(parts, got, count, f"after {timeout} s",
                                      f"; metrics {self.metrics()['global']}")
            time.sleep(0.0002)
        return taskmod.concat(parts) if parts else taskmod.empty(0)

    def _give_back(self, parts, got, count, why, more="") -> DeviceError:
        """The records a ``pull_until`` took before giving up go back in front of the rest
        (taken from the ring, they are nowhere else); its error says so."""
        if parts:
            with self._tx_lock:
                self._tx_front = taskmod.concat(parts + [self._tx_front])
        kept = f" (the {got} taken are kept: the next pull returns them first)" if got else ""
        return DeviceError(f"DeviceKernel.pull_until: {got}/{count} records {why}{kept}{more}")

    # ------------------------------------------------------------------ observability
    def heartbeats(self) -> np.ndarray:
        """Per-worker loop counters (they advance while a worker is alive)."""
        self._check()
        return self._h["hb"][:: 8][: self.config.blocks].copy()

    def tick(self) -> int:
        self._check()
        return int(self._h["ctl"][layout.C_TICK])

    def metrics(self) -> dict:
        """The last published metrics: {'global': {...}, 'types': {type_id: {...}},
        'user': [16 counters], 'channels': {name: {...}}} (published every few loops and when a
        worker parks/exits). A channel's entry: id, type, mode, guarantee, capacity, reserve,
        depth (messages in flight: queued or running, the largest over subscribers),
        high_watermark, emitted (accepted), full (refused with CHAN_FULL), dropped (copies
        sent to sys.dropped), delivered (copies enqueued), subscribers (count) and subs (per
        subscriber: type, handler, depth, delivered, dropped, high_watermark)."""
        self._check()
        rows = self._h["mpub"].reshape(self.config.blocks, self.plan.nmet).copy()
        g = {}
        for i, name in enumerate(layout.METRIC_NAMES):
            if name.startswith("user"):
                continue
            col = rows[:, i]
            g[name] = int(col.max() if name in layout.HWM_METRICS else col.sum())
        types = {}
        for ti, tid in enumerate(self.type_ids):
            o = layout.NGLOBAL_METRICS + ti * layout.NPT
            types[tid] = {n: int(rows[:, o + k].sum())
                          for k, n in enumerate(layout.PER_TYPE_NAMES)}
        # the kernel counts enqueues per type only (one counter less per task)
        g["enqueued"] = sum(t["enqueued"] for t in types.values())
        u0 = layout.METRIC_NAMES.index("user0")
        return {"global": g, "types": types,
                "user": [int(rows[:, u0 + k].sum()) for k in range(16)],
                "channels": self._channel_metrics(rows),
                "workers": self.config.blocks, "target": self.target_name}

    def type_totals(self, type_ids, names=("ok", "fail")) -> np.ndarray:
        """For each of ``type_ids``: the sum of its published per-type counters ``names`` over
        every worker (default: finished tasks, ok + fail). The cheap form of
        ``metrics()["types"]`` for a caller that polls a few counters (the bridge's credits)."""
        self._check()
        key = (tuple(int(t) for t in type_ids), tuple(names))
        cache = self.__dict__.setdefault("_tt_cols", {})
        cols = cache.get(key)
        if cols is None:
            cols = np.array([layout.NGLOBAL_METRICS + self.type_ids.index(t) * layout.NPT
                             + layout.PER_TYPE_NAMES.index(n) for t in key[0] for n in key[1]],
                            dtype=np.intp)
            cache[key] = cols
        rows = self._h["mpub"].reshape(self.config.blocks, self.plan.nmet)
        return rows[:, cols].sum(axis=0).reshape(len(key[0]), len(key[1])).sum(axis=1)

    def chan_depth(self, name, sub_type: int | None = None) -> int:
        """Messages in flight (queued or running) on device channel ``name``, the largest
        over its subscribers (or the subscriber handler of type ``sub_type``'s), as last
        published (one word per subscriber; exact once the kernel has stopped)."""
        self._check()
        key = getattr(name, "name", name)
        for c in self.chans:
            if c.name == key:
                pub = self._h["cpub"][c.slot0:c.slot0 + len(c.subs)]
                if sub_type is not None:
                    for k, hi in enumerate(c.subs):
                        if self.type_ids[hi] == int(sub_type):
                            return int(pub[k])
                    raise KeyError(f"DeviceKernel: device channel {key!r} has no subscriber "
                                   f"of type {sub_type}")
                return int(pub.max()) if len(pub) else 0
        raise KeyError(f"DeviceKernel: no device channel {key!r}")

    def chan_seq(self, name) -> int:
        """The last sequence number device channel ``name`` assigned (0: none yet), as last
        published, with its depth (:meth:`chan_depth`): every seq up to it was assigned; a
        killed kernel may have assigned more since; exact once the kernel has stopped."""
        self._check()
        return int(self._h["chpub"][self.channel_id(name) - 1])

    @property
    def channels(self) -> dict:
        """{name: id} of the device channels (ids are fixed when the kernel is built)."""
        return {c.name: c.id for c in self.chans}

    def channel_id(self, name) -> int:
        """The id of device channel ``name`` (a name or a declaration object)."""
        key = getattr(name, "name", name)
        for c in self.chans:
            if c.name == key:
                return c.id
        known = ", ".join(c.name for c in self.chans) or "none declared"
        raise KeyError(f"DeviceKernel: no device channel {key!r} (device channels: {known})")

    def _channel_metrics(self, rows: np.ndarray) -> dict:
        depth = self._h["cpub"]
        out = {}
        for c in self.chans:
            o = self.plan.mch0 + (c.id - 1) * layout.NPC
            d = {n: int(rows[:, o + k].max() if n == "high_watermark" else rows[:, o + k].sum())
                 for k, n in enumerate(layout.PER_CHAN_NAMES)}
            subs = []
            for k, hi in enumerate(c.subs):
                slot = c.slot0 + k
                so = self.plan.msub0 + slot * layout.NPS
                s = {n: int(rows[:, so + j].max() if n == "high_watermark"
                            else rows[:, so + j].sum())
                     for j, n in enumerate(layout.PER_SUB_NAMES)}
                h = self.handlers[hi]
                subs.append({"type": int(h.type), "handler": f"{h.module.name}.{h.name}",
                             "depth": int(depth[slot])} | s)
            out[c.name] = {"id": c.id, "type": c.message, "mode": c.mode,
                           "guarantee": c.guarantee, "capacity": c.capacity,
                           "reserve": c.reserve,
                           "depth": max((x["depth"] for x in subs), default=0),
                           "subscribers": len(subs), "subs": subs} | d
        return out

    def drain_trace(self) -> np.ndarray:
        """Trace records written since the last drain, oldest first (``layout.
        DEVICE_TRACE_DTYPE``: the 24-byte trace event plus ``worker``, the block that recorded
        it, and ``n``, the task count of a task slice's TASK_START / TASK_END). The ring
        overwrites when the host falls behind; ``trace_lost`` counts what was overwritten.
        A record whose slot is reserved but not yet written stops the drain there (the next
        drain takes it), unless it stays unwritten for ``TRACE_STALL_S``: then it is counted
        lost and skipped. That happens when a worker was killed in the middle of writing it,
        or when the ring wrapped under two writers a lap apart and the older one wrote the
        slot last (the newer position never appears). Thread-safe."""
        self._check()
        with self._tr_lock:
            recs, cursor, lost, pending = drain_trace_ring(self._h["tr"], self._h["trseq"],
                                                           self._tr_cursor)
            now = time.monotonic()
            if pending is not None and len(recs) == 0:
                since = self._tr_pending.get(pending)
                if since is None:
                    self._tr_pending = {pending: now}
                elif now - since > TRACE_STALL_S:
                    # skip the stuck slot: everything after it is drained next time
                    self._tr_pending = {}
                    lost += 1
                    cursor = pending
            else:
                self._tr_pending = {}
            self._tr_cursor = cursor
            self.trace_lost += lost
            return recs

    # ------------------------------------------------------------------ trace levels
    def _build_levels(self) -> np.ndarray:
        """The initial run-time level table: each handler type's module's build level, then
        the worker word (park / wake recorded at ``all``, where compiled in)."""
        lv = [int(h.module.trace_level) for h in self.handlers]
        return np.array(lv + [self._worker_level(lv)], np.int64)

    def _worker_level(self, levels) -> int:
        """The worker word for per-type levels ``levels``: ``all`` (park / wake recorded)
        while any module traces at ``all`` (with ``trace_tasks``: while any is not off)."""
        sw = self._trace_sw
        if not sw["TRACE_WORKER"]:
            return int(Level.OFF)
        floor = Level.ERROR if sw["TRACE_TASKS_ALL"] else Level.ALL
        return int(Level.ALL if any(v >= floor for v in levels) else Level.OFF)

    def trace_levels(self) -> dict:
        """{module: {"level": run-time level, "build": build level}} (level names) of every
        module with a handler in this kernel. The build level (``Module(trace_level=)``) is
        compiled in and is the most a run-time level gives; with tracing stripped
        (``trace=False``, ``GGMK_TRACE=0``) every run-time level is ``off``."""
        self._check()
        tlv = self._h["tlv"]
        out = {}
        for ti, h in enumerate(self.handlers):
            cur = int(tlv[ti]) if self._trace_sw["TRACE_ON"] else 0
            out.setdefault(h.module.name, {"level": Level(cur).name.lower(),
                                           "build": Level(h.module.trace_level).name.lower()})
        return out

    def set_trace_level(self, module: str | None, level) -> dict:
        """Set the run-time trace level of device module ``module`` (None: every module of
        this kernel) to ``level`` (a ``Level``, 0..4 or "off" / "error" / "warn" / "info" /
        "all"), while the kernel runs: the workers read it at their next event (one
        volatile load of a mapped word). The module's build level is the ceiling: a higher
        level for a module named is a ValueError (nothing changes: rebuild with
        ``Module(name, trace_level=...)``); for every module each gets at most its own.
        Returns {module: the level now in force} (all ``off`` when tracing is stripped).
        Park / wake records follow: recorded while some module is at ``all``."""
        self._check()
        lv = cpu_trace.parse_level(level, f"set_trace_level({module!r})")
        names = {h.module.name for h in self.handlers}
        if module is not None and module not in names:
            raise ValueError(f"set_trace_level: no GPU module {module!r} in this kernel; GPU "
                             f"modules: {sorted(names)}")
        if module is not None:
            build = next(h.module.trace_level for h in self.handlers
                         if h.module.name == module)
            if lv > build:
                raise ValueError(
                    f"set_trace_level: GPU module {module!r} is built at trace level "
                    f"{Level(build).name.lower()}: its level is compiled in and a run-time "
                    f"level can only lower it; boot with gd.Module({module!r}, "
                    f"trace_level={lv.name.lower()!r}) to trace it at {lv.name.lower()}")
        on = self._trace_sw["TRACE_ON"]
        out = {}
        with self._tl_lock:
            tlv = self._h["tlv"]
            for ti, h in enumerate(self.handlers):
                if module is None or h.module.name == module:
                    tlv[ti] = min(int(lv), int(h.module.trace_level))
                    out[h.module.name] = Level(int(tlv[ti]) if on else 0)
            tlv[len(self.handlers)] = self._worker_level(tlv[:len(self.handlers)].tolist())
        return out

    # ------------------------------------------------------------------ conveniences
    @property
    def built(self):
        return self._built

    def __repr__(self) -> str:
        state = "running" if self.alive() else ("stopped" if self._stopped else "new")
        return (f"DeviceKernel(target={self.target_name}, workers={self.config.blocks}, "
                f"handlers={len(self.handlers)}, {state})")


TRACE_STALL_S = 0.5      # a reserved trace slot unwritten this long is skipped (lost)


def drain_trace_ring(tr: np.ndarray, trseq: np.ndarray, cursor: int):
    """The host half of the trace ring protocol (the device half: ``trace_event`` in
    ``kernel_src``): a writer reserves position ``p`` (a global fetch-add), clears
    ``trseq[slot]`` of slot ``p % cap``, fences, writes the record there, fences, and sets
    ``trseq[slot] = p + 1``; a copy is kept only if the slot's sequence is the same after it
    as before. Positions up to ``cursor`` were drained. Returns ``(records, new_cursor, lost, pending)``: the complete
    records after ``cursor`` in position order, as far as the first position whose slot
    holds an older sequence (reserved, not yet written: ``pending`` is that position, the
    next drain resumes there; None if there is none); ``lost`` counts positions overwritten
    before they were drained, and records the device overwrote while they were copied."""
    cap = len(trseq)
    seqs = trseq.copy()
    top = int(seqs.max()) if cap else 0
    if top <= cursor:
        return np.zeros(0, layout.DEVICE_TRACE_DTYPE), cursor, 0, None
    lo = max(cursor + 1, top - cap + 1)          # older positions: their slots were reused
    lost = lo - (cursor + 1)
    q = np.arange(lo, top + 1, dtype=np.int64)  # the positions the ring can still hold
    slots = (q - 1) % cap
    at = seqs[slots]
    waiting = np.nonzero(at < q)[0]
    pending = None
    if len(waiting):
        end = int(waiting[0])
        pending = int(q[end])
        q, slots, at = q[:end], slots[:end], at[:end]
    here = at == q
    lost += int((~here).sum())                    # overwritten by a newer position
    take = slots[here]
    recs = tr.reshape(-1, layout.TW)[take].copy()
    again = trseq[take]                           # a slot rewritten while we copied it
    same = again == q[here]
    lost += int((~same).sum())
    out = recs[same].reshape(-1).view(layout.DEVICE_TRACE_DTYPE)
    return out, (int(q[-1]) if len(q) else lo - 1), lost, pending


class _HookedSession:
    """A target session whose ``alloc_map`` / ``alloc_arena`` are replaced by hooks (see
    ``DeviceKernel.start(alloc=)``); everything else is the session's own."""

    def __init__(self, sess, hooks):
        self._sess = sess
        self._hooks = hooks

    def alloc_map(self, image):
        return self._hooks.alloc_map(self._sess, image)

    def alloc_arena(self, nbytes):
        return self._hooks.alloc_arena(self._sess, nbytes)

    def __getattr__(self, name):
        return getattr(self._sess, name)
