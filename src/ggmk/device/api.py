"""The handler context API: what a GPU handler may call.

A handler is a plain Python function in the numeric subset Numba compiles (scalars, loops,
indexing of the arrays it is given; no allocation of new arrays: the ``cuda`` target has none
and the ``cpu`` target compiles without Numba's reference-counted runtime). It receives

* ``ctx``: an opaque tuple (the device state arrays, the worker id, the tick and the running
  task's header); pass it to the calls below, never index it yourself;
* ``task``: the running task's six int64 words (a view into the worker's batch buffer); read
  and change it with the accessors below (``meta0(task)``, ``set_meta0(task, v)``, ...).

Write handlers against this module::

    from ggmk.device import api as g
    from ggmk import OK

    @phys.handler("PHYS_STEP")
    def step(ctx, task):
        g.emit(ctx, PHYS_DONE, g.meta0(task) + 1, 0)
        return OK

Device channels (declared with ``Module.channel``, subscribed with ``handler(...,
consumes=...)``)::

    OUT = phys.channel("phys.out", message=30, mode="p2p", guarantee="lossless",
                       capacity=64)

    @phys.handler(20)
    def produce(ctx, task):
        if g.emit_chan(ctx, OUT, g.meta0(task), 0) == CHAN_FULL:
            return g.wait_at(task, g.meta0(task))   # lossless: nothing was sent, come back
        return OK

    @phys.handler(31, consumes="phys.out")
    def consume(ctx, task):               # g.channel(task) == OUT's id, g.seq(task) = 1, 2, ..
        return OK

``codegen`` compiles the functions below for the chosen target and rebinds ``g`` (or any of
these functions imported by name) in the handler to the compiled versions; calling them from
ordinary Python does nothing useful. Every call is non-blocking and bounded. ``g`` also offers
the target's ``atomic_add(arr, i, v)``, ``atomic_cas`` and ``atomic_max`` for handlers whose
lanes (warp/block granularity) combine results.

Return codes: ``OK``; ``RETRY`` (re-run later with exponential backoff in ticks); ``YIELD``
(re-enqueue now, meta kept; ``yield_at(task, phase)`` sets meta0 first; counted against the
handler's ``max_yields``); ``WAIT`` (``wait_at(task, phase)``: not counted as a yield; the task
runs again once something it may wait for happened, e.g. a channel credit came back: the way
to wait for a full lossless channel and resume where the handler stopped); anything negative is a failure code and sends the task to ``sys.error`` (on
the host, ``channel == CH_SYS_ERROR``). What is not a code (a positive value other than these,
or one below -32768: the record holds an int16) sends it there with BAD_RETURN; a handler that
raises, with HANDLER_EXCEPTION (``cpu`` and ``sim``; ``cuda`` device code has no exceptions).
"""

from ggmk.device.layout import WAIT  # noqa: F401  (3: a device-only handler return code)

# Names used below (enqueue, to_host, trace_event, ...) come from kernel_src.py; this text is
# executed in the same namespace.

# --------------------------------------------------------------------------------- the task


def task_type(task):
    return task[0] & 0xFFFFFFFF


def flags(task):
    return (task[0] >> 32) & 0xFFFF


def priority(task):
    return (task[0] >> 32) & 3


def tenant(task):
    return (task[0] >> 48) & 0xFFFF


def channel(task):
    return task[1] & 0xFFFFFFFF


def seq(task):
    return (task[1] >> 32) & 0xFFFFFFFF


def payload_ptr(task):
    return task[2]


def payload_len(task):
    return task[3] & 0xFFFFFFFF


def yield_count(task):
    return (task[3] >> 32) & 0xFFFF


def meta0(task):
    return task[4]


def meta1(task):
    return task[5]


def set_meta0(task, v):
    task[4] = v


def set_meta1(task, v):
    task[5] = v


def yield_at(task, phase):
    """``return g.yield_at(task, 2)``: continue later at phase 2 (kept in meta0). Counts as a
    yield (``max_yields`` ends a task that yields too often: a runaway)."""
    task[4] = phase
    return YIELD


def wait_at(task, phase):
    """``return g.wait_at(task, i)``: something this task needs is not available yet (a
    lossless channel returned CHAN_FULL): continue later at phase ``i`` (kept in meta0).
    Not counted as a yield: waiting for a consumer is not a runaway. The task waits on its
    worker's wait queue and runs again once a channel credit came back (or a handler called
    ``wake_waiters``), not on every worker iteration; the consumers run meanwhile."""
    task[4] = phase
    return WAIT


