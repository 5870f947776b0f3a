"""Standard modules (SPEC §10) for the CPU kernel, and the helpers they share.

Each module is a factory returning a configured :class:`ggmk.Module`::

    from ggmk.modules import kv, echo, reduce, timer, log, gate, stats, nic, nvme
    system = ggmk.boot([kv.module(capacity=1024), timer.module()], workers=2)

Type-id ranges (hand-assigned ids in each module's ``.toml`` fragment; 0x100 ids per module,
all below ``AUTO_ID_FIRST`` 0x8000). Keep other modules' hand-assigned ids out of them:

=========  ===============  =====
module     ids              mnemonic
=========  ===============  =====
echo       0x4500 .. 0x45FF "E"
gate       0x4700 .. 0x47FF "G"
nic        0x4900 .. 0x49FF "I" (interface)
kv         0x4B00 .. 0x4BFF "K"
log        0x4C00 .. 0x4CFF "L"
nvme       0x4E00 .. 0x4EFF "N"
reduce     0x5200 .. 0x52FF "R"
stats      0x5300 .. 0x53FF "S"
timer      0x5400 .. 0x54FF "T"
=========  ===============  =====

Several instances of one standard module can be booted together: an instance not named like
the module (``kv.module(name="cache")``) gets its own channel prefix (``cache.get`` ...) and
handler types named ``<TYPE>_<NAME>`` (automatic ids); the message types stay the module's.

Device versions (``device_module()``) keep their state in the GPU kernel's 65536 user words
(``g.user_*``); their default regions are disjoint, so any of them boot together with their
defaults (``hi`` exclusive; the bridge of a dual boot keeps the top 2048 words, 63488..65535).
A region made without ``base=`` (``rr_word=`` for echo; not kv's, below) is placed by the
kernel's build: at its default words when they are free, else (a second instance, or sizes
that grow it into a neighbour's words) at free words elsewhere (``ggmk.device.Module.movable``;
``m.user_words`` says where once the kernel is made); an explicit ``base=`` stays put, and
regions that do not fit the user words together are a BootError naming each module and its
size:

=============  ===============  ===============================================================
module         default words    size
=============  ===============  ===============================================================
reduce         1024 .. 1410     ``base=1024``: 2 + 6 per group slot (64 groups)
timer          4096 .. 4484     ``base=4096``: 4 + 6 per timer slot (64 timers)
gate           8192 .. 8769     ``base=8192``: 1 + 6 + 3 (n - 1) per gate slot (64 gates; n=2)
stats          12288 .. 16900   ``base=12288``: 4 + 72 per metric (64 metrics)
log            28672 .. 28681   ``base=28672``: 9 words
echo           32767            ``rr_word=32767``: the round-robin turn (``round_robin`` only)
kv             32768 .. 40962   ``base=32768``: 2 + 4 per slot (``2 * capacity`` slots rounded
                                up to a power of two: 2048 at capacity 1024; at most 2048
                                keys at this base, ending at 49154)
=============  ===============  ===============================================================

kv's ``base`` stays where it is given (32768 by default): a larger kv table or a second kv
instance needs its own ``base``.

Shared helpers (for module authors too):

* :func:`std_module` - a ``ggmk.Module`` carrying a ``.toml`` fragment's types.
* :func:`registry` - a TypeRegistry with standard modules' ids, for ``ggmk.dual.boot(...,
  types=)`` when a standard module runs on the GPU kernel (``device_module(channels=True)``).
* Device helpers for the ``device_module()`` factories: :func:`device_api` (imports the
  device API lazily: it loads Numba), :func:`try_lock` / :func:`unlock` (a bounded fetch-add
  try-lock on a user word), :func:`slot_key` (the hash every device table uses),
  :func:`emit_or_later` (a follow-on that must not be lost: the event queue when the run
  queues are full).
* :func:`device_region` - a device factory's check that its user-word region fits, naming
  the argument at fault; the factories record the region as ``m.user_words = (lo, hi,
  what)`` (``hi`` exclusive; ``None``: no user words), so a build can refuse overlaps, and
  one made without ``base=`` as ``m.movable(place)`` (``place(lo)`` rebinds the words its
  handlers use), so the build can move it to free words instead.
* :class:`Outbox` - records waiting for room on a lossless channel: a handler that has
  already done its work (a kv put applied, a gate opened) must not lose or redo the answer
  when the channel is full, so the answer waits here in order and is flushed by the next
  handler call or a deferred flush task; while it is non-empty the system is not idle, and at
  halt what is left goes to ``sys.dropped`` with ``CHAN_CLOSED``, as records of the channel's
  type with their payloads (never silently lost).
"""
from __future__ import annotations

