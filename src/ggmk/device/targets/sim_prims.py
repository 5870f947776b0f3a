"""The ``sim`` target's overrides of the ``cuda`` primitives (``cuda_prims.py``): read as text;
``sim.PRIM_SRC`` is ``cuda_prims.py`` with every definition named here replaced by this one
(``targets.override_source``), plus the ones only defined here. Never imported. Names from
``sim.namespace()``: ``cuda`` (the simulator's), ``int64``, ``_alock``, ``_shlock``, ``_tls``,
``_sleep``, ``_perf_ns``."""

# The simulator's atomics take one lock per kind (add, cas, max, ...), so an add and a CAS on
# the same word (a channel credit: taken by CAS, given back by add) are not atomic with
# respect to each other as they are on a GPU. One lock for every kind here.


def atomic_add(arr, i, v):
    with _alock:
        old = arr[i]
        arr[i] = old + v
    return old


def atomic_cas(arr, i, old, new):
    with _alock:
        cur = arr[i]
        if cur == old:
            arr[i] = new
    return cur


def atomic_max(arr, i, v):
    with _alock:
        old = arr[i]
        if v > old:
            arr[i] = v
    return old


blk_add = atomic_add
blk_max = atomic_max


# the simulator runs the blocks of a grid one after the other: the simulated grid is one block
# whose lanes interleave the workers (like ``cpu``)
def first_block(D):
    return 0


def block_id():
    return 0


def block_step(D):
    return 1


def block_shared(D, blk):
    # the simulator finds a shared array by walking the Python stack: once per thread is
    # enough. Its first allocation is a check-then-store on a dict with no lock: two lanes
    # arriving together could each make an array, and the loser would keep a private "shared"
    # array for the whole run (its smem writes lost: wrong block/warp sums), so the first
    # call per lane goes under a lock
    a = getattr(_tls, "sh", None)
    if a is None:
        with _shlock:
            a = cuda.shared.array(SHW, int64)
        _tls.sh = a
    return a


def block_smem(D, blk):
    a = getattr(_tls, "smem", None)
    if a is None:
        with _shlock:
            a = cuda.shared.array(SMEM_WORDS, int64)
        _tls.smem = a
    return a


def nanosleep(ns):
    _sleep(ns * 1e-9)


# volatile loads/stores are plain element accesses (the GIL orders them)
def vload(arr, i):
    return arr[i]


def vstore(arr, i, v):
    arr[i] = v


def clock_ns():
    return _perf_ns()
