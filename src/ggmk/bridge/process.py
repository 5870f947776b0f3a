"""The device process: the GPU kernel in a child process that can be torn down and relaunched.

Why a process
-------------
A device handler stuck in an infinite loop cannot be interrupted inside a running kernel: not
on a GPU (a resident kernel runs until it returns; only destroying its context stops it), not
in a Numba-compiled host thread (``nogil`` machine code: no signal, no exception reaches it).
The only unit that can be torn down and started again without stopping the CPU kernel is a
process. So the GPU kernel (and, on ``cuda``, its CUDA context) lives in a child process;
the watchdog (``ggmk.modules.watchdog``) kills it and boots a fresh one.

Why shared memory, not messages
-------------------------------
The bridge talks to the device kernel through its *mapped words*: the control words, the
host <-> device rings, heartbeats, published metrics, and through the payload arena. Here
the parent **creates** both regions in POSIX shared memory (``multiprocessing.shared_memory``)
and the child's kernel is built on them (``DeviceKernel.start(alloc=)`` hooks the target
session's ``alloc_map`` / ``alloc_arena``; on ``cuda`` the shared pages are
``cudaHostRegister``-ed as mapped memory). The parent then holds a *host view* of the kernel
(``DeviceKernel.attach``) over the same pages: push, pull, heartbeats, published counters and
payload copies are the same host code as in-process, with no IPC round trip per batch. A small
control pipe carries only lifecycle: build / start (or the child's traceback), stop, exit.

* ``spawn`` start method: the parent is threaded (CPU workers, bridge pump): a fork would copy
  locks held by other threads. The device modules travel by pickle (module-level handlers,
  by reference); a module a factory made with closure handlers (the standard modules'
  ``device_module()``: ``m._ggmk_rebuild``) and the bridge's own device module are rebuilt in
  the child from plain data (the same kernel source: the same kernel cache key).
* Parent owns the segments: it creates them before the child starts and unlinks them when the
  child is gone (halt, a failed boot, a reset), so a child that dies leaves nothing behind.
  The child watches its parent (pipe EOF, ``getppid``): if the parent dies, the child unlinks
  the segments and exits (the resource tracker would too).
* Wake-ups: the ``cpu`` target's idle workers sleep on its doorbell, a *shared* futex in the
  shared pages: the parent rings it directly (the target's ``host_notifier`` over its view).
  A target without a notifier usable from here is served by a relay: the parent bumps a relay
  word after the layout's words and wakes it with a shared futex; a relay thread in the child
  rings the kernel's own doorbell. The other way, the device rings the parent's bridge pump
  on the ``cpu`` target's device -> host bell (``DeviceKernel.tx_bell``), also a shared futex.
* Child death: ``alive()`` is the child's liveness (and its kernel's), so a dead child makes
  the transport raise ``KernelStopped`` (the bridge puts the batch on ``sys.error``) instead of
  pushing into a ring nobody reads; the watchdog resets it.

Example::

    from ggmk.bridge.process import DeviceProcess
    p = DeviceProcess(modules, target="cpu", types=reg, config={"workers": 2}).start()
    k = p.kernel                      # a DeviceKernel view: push / pull / heartbeats / metrics
    ...
    p.close()                         # stop (or kill), join, unlink: nothing left behind
"""
from __future__ import annotations

import atexit
import ctypes
import mmap
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import platform
import signal
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path

import numpy as np

from ggmk.bridge.transport import InProcessTransport
from ggmk.device import layout
from ggmk.errors import BootError, DeviceError

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower()) if sys.platform.startswith("linux") else None
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1          # shared (not _PRIVATE): they cross processes
RELAY_WORDS = 8                           # one 64-byte line after the layout's mapped words

_libc = None

# device processes started and not yet killed: at interpreter exit, a system never halted
# must not leave its segments to the resource tracker (a "leaked shared_memory objects"
# warning on every such exit) nor its child to multiprocessing's own exit hook
_LIVE: "weakref.WeakSet[DeviceProcess]" = weakref.WeakSet()
_at_exit = False

