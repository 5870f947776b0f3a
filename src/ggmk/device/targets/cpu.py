"""The ``cpu`` target: the kernel source compiled for the host with Numba.

``host_threads`` host threads (default 1; at most the number of blocks) run the grid; thread ``j`` runs blocks ``j, j + host_threads, ...`` in a fixed
interleaving, and every per-lane loop runs all lanes of a block in order. A block never spans
two threads, so barriers are no-ops and block-scope atomics (``blk_add``/``blk_max``: a
worker's metric row, its local queue, its shared words) are plain read-modify-writes, while
device-scope atomics (``atomic_add``/``atomic_cas``/``atomic_max``: shared queues, free lists,
reference counts, channel credits, trace/tx reservations) are LLVM ``atomicrmw``/``cmpxchg``.
The kernel is called once per thread and stays resident (``nogil``) until the host raises the
stop flag, exactly like the ``cuda`` launch. Words the host writes (ring tails, stop flag) and
the device publishes (heads, heartbeats, tx/trace sequence words) are read and written with
atomic acquire/release loads and stores (``vload``/``vstore``) so Numba cannot hoist them out
of the resident loop. Nothing GPU-specific is imported here.

Compiled without Numba's reference-counted runtime (``_nrt=False``): with it, every call that
passes the state arrays (a handler, ``emit``, ``enqueue``...) did an atomic incref/decref per
array, ~10x the useful work per task. The price: device code cannot allocate arrays (it could
not on ``cuda`` either).
"""
from __future__ import annotations

import ctypes
import platform
import sys
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic

from ggmk.core import bigbuf
from ggmk.device import layout
from ggmk.device.targets import ModuleSession, read_source

NAME = "cpu"
# Sizes that suit one host thread. Idle workers sleep on the doorbell (a host push wakes them)
# for at most 1 ms, a tick: due events fire at most a tick late. One host thread by
# default: on the 2-core reference machine a second one did not pay (~20% less work per CPU
# second per thread, a chain workload's tasks stay on the workers that first took them so the
# second thread often idles, and it competes with the host thread feeding the kernel).
DEFAULTS = dict(blocks=4, threads=32, batch=1024, idle_sleep_max_ns=1_000_000,
                host_threads=1)


def _item_ptr(context, builder, aty, arr, idx):
    ary = context.make_array(aty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False)


@intrinsic
def vload(typingctx, arr, idx):
    """Atomic acquire load of ``arr[idx]`` (a word another thread writes)."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ptr = _item_ptr(context, builder, aty, args[0], args[1])
        return builder.load_atomic(ptr, "acquire", aty.dtype.bitwidth // 8)
    return arr.dtype(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, val):
    """Atomic release store ``arr[idx] = val``."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ptr = _item_ptr(context, builder, aty, args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], aty.dtype)
        builder.store_atomic(v, ptr, "release", aty.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(arr, idx, val), codegen


# Linux futex(2) on the doorbell word: an idle host thread sleeps until the host pushes (or
# stops) instead of waking every few microseconds to look (a wake-up costs ~15 us of CPU in a
# VM: at a 50 us nap that was 30% of a core for an idle kernel).
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower()) if sys.platform.startswith("linux") else None
# shared futexes (not FUTEX_PRIVATE_FLAG): the mapped words may be shared memory between the
# parent and a device process (``ggmk.bridge.process``), and the host side that waits or wakes
# (the parent's bridge pump on the tx bell, its pushes on the doorbell) is the other process
_FUTEX_WAIT_SHARED, _FUTEX_WAKE_SHARED = 0, 1


@intrinsic
def futex_wait(typingctx, arr, idx, expected, timeout_ns):
    """Sleep while the low 32 bits of ``arr[idx]`` equal ``expected``'s, at most
    ``timeout_ns`` (a plain ``usleep`` where there is no futex)."""
    if not _is_int_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        tmo = context.cast(builder, args[3], sig.args[3], types.int64)
        if _SYS_FUTEX is None:
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(i32, [i32]), "usleep")
            us = builder.sdiv(tmo, ir.Constant(i64, 1000))
            builder.call(fn, [builder.trunc(us, i32)])
            return context.get_dummy_value()
        ptr = _item_ptr(context, builder, sig.args[0], args[0], args[1])
        exp = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), i32)
        ts_t = ir.LiteralStructType([i64, i64])
        ts = cgutils.alloca_once(builder, ts_t)
        zero = ir.Constant(i32, 0)
        bil = ir.Constant(i64, 1_000_000_000)
        builder.store(builder.sdiv(tmo, bil), builder.gep(ts, [zero, zero]))
        builder.store(builder.srem(tmo, bil), builder.gep(ts, [zero, ir.Constant(i32, 1)]))
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        builder.call(fn, [ir.Constant(i64, _SYS_FUTEX), builder.ptrtoint(ptr, i64),
                          ir.Constant(i64, _FUTEX_WAIT_SHARED), builder.sext(exp, i64),
                          builder.ptrtoint(ts, i64), ir.Constant(i64, 0), ir.Constant(i64, 0)])
        return context.get_dummy_value()
    return types.none(arr, idx, expected, timeout_ns), codegen


