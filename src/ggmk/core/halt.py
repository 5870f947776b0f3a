"""Halting a system once, from any thread (``halt_once``), and from a signal handler
(``signal_in_kernel``: a signal that interrupted the main thread inside ggmk's code defers the
halt to a thread of its own); the warning for a system never halted (``warn_unhalted``); and
``System.halt`` itself (:class:`Halting`, a mixin of :class:`ggmk.core.kernel.System`).
``ggmk.dual.DualSystem.halt`` uses the first three."""
from __future__ import annotations

import _signal          # (the C module: signal.getsignal's enum wrapping costs 2 us a signal)
import _thread
import atexit
import functools
import logging
import os
import sys
import threading
import time
import traceback
import warnings
import weakref

from ggmk import task as T
from ggmk.core.det import check_seconds
from ggmk.core.sched import Scheduler
from ggmk.core.worker import Worker

log = logging.getLogger("ggmk")


def halt_once(owner, on_worker: bool, halt, defer: bool = False):
    """Run ``halt()`` for ``owner`` (a ``System`` or ``DualSystem``: its ``_halt_lock``,
    ``halt_report``) once: a later call, from any thread, waits for the first and returns its
    report. A call from a kernel worker (a handler) does not wait: the halt running waits for
    that worker, so waiting here would hold both up.

    ``defer`` (``signal_in_kernel()``: a signal handler interrupted the main thread inside
    ggmk code, maybe holding a lock the halt takes): neither wait nor halt here; the halt runs
    on a thread of its own (``_start_deferred``), which takes those locks once the main thread
    has left the code the signal interrupted. Returns the report if a halt already finished,
    else None."""
    if defer:
        if not getattr(owner, "_halt_started", False) and \
                not getattr(owner, "_halt_deferred", None):
            owner._halt_deferred = halt
            _DEFERRED.add(owner)
            # (the C function: threading.Thread.start takes threading's own locks, which the
            # interrupted code may hold, and waits for the new thread)
            _thread.start_new_thread(_start_deferred, (owner, halt))
        return owner.halt_report
    if not owner._halt_lock.acquire(blocking=not on_worker):
        return owner.halt_report
    try:
        if getattr(owner, "_halt_started", False):    # done, or under way on this thread
            return owner.halt_report
        owner._halt_started = True
        try:
            return halt()
        except BaseException:
            if owner.halt_report is None:      # it never got to account: a later call retries
                owner._halt_started = False
            raise
    finally:
        owner._halt_lock.release()


#: owners whose halt a signal handler deferred (``halt_once``), until that halt is done; at
#: exit the ones still under way are finished first (``_warn_unhalted_at_exit``)
_DEFERRED: set = set()


def _start_deferred(owner, halt) -> None:
    threading.Thread(target=_finish_deferred, args=(owner, halt), name="ggmk-halt",
                     daemon=True).start()


def _finish_deferred(owner, halt) -> None:
    try:
        halt_once(owner, False, halt)
    except BaseException as e:  # noqa: BLE001 - nobody to raise it to: logged (fini failed)
        log.error("ggmk: deferred halt: %r", e)
    finally:
        _DEFERRED.discard(owner)


_MAIN_ID = threading.main_thread().ident
#: the ggmk package's folder, as its modules' code objects name their files
_PKG_DIR = os.path.dirname(os.path.dirname(__file__)) + os.sep
#: where a worker's step calls a handler (no kernel lock is held around that call: the
#: handler's emits take them)
_HANDLER_CALL = Worker._dispatch_group.__code__


def _code_of(fn):
    """The code object a call of ``fn`` runs (a function, a bound method, a partial, an
    object with ``__call__``); None for a builtin."""
    for _ in range(4):
        code = getattr(fn, "__code__", None)
        if code is not None:
            return code
        fn = fn.func if isinstance(fn, functools.partial) else \
            getattr(type(fn), "__call__", None)
    return None


def signal_in_kernel() -> bool:
    """Whether the calling thread runs a Python signal handler that interrupted ggmk code.
    Python runs signal handlers on the main thread, between two bytecodes of whatever it was
    running: maybe kernel code holding a (non-reentrant) lock that a halt takes. Told by the
    stack, only when called (no cost on any other path): the frame of an installed signal
    handler, then, from the frame it interrupted outwards, the first one of ggmk's code. None
    (the main thread was in the caller's own code), or a worker's step calling a handler (the
    main thread runs it by caller runs: ``_HANDLER_CALL``): no kernel lock held. Anything
    else, kernel code: True."""
    if threading.get_ident() != _MAIN_ID:
        return False
    codes = set()
    for sig in _signal.valid_signals():
        h = _signal.getsignal(sig)
        if callable(h):
            codes.add(_code_of(h))
    codes.discard(None)
    f = sys._getframe(1)
    while f is not None and f.f_code not in codes:
        f = f.f_back
    if f is None:
        return False                        # not inside a signal handler
    handler, inner, f = f, f, f.f_back
    while f is not None:
        if f.f_code.co_filename.startswith(_PKG_DIR):
            return f.f_code is not _HANDLER_CALL or inner is handler
        inner, f = f, f.f_back
    return False


