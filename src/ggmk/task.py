"""The task record: the one unit of work, the same 48 bytes on the CPU and the GPU (SPEC §2).

Tasks live in NumPy structured arrays of ``TASK_DTYPE``; queues and channels move slices of
them. ``Task`` (one record) and ``TaskBatch`` (columns of many) are thin views used only where a
handler asks for them.
"""
from __future__ import annotations

import struct

import numpy as np

from ggmk.core import bigbuf
from ggmk.errors import EmitError, GgmkError

TASK_DTYPE = np.dtype(
    [
        ("type", "<u4"),         # handler id / message type
        ("flags", "<u2"),        # priority (bits 0-1) and the FLAG_* bits below
        ("tenant", "<u2"),       # logical partition
        ("channel", "<u4"),      # source channel id, 0 = direct submit
        ("seq", "<u4"),          # monotonic enqueue sequence
        ("payload_ptr", "<u8"),  # address in the owning kernel's arena, 0 = none
        ("payload_len", "<u4"),  # payload bytes; 0 = inline only
        ("yield_count", "<u2"),  # runtime-owned; bumped on each yield
        ("_pad", "<u2"),
        ("meta0", "<u8"),        # inline arguments / continuation state
        ("meta1", "<u8"),
    ],
    align=True,
)
assert TASK_DTYPE.itemsize == 48
# one record as plain ints, in field order (one struct call packs or reads a whole record)
RECORD_STRUCT = struct.Struct("<IHHIIQIHHQQ")
assert RECORD_STRUCT.size == TASK_DTYPE.itemsize
TASK_SIZE = 48
FIELDS = TASK_DTYPE.names

# flags
PRIO_MASK = 0x3              # 0 = highest, 3 = lowest
FLAG_DETERMINISTIC = 1 << 2
FLAG_IDEMPOTENT = 1 << 3
FLAG_EMIT_TRACE = 1 << 4
FLAG_CHANNEL_MSG = 1 << 5
NUM_PRIORITIES = 4

# handler return codes
OK = 0
RETRY = 1
YIELD = 2                    # returned by ctx.yield_(); the runtime re-enqueues the task
FAIL = -1

# error codes (SPEC §2), plus the runtime's own reasons for routing to sys.error / sys.dropped
CHAN_FULL = -100
CHAN_CLOSED = -101
CHAN_TYPE_MISMATCH = -102
CHAN_ALREADY_BOUND = -103
CHAN_UNKNOWN = -104
CHAN_REPLAY_OVERFLOW = -105
CHAN_NO_SUBSCRIBER = -106    # accepted on a channel nobody subscribes to: undeliverable
ALLOC_FAIL = -200
YIELD_OVERFLOW = -300
MAX_YIELDS = -301
POISONED = -302
UNKNOWN_TYPE = -303
HANDLER_EXCEPTION = -304
RETRY_EXHAUSTED = -305
READY_FULL = -306
BAD_RETURN = -307            # a handler returned something that is not a code (see worker)
HALTED = -308                # accepted, still queued when halt() gave up waiting for it
EVENT_FULL = -309            # the event queue (retries, deferred tasks) was full
WAIT = 3                     # returned by ctx.wait_(): re-run when the channel may have room
# the bridge between the kernels (ggmk.bridge): a batch transfer failed max_retries times; a
# payload larger than the receiving kernel's largest block; the GPU kernel stopped mid-way
BRIDGE_TRANSFER_FAILED = -400
BRIDGE_PAYLOAD_TOO_LARGE = -401
BRIDGE_DEVICE_STOPPED = -402
# the GPU kernel was reset (the watchdog, or DualSystem.reset_device) while the record was inside
# it or on its way to it: accounted on sys.error with this code (see ggmk.bridge.process)
BRIDGE_RESET = -403
# the nvme module's response statuses (ggmk.modules.nvme)
NVME_IO = -410
NVME_NOFILE = -411
NVME_PERM = -412
NVME_NOSPACE = -413
NVME_TOOBIG = -414
NVME_CANCELLED = -415
NVME_BADREQ = -416
NVME_RANGE = -417            # destination too small
# the standard modules and the sdk
REDUCE_LATE = -520           # a partial arrived after its group timed out
REDUCE_TABLE_FULL = -521     # device reduce: a new group's partial while every group slot is open
REDUCE_BAD_GROUP = -522      # device reduce: a group id outside 0..2**62-1
GATE_TABLE_FULL = -523       # device gate: an arrival at a new gate while every gate slot is busy
GATE_BAD_ID = -524           # device gate: a gate id outside 0..2**31-1
STATS_KIND = -530            # a stats update of the wrong kind for its metric
STATS_BAD_METRIC = -531      # device stats: a metric id outside 0..metrics-1
NET_ERROR = -540             # nic: a socket error
NET_OS_DROP = -541           # nic: datagrams the OS dropped (receive buffer overflow)
SDK_TIMEOUT = -550           # sdk request/reply: no reply in time

