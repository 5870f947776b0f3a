"""The ``cpu`` target's primitives that need the kernel's constants (``cpu.PRIM_SRC``): read as
text and executed in the kernel's namespace in front of ``kernel_src.py``; never imported. The
other primitives are intrinsics in ``cpu.py`` (``cpu.namespace()``: ``atomic_*``, ``vload``,
``vstore``, ``fence``, ``clock_ns``, ``nanosleep``, ``futex_wait``/``futex_wake``); the words
only this target uses (``C_DOORBELL``, ``C_PARKED``, ``G_HOST_TICKET``, ``G_NHOST``) come from
``cpu.constants()``."""


def blk_add(arr, i, v):
    old = arr[i]
    arr[i] = old + v
    return old


def blk_max(arr, i, v):
    old = arr[i]
    if v > old:
        arr[i] = v
    return old


def syncthreads():
    pass


def lane_id():
    return 0


def lane_step():
    return 1


def first_block(D):
    # one ticket per host thread: thread j runs blocks j, j + host_threads, ...
    return atomic_add(D, O_GLOB + G_HOST_TICKET, 1)


def block_step(D):
    return vload(D, O_GLOB + G_NHOST)


def is_lead():
    return True


def idle_wait(M, ns):
    # park on the doorbell: the parked count is raised (a full barrier) before the last look at
    # the rx ring and the stop flag, so a host that pushes after that look sees the count and
    # rings; one that pushed before is seen here. A wake-up lost to a race costs one nap.
    bell = vload(M, O_CTL + C_DOORBELL)
    atomic_add(M, O_CTL + C_PARKED, 1)
    if (vload(M, O_CTL + C_RX_TAIL) == vload(M, O_CTL + C_RX_HEAD)
            and vload(M, O_CTL + C_STOP) == 0):
        futex_wait(M, O_CTL + C_DOORBELL, bell, ns)
    atomic_add(M, O_CTL + C_PARKED, -1)


def host_bell(M):
    # the device -> host bell, after a record is published on the tx ring: the locked add
    # orders the record before the bell's new value, so a host that read the bell, raised
    # C_HOST_WAIT and found no record either sleeps on the old value (and this add makes its
    # futex wait return or this thread see C_HOST_WAIT and wake it) or sees the record; the
    # system call only while a host thread says it sleeps
    atomic_add(M, O_CTL + C_HOST_BELL, 1)
    if vload(M, O_CTL + C_HOST_WAIT) != 0:
        futex_wake(M, O_CTL + C_HOST_BELL)


def wake_idle(D, M):
    # a parked host thread is woken while a type bucket or the overflow queue holds work it
    # could take (a look at a few words per round, and only while one is parked)
    if vload(M, O_CTL + C_PARKED) > 0:
        work = rq_depth(D, Q_OVF) > 0
        for t in range(NTYPES):
            if rq_depth(D, t) > 0:
                work = True
        if work:
            atomic_add(M, O_CTL + C_DOORBELL, 1)
            futex_wake(M, O_CTL + C_DOORBELL)


def block_shared(D, blk):
    o = O_SCRATCH + blk * SCRATCH_PER_BLOCK
    return D[o:o + SHW]


def block_smem(D, blk):
    o = O_SCRATCH + blk * SCRATCH_PER_BLOCK + SHW
    return D[o:o + SMEM_WORDS]