#: the scheduler's enqueue core: a thread in one of these has records not queued yet
_ENQUEUE_CODES = frozenset(f.__code__ for f in (
    Scheduler.enqueue, Scheduler._enqueue_one, Scheduler._route, Scheduler._push_ready,
    Scheduler._push_ready_one))


def _enqueue_under_way() -> bool:
    """Whether a thread other than the caller is inside the enqueue core."""
    me = threading.get_ident()
    for tid, f in sys._current_frames().items():
        if tid != me:
            while f is not None:
                if f.f_code in _ENQUEUE_CODES:
                    return True
                f = f.f_back
    return False


def warn_unhalted(name: str, running: str, pid: int | None = None) -> None:
    """The ResourceWarning of a system never halted (Python's "unclosed ..." one: shown with
    ``-W default`` or ``python -X dev``). Only a warning: halting here (a finalizer, an
    atexit hook) would run on whatever thread happened to collect it, maybe one inside a
    handler of this very system or inside a kernel lock the halt takes (a deadlock), and
    would wait for handlers to return (up to ``STUCK_AFTER_S`` per system) at exit. ``pid``:
    the process that booted it (a child forked from it inherits the object, not its threads:
    nothing to say there)."""
    if pid is not None and pid != os.getpid():
        return
    warnings.warn(f"unhalted {name}: {running} still running until the interpreter exits; "
                  f"call halt() (or boot it in a with block)", ResourceWarning, stacklevel=2)


#: CPU systems not halted yet. Their running workers hold them (never collected while they
#: run), so a dropped one is warned about at interpreter exit (``_warn_unhalted_at_exit``),
#: not when the user's last reference goes; a DualSystem warns for its own when collected.
_UNHALTED: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _warn_unhalted_at_exit() -> None:
    for owner in list(_DEFERRED):     # a signal handler's halt still under way: finished first
        try:
            halt_once(owner, False, owner._halt_deferred)
        except Exception as e:  # noqa: BLE001 - (its thread logs it too)
            log.error("ggmk: deferred halt: %r", e)
    for s in list(_UNHALTED):
        if not s.halted and s._boot_pid == os.getpid():
            alive = getattr(s.hal, "alive_threads", lambda: 0)()
            warn_unhalted(f"ggmk System at {id(s):#x} (modules "
                          f"{', '.join(repr(m.name) for m in s.modules)})",
                          f"{alive} worker thread(s)")