# ------------------------------------------------------------------------------ the context


def worker_id(ctx):
    return ctx[1]


def tick(ctx):
    return ctx[2]


def _child_w0(ctx, type_id, prio):
    # children inherit the parent's tenant and flags (not "channel message": a child of a
    # delivery is not one); a priority >= 0 overrides
    pw0 = ctx[3]
    fl = (pw0 >> 32) & 0xFFFF & ~FLAG_CHANNEL_MSG
    if prio >= 0:
        fl = (fl & ~3) | (prio & 3)
    return (type_id & 0xFFFFFFFF) | (fl << 32) | (pw0 & -281474976710656)   # tenant bits


def emit(ctx, type_id, m0, m1):
    """Schedule a follow-on task of ``type_id`` (a device type: run here; otherwise it goes to
    the host). Returns OK or CHAN_FULL; UNKNOWN_TYPE for a ``type_id`` outside 1..2**32-1
    (nothing is scheduled: a sys.error record with the emitting handler's type says so, the
    same for every emit below)."""
    if not type_id_ok(type_id):
        return emit_refused(ctx[0], ctx[1], ctx[3], type_id, m0, m1)
    return enqueue(ctx[0], ctx[1], _child_w0(ctx, type_id, -1), 0, 0, 0, m0, m1, ENQ_NORMAL)


def emit_full(ctx, type_id, m0, m1, ptr, nbytes, prio, chan):
    """``emit`` with a payload (address from ``alloc``), a priority (-1 = inherit) and a
    channel id."""
    if not type_id_ok(type_id):
        return emit_refused(ctx[0], ctx[1], ctx[3], type_id, m0, m1)
    return enqueue(ctx[0], ctx[1], _child_w0(ctx, type_id, prio), chan & 0xFFFFFFFF, ptr,
                   nbytes & 0xFFFFFFFF, m0, m1, ENQ_NORMAL)


def emit_chan(ctx, chan, m0, m1):
    """Emit a message on device channel ``chan`` (the channel's declaration object or
    ``gd.chan(name)``, which the build turns into the id; or an id from
    ``DeviceKernel.channel_id``). The message has the channel's type and the handler's
    priority and tenant; each subscriber gets it as a task of its handler type with
    ``channel(task) == id`` and ``seq(task)`` = the channel sequence number (1, 2, 3, ...).

    Returns OK; CHAN_FULL on a lossless channel when a subscriber has ``capacity`` messages in
    flight (``capacity - capacity // 10`` unless the message has priority 0): nothing was sent,
    come back later (``return g.wait_at(task, i)``, not counted as a yield); CHAN_UNKNOWN
    for an id that is not a device channel (the message goes to sys.error with the emitting
    handler's type and the id as its seq). On a lossy channel a full subscriber's copy goes
    to sys.dropped with CHAN_FULL and the emit still returns OK."""
    return emit_channel(ctx[0], ctx[1], chan, ctx[3], _child_w0(ctx, 0, -1), 0, 0, m0, m1)


def emit_chan_full(ctx, chan, m0, m1, ptr, nbytes, prio):
    """``emit_chan`` with a payload and a priority (-1 = inherit). ``ptr`` (from ``alloc``, 0
    for none) is handed over on OK: its reference count becomes the number of subscribers
    that got a copy, and the runtime releases one reference when each subscriber's handler
    finishes (``retain`` to keep it longer). On CHAN_FULL the caller still owns ``ptr``."""
    return emit_channel(ctx[0], ctx[1], chan, ctx[3], _child_w0(ctx, 0, prio), ptr,
                        nbytes & 0xFFFFFFFF, m0, m1)


def emit_at(ctx, due_tick, type_id, m0, m1):
    """Schedule a task on the event queue for tick ``due_tick``."""
    if not type_id_ok(type_id):
        return emit_refused(ctx[0], ctx[1], ctx[3], type_id, m0, m1)
    return schedule_event(ctx[0], ctx[1], due_tick, _child_w0(ctx, type_id, -1), 0, 0, 0,
                          m0, m1)