import threading
from collections import deque
from functools import lru_cache
from itertools import chain, islice, repeat
from pathlib import Path

import numpy as np

from ggmk import task as T
from ggmk.core.module import Module
from ggmk.errors import BootError

__all__ = ["std_module", "Outbox", "instance_type", "check_instance_name", "defer", "RANGES",
           "registry", "device_api", "emit_or_later", "try_lock", "unlock", "slot_key",
           "device_region"]

_CHUNK = 4096
RANGES = {"echo": 0x4500, "gate": 0x4700, "nic": 0x4900, "kv": 0x4B00, "log": 0x4C00,
          "nvme": 0x4E00, "reduce": 0x5200, "stats": 0x5300, "timer": 0x5400}


@lru_cache(maxsize=None)
def _manifest(path: str):
    from ggmk.typereg import load_module_manifest
    return load_module_manifest(path)


def check_instance_name(name) -> str:
    import re
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise BootError(f"module name must be lowercase letters, digits and '_' (it becomes a "
                        f"channel prefix and a type suffix), got {name!r}")
    return name


def std_module(name: str, toml: str, *, version: str = "0.1.0") -> Module:
    """A Module named ``name`` that brings the types of the ``.toml`` fragment next to this
    file (``toml`` = "kv" -> ``kv.toml``); they join the registry at boot."""
    check_instance_name(name)
    man = _manifest(str(Path(__file__).with_name(f"{toml}.toml")))
    m = Module(name, version)
    m.manifest = man
    return m


