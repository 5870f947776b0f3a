"""One thread steps every worker in a seeded, reproducible interleaving: same seed, same
schedule. Each step picks a worker and a batch limit from the seeded RNG and advances a virtual
clock, so determinism tests, schedule exploration and replay of a failing seed need no threads.
A failing run is reproduced by running again with the seed it reports.

Other host threads (a second thread's ``run()``, an sdk client, a halt from a signal thread)
take turns with it: one step at a time runs, under a lock, and ``stepping()`` answers for
the calling thread only."""
from __future__ import annotations

import random
import threading
import time


class SimHal:
    """Implements ggmk.hal.base.Hal."""
    name = "sim"

    def __init__(self, seed: int = 0, step_ns: int = 1000, max_batch_choices=(1, 2, 7, 32, 256)):
        self.seed = seed
        self.rng = random.Random(seed)
        self.step_ns = step_ns
        self.now = 0
        self.workers = []
        self.max_batch_choices = max_batch_choices
        self.steps = 0
        self._in_step: list = []     # the workers whose step is running (a handler may wait)
        # one step at a time, whichever host thread runs it: two threads stepping at once saw
        # each other's worker as idle (run() returned False at once and jumped the clock to
        # its timeout) and popped each other's _in_step entries. Re-entrant: a handler that
        # halts steps the other workers from inside its own step.
        self._lock = threading.RLock()
        self._stepper = None         # the thread holding _lock: the one stepping() answers
        self._depth = 0
        self.running = False
        self.next_event = None   # set by the kernel: () -> due time in ns of the next timer, or None

    def clock_ns(self) -> int:
        return self.now

    def cpu_clock_ns(self) -> int:
        return self.now              # virtual time: only handlers and steps advance it

    def wake(self, n: int = 1) -> None:
        pass

    def notify_host(self) -> None:
        pass                         # the host is the thread stepping the workers

    def sleep(self, seconds: float) -> None:
        self.wait(lambda: False, seconds)

    def start(self, workers) -> None:
        self.workers = list(workers)
        self._booted_batch = [w.max_batch for w in self.workers]
        self.running = True

    def _enter(self, timeout: float = -1) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        self._depth += 1
        self._stepper = threading.get_ident()
        return True

    def _leave(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._stepper = None
        self._lock.release()

    def step(self) -> bool:
        """Run one worker step; return whether it did any work."""
        self._enter()
        try:
            i = self.rng.randrange(len(self.workers))
            w = self.workers[i]
            if w in self._in_step:   # a handler of w waits (halt): w cannot step inside itself
                return False
            # a drawn limit, never above the one the system was booted with (a handler must
            # not see a bigger batch on sim than it could on threads)
            w.max_batch = min(self.rng.choice(self.max_batch_choices), self._booted_batch[i])
            return self._step_worker(w)
        finally:
            self._leave()

    def _step_worker(self, w) -> bool:
        self._enter()
        try:
            if w in self._in_step:
                return False
            self.now += self.step_ns
            self.steps += 1
            self._in_step.append(w)
            try:
                return w.step()
            finally:
                self._in_step.pop()
        finally:
            self._leave()

    def stepping(self) -> list:
        """The workers whose step the calling thread is running: what a handler that halts
        the system is running. [] on any other thread (a host thread that halts or submits
        while another one steps is not inside a handler)."""
        if self._stepper != threading.get_ident():
            return []
        return list(self._in_step)

    def help(self, predicate, deadline: float | None = None, before=None) -> bool:
        """Caller runs: ``before()`` (if given), then step the workers (in the seeded order)
        while one finds work and ``predicate()`` is false, until ``deadline`` (time.monotonic):
        without it, work that never ends (a task that re-emits itself) held a caller's
        timeout (``submit_and_run``, an sdk call) for good. A run that ends before its
        deadline is unaffected: the same seed still gives the same steps."""
        if before is not None:
            before()
        while not predicate():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not (self.step() or any(self._step_worker(w) for w in self.workers)):
                break
        return predicate()

    def wait(self, predicate, timeout: float | None, max_steps: int = 50_000_000) -> bool:
        """Step workers until ``predicate()`` holds. ``timeout`` is virtual seconds."""
        limit = None if timeout is None else self.now + int(timeout * 1e9)
        idle_rounds = 0
        start = self.steps
        while not predicate():
            if self.steps - start > max_steps or (limit is not None and self.now >= limit):
                return False
            if self.step():
                idle_rounds = 0
                continue
            idle_rounds += 1
            if idle_rounds > 2 and any(self._step_worker(w) for w in self.workers):
                idle_rounds = 0
                continue
            if idle_rounds > 2:
                # nobody has work: jump the virtual clock to the next timer, as a tickless kernel would
                due = self.next_event() if self.next_event else None
                if due is None or (limit is not None and due > limit):
                    if limit is None:
                        return predicate()
                    self.now = limit
                    continue
                self.now = max(self.now, due)
                idle_rounds = 0
        return True

    def stop(self, join_timeout: float | None = None) -> int:
        self.running = False
        return 0

    def alive_threads(self) -> int:
        return 0
