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

What keeps a *resident* kernel from deadlocking the host (each fix is explained where it lives):
(a) the stream is created non-blocking and passed to every copy (``make_stream``, ``Session``);
(b) everything the host touches while the kernel runs is allocated at boot, and the resident
phase runs under ``cuda.defer_cleanup()`` (``Session``); (c) the host sees mapped memory only
through ``np.asarray`` views (``host_view``); (d) mapped memory is plain ``cuda.mapped_array``
(``alloc_map``); (e) host-written words are read with ``ld.volatile`` (``vload``), one writer
per mapped word; (f) ``blocks`` is capped at what the device keeps co-resident
(``check_blocks``).

Imported only when the ``cuda`` target is chosen (or ``device="auto"`` finds a GPU).
"""
from __future__ import annotations

import contextlib

import numpy as np
from llvmlite import ir

from ggmk.device.targets import read_source
from ggmk.errors import DeviceError

NAME = "cuda"
DEFAULTS = dict(blocks=0, threads=256, batch=256)   # blocks=0: one per SM, set at boot

# the primitives: their own file, read as text (the sim target applies its overrides to it)
PRIM_SRC = read_source("cuda_prims.py")

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

    # (e) words another agent writes (the host: stop flag, rx tail, tx head, doorbell; other
    # blocks: queue counters) are read with ld.volatile, never cached in a register across the
    # resident loop, and published with st.volatile after a fence. Every mapped word has one
    # writer (the host or the device, never both): see layout's ctl words.
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


def resolve_config(cfg: dict, given=()) -> None:
    """blocks=0 (the default) means one worker block per SM."""
    if cfg.get("blocks") == 0:
        from numba import cuda
        cfg["blocks"] = cuda.get_current_device().MULTIPROCESSOR_COUNT


def stream_options():
    """(a) The options of the kernel's stream: non-blocking. numba's ``cuda.stream()`` is
    CU_STREAM_DEFAULT, which synchronizes with the legacy default stream: any later operation
    on stream 0 (a ``to_device``, ``copy_to_host`` or device ``setitem`` without a stream, which
    all default to stream 0) would wait for the resident kernel, i.e. forever."""
    from cuda.core import StreamOptions        # cuda.core, never cuda.core.experimental
    return StreamOptions(nonblocking=True)


def make_stream(device_id=None, device_cls=None, wrap=None):
    """(a) A non-blocking stream for one kernel: ``(owner, numba_stream)``. ``owner`` is the
    ``cuda.core`` Stream (keep it alive, ``close()`` it after the kernel exits); the numba
    stream wraps its handle (``numba.cuda.external_stream``) for launches and copies.
    ``device_cls``/``wrap`` default to ``cuda.core.Device`` and ``numba.cuda.external_stream``
    (parameters so the flag can be checked without a GPU)."""
    if device_cls is None:
        from cuda.core import Device as device_cls
    if wrap is None or device_id is None:
        from numba import cuda
        wrap = wrap or cuda.external_stream
        if device_id is None:
            device_id = cuda.get_current_device().id   # numba's (primary) context first
    dev = device_cls(device_id)
    dev.set_current()                        # the same primary context numba uses
    owner = dev.create_stream(options=stream_options())
    return owner, wrap(int(owner.handle))


def resident_block_limit(active_per_sm: int, sm_count: int) -> int:
    """(f) Blocks of one kernel that can be resident at once: blocks per SM (the occupancy
    calculator's answer for this kernel's registers, shared memory and block size) x SMs."""
    return max(int(active_per_sm), 0) * int(sm_count)


def check_blocks(requested: int, allowed: int, what: str = "the device") -> None:
    """(f) A persistent kernel whose blocks are not all resident at once never finishes: the
    blocks that did not fit wait for a block that never exits, and blocks that did fit wait
    for them (boot, stop). Refuse such a launch up front."""
    if requested > allowed:
        raise DeviceError(
            f"device config: blocks={requested} requested, but at most {allowed} blocks of "
            f"this kernel can be resident at once on {what} (more would never all run: the "
            f"persistent kernel would hang); use blocks<={allowed} (blocks=0: one per SM)")


class Session:
    """The resources of one resident kernel: its non-blocking stream, its state arrays and
    the deferred-cleanup scope of its resident phase.

    (b) Everything the host touches while the kernel runs (the mapped words, the event that
    tells whether it still runs) is allocated here at boot, and from boot until the kernel has
    exited numba's deallocations are deferred (``cuda.defer_cleanup()``): a device array
    garbage-collected meanwhile would otherwise be freed with ``cuMemFree``, which waits for
    the device to be idle: for a resident kernel, forever."""

    def __init__(self, plan):
        from numba import cuda
        self.plan = plan
        self._cuda = cuda
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(cuda.defer_cleanup())
        self._owner, self.stream = make_stream()

    def alloc_dev(self, image):
        # (a) every copy names the kernel's stream (to_device defaults to stream 0); the image
        # is a temporary host array, so wait for the copy before it can go
        d = self._cuda.to_device(image, stream=self.stream)
        self.stream.synchronize()
        return d

    def alloc_map(self, image):
        # (d) plain mapped memory: numba's mapped_array accepts portable= and wc= but does not
        # pass them to the driver (memhostalloc(mapped=True) only), so nothing may rely on them.
        m = self._cuda.mapped_array(image.shape, image.dtype, stream=self.stream)
        host_view(m)[:] = image        # (c) a host write, not a device setitem on stream 0
        return m

    def alloc_arena(self, nbytes):
        return self._cuda.device_array(nbytes, np.uint8, stream=self.stream)

    def prepare(self, kernel, arrays, built=None):
        prepare(kernel, arrays, self.plan, built)

    def launch(self, kernel, arrays):
        return Launch(kernel, arrays, self.plan, self.stream)

    def close(self):
        """After the kernel has exited: deallocations may run again, the stream goes."""
        self._scope.close()
        try:
            self._owner.close()
        except Exception:       # already closed / context gone at interpreter exit
            pass


def open_session(plan) -> Session:
    return Session(plan)


def host_view(arr):
    """(c) The host's view of a mapped array: a plain NumPy array over the same pinned memory.
    A numba ``MappedNDArray`` is a device array too: its ``.view(dtype)`` returns a *device*
    array, and device-array indexing, ``setitem`` and ``copy_to_host`` default to stream 0,
    which waits for the resident kernel forever. ``np.asarray`` drops the device side."""
    return np.asarray(arr)


def address_of(arr) -> int:
    return int(arr.device_ctypes_pointer.value)


def prepare(kernel, arrays, plan, built=None) -> None:
    """Compile (or load from the disk cache) before launch. Handlers listed as no-inline get
    LLVM ``noinline`` first: a PTX compile creates their device functions, they are marked,
    and the kernel compile then links the marked ones. Then (f) the block count is checked
    against what the device can keep resident for this kernel."""
    from numba import cuda
    from numba.cuda import typeof
    sig = tuple(typeof(a) for a in arrays)
    if built is not None and built.noinline and not kernel.overloads:
        from ggmk.device.build import mark_noinline
        cuda.compile_ptx(built.ns["kernel_body"], sig)
        mark_noinline(built)
    compiled = kernel.compile(sig)
    # (f) cooperative-grid limit = occupancy (blocks per SM for these registers, this static
    # shared memory and block size) x SMs
    dev = cuda.get_current_device()
    allowed = compiled.max_cooperative_grid_blocks(plan.cfg.threads)
    check_blocks(plan.cfg.blocks, allowed,
                 f"{dev.name} ({dev.MULTIPROCESSOR_COUNT} SMs, {plan.cfg.threads} threads per "
                 f"block)")


class Launch:
    def __init__(self, kernel, arrays, plan, stream):
        from numba import cuda
        self.error = None
        self.stream = stream             # (a) the session's non-blocking stream
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


def launch(kernel, arrays, plan, stream) -> Launch:
    return Launch(kernel, arrays, plan, stream)