# every code has one name here; a module never adds to this at import time
CODE_NAMES = {
    OK: "OK", RETRY: "RETRY", YIELD: "YIELD", FAIL: "FAIL",
    CHAN_FULL: "CHAN_FULL", CHAN_CLOSED: "CHAN_CLOSED",
    CHAN_TYPE_MISMATCH: "CHAN_TYPE_MISMATCH", CHAN_ALREADY_BOUND: "CHAN_ALREADY_BOUND",
    CHAN_UNKNOWN: "CHAN_UNKNOWN", CHAN_REPLAY_OVERFLOW: "CHAN_REPLAY_OVERFLOW",
    CHAN_NO_SUBSCRIBER: "CHAN_NO_SUBSCRIBER",
    ALLOC_FAIL: "ALLOC_FAIL", YIELD_OVERFLOW: "YIELD_OVERFLOW", MAX_YIELDS: "MAX_YIELDS",
    POISONED: "POISONED", UNKNOWN_TYPE: "UNKNOWN_TYPE", HANDLER_EXCEPTION: "HANDLER_EXCEPTION",
    RETRY_EXHAUSTED: "RETRY_EXHAUSTED", READY_FULL: "READY_FULL", BAD_RETURN: "BAD_RETURN",
    HALTED: "HALTED", EVENT_FULL: "EVENT_FULL", WAIT: "WAIT",
    BRIDGE_TRANSFER_FAILED: "BRIDGE_TRANSFER_FAILED",
    BRIDGE_PAYLOAD_TOO_LARGE: "BRIDGE_PAYLOAD_TOO_LARGE",
    BRIDGE_DEVICE_STOPPED: "BRIDGE_DEVICE_STOPPED",
    BRIDGE_RESET: "BRIDGE_RESET",
    NVME_IO: "NVME_IO", NVME_NOFILE: "NVME_NOFILE", NVME_PERM: "NVME_PERM",
    NVME_NOSPACE: "NVME_NOSPACE", NVME_TOOBIG: "NVME_TOOBIG", NVME_CANCELLED: "NVME_CANCELLED",
    NVME_BADREQ: "NVME_BADREQ", NVME_RANGE: "NVME_RANGE", REDUCE_LATE: "REDUCE_LATE",
    REDUCE_TABLE_FULL: "REDUCE_TABLE_FULL", REDUCE_BAD_GROUP: "REDUCE_BAD_GROUP",
    GATE_TABLE_FULL: "GATE_TABLE_FULL", GATE_BAD_ID: "GATE_BAD_ID",
    STATS_BAD_METRIC: "STATS_BAD_METRIC",
    STATS_KIND: "STATS_KIND", NET_ERROR: "NET_ERROR", NET_OS_DROP: "NET_OS_DROP",
    SDK_TIMEOUT: "SDK_TIMEOUT",
}


def code_name(code: int) -> str:
    return CODE_NAMES.get(int(code), f"FAIL({int(code)})")


def _aligned(n: int, alloc) -> np.ndarray:
    raw = alloc(n * TASK_SIZE + 16, dtype=np.uint8)
    off = (-raw.ctypes.data) % 16
    return raw[off:off + n * TASK_SIZE].view(TASK_DTYPE)


def empty(n: int) -> np.ndarray:
    """A zeroed, 16-byte aligned array of ``n`` task records."""
    return _aligned(n, np.zeros)