@intrinsic
def futex_wake(typingctx, arr, idx):
    """Wake every thread asleep in ``futex_wait`` on ``arr[idx]``."""
    if not _is_int_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        if _SYS_FUTEX is None:
            return context.get_dummy_value()
        i64 = ir.IntType(64)
        ptr = _item_ptr(context, builder, sig.args[0], args[0], args[1])
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        builder.call(fn, [ir.Constant(i64, _SYS_FUTEX), builder.ptrtoint(ptr, i64),
                          ir.Constant(i64, _FUTEX_WAKE_SHARED), ir.Constant(i64, 1 << 30),
                          ir.Constant(i64, 0), ir.Constant(i64, 0), ir.Constant(i64, 0)])
        return context.get_dummy_value()
    return types.none(arr, idx), codegen


def doorbell(addr: int) -> None:
    """Host side: wake every host thread of the kernel asleep on the doorbell word at
    ``addr`` (call after changing it)."""
    if _SYS_FUTEX is not None:
        _libc().syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE_SHARED, 1 << 30, 0,
                        0, 0)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def _int_operands(context, builder, sig, args, first):
    aty = sig.args[0]
    ptr = _item_ptr(context, builder, aty, args[0], args[1])
    vals = [context.cast(builder, args[k], sig.args[k], aty.dtype)
            for k in range(first, len(args))]
    return ptr, vals


def _is_int_array(arr, idx):
    return (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)
            and isinstance(idx, types.Integer))


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """Device-scope ``old = arr[idx]; arr[idx] += val`` (``atomicrmw add``, seq_cst)."""
    if not _is_int_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        ptr, (v,) = _int_operands(context, builder, sig, args, 2)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")
    return arr.dtype(arr, idx, val), codegen


@intrinsic
def atomic_max(typingctx, arr, idx, val):
    """Device-scope ``old = arr[idx]; arr[idx] = max(old, val)``; returns ``old``."""
    if not _is_int_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        ptr, (v,) = _int_operands(context, builder, sig, args, 2)
        op = "max" if sig.args[0].dtype.signed else "umax"
        return builder.atomic_rmw(op, ptr, v, "seq_cst")
    return arr.dtype(arr, idx, val), codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, old, new):
    """Device-scope compare-and-swap; returns the value found (``old`` when it swapped)."""
    if not _is_int_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        ptr, (o, n) = _int_operands(context, builder, sig, args, 2)
        pair = builder.cmpxchg(ptr, o, n, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return arr.dtype(arr, idx, old, new), codegen


@intrinsic
def fence(typingctx):
    """Orders this thread's earlier loads/stores before its later ones (acquire-release: on
    x86 a compiler barrier; the queue protocols need no store-load ordering)."""
    def codegen(context, builder, sig, args):
        builder.fence("acq_rel")
        return context.get_dummy_value()
    return types.none(), codegen


fence_system = fence


@intrinsic
def clock_ns(typingctx):
    """CLOCK_MONOTONIC in nanoseconds (libc ``clock_gettime``)."""
    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        ts_t = ir.LiteralStructType([i64, i64])
        fnty = ir.FunctionType(i32, [i32, ts_t.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        ts = cgutils.alloca_once(builder, ts_t)
        builder.call(fn, [ir.Constant(i32, 1), ts])
        zero = ir.Constant(i32, 0)
        s = builder.load(builder.gep(ts, [zero, zero]))
        ns = builder.load(builder.gep(ts, [zero, ir.Constant(i32, 1)]))
        return builder.add(builder.mul(s, ir.Constant(i64, 1_000_000_000)), ns)
    return types.int64(), codegen


@intrinsic
def nanosleep(typingctx, ns):
    """Sleep about ``ns`` nanoseconds (libc ``usleep``, at least 1 us)."""
    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32]), "usleep")
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        us = builder.udiv(v, ir.Constant(i64, 1000))
        us = builder.select(builder.icmp_unsigned("==", us, ir.Constant(i64, 0)),
                            ir.Constant(i64, 1), us)
        builder.call(fn, [builder.trunc(us, i32)])
        return context.get_dummy_value()
    return types.none(ns), codegen