#: seconds a device process about to be killed (its kernel hung) gets to read and hand back
#: what the kernel holds (``DeviceProcess.kill``); the parent waits a little longer for the
#: reply, then kills it anyway
HANDBACK_S = 0.5
_PIPE_S = 0.25


def _kill_live() -> None:
    for p in list(_LIVE):
        try:
            p.kill(handback=False)          # (exiting: nobody would account for it)
        except Exception:   # noqa: BLE001 - exiting: kill the others
            pass


def _sys():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


class _Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]


def futex_wake(addr: int) -> None:
    if _SYS_FUTEX is not None:
        _sys().syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, 1 << 30, 0, 0, 0)


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the low 32 bits at ``addr`` equal ``expected``'s (at most ``timeout_s``);
    ctypes releases the GIL meanwhile."""
    if _SYS_FUTEX is None:
        time.sleep(min(timeout_s, 0.001))
        return
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    _sys().syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT,
                   ctypes.c_int(expected & 0xFFFFFFFF if expected & 0x80000000 == 0
                                else (expected & 0xFFFFFFFF) - (1 << 32)),
                   ctypes.byref(ts), 0, 0)


# ------------------------------------------------------------------------------ shared memory

def _shm_create(nbytes: int):
    """A new POSIX shared memory segment of ``nbytes`` (zeroed); returns (name, unlinker)."""
    from multiprocessing import shared_memory
    seg = shared_memory.SharedMemory(create=True, size=max(int(nbytes), 1))
    name = seg.name
    seg.close()                 # mapped again by _shm_map: no exported buffer pins this one
    return name, seg


def _shm_map(name: str, nbytes: int) -> mmap.mmap:
    """Map segment ``name`` (no resource-tracker registration: the parent owns it)."""
    import _posixshmem
    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(fd, max(int(nbytes), 1))
    finally:
        os.close(fd)


def _shm_unlink(name: str) -> None:
    import _posixshmem
    try:
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
    except FileNotFoundError:
        pass


def shm_exists(name: str) -> bool:
    """Whether segment ``name`` still exists (tests: nothing is left behind)."""
    return os.path.exists("/dev/shm/" + name.lstrip("/")) if sys.platform.startswith("linux") \
        else True


# ------------------------------------------------------------------------------ the child

def _types_blob(types):
    """A type registry as plain data (its TypeInfo objects hold unpicklable codecs)."""
    if types is None:
        return None
    import dataclasses
    return pickle.dumps([{f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.init}
                         for t in types])


def _types_from(blob):
    if blob is None:
        return None
    from ggmk.typereg import TypeRegistry
    from ggmk.typereg.schema import TypeInfo
    return TypeRegistry([TypeInfo(**d) for d in pickle.loads(blob)])


class _ShmAlloc:
    """``DeviceKernel.start(alloc=)`` hooks: the mapped words and the arena in the parent's
    shared memory (``cpu`` / ``sim``: plain NumPy views; ``cuda``: the pages registered as
    mapped host memory and wrapped as a mapped device array)."""

    def __init__(self, target: str, map_mm, arena_mm, nmap: int, narena: int):
        self.target = target
        self.map_np = np.frombuffer(map_mm, np.int64, nmap)
        self.arena_np = np.frombuffer(arena_mm, np.uint8, narena)
        self._pins = []

    def _wrap(self, sess, arr):
        if self.target == "sim":                     # the simulator's device array type
            from ggmk.device.targets import sim
            return sim._fake(arr)
        if self.target != "cuda":
            return arr
        from numba import cuda                       # written for cuda; not run in CI
        from numba.cuda.cudadrv import devicearray
        ctx = cuda.current_context()
        pm = ctx.mempin(arr, arr.ctypes.data, arr.nbytes, mapped=True)   # cudaHostRegister
        self._pins.append(pm)
        mv = np.ndarray.view(arr, type=devicearray.MappedNDArray)
        mv.device_setup(pm, stream=getattr(sess, "stream", 0))
        return mv

    def alloc_map(self, sess, image):
        self.map_np[:len(image)] = image
        return self._wrap(sess, self.map_np[:len(image)])

    def alloc_arena(self, sess, nbytes):
        self.arena_np[:nbytes] = 0
        return self._wrap(sess, self.arena_np[:nbytes])


def _file_modules(blob: bytes) -> list:
    """(name, file) of the modules the pickled device modules refer to, so the child can load
    one that was imported from a path under a name no import finds (``ggmk boot app.py`` loads
    the app as ``ggmk_app_<stem>``); a name that is importable is imported as usual."""
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and name != "__main__" and not name.startswith(("ggmk.", "numba", "numpy")) \
                and name.encode() in blob:
            out.append((name, f))
    return out


def _preload(modules: list) -> None:
    import importlib
    import importlib.util
    for name, f in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            spec = importlib.util.spec_from_file_location(name, f)
            if spec is None or spec.loader is None:
                raise
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)


def _child_main(conn, spec: dict) -> None:
    """The device process: build and launch the kernel on the shared pages, then serve the
    control pipe until told to stop (or until the parent is gone)."""
    ppid = spec["ppid"]
    kernel = None
    map_mm = arena_mm = None
    gone = threading.Event()

    def parent_gone() -> None:          # the parent died: leave nothing behind
        gone.set()
        for nm in (spec["map_name"], spec["arena_name"]):
            _shm_unlink(nm)
        os._exit(3)

    try:
        import ggmk.device as gd
        from ggmk.bridge import device_side as ds
        _preload(spec["preload"])
        mods = pickle.loads(spec["modules"])
        types = _types_from(spec["types"])
        if spec["bridge"] is not None:
            mods = list(mods) + [ds.build_module(*spec["bridge"])]
        cfg = dict(spec["config"])
        kernel = gd.DeviceKernel(mods, target=spec["target"], types=types, **cfg)
        nmap = layout.offsets(kernel.plan)["_total"][2]
        if nmap != spec["nmap"] or kernel.config.arena_bytes != spec["narena"]:
            raise DeviceError(f"device process: the kernel's layout ({nmap} map words, "
                              f"{kernel.config.arena_bytes} arena bytes) differs from the "
                              f"parent's ({spec['nmap']}, {spec['narena']})")
        map_mm = _shm_map(spec["map_name"], (nmap + RELAY_WORDS) * 8)
        arena_mm = _shm_map(spec["arena_name"], spec["narena"])
        hooks = _ShmAlloc(kernel.target_name, map_mm, arena_mm, nmap, spec["narena"])
        kernel.start(timeout=spec["start_timeout"], alloc=hooks)
        relay = np.frombuffer(map_mm, np.int64, RELAY_WORDS, offset=nmap * 8)
    except BaseException:   # noqa: BLE001 - reported to the parent with its traceback
        try:
            conn.send(("error", traceback.format_exc()))
        finally:
            os._exit(2)
    conn.send(("started", {"pid": os.getpid(), "target": kernel.target_name,
                           "built": {"key": kernel.built.key, "path": str(kernel.built.path)}}))

    def relay_loop() -> None:
        """Parent pushes bump relay[0] and wake it (shared futex): ring the kernel's own
        doorbell (for a target whose notifier the parent cannot use on the shared pages)."""
        addr = relay.ctypes.data
        seen = int(relay[0])
        while not gone.is_set():
            futex_wait(addr, seen, 0.05)
            v = int(relay[0])
            if v != seen:
                seen = v
                kernel._ring()

    def watch_parent() -> None:
        while not gone.is_set():
            if os.getppid() != ppid:
                parent_gone()
            time.sleep(0.2)

    threading.Thread(target=relay_loop, name="ggmk-devproc-relay", daemon=True).start()
    threading.Thread(target=watch_parent, name="ggmk-devproc-watch", daemon=True).start()
    rc = 0
    try:
        while True:
            if not conn.poll(0.05):
                if not kernel.alive():
                    err = getattr(kernel._launch, "error", None)
                    conn.send(("exited", repr(err)))
                    rc = 4
                    break
                continue
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                parent_gone()
            if cmd[0] == "stop":
                err = None
                try:
                    kernel.stop(timeout=cmd[1])
                except BaseException:   # noqa: BLE001
                    err = traceback.format_exc()
                # (one that did not stop, stuck, is read as it is, within a bound: see _held)
                held = _held(kernel, mods, None if err is None else HANDBACK_S)
                conn.send(("stopped", err, held))
                break
            if cmd[0] == "handback":
                # a hung kernel about to be killed: what it holds, read while it runs; then
                # exit at once (the parent kills this process next: its live workers would
                # only move on from what was read)
                conn.send(("handback", _held(kernel, mods, cmd[1])))
                break
            if cmd[0] == "ping":
                conn.send(("pong", kernel.alive()))
    finally:
        gone.set()
        try:
            conn.close()
        finally:
            os._exit(rc)        # stuck kernel threads (nogil machine code) must not hold exit


def _held(kernel, mods, bound: float | None = None) -> dict | None:
    """What the kernel holds in its device words, which die with this process: the records on
    its event queue (``device_tasks.pending_events``) and, when a module has a host-side
    ``halt_records`` hook, the user words it reads (``device_tasks.user_words``). The parent
    sets them on its view (``held_events``, ``held_user_words``). None when they could not be
    read (the parent counts type 0): read in a try of its own, so an unreadable word never
    turns a clean stop into a failed one. ``bound``: a kernel that did not stop (hung) is read
    as it is (``device_tasks._settled``) by a helper thread, waited for ``bound`` seconds at
    most (on ``cuda`` a copy may wait behind the stuck kernel forever)."""
    from ggmk.bridge import device_tasks
    need = any(callable(getattr(m, "halt_records", None)) for m in mods)
    out = []

    def read():
        try:
            out.append({"events": device_tasks.pending_events(kernel),
                        "user": device_tasks.user_words(kernel) if need else None})
        except Exception:   # noqa: BLE001 - unread: the parent counts type 0
            pass
    if bound is None:
        read()
    else:
        th = threading.Thread(target=read, name="ggmk-devproc-held", daemon=True)
        th.start()
        th.join(max(0.0, bound))
    return out[0] if out else None


# ------------------------------------------------------------------------------ the parent

class _RemoteLaunch:
    """``Launch`` of the view kernel: the child's liveness; ``wait`` asks it to stop."""

    def __init__(self, proc: "DeviceProcess"):
        self.p = proc
        self.error = None

    def alive(self) -> bool:
        return self.p.alive()

    def wait(self, timeout: float) -> bool:
        return self.p._stop_child(timeout)