def word_key(k, what: str) -> int:
    """An id given as a dict key (a gate id, a metric id): an int 0..2**64-1, else a BootError
    naming it (``int()`` turned 1.7 into 1 and -1 into an id no task can carry)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < 1 << 64:
        raise BootError(f"{what}: key {k!r}: allowed an int 0..2**64-1")
    return int(k)


def drop_rows(system, type_id: int, rows, code: int = T.CHAN_CLOSED) -> int:
    """What a module still holds at halt, as records on ``sys.dropped`` with ``code``:
    ``rows`` of (meta0, meta1[, payload_ptr[, payload_len]]) of type ``type_id`` (the payloads
    are released by the dead letter). Returns how many."""
    if not rows:
        return 0
    a = np.array(rows, dtype=np.uint64)
    recs = T.make(len(a), type=type_id, meta0=a[:, 0], meta1=a[:, 1],
                  payload_ptr=a[:, 2] if a.shape[1] > 2 else 0,
                  payload_len=a[:, 3].astype(np.uint32) if a.shape[1] > 3 else 0)
    return system.dead_letter(recs, code, which="sys.dropped")


def instance_type(base: str, name: str, default: str) -> str:
    """The handler type of an instance: ``base`` for the default instance, else
    ``BASE_NAME`` (auto-registered at boot)."""
    return base if name == default else f"{base}_{name.upper()}"


def defer(system, type, meta0=0, meta1=0, *, due: int) -> int:
    """``system.submit(type, ..., due=due)`` for a module's own deferred tasks (timeouts,
    timers); returns how many were accepted: the first ones of the columns, the rest were
    refused (the event queue is full: they are on ``sys.error`` with ``EVENT_FULL``, and the
    caller must not wait for them). 0 when the system is halting (nothing can be scheduled
    any more). One task: truthy exactly when it was accepted."""
    if system.halted:
        return 0
    from ggmk.errors import KernelStopped
    try:
        return int(system.submit(type, meta0=meta0, meta1=meta1, due=due))
    except KernelStopped:
        return 0


class Outbox:
    """Messages waiting for room on one channel, in order.

    ``put(...)`` queues one message (a payload pointer it owns); ``flush(system)`` publishes as
    many as fit and, when some are left, schedules one deferred ``flush_type`` task (whose
    handler calls ``flush`` again). ``backlog`` lets a handler push back (``WAIT``) on new
    requests while answers are waiting. ``drop_all(system)`` (module fini) puts what is left
    on ``sys.dropped`` with ``CHAN_CLOSED`` and gives the payloads back.

    With nobody subscribed to the channel, messages go to ``sys.dropped`` with
    ``CHAN_NO_SUBSCRIBER``, as a plain publish's would (a result, a release, a fire is the
    module's product); ``optional=True`` (acks, snapshots a module also keeps: documented as
    sent "when something subscribes") only counts them in ``unheard``.
    """

    def __init__(self, channel: str, flush_type: str, limit: int = 1024, *,
                 optional: bool = False):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BootError(f"{channel}: outbox_limit must be an int >= 1 (messages waiting "
                            f"for room), got {limit!r}")
        self.channel = channel
        self.optional = optional
        self.flush_type = flush_type
        self.limit = limit
        self._q: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        # the channel's message type, kept by flush: at halt drop_all can no longer ask the
        # channel (halt closes the channels before module fini)
        self.type_id = 0
        self.published = 0
        self.waits = 0
        self.unheard = 0            # messages nobody subscribed to (see the class doc)

    def __len__(self) -> int:
        return len(self._q)

    @property
    def full(self) -> bool:
        return len(self._q) >= self.limit

    def put(self, meta0: int, meta1: int = 0, ptr: int = 0, plen: int = 0) -> None:
        with self._lock:
            self._q.append((meta0, meta1, ptr, plen))

    def put_many(self, meta0s, meta1s) -> None:
        """Queue messages without payloads from two columns (uint64 arrays), in order."""
        with self._lock:
            self._q.extend(zip(meta0s.tolist(), meta1s.tolist(), repeat(0), repeat(0)))

    def flush(self, system) -> int:
        """Publish what fits; returns how many are still waiting."""
        with self._lock:
            if not self._q:
                return 0
            ch = system.channel(self.channel)
            self.type_id = ch.type_id
            if not ch.subs and not ch.closed:         # nobody listening (see the class doc)
                a = np.array(self._q, dtype=np.uint64)
                self.unheard += len(self._q)
                self._q.clear()
                if self.optional:
                    ptrs = a[:, 2][a[:, 2] != 0]
                    if len(ptrs):
                        system.arena.release_many(ptrs)
                    return 0
                recs = T.make(len(a), type=ch.type_id, meta0=a[:, 0], meta1=a[:, 1],
                              payload_ptr=a[:, 2], payload_len=a[:, 3].astype(np.uint32))
                system.dead_letter(recs, T.CHAN_NO_SUBSCRIBER, which="sys.dropped",
                                   count_on=ch)
                return 0
            while self._q:                 # in chunks: a long backlog is not rebuilt per call
                # as many as the channel has room for (at least one: its emit makes room if
                # it can): a backlog behind a full channel is not rebuilt per flush
                items = list(islice(self._q, 0, max(1, min(ch.room(), _CHUNK))))
                a = np.fromiter(chain.from_iterable(items), np.uint64,       # (2x np.array's
                                count=4 * len(items)).reshape(-1, 4)        # speed on tuples)
                recs = T.make(len(items), type=ch.type_id, meta0=a[:, 0], meta1=a[:, 1],
                              payload_ptr=a[:, 2], payload_len=a[:, 3].astype(np.uint32))
                k = ch.emit(recs)
                if ch.closed:
                    k = 0
                for _ in range(k):
                    self._q.popleft()
                self.published += k
                if k < len(items):
                    break
            left = len(self._q)
            if left and not self._scheduled and not system.halted:
                # refused (event queue full): not scheduled, the next flush tries again
                self._scheduled = defer(system, self.flush_type,
                                        due=system.wall_tick() + 1) > 0
                self.waits += 1
            return left

    def flushed(self, system) -> int:
        """The flush task's body: clear the schedule mark, then flush."""
        with self._lock:
            self._scheduled = False
        return self.flush(system)

    def drop_all(self, system) -> int:
        with self._lock:
            items = list(self._q)
            self._q.clear()
        if not items:
            return 0
        tid = self.type_id
        if not tid:         # no flush ran (each put is followed by one): ask the channel
            try:
                tid = system.channel(self.channel).type_id
            except Exception:   # noqa: BLE001 - closed: type 0 rather than lose them
                tid = 0
        return drop_rows(system, tid, items)


# ------------------------------------------------------------------ GPU-kernel helpers
# Shared by the device versions (``device_module()``) of the standard modules. ``g`` is the
# device API once :func:`device_api` ran (imported lazily: it loads Numba); the helpers below
# are device functions (compiled for the target with the handlers that call them).
g = None