# Primitives that need the kernel's constants: their own file, executed in the kernel namespace.
PRIM_SRC = read_source("cpu_prims.py")

# The words only this target uses: two of layout's control words (mapped) and two of its
# device words, named here.
C_DOORBELL = layout.C_TARGET0   # host adds 1 after each push, after a pull that freed ring
                                # room and at stop; the futex word parked host threads sleep on
C_PARKED = layout.C_TARGET1     # device: host threads asleep on the doorbell
G_HOST_TICKET = layout.G_TARGET0   # host threads that entered the kernel (each takes a ticket)
G_NHOST = layout.G_TARGET1      # host threads running the blocks (config host_threads, a
                                # run-time word: the same compiled kernel serves any number)


def constants(plan) -> dict:
    """The names of this target's words, for ``PRIM_SRC``."""
    return dict(C_DOORBELL=C_DOORBELL, C_PARKED=C_PARKED, G_HOST_TICKET=G_HOST_TICKET,
                G_NHOST=G_NHOST)


def resolve_config(cfg: dict, given=()) -> None:
    """The default ``host_threads`` is at most one per block."""
    if "host_threads" not in given and "host_threads" in cfg:
        cfg["host_threads"] = min(cfg["host_threads"], cfg["blocks"])


def init_images(plan, images: dict) -> None:
    images["glob"][G_NHOST] = plan.cfg.host_threads


def host_notifier(ctl: np.ndarray):
    """Ring the doorbell: count the news and wake the host threads parked on it (if any)."""
    addr = ctl[C_DOORBELL:].ctypes.data

    def notify():
        ctl[C_DOORBELL] += 1
        if ctl[C_PARKED] != 0:
            doorbell(addr)
    return notify


_FUTEX_WAKE_OP = 5
# FUTEX_WAKE_OP's operation word: *uaddr2 += 1 (FUTEX_OP_ADD = 1, oparg 1); its comparison
# (FUTEX_OP_CMP_EQ against 0) only decides whether uaddr2's waiters are woken too, and uaddr2
# is uaddr here: those are woken unconditionally (val = all of them)
_WAKE_OP_ADD1 = (1 << 28) | (0 << 24) | (1 << 12) | 0


class HostBell:
    """The host's end of the device -> host bell (``C_HOST_WAIT`` / ``C_HOST_BELL``): a host
    thread that has nothing to do until the device publishes (the bridge pump) reads
    :meth:`value`, raises the waiting word, looks at the tx ring once more and sleeps in
    :meth:`wait` (a shared futex: the device may be another process); the device adds 1 to the
    bell after each publish and wakes it while the waiting word is up (``host_bell`` in
    ``cpu_prims``). Another host thread wakes the sleeper with :meth:`ring` (an atomic add in
    the kernel, FUTEX_WAKE_OP: the device adds to the same word)."""

    def __init__(self, ctl: np.ndarray):
        self._ctl = ctl
        self._addr = ctl[layout.C_HOST_BELL:].ctypes.data

    def value(self) -> int:
        return int(self._ctl[layout.C_HOST_BELL]) & 0xFFFFFFFF

    def waiting(self, on: bool) -> None:
        self._ctl[layout.C_HOST_WAIT] = 1 if on else 0

    def wait(self, seen: int, timeout_s: float) -> None:
        """Sleep while the bell still reads ``seen`` (at most ``timeout_s``; ctypes releases
        the GIL meanwhile)."""
        if _SYS_FUTEX is None:
            time.sleep(min(timeout_s, 0.001))
            return
        ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
        exp = seen - (1 << 32) if seen & 0x80000000 else seen
        _libc().syscall(_SYS_FUTEX, ctypes.c_void_p(self._addr), _FUTEX_WAIT_SHARED,
                        ctypes.c_int(exp), ctypes.byref(ts), 0, 0)

    def ring(self) -> None:
        """Change the bell (atomically: the device adds to it too) and wake its sleeper."""
        if _SYS_FUTEX is not None:
            _libc().syscall(_SYS_FUTEX, ctypes.c_void_p(self._addr), _FUTEX_WAKE_OP,
                            1 << 30, 0, ctypes.c_void_p(self._addr), _WAKE_OP_ADD1)


class _Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]


def host_bell(ctl: np.ndarray) -> HostBell:
    """The host's end of the device -> host bell over the host view of the ctl words."""
    return HostBell(ctl)


