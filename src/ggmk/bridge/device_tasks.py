"""The GPU kernel's own unfinished tasks when it stops for good (halt) or is reset.

The bridge names what crosses it (``Bridge.reset_device``); a GPU kernel also holds tasks that
never crossed: tasks given with ``push_device``, follow-on tasks its handlers emitted, copies
on device-only channels, tasks waiting for a full channel. Their records die with the kernel
(device memory); their number does not: every task placed on a device queue counts once in its
type's ``enqueued``, every run ends in exactly one of ok / fail / retry / yield / wait (a yield
or a wait is placed again, counted again), so per type

    unfinished = enqueued - (ok + fail + retry + yield + wait)

is what was queued or running when it stopped (exact once the kernel stopped; the last
publication if it was killed). Retried tasks waiting on the device's event queue are not in a
type's count until they fire: they are counted globally (``events_pushed - events_fired -
events_dropped``); their records (type, meta words) are read by ``pending_events`` where
this process can read the kernel's device words or a device process handed them back (at a
normal stop, or asked just before a hung kernel is killed: read while its live workers ran and
its stuck one may have been mid-write, see ``_settled``); a kernel killed unread (a device
process that did not answer in time) leaves them named with type 0. Bridge types are left to
the bridge; copies on a CPU -> GPU channel's device side the bridge already names
(``chan_depth``) are taken off their subscriber type's count, so no message is named twice.

Records still on the host -> device ring were never taken in (only GPU worker 0 takes them
in: a hung worker 0 leaves every later ``push_device`` there), so no counter has them;
``host_ring_left`` reads them from the ring itself.
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from ggmk.device import layout

_OUTCOMES = ("ok", "fail", "retry", "yield", "wait")

#: reads of words a kernel that did not stop may still be writing are repeated until two in a
#: row agree (see ``_settled``), at most this many times
SETTLE_TRIES = 20
#: seconds a copy of a ``cuda`` kernel's device words may take while the kernel still runs
#: (hung): the copy may wait behind the resident kernel forever; not waited for longer
CUDA_READ_S = 2.0


def unfinished_tasks(kernel, bridged_channels=()) -> dict[int, int]:
    """{type id: tasks of that type queued or running in ``kernel``} (type 0: pending events),
    leaving out bridge types and the subscriber copies of ``bridged_channels`` (names of CPU ->
    GPU channels whose messages the bridge accounts itself). Types with none are left out."""
    types = [t for t in kernel.type_ids if not ds.is_bridge_type(t)]
    out: dict[int, int] = {}
    if types:
        left = kernel.type_totals(types, ("enqueued",)).astype(np.int64) \
            - kernel.type_totals(types, _OUTCOMES).astype(np.int64)      # (summed per type)
        for t, n in zip(types, left.tolist()):
            for name in bridged_channels:
                if n > 0:
                    n -= max(0, _sub_depth(kernel, name, t))
            if n > 0:
                out[int(t)] = int(n)
    g = kernel.metrics()["global"]
    events = int(g.get("events_pushed", 0)) - int(g.get("events_fired", 0)) \
        - int(g.get("events_dropped", 0))
    if events > 0:
        out[0] = events
    return out


def pending_events(kernel) -> np.ndarray | None:
    """The records on a stopped ``kernel``'s event queue (``emit_at`` timers and RETRY backoffs
    not yet due: the heap, then the inbox not yet moved into it), as the kernel holds them:
    their own type and meta words, so an armed timer's tick or a reduce's timeout check is
    named, not counted as type 0. None when this process cannot read the kernel's device
    words (a kernel in a device process: its device memory is the child's) and no one handed
    them over as ``kernel.held_events`` (the device process, at stop)."""
    held, dev = _held_or_words(kernel, "held_events")
    if dev is None:
        return held
    offs = layout.offsets(kernel.plan)
    W = layout.W

    def region(name):
        return dev[offs[name][1]:offs[name][1] + offs[name][2]]
    glob, qseq = region("glob"), region("qseq")
    qi = [q[0] for q in kernel.plan.queues].index("evinbox")
    _, base, cap = kernel.plan.queues[qi]
    qc = region("qc")[qi * layout.QCS:]

    def read():
        n = int(glob[layout.G_EV_SIZE])
        heap = region("evr")[:max(0, min(n, offs["evk"][2])) * W]
        head, tail = int(qc[layout.QC_HEAD]), int(qc[layout.QC_TAIL])
        pos = head + np.arange(max(0, min(tail - head, cap)), dtype=np.int64)
        slots = base + (pos & (cap - 1))
        # (a slot reserved whose producer has not written it yet holds an old record)
        slots = slots[qseq[slots] == pos + 1]
        inbox = region("q").reshape(-1, W)[slots].reshape(-1)
        return np.concatenate([heap, inbox]).astype(np.int64)
    # (the heap moves under the event lock: a read while a live worker held it may be torn)
    return _settled(read, lambda: int(glob[layout.G_EV_LOCK]) == 0).view(T.TASK_DTYPE).copy()


def user_words(kernel) -> np.ndarray | None:
    """A copy of a stopped ``kernel``'s user words (``g.user_get``: ``layout.USER_WORDS``
    int64), for the device modules' ``halt_records`` hooks; the device process's hand-back
    (``kernel.held_user_words``) where this process cannot read them, else None."""
    held, dev = _held_or_words(kernel, "held_user_words")
    if dev is None:
        return held
    _, o, n = layout.offsets(kernel.plan)["user"]
    return _settled(lambda: np.array(dev[o:o + n], dtype=np.int64))


def _settled(read, free=lambda: True) -> np.ndarray:
    """``read()`` of device words. A stopped kernel's do not change: the first two reads agree.
    A kernel that did not stop (hung: its device process reads them just before it is
    killed; in-process, a halt whose stop timed out) has live workers still writing them and
    a stuck one that may be mid-write: read again until two reads in a row agree with
    ``free()`` (its lock not held) around each, at most ``SETTLE_TRIES`` times, else the last
    read as it is. Either way what is named is a snapshot: a record being written may be torn
    (wrong meta words), one being moved may show twice or not at all. How many events are
    named never comes from it (the published counters say: ``Bridge._lost_tasks_on_device``);
    a ``halt_records`` hook names what the snapshot of the user words shows."""
    last = cur = None
    for _ in range(SETTLE_TRIES):
        ok = free()
        cur = read()
        ok = ok and free()
        if ok and last is not None and np.array_equal(cur, last):
            return cur
        last = cur if ok else None
    return cur


def _held_or_words(kernel, attr: str):
    """(what the device process handed back as ``kernel.<attr>``, None) when it did, else
    (None, the kernel's device words readable here, or None)."""
    held = getattr(kernel, attr, None)
    if isinstance(held, np.ndarray):
        return held, None
    return None, _dev_words(kernel)


def _dev_words(kernel):
    """``kernel``'s device words readable here (NumPy), or None."""
    arrays = getattr(kernel, "_arrays", None)
    dev = arrays[0] if arrays is not None else None
    if dev is None or isinstance(dev, np.ndarray):
        return dev
    launch = getattr(kernel, "_launch", None)
    try:
        if launch is None or not launch.alive():
            return dev.copy_to_host()      # (cuda: the device memory is kept with the kernel)
    except Exception:   # noqa: BLE001 - unreadable: counted as type 0 instead
        return None
    # still running (hung): the copy may wait behind the resident kernel forever; a helper
    # thread (in the kernel's context) does it, waited for CUDA_READ_S at most
    out = []

    def copy():
        ctx = getattr(getattr(dev, "gpu_data", None), "context", None)
        try:
            if ctx is not None:
                ctx.push()
            out.append(dev.copy_to_host())
            if ctx is not None:
                ctx.pop()
        except Exception:   # noqa: BLE001 - unreadable: counted as type 0 instead
            pass
    th = threading.Thread(target=copy, name="ggmk-dev-words", daemon=True)
    th.start()
    th.join(CUDA_READ_S)
    return out[0] if out else None


def _sub_depth(kernel, name: str, type_id: int) -> int:
    """Copies of channel ``name`` queued or running for its subscriber of ``type_id`` (0 when
    that type does not subscribe to it)."""
    for c in kernel.chans:
        if c.name == name:
            if any(kernel.type_ids[h] == type_id for h in c.subs):
                return int(kernel.chan_depth(name, type_id))
            return 0
    return 0


def host_ring_left(kernel) -> np.ndarray:
    """The records on ``kernel``'s host -> device ring that it never took in (between
    ``C_RX_HEAD`` and ``C_RX_TAIL``: mapped words, still readable once the kernel stopped or
    its process was killed), bridge types left out (the bridge's send log names its own)."""
    ctl = kernel._h["ctl"]
    cap = int(kernel.config.rx_cap)
    head = int(ctl[layout.C_RX_HEAD])
    n = min(int(ctl[layout.C_RX_TAIL]) - head, cap)
    if n <= 0:
        return T.empty(0)
    slots = (head + np.arange(n, dtype=np.int64)) & (cap - 1)
    recs = kernel._h["rx"].reshape(cap, layout.W)[slots].view(T.TASK_DTYPE).reshape(n)
    t = recs["type"]
    return T.select(recs, (t < ds.BASE) | (t >= ds.BASE + 0x4000))
