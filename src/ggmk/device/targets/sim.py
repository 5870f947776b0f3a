"""The ``sim`` target: numba-cuda's CUDA simulator running the ``cuda`` primitives.

The simulator must be enabled before ``numba.cuda`` is first imported in the process
(``NUMBA_ENABLE_CUDASIM=1`` in the environment, ``PROCESS_ENV``); ``available()`` says so
otherwise, and the test workloads' ``run(..., target="sim")`` starts a subprocess with it set.

The primitives are ``cuda``'s (``cuda_prims.py``) with the definitions of ``sim_prims.py`` in
place of theirs.

What runs exactly as on ``cuda``: every lane is a real thread, ``syncthreads`` is a real barrier,
shared memory is shared (its first allocation per lane under a lock: the simulator's lookup
races), the atomics are atomic with respect to each other (one lock for every kind: the
simulator's own take one lock per kind, so its add and CAS on one word could interleave). What
differs: the simulator runs the
blocks of a grid one after the other, so a persistent grid of several blocks would never get
past block 0; the simulated grid is therefore one block whose lanes interleave the workers in
a fixed order (``block_id() == 0, block_step() == 1``, like ``cpu``). Volatile loads/stores are
plain element accesses (the GIL orders them), the clock is ``time.perf_counter_ns`` and
``nanosleep`` sleeps. Keep sizes tiny: one Python thread per lane.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from ggmk.core import bigbuf
from ggmk.device.targets import ModuleSession, override_source, read_source

NAME = "sim"
DEFAULTS = dict(blocks=2, threads=32, batch=64)
# the simulator must be switched on before numba.cuda is first imported: a process that cannot
# promise that (one that may also run cpu or cuda) runs this target in a fresh one with this
PROCESS_ENV = {"NUMBA_ENABLE_CUDASIM": "1"}

# the cuda primitives with the definitions of sim_prims.py in place of theirs (by name)
PRIM_SRC = override_source(read_source("cuda_prims.py"), read_source("sim_prims.py"))


# a handler that raises fails its task (HANDLER_EXCEPTION) and its lane goes on: otherwise
# the other lanes wait for it at the next barrier forever and the kernel never stops
CATCH_HANDLER_EXCEPTIONS = True


def namespace() -> dict:
    from numba import cuda, int64, uint32
    return dict(cuda=cuda, int64=int64, uint32=uint32, np=np, _sleep=time.sleep,
                _tls=threading.local(), _shlock=threading.Lock(), _alock=threading.Lock(),
                _perf_ns=time.perf_counter_ns)


def device_fn(fn, inline=False):
    # plain Python: the kernel's swapped `cuda` global is shared by the whole namespace
    return fn


def handler_fn(fn, noinline=False):
    return fn


def kernel_fn(fn):
    from numba import cuda
    return cuda.jit(fn)


def available() -> tuple[bool, str]:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return False, ("set NUMBA_ENABLE_CUDASIM=1 before numba.cuda is imported (or run "
                       "the sim target in a fresh process with the target's PROCESS_ENV)")
    try:
        from numba import cuda
    except ImportError as e:
        return False, f"numba-cuda is not installed ({e}); pip install 'ggmk[sim]'"
    if not hasattr(cuda, "simulator_init"):   # only the simulator's numba.cuda has it
        return False, "numba.cuda was imported before NUMBA_ENABLE_CUDASIM=1 was set"
    return True, "CUDA simulator"


def _fake(ary):
    # wrap, don't copy: a plain NumPy argument would be copied in and back out at kernel
    # exit, and the host could never see the resident kernel's words
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return FakeCUDAArray(ary)


def alloc_dev(image):
    return _fake(bigbuf.copy(image))


alloc_map = alloc_dev


def alloc_arena(nbytes):
    return _fake(bigbuf.zeros(nbytes))


def host_view(arr):
    return arr._ary


def address_of(arr) -> int:
    return int(arr._ary.ctypes.data)


def prepare(kernel, arrays, plan, built=None) -> None:
    pass


class Launch:
    """The simulated launch blocks its caller, so it runs on a background thread."""

    def __init__(self, kernel, arrays, plan):
        import sys
        # lanes are threads meeting at barriers: a short GIL switch interval makes each
        # barrier round ~5x faster (the process is a sim-only subprocess in the tests)
        if sys.getswitchinterval() > 1e-4:
            sys.setswitchinterval(1e-4)
        self.error = None
        self._t = threading.Thread(target=self._run, args=(kernel, arrays, plan.cfg.threads),
                                   name="ggmk-device-sim", daemon=True)
        self._t.start()

    def _run(self, kernel, arrays, threads):
        try:
            kernel[1, threads](*arrays)
        except BaseException as e:
            self.error = e

    def alive(self) -> bool:
        return self._t.is_alive()

    def wait(self, timeout: float) -> bool:
        self._t.join(timeout)
        return not self._t.is_alive()


def launch(kernel, arrays, plan) -> Launch:
    return Launch(kernel, arrays, plan)


def open_session(plan):
    """No per-kernel resources on this target: the module's functions."""
    import sys
    return ModuleSession(sys.modules[__name__], plan)
