"""Real OS threads. An idle worker spins briefly, then parks on a condition variable; every
enqueue bumps a wake sequence, so a worker that saw no work cannot sleep through a wake-up that
happened after it looked (no lost wake-ups). Parking also times out, so due events and tick
boundaries are serviced while nothing is enqueued. The host side (``wait``) sleeps on its own
condition, notified the moment the last outstanding task finishes, so ``run()`` returns without
a polling delay."""
from __future__ import annotations

import itertools
import threading
import time


class ThreadsHal:
    """Implements ggmk.hal.base.Hal."""
    name = "threads"

    def __init__(self, spin: int = 50, park_timeout: float = 0.002, seed: int = 0):
        self.spin = spin
        self.park_timeout = park_timeout
        self.cond = threading.Condition(threading.Lock())
        self.parked = 0
        self._ctr = itertools.count(1)
        self.wake_seq = 0
        self.threads: list[threading.Thread] = []
        self.running = False
        self.parks = 0
        self.wakes = 0
        self.errors: list[BaseException] = []
        self.host_cond = threading.Condition(threading.Lock())
        self.host_waiting = 0
        self.host_poll = (0.0001, 0.005)   # the host's re-check backstop: first, longest (s)

    clock_ns = staticmethod(time.perf_counter_ns)
    cpu_clock_ns = staticmethod(time.thread_time_ns)
    next_event = None            # real threads park with a timeout instead of jumping a clock

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= end, None)

    def wake(self, n: int = 1) -> None:
        self.wake_seq = next(self._ctr)
        if self.parked:
            with self.cond:
                self.wakes += 1
                self.cond.notify(n)

    def start(self, workers) -> None:
        self.running = True
        for w in workers:
            t = threading.Thread(target=self._loop, args=(w,), name=f"ggmk-worker-{w.id}", daemon=True)
            self.threads.append(t)
            t.start()

    def _loop(self, worker) -> None:
        step = worker.step
        try:
            while self.running:
                seen = self.wake_seq
                if step():
                    continue
                # spin without re-running step(): a spinning step holds the GIL and delays the
                # very thread that would hand us work; sleep(0) releases it
                for _ in range(self.spin):
                    if not self.running or self.wake_seq != seen:
                        break
                    time.sleep(0)
                else:
                    with self.cond:
                        if self.wake_seq == seen and self.running:
                            self.parked += 1
                            self.parks += 1
                            worker.on_park()
                            self.cond.wait(self.park_timeout)
                            self.parked -= 1
        except BaseException as e:   # a runtime bug: surface it on halt instead of dying silently
            self.errors.append(e)
            raise

    def notify_host(self) -> None:
        """Something a host-side ``wait`` may be waiting for happened (the system went idle)."""
        if self.host_waiting:
            with self.host_cond:
                self.host_cond.notify_all()

    def wait(self, predicate, timeout: float | None) -> bool:
        """Block the caller until ``predicate()`` holds or ``timeout`` seconds pass.

        Woken by ``notify_host``; the timed re-check (0.1 ms doubling to 5 ms) covers predicates
        nothing notifies about."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, longest = self.host_poll
        cond = self.host_cond
        while not predicate():
            if self.errors:
                raise RuntimeError("a worker thread crashed") from self.errors[0]
            if deadline is not None and time.monotonic() >= deadline:
                return False
            with cond:
                self.host_waiting += 1
                try:
                    if not predicate():    # re-checked after registering: no lost notify
                        cond.wait(delay)
                finally:
                    self.host_waiting -= 1
            delay = min(delay * 2, longest)
        return True

    def stop(self) -> None:
        self.running = False
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join()
        self.threads.clear()

    def alive_threads(self) -> int:
        return sum(t.is_alive() for t in self.threads)