def namespace() -> dict:
    return {"vload": vload, "vstore": vstore, "clock_ns": clock_ns, "nanosleep": nanosleep,
            "atomic_add": atomic_add, "atomic_cas": atomic_cas, "atomic_max": atomic_max,
            "fence": fence, "fence_system": fence_system, "futex_wait": futex_wait,
            "futex_wake": futex_wake,
            "np": np, "int64": numba.int64}


# A handler that raises fails its task (HANDLER_EXCEPTION on sys.error) and the worker goes
# on: the generated dispatch catches it (``codegen.source``). Numba's nopython ``try: ...
# except Exception:`` works without the reference-counted runtime: the callee returns an
# exception status, the caller branches on it. Without this, the exception left the kernel
# function, ending that host thread's workers while the kernel looked alive.
CATCH_HANDLER_EXCEPTIONS = True

# helpers are only ever called from the kernel: no Python-callable wrappers to build
_DEV_OPTS = dict(error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True, _nrt=False)


INLINE_ALWAYS = ("block_shared", "block_smem")


class _DeviceDispatcher(CPUDispatcher):
    """A kernel function compiled once per argument *type*, not per constant.

    Numba types a constant argument as a literal (``Literal[int](5)``) and compiles a callee
    once per distinct literal: the kernel's helpers are called with metric indices, codes and
    flags as constants, so one kv kernel compiled 262 specializations of 114 functions, and
    ~60% of a cold build went to the copies (``met_type`` alone 42 times). Compiled for the
    plain types instead, the constants still reach the code: LLVM inlines the small helpers
    into their callers in the kernel's final module and folds them there. Measured on the
    2-core machine, one kv kernel from a cold cache: 48.7 s before, 17.2 s after."""

    def get_call_template(self, args, kws):
        args = tuple(types.unliteral(a) for a in args)
        kws = {k: types.unliteral(v) for k, v in kws.items()}
        return super().get_call_template(args, kws)


def _device(fn):
    return _DeviceDispatcher(py_func=fn, locals={}, targetoptions=dict(_DEV_OPTS))


def device_fn(fn, inline=False):
    if inline:
        return numba.njit(fn, inline="always", **_DEV_OPTS)
    return _device(fn)


def kernel_fn(fn):
    return numba.njit(fn, nogil=True, cache=True, error_model="numpy", _nrt=False)


def handler_fn(fn, noinline=False):
    return _device(fn)


def alloc_dev(image: np.ndarray) -> np.ndarray:
    return bigbuf.copy(image)


alloc_map = alloc_dev


def alloc_arena(nbytes: int) -> np.ndarray:
    return bigbuf.zeros(nbytes)


def host_view(arr) -> np.ndarray:
    return arr


def address_of(arr) -> int:
    return int(arr.ctypes.data)


def available() -> tuple[bool, str]:
    return True, "host CPU"


_PR_SET_TIMERSLACK = 29


def _tight_timer_slack():
    """Let this thread's short sleeps end on time: Linux adds up to 50 us of timer slack to a
    normal thread's sleep, which would be most of an idle worker's 1-50 us naps."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass                        # not Linux: sleeps are just longer


class Launch:
    """The resident kernel: one call per host thread (``plan.cfg.host_threads``)."""

    def __init__(self, kernel, arrays, plan):
        self.error: BaseException | None = None
        n = plan.cfg.host_threads
        self._threads = [threading.Thread(target=self._run, args=(kernel, arrays),
                                          name=f"ggmk-device-cpu-{j}", daemon=True)
                         for j in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, kernel, arrays):
        _tight_timer_slack()
        try:
            kernel(*arrays)
        except BaseException as e:  # surfaced by DeviceKernel.stop()/alive()
            self.error = e

    @property
    def native_ids(self) -> list:
        """OS thread ids of the kernel's host threads (for CPU-time accounting)."""
        return [t.native_id for t in self._threads]

    def alive(self) -> bool:
        # one host thread that failed took its blocks' workers with it: the kernel as a whole
        # is not running any more, though its other threads still are (until stop)
        return self.error is None and self._running()

    def _running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        return not self._running()


def prepare(kernel, arrays, plan, built=None) -> None:
    """Compile (or load from the disk cache) in the caller's thread so errors surface here."""
    kernel.compile(tuple(numba.typeof(a) for a in arrays))


def launch(kernel, arrays, plan) -> Launch:
    return Launch(kernel, arrays, plan)


def open_session(plan):
    """No per-kernel resources on this target: the module's functions."""
    return ModuleSession(sys.modules[__name__], plan)
