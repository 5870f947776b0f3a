"""The ``cuda`` target: the kernel source compiled with numba-cuda and launched once.

* Grid: one block per worker, ``threads`` lanes each; lanes are CUDA threads, barriers are
  ``cuda.syncthreads()``, block-level scratch is ``cuda.shared.array``.
* State: the device words and the arena are device arrays; the words host and device both touch
  (control words, host rings, heartbeats, published metrics, trace ring) are one host-mapped
  pinned array (``cuda.mapped_array``), read on the device with ``ld.volatile`` and published
  with ``st.volatile`` after ``membar.sys`` (``threadfence_system``).
* The kernel is launched on its own non-blocking stream and never waits for the host; the host
  talks to it only through the mapped words, so nothing stalls it. Stop = raise the mapped stop
  flag and synchronize that stream.
* Clock: ``%globaltimer`` (ns). Idle workers ``nanosleep``.

Imported only when the ``cuda`` target is chosen (or ``device="auto"`` finds a GPU).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from ggmk.errors import DeviceError

NAME = "cuda"
DEFAULTS = dict(blocks=0, threads=256, batch=256)   # blocks=0: one per SM, set at boot

# Shared by the sim target, which swaps the pieces a simulator cannot run (ATOMICS_SRC whole).
ATOMICS_SRC = '''
def atomic_add(arr, i, v):
    return cuda.atomic.add(arr, i, v)


def atomic_cas(arr, i, old, new):
    return cuda.atomic.cas(arr, i, old, new)


def atomic_max(arr, i, v):
    return cuda.atomic.max(arr, i, v)


def blk_add(arr, i, v):
    # block scope: the lanes of one block still race, so an atomic here too
    return cuda.atomic.add(arr, i, v)


def blk_max(arr, i, v):
    return cuda.atomic.max(arr, i, v)
'''

PRIM_SRC = ATOMICS_SRC + '''

def first_block(D):
    return cuda.blockIdx.x


def fence():
    cuda.threadfence()


def fence_system():
    cuda.threadfence_system()


def syncthreads():
    cuda.syncthreads()


def lane_id():
    return cuda.threadIdx.x


def lane_step():
    return cuda.blockDim.x


def block_id():
    return cuda.blockIdx.x


def block_step(D):
    return cuda.gridDim.x


def is_lead():
    return cuda.threadIdx.x == 0


def block_shared(D, blk):
    return cuda.shared.array(SHW, int64)


def block_smem(D, blk):
    return cuda.shared.array(SMEM_WORDS, int64)


def nanosleep(ns):
    cuda.nanosleep(uint32(ns))


def idle_wait(M, ns):
    nanosleep(ns)


def wake_idle(D, M):
    pass
'''

_intrinsics = None


def _make_intrinsics():
    """vload / vstore / clock_ns as PTX (defined lazily: numba.cuda is imported here only)."""
    global _intrinsics
    if _intrinsics is not None:
        return _intrinsics
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic

    def _ptr(context, builder, aty, arr, idx):
        ary = context.make_array(aty)(context, builder, arr)
        return cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False)

    @intrinsic
    def vload(typingctx, arr, idx):
        if not isinstance(arr, types.Array) or arr.dtype != types.int64:
            return None

        def codegen(context, builder, sig, args):
            ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
            i64 = ir.IntType(64)
            asm = ir.InlineAsm(ir.FunctionType(i64, [i64]), "ld.volatile.u64 $0, [$1];",
                               "=l,l", side_effect=True)
            return builder.call(asm, [builder.ptrtoint(ptr, i64)])
        return types.int64(arr, idx), codegen

    @intrinsic
    def vstore(typingctx, arr, idx, val):
        if not isinstance(arr, types.Array) or arr.dtype != types.int64:
            return None

        def codegen(context, builder, sig, args):
            ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
            i64 = ir.IntType(64)
            v = context.cast(builder, args[2], sig.args[2], types.int64)
            asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [i64, i64]),
                               "st.volatile.u64 [$0], $1;", "l,l", side_effect=True)
            builder.call(asm, [builder.ptrtoint(ptr, i64), v])
            return context.get_dummy_value()
        return types.none(arr, idx, val), codegen

    @intrinsic
    def clock_ns(typingctx):
        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            asm = ir.InlineAsm(ir.FunctionType(i64, []), "mov.u64 $0, %globaltimer;", "=l",
                               side_effect=True)
            return builder.call(asm, [])
        return types.int64(), codegen

    _intrinsics = {"vload": vload, "vstore": vstore, "clock_ns": clock_ns}
    return _intrinsics


def namespace() -> dict:
    from numba import cuda
    from numba import int64, uint32
    return dict(_make_intrinsics(), cuda=cuda, int64=int64, uint32=uint32, np=np)


# device functions that return a shared array must be inlined at the Numba IR level (a CUDA
# device function may only return arrays it was given)
INLINE_ALWAYS = ("block_shared", "block_smem")


def device_fn(fn, inline=False):
    from numba import cuda
    return cuda.jit(device=True, inline="always" if inline else "never")(fn)


def handler_fn(fn, noinline=False):
    from numba import cuda
    return cuda.jit(device=True)(fn)


def kernel_fn(fn):
    from numba import cuda
    return cuda.jit(cache=True)(fn)


def available() -> tuple[bool, str]:
    try:
        from numba import cuda
        if cuda.is_available():
            return True, str(cuda.get_current_device().name)
        return False, "numba.cuda.is_available() is False (no driver or no GPU)"
    except Exception as e:  # ImportError, driver errors
        return False, f"numba-cuda unusable: {e!r} (pip install 'ggmk[gpu]')"


def resolve_config_dict(cfg: dict) -> None:
    """blocks=0 means one worker block per SM."""
    if cfg.get("blocks") == 0:
        from numba import cuda
        cfg["blocks"] = cuda.get_current_device().MULTIPROCESSOR_COUNT


def alloc_dev(image):
    from numba import cuda
    return cuda.to_device(image)


def alloc_map(image):
    from numba import cuda
    m = cuda.mapped_array(image.shape, image.dtype)
    m[:] = image
    return m


def alloc_arena(nbytes):
    from numba import cuda
    a = cuda.device_array(nbytes, np.uint8)
    return a


def host_view(arr):
    return arr          # mapped arrays are host NumPy arrays too


def address_of(arr) -> int:
    return int(arr.device_ctypes_pointer.value)


def prepare(kernel, arrays, plan, built=None) -> None:
    """Compile (or load from the disk cache) before launch. Handlers listed as no-inline get
    LLVM ``noinline`` first: a PTX compile creates their device functions, they are marked,
    and the kernel compile then links the marked ones."""
    from numba import cuda
    from numba.cuda import typeof
    sig = tuple(typeof(a) for a in arrays)
    if built is not None and built.noinline and not kernel.overloads:
        from ggmk.device.build import mark_noinline
        cuda.compile_ptx(built.ns["kernel_body"], sig)
        mark_noinline(built)
    kernel.compile(sig)


class Launch:
    def __init__(self, kernel, arrays, plan):
        from numba import cuda
        self.error = None
        self.stream = cuda.stream()      # not the legacy default stream: nothing serializes
        self._arrays = arrays            # keep the device memory alive while resident
        self._done = None
        kernel[plan.cfg.blocks, plan.cfg.threads, self.stream](*arrays)
        self._event = cuda.event()
        self._event.record(self.stream)

    def alive(self) -> bool:
        if self._done:
            return False
        try:
            return not self._event.query()
        except Exception as e:
            self.error = e
            return False

    def wait(self, timeout: float) -> bool:
        import time
        t_end = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > t_end:
                return False
            time.sleep(0.001)
        try:
            self.stream.synchronize()
        except Exception as e:
            self.error = e
        self._done = True
        return True


def launch(kernel, arrays, plan) -> Launch:
    return Launch(kernel, arrays, plan)
