"""The HAL contract: what the CPU kernel needs from its platform, and nothing else.

Both HALs (``threads.ThreadsHal``, ``sim.SimHal``) implement every method here; the kernel
calls only these, so nothing outside ``ggmk.hal`` asks which HAL it runs on.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class Hal(Protocol):
    name: str
    # set by the kernel after boot: () -> the HAL-clock time (ns) of the next due timer, or None.
    # A HAL that can idle (sim) jumps its clock there instead of spinning.
    next_event: Callable[[], int | None] | None

    def clock_ns(self) -> int:
        """Monotonic time in ns: wall time on threads, virtual time on sim."""

    def cpu_clock_ns(self) -> int:
        """The calling worker's handler CPU time in ns, what tenants are billed: the thread's
        CPU clock on threads; on sim the virtual clock (only handlers and steps advance it)."""

    def wake(self, n: int = 1) -> None:
        """Work was enqueued: wake up to ``n`` parked workers (no lost wake-ups)."""

    def notify_host(self) -> None:
        """The system went idle, or a subscriber ring of a channel a host waits on for room
        freed slots (``Channel.wait_room``): wake a host blocked in ``wait``."""

    def start(self, workers) -> None:
        """Start driving ``workers`` (each has ``step() -> bool`` and ``on_park()``)."""

    def wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Block the host until ``predicate()`` or ``timeout`` seconds (HAL-clock seconds);
        return the predicate's last value. On sim this is where workers are stepped."""

    def help(self, predicate: Callable[[], bool], deadline: float | None = None,
             before: Callable[[], object] | None = None) -> bool:
        """Caller runs: a host thread about to wait lends a hand, running an idle worker's
        steps itself while they find work and ``predicate()`` is false (``deadline``: a
        time.monotonic() bound, on both HALs); return ``predicate()``. ``before()`` is called
        exactly once, first (e.g. the publish of a request: no worker is woken for what the
        helping thread will run itself). Threads: only with ``helping`` set (boot's
        ``host_helps``, on by default) and a worker parked; sim: always (nothing else steps its workers)."""

    def sleep(self, seconds: float) -> None:
        """Let the system run for ``seconds`` of HAL-clock time, whatever its state."""

    def stepping(self) -> list:
        """The workers whose step the calling thread is running (its own worker, the ones lent
        to it by ``help``/``lend``; on sim, the one being stepped); [] outside any step. A
        handler that halts the system runs these: ``stop`` does not wait for them."""

    def stop(self, join_timeout: float | None = None) -> int:
        """Stop the workers and join every thread the HAL started but the calling thread and
        the workers it is stepping, waiting at most ``join_timeout`` seconds in all (None: as
        long as it takes); returns how many others are still running then (a handler that
        does not return: Python cannot end a thread)."""

    def alive_threads(self) -> int:
        """OS threads still running (0 on sim)."""