def empty_big(n: int) -> np.ndarray:
    """``empty(n)`` for a long-lived buffer (a ring's): its own memory map when big."""
    return _aligned(n, bigbuf.zeros)


_RAW = np.dtype("V48")

# -- copies of records --------------------------------------------------------------------------
#
# NumPy (2.x) copies a structured array field by field: ``recs.copy()``, ``recs[mask]``,
# ``recs[idx]``, ``np.concatenate`` of record arrays and ``dst[:] = recs`` cost ~40-75 ns a
# record (10 us for 256). The same bytes as opaque 48-byte items are one memcpy (2 us for 256,
# 25x less for 8192). Hot paths copy records with these; small arrays go through ``bytes``
# (a view of a structured array alone costs ~1 us).
_SMALL = 256


def copy(recs: np.ndarray) -> np.ndarray:
    """A fresh, writable, contiguous copy of task records ``recs`` (``recs.copy()``, fast).

    >>> r = make(3, meta0=[1, 2, 3]); c = copy(r); c["meta0"][0] = 9
    >>> int(r["meta0"][0]), int(c["meta0"][0])
    (1, 9)
    """
    if len(recs) <= _SMALL:
        return np.frombuffer(bytearray(recs.tobytes()), TASK_DTYPE)
    return recs.view(_RAW).copy().view(TASK_DTYPE)


def concat(parts) -> np.ndarray:
    """The records of ``parts`` (a sequence of task record arrays) one after another, as one
    fresh array (``np.concatenate(parts)``, fast)."""
    if len(parts) == 1:
        return copy(parts[0])
    if sum(len(p) for p in parts) <= _SMALL:
        return np.frombuffer(bytearray(b"".join([p.tobytes() for p in parts])), TASK_DTYPE)
    return np.concatenate([p.view(_RAW) for p in parts]).view(TASK_DTYPE)


def select(recs: np.ndarray, which) -> np.ndarray:
    """``recs[which]`` for a boolean mask or an index array (a fresh array), fast.

    >>> r = make(4, meta0=[5, 6, 7, 8])
    >>> select(r, r["meta0"] % 2 == 0)["meta0"].tolist()
    [6, 8]
    """
    return recs.view(_RAW)[which].view(TASK_DTYPE)


# -- validation ---------------------------------------------------------------------------------
#
# ``make`` refuses, with one error naming the field, the value and the allowed range, anything
# that would not be stored exactly: no silent truncation (floats), wrap-around (negative or too
# large values, NumPy signed scalars and arrays included) or masking (priority 4..). Rules:
#
# - a field takes a Python int (or int subclass such as IntEnum), a NumPy integer scalar, or a
#   column: a 1-D NumPy integer array, list, tuple or range of length n;
# - every value must fit the field's unsigned type in TASK_DTYPE (u2: 0..65535, u4: 0..2**32-1,
#   u8: 0..2**64-1); ``priority`` must be 0, 1, 2 or 3;
# - floats are refused even when integral (1.0): convert them yourself (``int(x)``,
#   ``a.astype(np.uint64)``) so that rounding is a visible decision. Bools are refused too
#   (``meta0=True`` is most likely a mistake; ctx.emit refuses them as well), and so are None,
#   strings, complex numbers, object arrays holding anything but ints, and arrays that are
#   not 1-D;
# - ``n`` (the record count) is an int >= 0; ``check_count`` is the host APIs' check (>= 1).
#
# Cost: O(1) Python work per scalar field; per column at most one reduction (none for unsigned
# columns no wider than the field).

class TaskValueError(GgmkError, ValueError):
    """A task field (or count) has a value outside its allowed range, or a column's length is
    not the record count."""


class TaskTypeError(GgmkError, TypeError):
    """A task field (or count) is not an integer (a float, a bool, None, a string, ...)."""


_U64 = (1 << 64) - 1
_RANGE_TEXT = {0xFFFF: "65535", 0xFFFF_FFFF: "2**32-1", _U64: "2**64-1"}
# (field, largest value) in make's keyword order, from TASK_DTYPE (all fields are unsigned)
_FIELD_MAX = tuple((name, (1 << (8 * TASK_DTYPE.fields[name][0].itemsize)) - 1)
                   for name in ("type", "flags", "tenant", "channel", "seq", "payload_ptr",
                                "payload_len", "meta0", "meta1"))
