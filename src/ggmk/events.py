"""The 24-byte trace event record (SPEC §7), shared by both kernels and the host drain."""
from __future__ import annotations

import enum

import numpy as np

TRACE_DTYPE = np.dtype(
    [
        ("ts", "<u8"),         # nanoseconds (CPU: perf_counter_ns; GPU: globaltimer) or tick
        ("event", "<u2"),      # EventType, with SAMPLED_BIT set when the event was sampled
        ("tenant", "<u2"),
        ("task_type", "<u4"),
        ("arg0", "<u4"),
        ("arg1", "<u4"),
    ]
)
assert TRACE_DTYPE.itemsize == 24

SAMPLED_BIT = 0x8000  # the event stands for 1/rate events: multiply counts by the rate


class EventType(enum.IntEnum):
    TASK_START = 1
    TASK_END = 2
    TASK_FAIL = 3
    TASK_RETRY = 4
    TASK_YIELD = 5
    ALLOC_FAIL = 6
    CHAN_EMIT = 7
    CHAN_FULL = 8
    CHAN_DROP = 9
    CHAN_DRAIN = 10
    CHAN_OPEN = 11
    CHAN_CLOSE = 12
    WATCHDOG = 13
    WORKER_PARK = 14
    WORKER_WAKE = 15
    POISON = 16
    REPLAY_OVERFLOW = 17
    TICK = 18


class Level(enum.IntEnum):
    """Trace levels, per module. An event is recorded when its level <= the module's level."""
    OFF = 0
    ERROR = 1
    WARN = 2
    INFO = 3
    ALL = 4


# the level at which each event type is recorded
EVENT_LEVEL = {
    EventType.TASK_START: Level.ALL, EventType.TASK_END: Level.ALL,
    EventType.TASK_FAIL: Level.ERROR, EventType.TASK_RETRY: Level.WARN,
    EventType.TASK_YIELD: Level.INFO, EventType.ALLOC_FAIL: Level.ERROR,
    EventType.CHAN_EMIT: Level.ALL, EventType.CHAN_FULL: Level.WARN,
    EventType.CHAN_DROP: Level.WARN, EventType.CHAN_DRAIN: Level.ALL,
    EventType.CHAN_OPEN: Level.INFO, EventType.CHAN_CLOSE: Level.INFO,
    EventType.WATCHDOG: Level.ERROR, EventType.WORKER_PARK: Level.ALL,
    EventType.WORKER_WAKE: Level.ALL, EventType.POISON: Level.ERROR,
    EventType.REPLAY_OVERFLOW: Level.WARN, EventType.TICK: Level.INFO,
}