def device_api():
    """Import ``ggmk.device.api`` (Numba) and make it the ``g`` the helpers here see."""
    global g
    from ggmk.device import api
    g = api
    return api


def emit_or_later(ctx, type_id, m0, m1):
    """``g.emit`` of a follow-on that must not be lost (a result, an ack): where the run
    queues are full (CHAN_FULL: the caller still holds the record) it goes on the event queue
    for the next tick instead, and where that is full too the event queue puts it on
    sys.error with CHAN_FULL, words and all: late or accounted for, never silently gone."""
    if g.emit(ctx, type_id, m0, m1) != 0:
        g.emit_at(ctx, g.tick(ctx) + 1, type_id, m0, m1)


def try_lock(ctx, w):
    """Take the lock in user word ``w`` (a fetch-add try-lock: the device API has no
    compare-and-swap on user words): spin a bounded number of times, then give up (False:
    the caller returns YIELD and runs again later; no lane ever spins without bound, which
    on a GPU could starve the holder sharing its warp)."""
    for _ in range(64):
        if g.user_add(ctx, w, 1) == 0:
            return True
        g.user_add(ctx, w, -1)
    return False


def unlock(ctx, w):
    g.user_add(ctx, w, -1)


def slot_key(key, mask):
    """The home slot of a 64-bit key: Fibonacci hashing, as the CPU kv table's."""
    return ((key * -7046029254386353131) >> 40) & mask


for _f in (emit_or_later, try_lock, unlock, slot_key):
    _f._ggmk_device_func = True          # what ggmk.device.func marks (without importing it)
del _f


def device_check(what, value, lo, hi):
    """A boot-time range check with the clear message every device factory gives."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BootError(f"{what} must be an int in {lo}..{hi}, got {value!r}")
    return value


USER_WORDS = 1 << 16          # the device kernel's user words (ggmk.device.layout.USER_WORDS)


def device_region(what: str, base, words: int, sized_by: str, allowed="", given: bool = True):
    """The user words ``base .. base + words - 1`` of a device module, as ``(lo, hi)`` (``hi``
    exclusive), checked: ``base`` must be a user word (an int 0..65535), and the region must
    end within the 65536 user words - else a BootError naming ``sized_by`` (the argument(s)
    that set the size, with their values) and ``allowed`` (what else would fit: a string, or
    a function of nothing returning one, called only then), so the message
    blames the argument at fault, not ``base`` when ``base`` is fine. ``given``: False for a
    movable module's own default ``base`` (``default_base``: too large for any place, so the
    message names neither the place nor ``base``)."""
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base < USER_WORDS:
        raise BootError(f"{what}: base must be an int in 0..{USER_WORDS - 1} (the first of "
                        f"its user words), got {base!r}")
    if base + words > USER_WORDS:
        allowed = allowed() if callable(allowed) else allowed
        fit = [allowed] if allowed else []
        if words <= USER_WORDS and given:
            fit.append(f"base <= {USER_WORDS - words}")
        where = f" from base={base} (up to word {base + words - 1})" if given else ""
        raise BootError(f"{what}: {sized_by} needs {words} user words{where}: exceeds the "
                        f"{USER_WORDS} user words; allowed: {' or '.join(fit)}")
    return base, base + words


def default_base(default: int, words: int) -> int:
    """The first user word a movable device module (made without ``base=``) asks for: its
    ``default``, or lower where a region of ``words`` would run past the user words from there
    (the build moves it anyway when other modules' words are in the way), so its size is
    bounded by the user words, not by its default's place. A region larger than all of them
    keeps the default: ``device_region`` names what fits."""
    return min(default, USER_WORDS - words) if words <= USER_WORDS else default


def pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def registry(*names: str):
    """A ``TypeRegistry`` holding the types of the standard modules ``names`` (their ``.toml``
    fragments' ids): pass it as ``types=`` to ``ggmk.dual.boot`` when a standard module runs
    on the GPU kernel (its device handlers are registered by id) and its channels cross to
    the CPU kernel, so both kernels agree on every id."""
    from ggmk.typereg import TypeRegistry
    reg = TypeRegistry()
    for n in names:
        if n not in RANGES:
            raise BootError(f"registry: {n!r} is not a standard module; known: {sorted(RANGES)}")
        reg.merge(_manifest(str(Path(__file__).with_name(f"{n}.toml"))).types)
    return reg
