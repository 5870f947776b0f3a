"""The bridge pump's wake-up: host wake-ups and the device -> host bell met in one wait."""
from __future__ import annotations

import threading


def tight_timer_slack() -> None:
    """1 us of timer slack for the calling thread (Linux adds up to 50 us to a normal
    thread's sleep: most of the pump's 5-100 us looks)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)     # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def no_bell():
    return None


class PumpWake:
    """The pump's wake-up: a ``threading.Event`` for the host's wakers (CPU -> GPU messages,
    ``push_device``, resume, stop: ``set``) joined with the device -> host bell where the
    transport has one (``tx_bell``: the ``cpu`` target), so one wait ends on either, at once.

    No lost wake-up: :meth:`wait` reads the bell, says it sleeps (``_sleeping`` for host
    wakers, the bell's waiting word for the device), looks at the event and the tx ring once
    more, and sleeps only while the bell still reads what it read first. A host waker sets
    the event, then rings the bell if the pump says it sleeps (the GIL orders the two
    threads' steps); the device adds to the bell after it publishes a record and wakes the
    sleeper while the waiting word is up."""

    __slots__ = ("_ev", "_bell_of", "_sleeping")

    def __init__(self, bell_of=None):
        self._ev = threading.Event()
        self._bell_of = bell_of          # () -> the transport's bell or None
        self._sleeping = None            # the bell the pump sleeps on right now

    def set(self) -> None:
        self._ev.set()
        b = self._sleeping
        if b is not None:
            b.ring()

    def clear(self) -> None:
        self._ev.clear()

    def is_set(self) -> bool:
        return self._ev.is_set()

    def bell(self):
        f = self._bell_of
        if f is None:
            return None
        try:
            return f()
        except Exception:   # noqa: BLE001 - a stopped kernel: plain event waits
            return None

    def wait(self, timeout: float, ready=None, bell=None) -> bool:
        """Until set, the device rings (when ``ready`` is given: ``ready()`` says a record is
        there) or ``timeout`` s. Returns whether the event is set. ``bell``: :meth:`bell`'s
        answer when the caller just asked it (not asked twice)."""
        b = None if ready is None else bell if bell is not None else self.bell()
        if b is None:
            return self._ev.wait(timeout)
        if self._ev.is_set():
            return True
        seen = b.value()
        self._sleeping = b
        b.waiting(True)
        try:
            if self._ev.is_set() or ready():
                return self._ev.is_set()
            b.wait(seen, timeout)
        finally:
            b.waiting(False)
            self._sleeping = None
        return self._ev.is_set()
