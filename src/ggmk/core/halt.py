"""Halting a system once, from any thread (``halt_once``), and from a signal handler
(``signal_in_kernel``: a signal that interrupted the main thread inside ggmk's code defers the
halt to a thread of its own); the warning for a system never halted (``warn_unhalted``). Used
by :meth:`ggmk.core.kernel.System.halt` and :meth:`ggmk.dual.DualSystem.halt`."""
from __future__ import annotations

import _signal          # (the C module: signal.getsignal's enum wrapping costs 2 us a signal)
import _thread
import atexit
import functools
import logging
import os
import sys
import threading
import warnings
import weakref

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
