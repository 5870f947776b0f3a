"""Real OS threads. An idle worker does not spin (a spinning Python thread takes the GIL from
the very thread that would hand it work): it parks at once on its own lock, used as a binary
semaphore (the cheapest real wait CPython has: one futex, no Condition bookkeeping). ``wake(n)``
releases up to ``n`` parked workers, most recently parked first (cache-warm); the enqueue core
asks for one per push to the ready queue, and a worker that pops a batch while more is ready
wakes the next one (a cascade, so a big submit still gets every worker). Every wake-up bumps a
wake sequence that a worker re-checks after registering as parked, so a worker that saw no work
cannot sleep through a wake-up that happened after it looked (no lost wake-ups). Parking also
times out, so due events and tick boundaries are serviced while nothing is enqueued. The host
side (``wait``) sleeps on its own condition, notified the moment the last outstanding task
finishes, so ``run()`` returns without a polling delay.

Caller runs (``help``): a host thread about to wait for the system (``run()``, a request's
reply) first borrows a *parked* worker and runs that worker's steps itself, while they find
work and what it waits for has not happened. A one-task round trip is then no wake-up at all
(the host runs the handler), against two (submit -> a parked worker, handler -> the host)
otherwise. Only a parked worker is borrowed, so a busy system gets no third thread fighting
for the GIL. The borrower takes the worker's park lock off the parked list (no wake-up can
reach it, and its thread cannot leave its park: the lock's token is what it waits for) and
gives it back parked, or released when its thread must run (its park timed out meanwhile, or
work is left in its local queue, or a wake-up found nobody). While the main thread helps,
SIGINT is held back and raised when the step is over (the outer one, for a help nested in a
handler of a step: a handler's sdk call): a KeyboardInterrupt inside a step would leave a batch
half finished (``_SigintGuard``: installed around the handler in place at the first help,
forwarding to it, and put back at ``stop``)."""
from __future__ import annotations

import _signal          # the C module: signal.signal's enum wrapping costs 3 us a call
import itertools
import threading
import time

_SIGINT = 2
_MAIN = threading.main_thread().ident


class _SigintGuard:
    """The SIGINT handler while a system with caller runs is up: forwards to the handler it
    replaced, except while the main thread runs a worker's step (``held``), when the signal
    waits for the step's end (``leave``). Swapping handlers per help instead costs two
    sigaction calls (~2 us) on every round trip."""

    def __init__(self, inner):
        self.inner = inner
        self.held = 0
        self.pending = None

    def __call__(self, signum, frame):
        if self.held:
            self.pending = (signum, frame)
            return None
        return self.inner(signum, frame)

    @staticmethod
    def enter():
        """The guard, held, when called on the main thread with a Python SIGINT handler in
        place (installing the guard the first time); else None."""
        if threading.get_ident() != _MAIN:
            return None
        g = _signal.getsignal(_SIGINT)
        if g.__class__ is not _SigintGuard:
            if not callable(g):            # SIG_IGN / SIG_DFL: no KeyboardInterrupt to hold
                return None
            g = _SigintGuard(g)
            _signal.signal(_SIGINT, g)
        g.held += 1
        return g

    def leave(self) -> None:
        self.held -= 1
        if not self.held and self.pending is not None:
            p, self.pending = self.pending, None
            self.inner(*p)

    @staticmethod
    def remove() -> None:
        """Put the replaced handler back (main thread only; elsewhere the guard stays and
        keeps forwarding)."""
        g = _signal.getsignal(_SIGINT)
        if g.__class__ is _SigintGuard and not g.held and threading.get_ident() == _MAIN:
            _signal.signal(_SIGINT, g.inner)