class Halting:
    """``System.halt`` and what it runs (mixed into :class:`ggmk.core.kernel.System`): the
    drain, stopping the workers, and the accounting of everything accepted."""

    def halt(self, timeout: float = 5.0) -> dict:
        """Stop the system without losing anything it accepted.

        From the call on, ``submit`` raises KernelStopped. The workers go on for up to
        ``timeout`` seconds while accepted work remains (what handlers emit meanwhile is
        accepted work too), then stop and are joined (a host reader waiting for what was
        already delivered to it, an sdk client's reply, gets up to ``READERS_S`` to take it
        before the channels close). Whatever is still queued then (ready,
        local, overflow, event and tick-stage queues) goes to ``sys.error`` with ``HALTED``;
        what channels still hold goes to ``sys.dropped`` with ``CHAN_CLOSED``. Module fini
        runs last, in reverse order. Returns the accounting::

            {"drained": True/False, "halted": tasks dead-lettered with HALTED,
             "channel_dropped": channel messages dropped, "outstanding": 0,
             "stuck_workers": 0}

        A worker still inside a handler ``STUCK_AFTER_S`` seconds after the stop (a handler
        that never returns: Python cannot end a thread) is left behind instead of waited for
        forever: counted in ``stuck_workers``, its tasks in ``outstanding`` (they finish if
        the handler ever returns; what it emits then is refused: the channels are closed).

        A handler may call ``halt`` (on a worker thread, or on a host thread that runs a
        worker's step by caller runs, ``run()`` or a reply's wait): the halt does not wait for
        that handler's own step, whose tasks finish once it returns (what the handler emitted
        is handed over then, and dead-lettered HALTED). The report then has
        ``"in_caller_step"``: those tasks, counted in ``outstanding`` too (``outstanding -
        in_caller_step`` are the stuck workers'). So does a signal handler's halt that
        interrupts the main thread inside such a step's handler. The thread of a worker whose
        step a host thread runs is parked meanwhile (it waits to be given back, so the halt
        cannot join it): it runs no more steps; the host thread gives it back when the step
        ends and joins it before its wait returns, so no worker thread outlives ``run()``.

        A signal handler may call ``halt`` (``signal.signal(SIGTERM, lambda *a:
        system.halt())``); it never waits for good. Python runs the handler on the main
        thread between two bytecodes, maybe inside the kernel holding a lock the halt takes
        (a ``submit``'s enqueue). ``halt`` looks where the signal landed (the main thread's
        stack, read only then: ``signal_in_kernel``). In the program's own code, or in a
        handler the main thread runs by caller runs (above): the halt runs at once and
        returns its report. Inside ggmk's code: the halt is *deferred*, ``halt`` returns None
        at once and the halt runs on a thread of its own (``ggmk-halt``), taking those locks
        once the main thread has left the code the signal interrupted (the handler must
        return for that: it must not wait for the halt). Either way ``halted`` is True from
        the call on (``submit`` raises KernelStopped) and nothing is lost: the deferred halt
        waits for a step the main thread runs to end and for an enqueue under way to queue
        its records (at most ``STUCK_AFTER_S`` each), then accounts as above (no
        ``in_caller_step``). ``halt()`` called again outside the signal handler (a ``with``
        block's exit) waits for it and returns its report; one still under way at exit is
        finished before the interpreter goes (module fini included).

        ``dead_letters()`` still works after ``halt``. Calling ``halt`` again returns the same
        accounting (a call from another thread while the first runs waits for it; one from a
        handler or a signal handler while it runs returns None).

        A system never halted keeps its worker threads (and what its modules started) until
        the interpreter exits, and its running workers keep it from being collected: at exit
        it is named in a ResourceWarning (``warn_unhalted``; not halted for you there).
        """
        check_seconds("halt", "timeout", timeout, none_ok=False)
        if signal_in_kernel():      # (first: on_worker_thread takes a lock the signal may hold)
            self.halted = True      # submit() refuses from here on, as for a halt at once
            return halt_once(self, False, lambda: self._halt(timeout), defer=True)
        return halt_once(self, self.on_worker_thread(), lambda: self._halt(timeout))

    #: how long halt waits (s, at most; within its timeout) for host readers to take what was
    #: delivered to them while it drained (``_let_readers_take``)
    READERS_S = 1.0

    def _awaited_rings(self) -> list:
        """The rings of host-side subscribers whose reader waits for them (``awaited``) and
        that hold something."""
        out = []
        for ch in self.channels or ():
            for sub in ch.subs:
                if not sub.type_id and sub.awaited is not None and sub.ring.tail != \
                        sub.ring.head and sub.awaited():
                    out.append(sub.ring)
        return out

    def _let_readers_take(self, left: float) -> None:
        """After the drain, before the channels close (which drops what their rings hold on
        sys.dropped): a host reader waiting for messages already in its ring (an sdk client
        whose reply a handler emitted while the halt drained) takes them first, for at most
        ``left`` s. Woken by the ring's pops (``Ring.on_free``). On a starved machine the
        close came first: the reply went to sys.dropped and the caller got KernelStopped
        (3 runs in 12 with the test pinned to one busy core)."""
        rings = self._awaited_rings()
        if not rings or left <= 0:
            return
        for r in rings:
            r.on_free = self.hal.notify_host
        self.hal.wait(lambda: not self._awaited_rings(), left)

    def on_worker_thread(self) -> bool:
        """The calling thread runs a step of this kernel's workers: one of its worker threads,
        or a thread running a borrowed worker's step (caller runs; on sim, the stepping
        thread). A handler, that is."""
        return bool(self.hal.stepping())

    def _halt(self, timeout: float) -> dict:
        self.halted = True                      # submit() refuses from here on
        _UNHALTED.discard(self)
        # a handler that halts (on a worker's thread, or on a host thread running a borrowed
        # worker's step) holds its step's tasks until it returns: the drain cannot wait for
        # them (it waited out the timeout, then the stop joined the caller's own thread)
        stepping = self.hal.stepping()
        mine = sum(w.in_hand for w in stepping)
        drained, stuck, worker_error = False, 0, None
        try:
            drained, worker_error = self._halt_drain(timeout, mine)
        finally:
            # whatever happened above (a KeyboardInterrupt in the wait): stop the workers and
            # account for everything, or accepted work stayed queued for good and a second
            # halt() returned None
            try:
                stuck = self.hal.stop(join_timeout=self.STUCK_AFTER_S)
            finally:
                self._halt_account(drained, stuck, worker_error,
                                   mine if stepping else None)
        return self.halt_report

    def _halt_drain(self, timeout: float, mine: int) -> tuple[bool, str | None]:
        """``halt``'s wait for the accepted work to finish (all but the calling handler's own
        ``mine`` tasks): (drained, a crashed worker's error or None)."""
        if self.det is not None:
            self.det.release_input()
            self.hal.wake(self.nworkers)
        t_end = time.monotonic() + timeout
        if mine:
            def done():
                return self.sched.outstanding <= mine and (
                    self.channels is None or self.channels.idle())
        else:
            done = self.idle
        try:
            drained = done() or (timeout > 0 and self.hal.wait(done, timeout))
        except RuntimeError as e:   # a worker thread crashed: halt still accounts everything
            log.error("ggmk: halt: %r", e.__cause__ or e)
            return False, repr(e.__cause__ or e)
        if drained:
            self._let_readers_take(min(self.READERS_S, t_end - time.monotonic()))
        return drained, None

    def _halt_account(self, drained: bool, stuck: int, worker_error: str | None,
                      mine: int | None = None) -> None:
        """``halt`` once the workers are stopped: dead-letter what is left, close the
        channels, set ``halt_report`` (``mine``: the tasks of the calling step, None for a
        halt from outside any step), run module fini."""
        if stuck:
            log.warning("ggmk: halt: %d worker(s) still in a handler that did not return "
                        "within %.1f s; halt goes on without them (their tasks stay "
                        "outstanding, what they emit later is refused)", stuck,
                        self.STUCK_AFTER_S)
        self.running = False
        # nothing runs the queues from here on: what a host thread still delivers (a publish
        # its channel admitted just before the channels close below, a caller of
        # sdk.Client racing the halt) is dead-lettered HALTED at once instead of queued
        # where nobody would run it (it would stay outstanding for good)
        self.sched.enqueue = self._enqueue_after_halt
        left = self.sched.take_all()
        if self.det is not None:
            det_left = self.det.take_all()
            with self.sched.count_lock:
                self.sched.outstanding -= sum(len(r) for r in det_left)
            left += det_left
        halted = 0
        for recs in left:
            halted += len(recs)
            self._dead(recs, T.HALTED)
        dropped = 0
        if self.channels is not None:
            for ch in list(self.channels):
                if ch.name not in ("sys.error", "sys.dropped"):
                    try:
                        dropped += ch.close()
                    except Exception as e:  # noqa: BLE001 - one channel must not stop the halt
                        self.note_exception(("kernel", f"halt: close {ch.name!r}", repr(e),
                                             "".join(traceback.format_exception(e))))
        # an enqueue already under way on another thread (a host thread's submit racing the
        # halt; the main thread, where a signal handler deferred this halt) queues its records
        # after the take above: let it finish (bounded, as a stuck worker is), then take them
        t_end = time.monotonic() + self.STUCK_AFTER_S
        while _enqueue_under_way() and time.monotonic() < t_end:
            time.sleep(0.0002)
        for recs in self.sched.take_all():
            halted += len(recs)
            self._dead(recs, T.HALTED)
        self.halt_report = {"drained": bool(drained), "halted": halted,
                            "channel_dropped": dropped, "outstanding": self.sched.outstanding,
                            "stuck_workers": stuck}
        if mine is not None:
            self.halt_report["in_caller_step"] = mine
        if worker_error is not None:
            # (a crashed worker's batch in hand stays outstanding: its records are gone)
            self.halt_report["worker_errors"] = [repr(e) for e in
                                                 getattr(self.hal, "errors", ())] or \
                [worker_error]
        errors = []
        for m in reversed(self.modules):
            if m._fini:
                try:
                    m._fini(self)
                except Exception as e:  # noqa: BLE001 - run every fini, then report
                    errors.append((m.name, e))
        if errors:
            raise RuntimeError(f"module fini failed: {errors}")

    def _enqueue_after_halt(self, recs, route=None, worker: int = -1, due: int = 0,
                            wake: bool = True) -> int:
        """``sched.enqueue`` once the workers are stopped (see ``halt``): every record goes
        to sys.error with HALTED; 0 accepted (the enqueue core's word for "the rest went to
        sys.error with a reason")."""
        if len(recs):
            self._dead(T.copy(recs), T.HALTED)
        return 0