assert all(TASK_DTYPE.fields[name][0].kind == "u" for name, _ in _FIELD_MAX)
_ITEMSIZE = {hi: (hi.bit_length() + 7) // 8 for _, hi in _FIELD_MAX}
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _what(v) -> str:
    r = repr(v)
    if len(r) > 60:
        r = r[:57] + "..."
    return f"{r} ({type(v).__name__})"


def _out_of_range(name: str, v, hi: int, where: str = "") -> TaskValueError:
    if name == "priority":
        return TaskValueError(f"priority: {v!r}{where} is not one of 0, 1, 2, 3 "
                              "(0 is the highest)")
    return TaskValueError(f"{name}: {v!r}{where} is out of range "
                          f"0..{_RANGE_TEXT.get(hi, hi)}")


def _scalar(name: str, v, hi: int, where: str = "") -> int:
    """A validated Python int for a scalar field value (slow path: not a plain in-range int).
    ``where`` (e.g. " (at index 3 of the column)") goes after the value in messages."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, np.ndarray) and v.dtype.kind == "b"):
        raise TaskTypeError(f"{name}: {v!r}{where} is a bool, not an integer; pass int(x) if "
                            f"you mean 0/1")
    if isinstance(v, (int, np.integer)):
        iv = int(v)
    elif isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "ui":
        iv = int(v)
    elif isinstance(v, (float, np.floating)) or (isinstance(v, np.ndarray)
                                                  and v.dtype.kind == "f"):
        raise TaskTypeError(f"{name}: {v!r}{where} is a float; task fields are integers: pass "
                            f"an int (int(x), round(x)) so that any rounding is your decision")
    else:
        raise TaskTypeError(f"{name}: {_what(v)}{where} is not an integer; expected an int "
                            f"(or a column of them) in range 0..{_RANGE_TEXT.get(hi, hi)}")
    if not 0 <= iv <= hi:
        raise _out_of_range(name, iv, hi, where)
    return iv


def _column(name: str, v, n: int, hi: int) -> np.ndarray:
    """A validated 1-D column of length ``n`` (one reduction at most; none for unsigned columns
    no wider than the field)."""
    if isinstance(v, np.ndarray):
        a = v
    else:
        try:
            a = np.asarray(v)
        except (TypeError, ValueError) as e:       # ragged lists and the like
            raise TaskValueError(f"{name}: cannot make a column of {_what(v)}: {e}") from None
    if a.dtype.kind == "O" or (a.dtype.kind == "f" and not isinstance(v, np.ndarray)):
        # an object array, or a list of ints beyond int64 on either side (NumPy makes that
        # float64 or object): check each element (finds the first float / None / str too);
        # never taken for plain int lists and integer arrays
        if a.ndim == 1:
            for i, x in enumerate(a.tolist() if a.dtype.kind == "O" else v):
                if x.__class__ is not int or not 0 <= x <= hi:
                    _scalar(name, x, hi, f" (at index {i} of the column)")
            a = np.array(a.tolist() if a.dtype.kind == "O" else v, dtype=np.uint64)
    if a.ndim != 1:
        raise TaskValueError(f"{name}: a column must be one-dimensional, got an array of shape "
                             f"{a.shape}")
    if len(a) != n:
        raise TaskValueError(f"{name}: a column of length {len(a)} but count is {n}")
    k = a.dtype.kind
    if k == "u":
        if a.dtype.itemsize > _ITEMSIZE.get(hi, 0) and n and a.max() > hi:
            _column_bad(name, a, hi)
    elif k == "i":
        if n:
            if a.dtype.itemsize > _ITEMSIZE.get(hi, 0):
                # viewed as unsigned, a negative value is >= 2**(bits-1) > hi: one pass for both
                if a.view(_UNSIGNED[a.dtype.itemsize]).max() > hi:
                    _column_bad(name, a, hi)
            elif a.min() < 0:
                _column_bad(name, a, hi)
    else:
        if k == "b":
            raise TaskTypeError(f"{name}: a column of bool; task fields are integers: pass "
                                f"x.astype(np.uint8) if you mean 0/1")
        if k in "fc":
            raise TaskTypeError(f"{name}: a column of {a.dtype}; task fields are integers: "
                                f"convert it yourself (e.g. np.round(x).astype(np.uint64)) so "
                                f"that any rounding is your decision")
        raise TaskTypeError(f"{name}: a column of dtype {a.dtype}; expected integers in range "
                            f"0..{_RANGE_TEXT.get(hi, hi)}")
    return a


def _column_bad(name: str, a: np.ndarray, hi: int):
    vals = a.astype(object)
    bad = np.flatnonzero((vals < 0) | (vals > hi))
    i = int(bad[0])
    raise _out_of_range(name, int(a[i]), hi, f" (at index {i} of the column)")


def _ndim(name: str, v) -> int:
    try:
        return np.ndim(v)
    except (TypeError, ValueError) as e:           # ragged lists and the like
        raise TaskValueError(f"{name}: cannot make a column of {_what(v)}: {e}") from None


def _value(name: str, v, n: int, hi: int):
    """A validated field value: a Python int, or a column (1-D array of length n)."""
    if v.__class__ is int and 0 <= v <= hi:
        return v
    if _ndim(name, v):
        return _column(name, v, n, hi)
    return _scalar(name, v, hi)


def _check_n(n, least: int, name: str = "count") -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TaskTypeError(f"{name}: expected an integer >= {least}, got {_what(n)}")
    n = int(n)
    if n < least:
        raise TaskValueError(f"{name}: {n} is out of range: it must be >= {least}"
                             + (" (a number of tasks)" if least else " (a number of records)"))
    return n


def check_count(count, *columns, name: str = "count") -> int:
    """The number of tasks a host API call (``submit``, ``publish``, ``emit_batch``) makes.

    ``count`` given: it must be an int >= 1 (TaskValueError / TaskTypeError naming ``name``
    otherwise; 0 is refused rather than taken for 1). ``count`` None: the length of the first
    column among ``columns`` (an array, list, tuple or range; scalars are skipped), else 1.
    Whether every column has that length is ``make``'s check.

    Example::

        n = T.check_count(count, meta0, meta1)
        recs = T.make(n, type=tid, meta0=meta0, meta1=meta1)
    """
    if count is None:
        for v in columns:
            if v.__class__ is not int:
                try:
                    if np.ndim(v):
                        return len(v)
                except (TypeError, ValueError):    # ragged: make() names the field
                    pass
        return 1
    if count.__class__ is int and count >= 1:
        return count
    return _check_n(count, 1, name)


def make(n: int = 1, *, type=0, flags=0, priority=None, tenant=0, channel=0, seq=0,
         payload_ptr=0, payload_len=0, meta0=0, meta1=0) -> np.ndarray:
    """Build ``n`` records (n >= 0); every keyword takes a scalar or a column of length ``n``
    (NumPy array, list, tuple or range). Values must fit their field (see TASK_DTYPE; priority
    0..3) and be integers: anything else raises TaskValueError / TaskTypeError (a ValueError /
    TypeError) naming the field, the value and the allowed range. Nothing is truncated,
    wrapped or masked."""
    if n.__class__ is not int or n < 0:
        n = _check_n(n, 0)
    if priority is not None:
        # flags and priority are validated here; the combined flags are in range by construction
        fl = _value("flags", flags, n, 0xFFFF)
        if priority.__class__ is int and 0 <= priority <= PRIO_MASK:
            pr = priority
        elif _ndim("priority", priority):
            pr = _column("priority", priority, n, PRIO_MASK)
        else:
            pr = _scalar("priority", priority, PRIO_MASK)
        if fl.__class__ is int:
            fl &= 0xFFFF ^ PRIO_MASK
            if pr.__class__ is int:
                flags = fl | pr
            elif not fl and pr.dtype == np.uint16:
                flags = pr                       # already the flags column (values 0..3)
            else:
                flags = pr.astype(np.uint16)     # a new u2 column: no check in the loop below
                if fl:
                    flags |= fl
        else:
            flags = np.empty(n, np.uint16)
            np.bitwise_and(fl, 0xFFFF ^ PRIO_MASK, out=flags, casting="unsafe")
            np.bitwise_or(flags, pr, out=flags, casting="unsafe")
    # scalar fields go into one template record copied n times (one fill instead of a pass
    # per column); only array-valued fields are written column by column
    tmpl = np.zeros(1, TASK_DTYPE)
    columns = None
    for (name, hi), v in zip(_FIELD_MAX, (type, flags, tenant, channel, seq, payload_ptr,
                                          payload_len, meta0, meta1)):
        if v.__class__ is int and 0 <= v <= hi:    # the common case: a plain in-range int
            if v:
                tmpl[name] = v
        elif _ndim(name, v):                       # an array, list, tuple or range: a column
            if columns is None:
                columns = []
            columns.append((name, _column(name, v, n, hi)))
        else:                                      # anything else: checked, or a clear error
            tmpl[name] = _scalar(name, v, hi)
    rec = _aligned(n, np.empty)
    rec.view(_RAW)[:] = tmpl.view(_RAW)[0]
    if columns is not None:
        for name, v in columns:
            rec[name] = v
    return rec


def word(name: str, v) -> int:
    """``v`` as a task word (an unsigned 64-bit integer), or EmitError naming ``name``."""
    if v.__class__ is not int:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise EmitError(f"{name}={v!r} ({type(v).__name__}): a task word is an integer in "
                            f"0..2**64-1")
        v = int(v)
    if not v >> 64:
        return v
    raise EmitError(f"{name}={v!r} is out of range: a task word is an integer in 0..2**64-1")


def priority_of(flags) -> np.ndarray | int:
    return flags & PRIO_MASK


class Task:
    """A view of one record (``rec`` is a length-1 slice or a 0-d record).

    Reads and writes go straight to the record's bytes; nothing is copied.
    """

    __slots__ = ("_r",)

    def __init__(self, rec=None):
        self._r = rec

    def bind(self, rec) -> "Task":
        self._r = rec
        return self

    type = property(lambda s: int(s._r["type"]))
    flags = property(lambda s: int(s._r["flags"]))
    priority = property(lambda s: int(s._r["flags"]) & PRIO_MASK)
    tenant = property(lambda s: int(s._r["tenant"]))
    channel = property(lambda s: int(s._r["channel"]))
    seq = property(lambda s: int(s._r["seq"]))
    payload_ptr = property(lambda s: int(s._r["payload_ptr"]))
    payload_len = property(lambda s: int(s._r["payload_len"]))
    yield_count = property(lambda s: int(s._r["yield_count"]))
    # how many times this task was retried so far (the runtime keeps it in ``_pad``)
    retries = property(lambda s: int(s._r["_pad"]))

    @property
    def meta0(self) -> int:
        return int(self._r["meta0"])

    @meta0.setter
    def meta0(self, v: int) -> None:
        if v.__class__ is not int or not 0 <= v <= _U64:
            v = _scalar("meta0", v, _U64)
        self._r["meta0"] = v

    @property
    def meta1(self) -> int:
        return int(self._r["meta1"])

    @meta1.setter
    def meta1(self, v: int) -> None:
        if v.__class__ is not int or not 0 <= v <= _U64:
            v = _scalar("meta1", v, _U64)
        self._r["meta1"] = v

    def record(self):
        return self._r

    def __repr__(self) -> str:
        return (f"Task(type={self.type}, prio={self.priority}, tenant={self.tenant}, "
                f"chan={self.channel}, seq={self.seq}, len={self.payload_len}, "
                f"yields={self.yield_count}, meta0={self.meta0}, meta1={self.meta1})")


class TaskBatch:
    """Columns of a homogeneous slice of records: ``batch.meta0`` is a NumPy view."""

    __slots__ = ("records",)

    def __init__(self, records: np.ndarray):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getattr__(self, name):
        if name in FIELDS:
            return self.records[name]
        raise AttributeError(name)

    @property
    def priority(self) -> np.ndarray:
        return self.records["flags"] & PRIO_MASK
