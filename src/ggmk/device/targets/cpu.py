"""The ``cpu`` target: the kernel source compiled for the host with Numba.

One host thread runs the whole grid: the kernel's outer loop interleaves the worker blocks in a
fixed order and every per-lane loop runs all lanes of a block in order, so barriers are no-ops
and block-internal atomics are plain read-modify-writes. The kernel is called once and stays
resident (``nogil``) on a background thread until the host raises the stop flag, exactly like
the ``cuda`` launch. Words the host writes (ring tails, stop flag) and the device publishes
(heads, heartbeats, tx/trace sequence words) are read and written with atomic acquire/release
loads and stores (``vload``/``vstore``, LLVM intrinsics below) so Numba cannot hoist them out of
the resident loop. Nothing GPU-specific is imported here.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

NAME = "cpu"
# sizes that suit one host thread
DEFAULTS = dict(blocks=4, threads=32, batch=1024)


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


# Primitives that need the kernel's constants: executed in the kernel namespace.
PRIM_SRC = '''
def atomic_add(arr, i, v):
    old = arr[i]
    arr[i] = old + v
    return old


def atomic_cas(arr, i, old, new):
    cur = arr[i]
    if cur == old:
        arr[i] = new
    return cur


def atomic_max(arr, i, v):
    old = arr[i]
    if v > old:
        arr[i] = v
    return old


def fence():
    pass


def fence_system():
    pass


def syncthreads():
    pass


def lane_id():
    return 0


def lane_step():
    return 1


def block_id():
    return 0


def block_step():
    return 1


def is_lead():
    return True


def block_shared(D, blk):
    o = O_SCRATCH + blk * SCRATCH_PER_BLOCK
    return D[o:o + SHW]


def block_smem(D, blk):
    o = O_SCRATCH + blk * SCRATCH_PER_BLOCK + SHW
    return D[o:o + SMEM_WORDS]
'''


def namespace() -> dict:
    return {"vload": vload, "vstore": vstore, "clock_ns": clock_ns, "nanosleep": nanosleep,
            "np": np, "int64": numba.int64}


# helpers are only ever called from the kernel: no Python-callable wrappers to build
_DEV_OPTS = dict(error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True, _nrt=False)


INLINE_ALWAYS = ("block_shared", "block_smem")


def device_fn(fn, inline=False):
    if inline:
        return numba.njit(fn, inline="always", **_DEV_OPTS)
    return numba.njit(fn, **_DEV_OPTS)


def kernel_fn(fn):
    return numba.njit(fn, nogil=True, cache=True, error_model="numpy", _nrt=False)


def handler_fn(fn, noinline=False):
    return numba.njit(fn, **_DEV_OPTS)


def alloc_dev(image: np.ndarray) -> np.ndarray:
    return image.copy()


alloc_map = alloc_dev


def alloc_arena(nbytes: int) -> np.ndarray:
    return np.zeros(nbytes, np.uint8)


def host_view(arr) -> np.ndarray:
    return arr


def address_of(arr) -> int:
    return int(arr.ctypes.data)


def available() -> tuple[bool, str]:
    return True, "host CPU"


class Launch:
    """The resident kernel call on a background thread."""

    def __init__(self, kernel, arrays, plan):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(kernel, arrays),
                                        name="ggmk-device-cpu", daemon=True)
        self._thread.start()

    def _run(self, kernel, arrays):
        try:
            kernel(*arrays)
        except BaseException as e:  # surfaced by DeviceKernel.stop()/alive()
            self.error = e

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def prepare(kernel, arrays, plan, built=None) -> None:
    """Compile (or load from the disk cache) in the caller's thread so errors surface here."""
    kernel.compile(tuple(numba.typeof(a) for a in arrays))


def launch(kernel, arrays, plan) -> Launch:
    return Launch(kernel, arrays, plan)