#: why a device process most often dies before it reports: the child is a ``spawn`` process,
#: which imports the parent's main script again
_SPAWN_HINT = ("a script that boots a device process must boot it under "
               "`if __name__ == \"__main__\":` (the child is a multiprocessing 'spawn' process, "
               "which imports the main script again)")


def _main_unguarded() -> bool:
    """The main script (which a spawn child imports again) has no ``__name__ == "__main__"``
    test anywhere; False when there is no script (-c, interactive) or it cannot be read."""
    import ast
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    try:
        tree = ast.parse(Path(path).read_text())
    except Exception:   # noqa: BLE001 - no script, or not readable: nothing to say
        return False
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare):
            ops = [n.left, *n.comparators]
            if any(isinstance(o, ast.Name) and o.id == "__name__" for o in ops) and any(
                    isinstance(o, ast.Constant) and o.value == "__main__" for o in ops):
                return False
    return True


def _died_in_boot(code) -> str:
    """Why a device process that ended before reporting did so, as far as the parent can
    tell: its exit code or signal, and the spawn hint only for a script without a guard (a
    guarded one got it even when the child was killed)."""
    how = f"exit code {code}"
    why = "its traceback, if it wrote one, is on this process's stderr (the child shares it)"
    if code is not None and code < 0:
        try:
            how = f"killed by signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            how = f"killed by signal {-code}"
        why += "; the signal came from outside it (a kill, the out-of-memory killer)"
    if _main_unguarded():
        why = _SPAWN_HINT
    return f"the device process exited during boot ({how}) without a report; {why}"


