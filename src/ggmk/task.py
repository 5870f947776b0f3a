"""The task record: the one unit of work, the same 48 bytes on the CPU and the GPU (SPEC §2).

Tasks live in NumPy structured arrays of ``TASK_DTYPE``; queues and channels move slices of
them. ``Task`` (one record) and ``TaskBatch`` (columns of many) are thin views used only where a
handler asks for them.
"""
from __future__ import annotations

import numpy as np

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
ALLOC_FAIL = -200
YIELD_OVERFLOW = -300
MAX_YIELDS = -301
POISONED = -302
UNKNOWN_TYPE = -303
HANDLER_EXCEPTION = -304
RETRY_EXHAUSTED = -305
READY_FULL = -306

CODE_NAMES = {
    OK: "OK", RETRY: "RETRY", YIELD: "YIELD", FAIL: "FAIL",
    CHAN_FULL: "CHAN_FULL", CHAN_CLOSED: "CHAN_CLOSED",
    CHAN_TYPE_MISMATCH: "CHAN_TYPE_MISMATCH", CHAN_ALREADY_BOUND: "CHAN_ALREADY_BOUND",
    CHAN_UNKNOWN: "CHAN_UNKNOWN", CHAN_REPLAY_OVERFLOW: "CHAN_REPLAY_OVERFLOW",
    ALLOC_FAIL: "ALLOC_FAIL", YIELD_OVERFLOW: "YIELD_OVERFLOW", MAX_YIELDS: "MAX_YIELDS",
    POISONED: "POISONED", UNKNOWN_TYPE: "UNKNOWN_TYPE", HANDLER_EXCEPTION: "HANDLER_EXCEPTION",
    RETRY_EXHAUSTED: "RETRY_EXHAUSTED", READY_FULL: "READY_FULL",
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


_RAW = np.dtype("V48")


def make(n: int = 1, *, type=0, flags=0, priority=None, tenant=0, channel=0, seq=0,
         payload_ptr=0, payload_len=0, meta0=0, meta1=0) -> np.ndarray:
    """Build ``n`` records; every keyword takes a scalar or an array of length ``n``."""
    if priority is not None:
        flags = (np.asarray(flags) & (0xFFFF ^ PRIO_MASK)) | (np.asarray(priority) & PRIO_MASK)
    # scalar fields go into one template record copied n times (one fill instead of a pass
    # per column); only array-valued fields are written column by column
    tmpl = np.zeros(1, TASK_DTYPE)
    columns = None
    for name, v in (("type", type), ("flags", flags), ("tenant", tenant), ("channel", channel),
                    ("seq", seq), ("payload_ptr", payload_ptr), ("payload_len", payload_len),
                    ("meta0", meta0), ("meta1", meta1)):
        if isinstance(v, int):                     # the common case: a Python int
            if v:
                tmpl[name] = v
        elif np.ndim(v):                           # an array, list or range: a column
            if columns is None:
                columns = []
            columns.append((name, v))
        else:                                      # a NumPy scalar (bad values raise here)
            tmpl[name] = v
    rec = _aligned(n, np.empty)
    rec.view(_RAW)[:] = tmpl.view(_RAW)[0]
    if columns is not None:
        for name, v in columns:
            rec[name] = v
    return rec


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
        self._r["meta0"] = v

    @property
    def meta1(self) -> int:
        return int(self._r["meta1"])

    @meta1.setter
    def meta1(self, v: int) -> None:
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
