"""The ``cuda`` target's primitives (``cuda.PRIM_SRC``): read as text and executed in the
kernel's namespace in front of ``kernel_src.py``; never imported. The names they use besides
their own come from ``cuda.namespace()`` (``cuda``, ``int64``, ``uint32``, the ``vload`` /
``vstore`` / ``clock_ns`` intrinsics) and the kernel's constants (``SHW``, ``SMEM_WORDS``).
The ``sim`` target runs these with the definitions of ``sim_prims.py`` in place of the ones a
simulator cannot run."""


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


def host_bell(M):
    # no device -> host bell on a GPU (no device atomics on host-mapped words, no system
    # call): the host watches the tx ring itself
    pass


def wake_idle(D, M):
    pass