def _rebuild(path: str, factory: str, kwargs: dict):
    """In the child: call the factory that made a module again (see :class:`_Rebuild`)."""
    import importlib
    return getattr(importlib.import_module(path), factory)(**kwargs)


class _Rebuild:
    """Pickles as a call of the factory that made a module, recorded by it as
    ``m._ggmk_rebuild = (import path, factory name, keyword arguments)``: its handlers are
    closures, which pickle cannot send."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return _rebuild, tuple(self.how)


def sendable(modules) -> list:
    """``modules`` as they travel to the child: a module with ``_ggmk_rebuild`` as the recipe
    to rebuild it there."""
    return [_Rebuild(m._ggmk_rebuild) if getattr(m, "_ggmk_rebuild", None) else m
            for m in modules]


def _picklable(m) -> bool:
    try:
        pickle.dumps(m)
        return True
    except Exception:   # noqa: BLE001 - any failure means it cannot travel
        return False


def _is_std(m) -> bool:
    """A module built by a ``ggmk.modules`` ``device_module()`` (its handlers are defined
    there)."""
    return any(getattr(h.fn, "__module__", "").startswith("ggmk.modules.")
               for h in getattr(m, "handlers", ()))


class DeviceProcess:
    """A child process owning one GPU kernel; its parent's host view is :attr:`kernel`.

    ``modules``: the user's device modules (picklable: defined at module level of an
    importable module); ``bridge``: ``(inbound, outbound)`` for the bridge's own
    device module (rebuilt in the child) or None; ``config``: ``DeviceKernel`` keywords."""

    #: seconds the child gets to build (or load from the disk cache) and launch the kernel
    BOOT_TIMEOUT = 600.0

    def __init__(self, modules, *, target: str = "cpu", types=None, bridge=None,
                 config: dict | None = None, boot_timeout: float | None = None):
        import ggmk.device as gd
        from ggmk.bridge import device_side as ds
        self.target = target
        self.modules = list(modules)
        self.types = types
        self.bridge_args = bridge
        self.config = dict(config or {})
        self.boot_timeout = float(boot_timeout or self.BOOT_TIMEOUT)
        try:
            self._mods_blob = pickle.dumps(sendable(self.modules))
            self._types_blob = _types_blob(types)
        except Exception as e:   # noqa: BLE001 - name the problem
            bad = [m for m, x in zip(self.modules, sendable(self.modules))
                   if not _picklable(x)] or self.modules
            # a standard module without its recipe (or with arguments pickle cannot send):
            # advice to move handlers a user did not write would be advice they cannot follow
            std = [getattr(m, "name", m) for m in bad if _is_std(m)]
            own = [getattr(m, "name", m) for m in bad if not _is_std(m)]
            why = []
            if std:
                why.append(f"{std}: a standard module's device version "
                           "(ggmk.modules.*.device_module) travels as its factory's keyword "
                           "arguments, which must be picklable; or boot with "
                           "device_process=False and without watchdog")
            if own:
                why.append(f"{own}: define their handlers at module level of an importable "
                           "module, or boot with device_process=False")
            raise BootError(
                f"device process: the device modules {[getattr(m, 'name', m) for m in bad]} "
                f"cannot be sent to the child process ({type(e).__name__}: {e}); "
                + "; ".join(why)) from e
        mods = list(self.modules)
        if bridge is not None:
            mods.append(ds.build_module(*bridge))
        # the parent's host view: same modules, same plan (nothing compiled here; the target
        # need not be usable in this process: sim's simulator switch is set in the child)
        self.kernel = gd.DeviceKernel(mods, target=target, types=types, view=True,
                                      **self.config)
        self.target_name = self.kernel.target_name
        from ggmk.device.targets import option
        self.env = dict(option(self.kernel.target, "PROCESS_ENV") or {})
        self.nmap = layout.offsets(self.kernel.plan)["_total"][2]
        self.narena = self.kernel.config.arena_bytes
        self.proc = None
        self.conn = None
        self.segments: list[str] = []
        self._segs = []
        self._closed = False
        self._lock = threading.Lock()
        self.exit_info = None
        self._direct = None
        self._exited = False              # set by the exit watcher the moment the child ends
        #: seconds a hung kernel's child gets to hand back what it holds before :meth:`kill`
        #: kills it (0: killed unread)
        self.handback_s = HANDBACK_S
        self._stop_sent = False           # the child serves no other command after "stop"
        self._handed = False              # its held state came back (stop or hand-back)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "DeviceProcess":
        """Create the shared pages, spawn the child, wait until its kernel runs. A failed
        boot raises DeviceError with the child's traceback and leaves nothing behind."""
        try:
            mname, mseg = _shm_create((self.nmap + RELAY_WORDS) * 8)
            self.segments.append(mname)
            self._segs.append(mseg)
            aname, aseg = _shm_create(self.narena)
            self.segments.append(aname)
            self._segs.append(aseg)
            map_mm = _shm_map(mname, (self.nmap + RELAY_WORDS) * 8)
            arena_mm = _shm_map(aname, self.narena)
            spec = dict(ppid=os.getpid(), target=self.target_name, modules=self._mods_blob,
                        preload=_file_modules(self._mods_blob),
                        types=self._types_blob, bridge=self.bridge_args, config=self.config,
                        map_name=mname, arena_name=aname, nmap=self.nmap, narena=self.narena,
                        start_timeout=self.boot_timeout, env=self.env)
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe(duplex=True)
            from ggmk import _devproc
            self.proc = ctx.Process(target=_devproc.main, args=(child, spec),
                                    name=f"ggmk-device-{self.target_name}", daemon=True)
            global _at_exit
            if not _at_exit:        # (registered after multiprocessing's: it runs first)
                atexit.register(_kill_live)
                _at_exit = True
            _LIVE.add(self)
            try:
                self.proc.start()
            except Exception as e:  # noqa: BLE001 - any spawn failure is a boot failure
                # (the hint only where it can apply: multiprocessing refuses a spawn child
                # that imports the main script again with a RuntimeError; an OSError, out
                # of processes or memory, has nothing to do with the guard)
                hint = f"; {_SPAWN_HINT}" if isinstance(e, RuntimeError) else ""
                raise DeviceError(f"device process ({self.target_name}) could not be started: "
                                  f"{e}{hint}") from e
            child.close()
            msg = self._await_boot()
            if msg[0] != "started":
                raise DeviceError(f"device process ({self.target_name}) failed to boot the GPU "
                                  f"kernel; its traceback:\n{msg[1]}")
            self.pid = msg[1]["pid"]
            threading.Thread(target=self._watch_exit, args=(self.proc.sentinel,),
                             name="ggmk-devproc-exit", daemon=True).start()
            words = np.frombuffer(map_mm, np.int64, self.nmap + RELAY_WORDS)
            self._relay = words[self.nmap:]
            arena = np.frombuffer(arena_mm, np.uint8, self.narena)
            self.launch = _RemoteLaunch(self)
            self.kernel.attach(words[:self.nmap], arena, self.launch, self._notify,
                               built=msg[1].get("built"))
            # cpu: its doorbell is a shared futex in the shared pages: ring it from here (one
            # wake-up, not two through the child's relay thread)
            from ggmk.device.targets import option
            self._direct = option(self.kernel.target, "host_notifier")(self.kernel._h["ctl"])
        except BaseException:
            self.kill()
            raise
        return self

    def _await_boot(self):
        t_end = time.monotonic() + self.boot_timeout
        while True:
            if self.conn.poll(0.05):
                try:
                    return self.conn.recv()
                except (EOFError, OSError):
                    pass
            if not self.proc.is_alive():
                if self.conn.poll(0):
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        pass
                return ("error", _died_in_boot(self.proc.exitcode))
            if time.monotonic() > t_end:
                return ("error", f"boot timed out after {self.boot_timeout} s")

    def _notify(self) -> None:
        d = self._direct
        if d is not None:
            d()
            return
        r = self._relay
        r[0] += 1
        futex_wake(r.ctypes.data)

    def _watch_exit(self, sentinel) -> None:
        """Wait for the child to end (its process sentinel), then say so: :meth:`alive` is
        checked on every transfer, so it reads a flag this thread sets rather than doing a
        ``waitpid`` and a pipe poll each time (~20-40 us of a round trip's publish here).
        The child also ends when its kernel dies (it reports why, then exits)."""
        try:
            mp.connection.wait([sentinel])
        except (OSError, ValueError):     # (the process object was closed: it had ended)
            pass
        self._exited = True

    def alive(self) -> bool:
        """The child runs and its kernel has not exited (never blocks)."""
        if self.proc is None or self._closed:
            return False
        if self._exited:
            self._read_exit_info()
            return False
        return self.exit_info is None

    def _read_exit_info(self) -> None:
        """The child's report of why its kernel exited, if it sent one (once)."""
        if self.exit_info is None and self.conn is not None and \
                self._lock.acquire(blocking=False):     # (a stop in progress owns the pipe)
            try:
                if self.conn.poll(0):
                    msg = self.conn.recv()
                    if msg[0] == "exited":
                        self.exit_info = msg[1]
            except (EOFError, OSError):
                pass
            finally:
                self._lock.release()

    def _stop_child(self, timeout: float) -> bool:
        """Ask the child to stop its kernel (stop flag already raised by the view), wait for
        its answer and exit; True once it is gone."""
        with self._lock:
            p = self.proc
            if p is None or self._closed or not p.is_alive():
                return True
            err = None
            try:
                self.conn.send(("stop", float(timeout)))
                self._stop_sent = True
                t_end = time.monotonic() + timeout + 1
                for msg in self._replies(p, t_end, 0.05):
                    if msg[0] == "stopped":
                        err = msg[1]
                        self._take_held(msg[2] if len(msg) > 2 else None)
                        break
            except (EOFError, OSError, BrokenPipeError):
                pass
            p.join(max(1.0, timeout))
            gone = not p.is_alive()
            if err is not None:
                self.launch.error = DeviceError(f"device process: stop failed:\n{err}")
            return gone

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the kernel cleanly (the view's ``stop``: stop flag, child exits), then kill
        what is left and unlink the shared pages."""
        try:
            if self.proc is not None and self.proc.is_alive() and self.kernel._launch:
                self.kernel.stop(timeout)
        finally:
            self.kill()

    def _replies(self, p, t_end: float, step: float):
        """The child's messages until ``t_end``, or until it is gone and none is left in the
        pipe (it exits right after its last reply: that reply is still read)."""
        while time.monotonic() < t_end:
            if self.conn.poll(step) or not p.is_alive() and self.conn.poll(0):
                yield self.conn.recv()
            elif not p.is_alive():
                return

    def _take_held(self, held) -> None:
        self._handed = True
        if held:
            self.kernel.held_events = held["events"]
            self.kernel.held_user_words = held["user"]

    def _handback(self) -> None:
        """Before a kill (lock held): a child whose kernel runs still (hung: the watchdog's
        reset; a halt or reset whose stop timed out) is asked for what a normal stop hands
        back (``_held``: read while it runs), waited for ``handback_s`` (+ the pipe) at most.
        Its Python control loop still answers while a kernel worker is stuck (the ``cpu``
        target's workers are ``nogil`` machine code; ``sim``'s give up the GIL). One that does
        not answer in time (stopped, busy, a ``cuda`` copy waiting behind the stuck kernel) is
        killed unread: ``kernel.held_note`` says so (the bridge puts it in its errors)."""
        p = self.proc
        if self._handed or getattr(self, "launch", None) is None or p is None or \
                not p.is_alive():
            return                          # (stopped and handed back, never started, gone)
        why = None
        if self.handback_s <= 0:
            why = f"handback_s={self.handback_s}"
        else:
            try:
                if not self._stop_sent:     # (else the stop's reply is still to come)
                    self.conn.send(("handback", float(self.handback_s)))
                t_end = time.monotonic() + self.handback_s + _PIPE_S
                for msg in self._replies(p, t_end, 0.02):
                    if msg[0] in ("handback", "stopped"):
                        self._take_held(msg[-1])
                        break
                    if msg[0] == "exited":
                        self.exit_info = msg[1]
            except (EOFError, OSError, BrokenPipeError) as e:
                why = f"the control pipe failed: {e!r}"
            if not self._handed and why is None:
                why = (f"no answer within {self.handback_s + _PIPE_S:.2f} s"
                       if p.is_alive() else f"it exited first (exit code {p.exitcode})")
        if why is None and getattr(self.kernel, "held_events", None) is None:
            why = "it could not read its kernel's words in time"
        if why is not None:
            self.kernel.held_note = (
                f"device process {getattr(self, 'pid', None)}: killed without handing back "
                f"what its GPU kernel held ({why}): its pending events are counted as type 0 "
                "and its modules' state in user words is not named")

    def kill(self, handback: bool = True) -> None:
        """SIGKILL the child (a stuck kernel cannot stop), reap it, unlink the pages. A child
        whose kernel still runs is first asked for what it holds (``handback``: see
        :meth:`_handback`)."""
        with self._lock:
            if self._closed:
                return
            if handback:
                self._handback()
            p = self.proc
            if p is not None and p.pid is not None:     # (None: start() itself failed)
                if p.is_alive():
                    p.kill()
                p.join(10)
            if self.conn is not None:
                try:
                    self.conn.close()
                except OSError:
                    pass
            for seg in self._segs:
                try:
                    seg.unlink()
                except FileNotFoundError:
                    pass
            self._segs = []
            self._closed = True
            _LIVE.discard(self)
            if p is not None and hasattr(p, "close") and not p.is_alive():
                try:
                    p.close()
                except ValueError:
                    pass

    close = stop

    def __repr__(self) -> str:
        return (f"DeviceProcess(target={self.target_name}, pid={getattr(self, 'pid', None)}, "
                f"{'alive' if self.alive() else 'gone'})")


class ProcessTransport(InProcessTransport):
    """The bridge transport over a GPU kernel in a device process: the same shared-memory
    host code as :class:`InProcessTransport` (``process.kernel`` is the parent's view), plus
    the process, so a reset can swap it (:meth:`rewire`)."""

    def __init__(self, process: DeviceProcess):
        super().__init__(process.kernel)
        self.process = process

    def rewire(self, process: DeviceProcess) -> None:
        """Point the transport at a freshly booted device process."""
        self.process = process
        self.kernel = process.kernel
        self.target = process.kernel.target_name


__all__ = ["DeviceProcess", "ProcessTransport", "sendable", "shm_exists"]