def emit_host(ctx, type_id, m0, m1):
    """Send a record straight to the host (``DeviceKernel.pull``). Returns OK: the record
    waits in device memory while the tx ring is full, and while that spill area is full too
    this call holds the handler back until the host pulls. CHAN_FULL only if the host stops
    the kernel meanwhile (the record is then not delivered; ``tx_lost`` counts it)."""
    if not type_id_ok(type_id):
        return emit_refused(ctx[0], ctx[1], ctx[3], type_id, m0, m1)
    return to_host(ctx[0], ctx[1], _child_w0(ctx, type_id, -1), 0, 0, 0, m0, m1)


def trace(ctx, event, a0, a1):
    """Record a trace event (an ``events.EventType`` value) with two 32-bit arguments, subject
    to the module's trace level (``info``)."""
    trace_if(ctx[0], ctx[1], event, LV_INFO, ctx[3], a0, a1)


def metric_add(ctx, k, v):
    """Add ``v`` to user counter ``k`` (0..15): ``DeviceKernel.metrics()['user'][k]``."""
    met_add(ctx[0][0], ctx[1], M_USER0 + (k & 15), v)


def user_add(ctx, i, v):
    """Atomically add ``v`` to user word ``i`` (USER_WORDS = 65536 int64 device words shared
    by all handlers, zero at boot); returns the old value."""
    return atomic_add(ctx[0][0], O_USER + (i & (USER_WORDS - 1)), v)


def wake_waiters(ctx):
    """Tell the workers that something a waiting task (one that returned ``WAIT``) may need
    has become available, so they run their waiting tasks again. A waiting task is not
    re-run before that (a stalled consumer must not burn a core); a channel credit given back
    does it by itself, so only a handler that unblocks waiters some other way (e.g. a user
    word they poll) calls it; without it they are retried after a growing number of worker
    iterations (16 .. 256)."""
    atomic_add(ctx[0][0], O_GLOB + G_WGEN, 1)


def user_get(ctx, i):
    return vload(ctx[0][0], O_USER + (i & (USER_WORDS - 1)))


def user_set(ctx, i, v):
    vstore(ctx[0][0], O_USER + (i & (USER_WORDS - 1)), v)


# -------------------------------------------------------------------------------- the arena


def arena_base(ctx):
    return ctx[0][1][O_CTL + C_ARENA_BASE]


def offset(ctx, ptr):
    return ptr - arena_base(ctx)


def load_u8(ctx, ptr):
    """The byte at arena address ``ptr`` (device code cannot return the arena array itself)."""
    return ctx[0][2][ptr - arena_base(ctx)]


def store_u8(ctx, ptr, v):
    ctx[0][2][ptr - arena_base(ctx)] = v


def load_i64(ctx, ptr):
    """A little-endian int64 at arena address ``ptr``."""
    a = ctx[0][2]
    o = ptr - arena_base(ctx)
    v = 0
    for k in range(8):
        v |= int64(a[o + k]) << (8 * k)
    return v


def store_i64(ctx, ptr, v):
    a = ctx[0][2]
    o = ptr - arena_base(ctx)
    for k in range(8):
        a[o + k] = (v >> (8 * k)) & 0xFF


def alloc(ctx, nbytes):
    """A reference-counted block from the power-of-two bins: its address, or 0 (ALLOC_FAIL)."""
    off = arena_alloc(ctx[0][0], ctx[1], nbytes)
    if off < 0:
        return 0
    return arena_base(ctx) + off


def slab(ctx):
    """A 64-byte slab object (reference-counted like ``alloc``), or 0."""
    off = slab_alloc(ctx[0][0], ctx[1])
    if off < 0:
        return 0
    return arena_base(ctx) + off


def bump(ctx, nbytes):
    """Transient memory valid until the end of the current tick (no release), or 0."""
    off = bump_alloc(ctx[0][0], ctx[1], nbytes)
    if off < 0:
        return 0
    return arena_base(ctx) + off


def retain(ctx, ptr, n):
    arena_retain(ctx[0][0], ptr - arena_base(ctx), n)


def release(ctx, ptr):
    """Drop one reference; the last one frees. Returns the references left."""
    return arena_release(ctx[0][0], ctx[1], ptr - arena_base(ctx))


def refcount(ctx, ptr):
    return ctx[0][0][O_AREF + (ptr - arena_base(ctx)) // GRANULE] & 0xFFFFFFFF
