"""Bridge records packed and read as plain ints (one ``struct`` call): the one-record fast
paths and the service records (CREDIT, ALLOC, RELEASE) the bridge makes itself, where NumPy's
per-column work costs several times the record."""
from __future__ import annotations

import numpy as np

from ggmk import task as T
from ggmk.bridge.flow import CLEAR_FLAGS

REC = T.RECORD_STRUCT
CLEAR = int(CLEAR_FLAGS)           # (a plain int for struct packing)


def fields1(recs: np.ndarray):
    """The fields of a 1-record array as plain ints (``REC`` order), or None for a view
    the buffer protocol cannot read at once (strided): the caller takes its array path."""
    try:
        return REC.unpack_from(recs)
    except (BufferError, TypeError, ValueError):
        return None


def record1(t, f) -> np.ndarray:
    """One record with fields ``f`` (``REC`` order) as a bridge hop rewrites it: type ``t``,
    no channel, no seq, FLAG_CHANNEL_MSG cleared (what ``_admit_in`` and ``_marks`` do with
    column sets on a copy, ~5 us for one record)."""
    return np.frombuffer(bytearray(REC.pack(t, f[1] & CLEAR, f[2], 0, 0, f[5], f[6], f[7],
                                             f[8], f[9], f[10])), T.TASK_DTYPE)


def service_records(tid: int, pairs) -> np.ndarray:
    """A few service records (CREDIT, ALLOC: (meta0, meta1) pairs of plain ints we made),
    packed as bytes: ``make``'s column checks cost several times these records."""
    return np.frombuffer(bytearray(b"".join([REC.pack(tid, 0, 0, 0, 0, 0, 0, 0, 0, a, b)
                                             for a, b in pairs])), T.TASK_DTYPE)