class ThreadsHal:
    """Implements ggmk.hal.base.Hal."""
    name = "threads"

    def __init__(self, spin: int = 0, park_timeout: float = 0.002, seed: int = 0):
        self.spin = spin                  # failed steps before parking (0: park at once)
        self.park_timeout = park_timeout
        self._plock = threading.Lock()
        self._parked: list = []           # parked workers' locks, most recent last
        self.parked_list = self._parked   # read by workers: is anyone parked?
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
        self.helping = False              # caller runs (see the module docstring; boot's
                                          # host_helps sets it, on by default)
        self.helped = 0                   # steps a host thread ran for a borrowed worker
        self._worker_of: dict = {}        # park lock -> its worker
        self._thread_of: dict = {}        # park lock -> its worker's thread
        self._lent: dict = {}             # park lock -> whether its thread waits for it back
        self._borrower: dict = {}         # park lock -> the ident of the thread it is lent to
        self._quiet: set = set()          # threads in help(before=): their wake-ups are moot

    clock_ns = staticmethod(time.perf_counter_ns)
    cpu_clock_ns = staticmethod(time.thread_time_ns)
    next_event = None            # real threads park with a timeout instead of jumping a clock

    @property
    def parked(self) -> int:
        return len(self._parked)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= end, None)

    def wake(self, n: int = 1) -> None:
        if self._quiet and threading.get_ident() in self._quiet:
            return                        # help(before=): this thread runs what it enqueues
        self.wake_seq = next(self._ctr)
        if self._parked:
            with self._plock:
                parked = self._parked
                while n > 0 and parked:
                    parked.pop().release()
                    self.wakes += 1
                    n -= 1

    def start(self, workers) -> None:
        self.running = True
        for w in workers:
            t = threading.Thread(target=self._loop, args=(w,), name=f"ggmk-worker-{w.id}", daemon=True)
            self.threads.append(t)
            t.start()

    def _unpark(self, lk) -> None:
        """Leave the parked list after a wait that was not ended by a wake-up. If a waker took
        us off meanwhile, it released our lock too: take that token back; if a host borrowed
        us (``help``), say so and wait (outside ``_plock``) until it gives us back."""
        with self._plock:
            try:
                self._parked.remove(lk)
                return
            except ValueError:
                if lk in self._lent:
                    self._lent[lk] = True
        lk.acquire()

    def help(self, predicate, deadline: float | None = None, before=None) -> bool:
        """Caller runs: borrow a parked worker and run its steps on this thread until
        ``predicate()`` holds, a step finds no work, or ``deadline`` (time.monotonic) passes;
        return ``predicate()``. Nothing to borrow (every worker busy): return at once.
        ``before()`` (called exactly once, e.g. the publish of a request) runs first, once a
        worker is borrowed: the wake-up its enqueue would cost is skipped, this thread runs
        the work (left over, it is woken for at the end)."""
        if not self._parked or not self.helping or not self.running:
            if before is not None:
                before()
            return predicate()
        me = threading.get_ident()
        with self._plock:
            lk = self._parked.pop() if self._parked else None
            if lk is not None:
                self._lent[lk] = False
                self._borrower[lk] = me
        if lk is None:
            if before is not None:
                before()
            return predicate()
        worker = self._worker_of[lk]
        step = worker.step
        guard = _SigintGuard.enter()
        try:
            if before is not None:
                self._quiet.add(me)
                try:
                    before()
                finally:
                    self._quiet.discard(me)
            # (running: a handler of a step may halt the system)
            while not predicate() and self.running and step():
                self.helped += 1
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if guard is not None and guard.pending is not None and guard.held == 1:
                    # Ctrl-C waited for this step only: raise it now. A help nested in a
                    # handler of an outer step goes on: the interrupt waits for that step
                    break
        finally:
            seen = self.wake_seq              # a wake-up that found nobody while it was lent
            more = worker.has_work(True)
            with self._plock:
                del self._borrower[lk]
                if self._lent.pop(lk) or more or self.wake_seq != seen or not self.running:
                    lk.release()              # its thread runs
                else:
                    self._parked.append(lk)   # parked again, no wake-up
            if not self.running:
                self._join_lent(lk)
            if guard is not None:
                guard.leave()
        return predicate()

    # the caller-runs SIGINT guard, held (main thread) or None: a host thread running kernel
    # work that must not be cut short (the call lane, ggmk.core.lane); ``.leave()`` it
    sigint_guard = staticmethod(_SigintGuard.enter)

    def lend(self, fn, *args):
        """Caller runs, for one call: borrow a parked worker, run ``fn(worker, *args)`` on this
        thread as that worker (its context, metrics shard, trace slot and local queue: its
        thread is parked and cannot run meanwhile), give it back as ``help`` does (released
        if work was left for it); return what ``fn`` returned. None, without calling ``fn``,
        when caller runs is off or no worker is parked (every worker busy). What
        ``System.direct`` (the direct request path) runs a request on; a truthy result
        counts in ``helped``."""
        if not self._parked or not self.helping or not self.running:
            return None
        with self._plock:
            lk = self._parked.pop() if self._parked and self.running else None
            if lk is not None:
                self._lent[lk] = False
                self._borrower[lk] = threading.get_ident()
        if lk is None:
            return None
        worker = self._worker_of[lk]
        guard = _SigintGuard.enter()
        try:
            r = fn(worker, *args)
            if r:
                self.helped += 1              # (a one-record batch: counted as a step)
            return r
        finally:
            seen = self.wake_seq
            more = worker.has_work(True)
            with self._plock:
                del self._borrower[lk]
                if self._lent.pop(lk) or more or self.wake_seq != seen or not self.running:
                    lk.release()
                else:
                    self._parked.append(lk)
            if not self.running:
                self._join_lent(lk)
            if guard is not None:
                guard.leave()

    def _loop(self, worker) -> None:
        step = worker.step
        # after a step that did work, a cheap look for more (queues, due events, channels)
        # instead of a whole empty step before parking: the GIL goes back sooner
        more = getattr(worker, "has_work", None) or (lambda: True)
        lk = threading.Lock()
        lk.acquire()                      # held = "no wake-up pending"
        with self._plock:                 # (stepping() reads these under it)
            self._worker_of[lk] = worker
            self._thread_of[lk] = threading.current_thread()
        plock = self._plock
        parked = self._parked
        idle = 0
        try:
            while self.running:
                seen = self.wake_seq
                if step():
                    idle = 0
                    if more() or self.wake_seq != seen:
                        continue
                else:
                    idle += 1
                    if idle <= self.spin:
                        continue
                with plock:
                    parked.append(lk)
                if self.wake_seq != seen or not self.running:
                    self._unpark(lk)      # work came in after we looked
                    continue
                self.parks += 1
                on_wake = worker.on_park()   # None, or a hook for the park's end (tracing)
                if lk.acquire(True, self.park_timeout):
                    if on_wake is not None:
                        on_wake(True)
                else:
                    self._unpark(lk)      # timed out: service events / ticks
                    if on_wake is not None:
                        on_wake(False)
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
        while not (self.help(predicate, deadline) if self._parked else predicate()):
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

    def stepping(self) -> list:
        """The workers whose step the calling thread is running: its own (a worker thread) and
        those lent to it (``help``, ``lend``); [] for a thread outside any step. What a
        handler that halts the system is running."""
        me = threading.current_thread()
        with self._plock:
            out = [self._worker_of[lk] for lk, t in self._thread_of.items() if t is me]
            out += [self._worker_of[lk] for lk, who in self._borrower.items() if who == me.ident]
        return out

    def stop(self, join_timeout: float | None = None) -> int:
        """Stop and join the worker threads, but the calling thread and the workers lent to it
        (a handler that halts the system: its own step, which ends once it returns; joining
        them raised 'cannot join current thread', or waited ``join_timeout`` for a thread that
        waits for this one: a lent worker's thread ends once given back, joined then by
        ``_join_lent``). Returns how many others are still running."""
        self.running = False
        _SigintGuard.remove()             # (another system's next help puts it back)
        me = threading.current_thread()
        with self._plock:
            while self._parked:
                self._parked.pop().release()
            mine = {me} | {self._thread_of[lk] for lk, who in self._borrower.items()
                           if who == me.ident}
        deadline = None if join_timeout is None else time.monotonic() + join_timeout
        for t in self.threads:
            if t not in mine:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        # a worker whose handler never returns stays listed (alive_threads counts it)
        self.threads = [t for t in self.threads if t.is_alive()]
        return sum(t not in mine for t in self.threads)

    def _join_lent(self, lk) -> None:
        """Given back after a stop (``help``, ``lend``): ``stop`` did not join the lent
        worker's thread when this thread halted from inside its step (it waited to be given
        back); released, it leaves its park and ends at once (it waits for nothing else).
        Joined here, so it does not outlive the step that halted."""
        t = self._thread_of[lk]
        if t is not threading.current_thread():
            t.join(5.0)               # (bounded: it ends at once, see above)
        self.threads = [t for t in self.threads if t.is_alive()]

    def alive_threads(self) -> int:
        return sum(t.is_alive() for t in self.threads)
