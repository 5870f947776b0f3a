"""THE persistent kernel: one source for the ``cuda``, ``cpu`` and ``sim`` targets.

This file is not imported as a module. ``codegen`` reads its text and executes it in a namespace
that already holds

* the target's primitives (``Target.PRIM_SRC``, ``targets/<target>_prims.py``, and the
  intrinsics of ``Target.namespace()``): ``atomic_add``, ``atomic_cas``,
  ``atomic_max`` (device scope: words several workers touch), ``blk_add``/``blk_max`` (block
  scope: words only the lanes of one worker touch, e.g. its metric row, its local queue's
  tail, its shared words; plain read-modify-writes on ``cpu``, where one host thread runs a
  whole block), ``vload``/``vstore`` (volatile/atomic loads and stores of words another agent
  writes), ``fence``, ``fence_system``, ``syncthreads``, ``lane_id``/``lane_step``,
  ``first_block``/``block_step``, ``is_lead``, ``clock_ns``, ``nanosleep``, ``idle_wait``
  (sleep up to ``ns``; on ``cpu`` a host push or stop ends it early), ``wake_idle`` (end the
  sleep of parked workers while the shared queues hold work: ``cpu`` host threads that park
  for up to a tick; a no-op on ``cuda``, whose blocks only nap briefly), ``block_shared``,
  ``block_smem``;
* the layout constants (``layout.py``) and the configuration constants (``Plan.constants``);
* the generated part (``codegen``): ``type_index``, ``type_of_index``, ``type_max_yields``,
  ``type_level`` (the build trace level: the run-time one, ``tlv``, is at most that),
  ``dispatch_segment``.

Style ("barrier-phase", ARCHITECTURE.md): a worker iteration is a sequence of block-level
phases separated by ``syncthreads()``, one function each (``worker_iteration`` sequences
them). Work done by one lane is guarded by ``is_lead()``; work spread over lanes is a loop ``for lane in range(lane_id(), NT, lane_step())``. On ``cuda`` that
loop runs once per thread and barriers are real; on ``cpu`` it runs every lane of the block in
order on one host thread and barriers are no-ops, and the outer loop over blocks
(``range(first_block(D), NB, block_step(D))``) interleaves the blocks of one host thread in a
fixed order (``cpu`` can run several such host threads, each with its share of the blocks: a
block never spans two threads, so barriers stay no-ops and only device-scope atomics need to
be real atomics). Block-uniform
values are passed between phases through the block's shared words ``sh``.

State: ``S = (D, M, A)``: ``D`` the device words, ``M`` the mapped (host-visible) words, ``A``
the arena bytes; region ``x`` of ``layout.REGIONS`` starts at constant ``O_X`` in its home array.

Every path that schedules a task goes through ``enqueue`` (SPEC §3: one enqueue core),
device channel deliveries included (``emit_channel`` -> ``enqueue(..., ENQ_CHANNEL)``).

Device channels: per channel a sequence counter (``chs``), per subscriber slot an in-flight
credit count (``csub``: messages waiting in a queue or running). An emit takes one credit per
subscriber (the last ``chan_reserve(c)`` only for priority 0), numbers the message, sets the
payload's reference count to the number of copies and enqueues one copy per subscriber, retyped
to its handler type with ``channel`` = id, ``seq`` = channel sequence (1, 2, ...) and
FLAG_CHANNEL_MSG.
When the copy's task reaches its last outcome (done, failed, dead-lettered) ``settle`` gives
the credit and the payload reference back. The tables (``chan_*``, ``sub_*``) are generated.
"""

# ---------------------------------------------------------------------------------------------
# record words


def rec_type(w0):
    return w0 & 0xFFFFFFFF


def rec_prio(w0):
    return (w0 >> 32) & 3


def rec_flags(w0):
    return (w0 >> 32) & 0xFFFF


def rec_tenant(w0):
    return (w0 >> 48) & 0xFFFF


def rec_yields(w3):
    return (w3 >> 32) & 0xFFFF


def rec_retries(w3):
    return (w3 >> 48) & 0xFFFF


def hi16(v):
    """``(v & 0xFFFF) << 48`` as a signed 64-bit value on every target (no Python bigints)."""
    return (((v & 0xFFFF) ^ 0x8000) - 0x8000) << 48


def hi32(v):
    """``(v & 0xFFFFFFFF) << 32`` as a signed 64-bit value on every target."""
    return (((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32


def set_pad(w3, v):
    return (w3 & 0x0000FFFFFFFFFFFF) | hi16(v)


def copy_rec(dst, do, src, so):
    dst[do] = src[so]
    dst[do + 1] = src[so + 1]
    dst[do + 2] = src[so + 2]
    dst[do + 3] = src[so + 3]
    dst[do + 4] = src[so + 4]
    dst[do + 5] = src[so + 5]


def write_rec(dst, do, w0, w1, w2, w3, w4, w5):
    dst[do] = w0
    dst[do + 1] = w1
    dst[do + 2] = w2
    dst[do + 3] = w3
    dst[do + 4] = w4
    dst[do + 5] = w5


def write_rec_volatile(dst, do, w0, w1, w2, w3, w4, w5):
    vstore(dst, do, w0)
    vstore(dst, do + 1, w1)
    vstore(dst, do + 2, w2)
    vstore(dst, do + 3, w3)
    vstore(dst, do + 4, w4)
    vstore(dst, do + 5, w5)


# ---------------------------------------------------------------------------------------------
# bounded MPMC record ring (per-slot sequence numbers): buckets, overflow, event inbox


def rq_depth(D, qi):
    c = O_QC + qi * QCS
    return vload(D, c + QC_TAIL) - vload(D, c + QC_HEAD)


def rq_push(D, qi, w0, w1, w2, w3, w4, w5, limit, due):
    """Push one record unless the queue holds ``limit`` or more. Returns the depth before the
    push, or -1 when full."""
    base = D[O_QINFO + qi * 2]
    cap = D[O_QINFO + qi * 2 + 1]
    c = O_QC + qi * QCS
    pos = 0
    depth = 0
    slot = 0
    while True:
        pos = vload(D, c + QC_TAIL)
        depth = pos - vload(D, c + QC_HEAD)
        if depth >= limit or depth >= cap:
            return -1
        slot = base + (pos & (cap - 1))
        if vload(D, O_QSEQ + slot) == pos:
            if atomic_cas(D, c + QC_TAIL, pos, pos + 1) == pos:
                break
        # otherwise a consumer that claimed this slot is still copying it out: retry
    write_rec(D, O_Q + slot * W, w0, w1, w2, w3, w4, w5)
    D[O_QDUE + slot] = due
    fence()
    vstore(D, O_QSEQ + slot, pos + 1)
    return depth


def rq_claim(D, qi, maxn):
    """Claim up to ``maxn`` records (lead lane). Returns (first position, count)."""
    c = O_QC + qi * QCS
    while True:
        h = vload(D, c + QC_HEAD)
        n = vload(D, c + QC_TAIL) - h
        if n > maxn:
            n = maxn
        if n <= 0:
            return h, 0
        if atomic_cas(D, c + QC_HEAD, h, h + n) == h:
            return h, n


def rq_take(D, qi, pos, dst, do):
    """Copy the claimed record at ``pos`` to ``dst[do:do+6]`` and free its slot. Returns its
    due tick (event inbox)."""
    base = D[O_QINFO + qi * 2]
    cap = D[O_QINFO + qi * 2 + 1]
    slot = base + (pos & (cap - 1))
    while vload(D, O_QSEQ + slot) != pos + 1:
        pass  # its producer reserved the slot and is still writing it
    copy_rec(dst, do, D, O_Q + slot * W)
    due = D[O_QDUE + slot]
    fence()
    vstore(D, O_QSEQ + slot, pos + cap)
    return due


# ---------------------------------------------------------------------------------------------
# per-worker local queue: pushed by the worker's own lanes (dispatch phase) and popped by its
# lead (gather phase); the phases never overlap, so a reserving atomic add is enough.


def lq_push(D, blk, w0, w1, w2, w3, w4, w5, limit):
    """Push one record unless the queue holds ``limit`` or more (-1). The soft ``limit`` is a
    look before reserving; the reservation itself is checked and undone against LQ_CAP only.
    Undoing against ``limit`` would be wrong when lanes push with different limits at once (an
    emit at the spill mark and a yield may go on to LQ_CAP): the emit's failed reservation p
    and the yield's successful p + 1 would leave the tail at p + 1 after the undo, a stale
    record in slot p and the yield's lost. With one limit every reservation after a failed one
    fails too. Concurrent lanes may pass the soft look together: it is exceeded by fewer than
    the block's lanes, far below LQ_CAP."""
    qi = Q_LOCAL0 + blk
    c = O_QC + qi * QCS
    head = D[c + QC_HEAD]
    if vload(D, c + QC_TAIL) - head >= limit:
        return -1
    pos = blk_add(D, c + QC_TAIL, 1)
    depth = pos - head
    if depth >= LQ_CAP:
        blk_add(D, c + QC_TAIL, -1)
        return -1
    write_rec(D, O_Q + (D[O_QINFO + qi * 2] + (pos & (LQ_CAP - 1))) * W, w0, w1, w2, w3, w4, w5)
    return depth


# ---------------------------------------------------------------------------------------------
# metrics, trace, host tx ring


def met_add(D, blk, m, v):
    blk_add(D, O_MET + blk * NMET + m, v)


def met_type(D, blk, ti, k, v):
    blk_add(D, O_MET + blk * NMET + NGLOBAL_METRICS + ti * NPT + k, v)


def trace_event(S, blk, ev, task_type, tenant, a0, a1, n):
    """Append one 32-byte record to the trace ring (lossy: the ring overwrites the oldest):
    the 24-byte trace event (SPEC §7) and a fourth word, the worker that recorded it (``blk``;
    the host's Perfetto export draws one track per worker) and ``n``, the number of tasks a
    task slice stands for (0 for every other event). A sequence lock per slot: the slot's
    sequence is cleared before the record is rewritten and set (position + 1) after it, each
    behind a system fence, so the host (``host.drain_trace_ring``) takes a slot only when
    its sequence is the same before and after its copy: never a record half overwritten."""
    D = S[0]
    M = S[1]
    pos = atomic_add(D, O_GLOB + G_TR_HEAD, 1)
    slot = pos & (TR_CAP - 1)
    o = O_TR + slot * TW
    vstore(M, O_TRSEQ + slot, 0)
    fence_system()
    vstore(M, o, clock_ns())
    vstore(M, o + 1, (ev & 0xFFFF) | ((tenant & 0xFFFF) << 16) | hi32(task_type))
    vstore(M, o + 2, (a0 & 0xFFFFFFFF) | hi32(a1))
    vstore(M, o + 3, (blk & 0xFFFFFFFF) | hi32(n))
    fence_system()
    vstore(M, O_TRSEQ + slot, pos + 1)


def trace_if(S, blk, ev, ev_level, w0, a0, a1):
    """Record event ``ev`` (recorded at ``ev_level``) of the task with header ``w0`` if its
    type's level takes it, or the task is flagged emit-trace. Two levels: the build level
    (``type_level``, the module's, compiled in: the ceiling) and, for an event that passes
    it, the run-time level (``tlv``, a mapped word per type the host sets:
    ``DeviceKernel.set_trace_level``), one volatile load. Nothing at all when tracing is
    stripped (``TRACE_ON``). A type with no handler (-1) has build level off: no load."""
    if TRACE_ON:
        ti = type_index(rec_type(w0))
        if (ev_level <= type_level(ti) and ev_level <= vload(S[1], O_TLV + ti)) or \
                (rec_flags(w0) & FLAG_EMIT_TRACE) != 0:
            trace_event(S, blk, ev, rec_type(w0), rec_tenant(w0), a0, a1, 0)
            met_add(S[0], blk, M_TRACE_EVENTS, 1)


def trace_segment(S, blk, ev, ti, cnt):
    """A task slice's start or end (lead lane): worker ``blk`` runs (ran) ``cnt`` tasks of
    type index ``ti`` as one homogeneous segment. Compiled in only when ``TRACE_TASKS`` (the
    device config's ``trace_tasks``, or a module at trace level ``all``); then recorded for
    every type (``TRACE_TASKS_ALL``, the config option) or for the types whose module traces
    at ``all``. One START/END pair per segment, not per task: the lanes of a segment run at
    once (on ``cuda``), so per-task slices would only overlap on the worker's track, and a
    pair per task would double the trace traffic of a segment of one record. The run-time
    level (``tlv``) turns them off: below ``all`` for a module at ``all``, at ``off`` for
    the config option."""
    lv = vload(S[1], O_TLV + ti)
    if (TRACE_TASKS_ALL and lv > LV_OFF) or (type_level(ti) >= LV_ALL and lv >= LV_ALL):
        trace_event(S, blk, ev, type_of_index(ti), 0, cnt, 0, cnt)
        met_add(S[0], blk, M_TRACE_EVENTS, 1)


def to_host(S, blk, w0, w1, w2, w3, w4, w5):
    """Publish a record on the device -> host ring. Never drops it: every record gets a
    position (``G_TX_RES``, in reservation order: the host pulls in that order); while the
    ring is full it waits in the spill area in device memory (``tx_spill``) and ``tx_move``
    puts it on the ring when the host has pulled; while the spill area is full too, the
    producing lane is held back here (it backs off and helps move) until the host pulls.
    Returns OK, or CHAN_FULL only when the host stopped the kernel while the record was held
    back (counted in ``tx_lost``)."""
    D = S[0]
    M = S[1]
    pos = 0
    held = False
    nap = 1000
    while True:
        pos = vload(D, O_GLOB + G_TX_RES)
        if pos - vload(M, O_CTL + C_TX_HEAD) >= TX_CAP + TXSP_CAP:
            if not held:
                held = True
                met_add(D, blk, M_TX_HELD, 1)
                atomic_add(M, O_CTL + C_TX_HELD, 1)
            if vload(M, O_CTL + C_STOP) != 0:
                atomic_add(M, O_CTL + C_TX_HELD, -1)
                met_add(D, blk, M_TX_LOST, 1)
                return CHAN_FULL
            tx_move(S, True)
            nanosleep(nap)
            if nap < 64000:
                nap *= 2
            continue
        if atomic_cas(D, O_GLOB + G_TX_RES, pos, pos + 1) == pos:
            break
    if held:
        atomic_add(M, O_CTL + C_TX_HELD, -1)
    # the ring slot of ``pos`` is free once the host pulled ``pos - TX_CAP`` (head only grows:
    # a later look can only turn "spill" into "ring", never the other way round)
    if pos - vload(M, O_CTL + C_TX_HEAD) < TX_CAP:
        slot = pos & (TX_CAP - 1)
        write_rec_volatile(M, O_TX + slot * W, w0, w1, w2, w3, w4, w5)
        fence_system()
        vstore(M, O_TXSEQ + slot, pos + 1)
        host_bell(M)                   # wake a host thread asleep on the tx ring (cpu)
    else:
        tx_spill(S, blk, pos, w0, w1, w2, w3, w4, w5)
    met_add(D, blk, M_TO_HOST, 1)
    return OK


def tx_spill(S, blk, pos, w0, w1, w2, w3, w4, w5):
    """Park the record of tx position ``pos`` in spill slot ``pos % TXSP_CAP``. The slot is
    this position's once every position up to ``pos - TXSP_CAP`` is on the ring (the mover's
    cursor or the host's head is past it): its earlier occupant has then been moved out, and a
    later position that maps to the same slot waits for this one (a plain "slot is free" test
    let a later position take the slot first and the earlier one wait behind it forever).
    ``pos`` was reserved below head + TX_CAP + TXSP_CAP, so ``pos - TXSP_CAP`` has room on the
    ring: the wait needs other lanes to finish writing, never the host; it helps the mover."""
    D = S[0]
    M = S[1]
    while True:
        done = vload(D, O_GLOB + G_TX_MCUR)
        h = vload(M, O_CTL + C_TX_HEAD)
        if h > done:
            done = h
        if done > pos - TXSP_CAP:
            break
        tx_move(S, True)
        nanosleep(1000)
    ss = pos & (TXSP_CAP - 1)
    write_rec(D, O_TXSP + ss * W, w0, w1, w2, w3, w4, w5)
    fence()
    vstore(D, O_TXSPSEQ + ss, pos + 1)
    atomic_add(D, O_GLOB + G_TX_SPILLN, 1)
    met_add(D, blk, M_TX_FULL, 1)


def tx_move(S, force):
    """Move spilled records onto the tx ring, in position order, while it has room (one mover
    at a time: a try-lock; every worker's lead calls this once per iteration while records
    are spilled, waiting producers with ``force``: they need the cursor to advance even over
    positions written straight to the ring). Position p is settled when the host pulled it
    (p < head), when its producer wrote it to the ring (txseq == p + 1), or once moved here
    from the spill area (spill seq == p + 1); the first position that is none of these (its
    producer is still writing) ends the pass."""
    D = S[0]
    M = S[1]
    if not force and vload(D, O_GLOB + G_TX_SPILLN) <= 0:
        return
    if atomic_cas(D, O_GLOB + G_TX_MLOCK, 0, 1) != 0:
        return
    fence()
    head = vload(M, O_CTL + C_TX_HEAD)
    p = vload(D, O_GLOB + G_TX_MCUR)
    if p < head:
        p = head
    res = vload(D, O_GLOB + G_TX_RES)
    moved = 0
    while p < res and p - head < TX_CAP:
        slot = p & (TX_CAP - 1)
        if vload(M, O_TXSEQ + slot) != p + 1:
            ss = p & (TXSP_CAP - 1)
            if vload(D, O_TXSPSEQ + ss) != p + 1:
                break
            # word by word: this is inlined into every emit_host, whose own record words are
            # live here too (six more at once cost the light handlers their register budget)
            for k in range(W):
                vstore(M, O_TX + slot * W + k, D[O_TXSP + ss * W + k])
            # the slot is free again: said *before* the record is published, since once the
            # host has pulled p the next position of this slot may write it (freed after the
            # publish, a late free wiped that next record)
            vstore(D, O_TXSPSEQ + ss, 0)
            fence_system()
            vstore(M, O_TXSEQ + slot, p + 1)
            moved += 1
        p += 1
    vstore(D, O_GLOB + G_TX_MCUR, p)
    if moved > 0:
        atomic_add(D, O_GLOB + G_TX_SPILLN, -moved)
        host_bell(M)
    fence()
    vstore(D, O_GLOB + G_TX_MLOCK, 0)


def to_sys(S, blk, chan, code, w0, w1, w2, w3, w4, w5):
    """Route a record to sys.error / sys.dropped on the host (code in _pad)."""
    if chan == CH_SYS_ERROR:
        met_add(S[0], blk, M_ERRORS, 1)
    else:
        met_add(S[0], blk, M_DROPPED, 1)
    w1 = (w1 & ~0xFFFFFFFF) | chan
    trace_if(S, blk, EV_TASK_FAIL, LV_ERROR, w0, code, 0)
    return to_host(S, blk, w0, w1, w2, set_pad(w3, code), w4, w5)


def type_id_ok(t):
    """Whether ``t`` is a type id a task can carry: 1..2**32-1 (0 is never a type: a zeroed
    record has it)."""
    return t >= 1 and t <= 0xFFFFFFFF


def emit_refused(S, blk, pw0, t, m0, m1):
    """A handler (header ``pw0``) emitted to ``t``, which is not a type id (``type_id_ok``):
    nothing is scheduled (not truncated to 32 bits: (1 << 32) + 12 would run handler 12).
    The emit goes to sys.error with UNKNOWN_TYPE against the emitting handler: its type, the
    refused id's low 32 bits as seq, the emit's meta. Returns UNKNOWN_TYPE."""
    to_sys(S, blk, CH_SYS_ERROR, UNKNOWN_TYPE, pw0 & ~(FLAG_CHANNEL_MSG << 32), hi32(t), 0, 0,
           m0, m1)
    return UNKNOWN_TYPE


# ---------------------------------------------------------------------------------------------
# THE enqueue core


def enqueue(S, blk, w0, w1, w2, w3, w4, w5, mode):
    """Schedule one task. ``mode``: ENQ_NORMAL (emit, event fire: the worker's local queue while
    it is below half full, else the type's bucket), ENQ_CHANNEL (a device channel delivery:
    placed like ENQ_NORMAL), ENQ_SHARED (host arrival: the bucket first so every worker can
    take it), ENQ_YIELD (local queue including its reserved last quarter, then the overflow
    queue, then sys.error). The record's ``seq`` becomes the enqueue sequence, except on
    channel messages (ENQ_CHANNEL, or FLAG_CHANNEL_MSG set: a yielded or retried delivery),
    which keep their channel sequence. Tasks of a type with no device handler go to the host.
    Returns OK, CHAN_FULL (queues full: the caller still has the record) or YIELD_OVERFLOW
    (ENQ_YIELD only: the record went to sys.error)."""
    D = S[0]
    ti = type_index(rec_type(w0))
    if mode != ENQ_CHANNEL and (rec_flags(w0) & FLAG_CHANNEL_MSG) == 0:
        # lanes of one block enqueue at once: a plain read-modify-write would hand two of
        # them the same sequence number
        seq = blk_add(D, O_BS + blk * BSS + B_SEQ, 1)
        w1 = (w1 & 0xFFFFFFFF) | hi32(seq * NB + blk)
    # the common case (a device task emitted by a handler: this worker's local queue) stays
    # small enough to be inlined into every emit; everything else is enqueue_place
    if ti >= 0 and (mode == ENQ_NORMAL or mode == ENQ_CHANNEL):
        d = lq_push(D, blk, w0, w1, w2, w3, w4, w5, LQ_SPILL)
        if d >= 0:
            met_type(D, blk, ti, PT_ENQ, 1)     # (the host sums these into "enqueued")
            return OK
    return enqueue_place(S, blk, ti, w0, w1, w2, w3, w4, w5, mode)


def enqueue_place(S, blk, ti, w0, w1, w2, w3, w4, w5, mode):
    """The rest of ``enqueue`` (record already stamped; for ENQ_NORMAL/ENQ_CHANNEL the local
    queue was full to its spill mark). A task counts as enqueued once placed: one refused
    (CHAN_FULL, YIELD_OVERFLOW) never runs, and "enqueued == run" is how the host knows the
    kernel is idle (a host record dropped at the door kept a dual system from ever idling)."""
    D = S[0]
    if ti < 0:
        met_add(D, blk, M_FOREIGN_TYPE, 1)
        return to_host(S, blk, w0, w1, w2, w3, w4, w5)
    if mode == ENQ_YIELD:
        d = lq_push(D, blk, w0, w1, w2, w3, w4, w5, LQ_CAP)
        if d >= 0:
            met_type(D, blk, ti, PT_ENQ, 1)
            return OK
        if overflow_push(D, blk, ti, w0, w1, w2, w3, w4, w5) == OK:
            return OK
        met_add(D, blk, M_YIELD_OVERFLOW, 1)
        to_sys(S, blk, CH_SYS_ERROR, YIELD_OVERFLOW, w0, w1, w2, w3, w4, w5)
        return YIELD_OVERFLOW
    # the type's bucket; its last 10% of slots are kept for priority-0 tasks
    limit = BQ_CAP
    if rec_prio(w0) != 0:
        limit = BQ_CAP - BQ_PRIO_RESERVE
    d = rq_push(D, ti, w0, w1, w2, w3, w4, w5, limit, 0)
    if d >= 0:
        met_type(D, blk, ti, PT_ENQ, 1)
        blk_max(D, O_MET + blk * NMET + M_BUCKET_HWM, d + 1)
        return OK
    if mode == ENQ_SHARED:
        d = lq_push(D, blk, w0, w1, w2, w3, w4, w5, LQ_CAP - LQ_CAP // 4)
        if d >= 0:
            met_type(D, blk, ti, PT_ENQ, 1)
            return OK
    met_add(D, blk, M_BUCKET_FULL, 1)
    return CHAN_FULL


def overflow_push(D, blk, ti, w0, w1, w2, w3, w4, w5):
    """Place a task on the overflow queue (any type; drained by every worker): a yield that
    found its local queue full, or a lossless channel copy its type's queues refused. OK, or
    CHAN_FULL when the overflow queue is full too."""
    if rq_push(D, Q_OVF, w0, w1, w2, w3, w4, w5, OVF_CAP, 0) < 0:
        return CHAN_FULL
    met_type(D, blk, ti, PT_ENQ, 1)
    met_add(D, blk, M_OVERFLOW_PUSH, 1)
    return OK


# ---------------------------------------------------------------------------------------------
# device channels


def chan_take_credit(D, slot, limit):
    """One in-flight credit of subscriber ``slot`` if fewer than ``limit`` are taken: the
    count after taking it, or -1."""
    o = O_CSUB + slot * CSS + CS_INFL
    while True:
        cur = vload(D, o)
        if cur >= limit:
            return -1
        if atomic_cas(D, o, cur, cur + 1) == cur:
            return cur + 1


def chan_payload_release(S, blk, ptr):
    if ptr != 0:
        arena_release(S[0], blk, ptr - S[1][O_CTL + C_ARENA_BASE])


def emit_channel(S, blk, c, pw0, w0, w2, w3, m0, m1):
    """Emit one message on device channel ``c`` (``w0``: its flags and tenant; the type is the
    channel's). ``pw0``: the producer's header (trace level). Returns OK, CHAN_FULL (lossless
    and a subscriber has no credit left: nothing was taken, the caller keeps its payload) or
    CHAN_UNKNOWN (no such channel: the message went to sys.error with the producer's type and
    ``c`` as its seq). On a lossy channel the copy
    for a full subscriber goes to sys.dropped with CHAN_FULL; a copy the queues cannot take
    goes there with the enqueue's code (on a lossless one it waits in the overflow queue, and
    only a full overflow queue drops it); with no subscriber at all, with
    CHAN_NO_SUBSCRIBER."""
    D = S[0]
    if c < 1 or c > NCHAN:
        # reported against the producer (no channel, no message type): its type, and the id
        # it used in the seq field
        met_add(D, blk, M_CHAN_UNKNOWN, 1)
        to_sys(S, blk, CH_SYS_ERROR, CHAN_UNKNOWN, (w0 & -4294967296) | rec_type(pw0), hi32(c),
               0, w3, m0, m1)
        return CHAN_UNKNOWN
    w0 = (w0 & -4294967296) | (FLAG_CHANNEL_MSG << 32) | chan_msg_type(c)
    n = chan_nsubs(c)
    slot0 = chan_slot0(c)
    limit = chan_cap(c)
    if rec_prio(w0) != 0:
        limit -= chan_reserve(c)          # the last 10%: priority 0 only
    lossless = chan_lossless(c) != 0
    mc = O_MET + blk * NMET + MCH0 + (c - 1) * NPC
    # 1. one credit per subscriber; lossless is all or nothing
    got = 0
    ncopies = 0
    hwm = 0
    for k in range(n):
        d = chan_take_credit(D, slot0 + k, limit)
        if d >= 0:
            got |= 1 << k
            ncopies += 1
            if d > hwm:
                hwm = d
            blk_max(D, O_MET + blk * NMET + MSUB0 + (slot0 + k) * NPS + PS_HWM, d)
        elif lossless:
            for j in range(k):
                atomic_add(D, O_CSUB + (slot0 + j) * CSS + CS_INFL, -1)
            blk_add(D, mc + PC_FULL, 1)
            met_add(D, blk, M_CHAN_FULL, 1)
            trace_if(S, blk, EV_CHAN_FULL, LV_WARN, pw0, c, 0)
            return CHAN_FULL
    # 2. accepted: the channel sequence number (1, 2, ...: the first message is 1, as on the
    # CPU kernel's channels)
    seq = atomic_add(D, O_CHS + (c - 1) * CHS + CH_SEQ, 1) + 1
    w1 = c | hi32(seq)
    blk_add(D, mc + PC_EMITTED, 1)
    blk_max(D, mc + PC_HWM, hwm)
    met_add(D, blk, M_CHAN_EMITTED, 1)
    # 3. the producer's payload reference becomes one per copy (before any copy can run)
    if w2 != 0:
        if ncopies == 0:
            chan_payload_release(S, blk, w2)
        elif ncopies > 1:
            arena_retain(D, w2 - S[1][O_CTL + C_ARENA_BASE], ncopies - 1)
    if n == 0:
        blk_add(D, mc + PC_DROPPED, 1)
        met_add(D, blk, M_CHAN_DROPPED, 1)
        trace_if(S, blk, EV_CHAN_DROP, LV_WARN, pw0, c, CHAN_NO_SUBSCRIBER)
        to_sys(S, blk, CH_SYS_DROPPED, CHAN_NO_SUBSCRIBER, w0, w1, 0, w3, m0, m1)
        return OK
    # 4. one copy per subscriber, through the enqueue core
    for k in range(n):
        slot = slot0 + k
        ws0 = (w0 & -4294967296) | sub_type(slot)
        ms = O_MET + blk * NMET + MSUB0 + slot * NPS
        code = CHAN_FULL
        if (got >> k) & 1:
            r = enqueue(S, blk, ws0, w1, w2, w3, m0, m1, ENQ_CHANNEL)
            if r == CHAN_FULL and lossless:
                # its type's bucket and the local queue are full (a bucket smaller than the
                # channel, or shared with other tasks of the type): a lossless copy was promised
                # delivery when its credit was taken, so it waits in the overflow queue
                r = overflow_push(D, blk, type_index(rec_type(ws0)), ws0, w1, w2, w3, m0, m1)
            if r == OK:
                blk_add(D, ms + PS_DELIVERED, 1)
                blk_add(D, mc + PC_DELIVERED, 1)
                met_add(D, blk, M_CHAN_DELIVERED, 1)
                continue
            # the queues are full: this copy's credit and payload reference go back
            atomic_add(D, O_CSUB + slot * CSS + CS_INFL, -1)
            chan_payload_release(S, blk, w2)
            code = r
        blk_add(D, ms + PS_DROPPED, 1)
        blk_add(D, mc + PC_DROPPED, 1)
        met_add(D, blk, M_CHAN_DROPPED, 1)
        trace_if(S, blk, EV_CHAN_DROP, LV_WARN, ws0, c, code)
        to_sys(S, blk, CH_SYS_DROPPED, code, ws0, w1, 0, w3, m0, m1)
    return OK


def chan_refuses(D, c, w0):
    """Whether lossless device channel ``c`` would refuse a message of the task with header
    ``w0`` now: a subscriber at its credit limit (the test ``emit_channel`` makes)."""
    limit = chan_cap(c)
    if rec_prio(w0) != 0:
        limit -= chan_reserve(c)
    slot0 = chan_slot0(c)
    for k in range(chan_nsubs(c)):
        if vload(D, O_CSUB + (slot0 + k) * CSS + CS_INFL) >= limit:
            return True
    return False


def settle(S, blk, w0, w1, w2):
    """A task reached its last outcome (done, failed, dead-lettered). If it is a device channel
    delivery, its subscriber's credit and its payload reference are given back."""
    if (rec_flags(w0) & FLAG_CHANNEL_MSG) == 0:
        return
    slot = sub_slot(w1 & 0xFFFFFFFF, type_index(rec_type(w0)))
    if slot < 0:
        return
    old = atomic_add(S[0], O_CSUB + slot * CSS + CS_INFL, -1)
    c = w1 & 0xFFFFFFFF
    if old >= chan_cap(c) - chan_reserve(c):
        # the subscriber was full (a producer may have been refused): waiting tasks may go on
        atomic_add(S[0], O_GLOB + G_WGEN, 1)
    chan_payload_release(S, blk, w2)


def schedule_event(S, blk, due, w0, w1, w2, w3, w4, w5):
    """Put a task on the event queue, due at tick ``due`` (through the inbox; the heap belongs
    to whichever lead holds the event lock)."""
    D = S[0]
    d = rq_push(D, Q_EVIN, w0, w1, w2, w3, w4, w5, EVIN_CAP, due)
    if d < 0:
        met_add(D, blk, M_EVENTS_DROPPED, 1)
        to_sys(S, blk, CH_SYS_ERROR, CHAN_FULL, w0, w1, w2, w3, w4, w5)
        return CHAN_FULL
    met_add(D, blk, M_EVENTS_PUSHED, 1)
    return OK


# ---------------------------------------------------------------------------------------------
# event queue: a min-heap on due tick, owned under a try-lock (no lane ever spins on it)


def heap_push(D, key, so):
    n = D[O_GLOB + G_EV_SIZE]
    if n >= EV_CAP:
        return False
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if D[O_EVK + p] <= key:
            break
        D[O_EVK + i] = D[O_EVK + p]
        copy_rec(D, O_EVR + i * W, D, O_EVR + p * W)
        i = p
    D[O_EVK + i] = key
    copy_rec(D, O_EVR + i * W, D, so)
    D[O_GLOB + G_EV_SIZE] = n + 1
    return True


def heap_pop_to(D, do):
    n = D[O_GLOB + G_EV_SIZE] - 1
    copy_rec(D, do, D, O_EVR)
    D[O_GLOB + G_EV_SIZE] = n
    if n == 0:
        return
    key = D[O_EVK + n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and D[O_EVK + c + 1] < D[O_EVK + c]:
            c += 1
        if key <= D[O_EVK + c]:
            break
        D[O_EVK + i] = D[O_EVK + c]
        copy_rec(D, O_EVR + i * W, D, O_EVR + c * W)
        i = c
    D[O_EVK + i] = key
    copy_rec(D, O_EVR + i * W, D, O_EVR + n * W)


def service_events(S, blk, tick):
    """Lead lane: move the inbox into the heap, fire at most EV_DRAIN_MAX due events."""
    D = S[0]
    # look before taking the lock: an atomic on the one shared lock word every iteration of
    # every worker would bounce its cache line between them (these reads are hints; the lock
    # holder rechecks)
    if rq_depth(D, Q_EVIN) <= 0 and (vload(D, O_GLOB + G_EV_SIZE) <= 0
                                     or vload(D, O_EVK) > tick):
        return
    if atomic_cas(D, O_GLOB + G_EV_LOCK, 0, 1) != 0:
        return
    fence()
    to = O_BAT + (blk * 2 * BATCH + 2 * BATCH - 1) * W   # last sort-buffer row: scratch
    h, n = rq_claim(D, Q_EVIN, EVIN_CAP)
    for k in range(n):
        due = rq_take(D, Q_EVIN, h + k, D, to)
        if not heap_push(D, due, to):
            met_add(D, blk, M_EVENTS_DROPPED, 1)
            to_sys(S, blk, CH_SYS_ERROR, CHAN_FULL, D[to], D[to + 1], D[to + 2], D[to + 3],
                   D[to + 4], D[to + 5])
            settle(S, blk, D[to], D[to + 1], D[to + 2])
    fired = 0
    while fired < EV_DRAIN_MAX and D[O_GLOB + G_EV_SIZE] > 0 and D[O_EVK] <= tick:
        heap_pop_to(D, to)
        r = enqueue(S, blk, D[to], D[to + 1], D[to + 2], D[to + 3], D[to + 4], D[to + 5],
                    ENQ_NORMAL)
        if r != OK:
            # the queues are full: the fired task is dead-lettered, not lost
            to_sys(S, blk, CH_SYS_DROPPED, r, D[to], D[to + 1], D[to + 2], D[to + 3],
                   D[to + 4], D[to + 5])
            settle(S, blk, D[to], D[to + 1], D[to + 2])
        fired += 1
    if fired > 0:
        met_add(D, blk, M_EVENTS_FIRED, fired)
    fence()
    vstore(D, O_GLOB + G_EV_LOCK, 0)


# ---------------------------------------------------------------------------------------------
# arena: block bins (12 powers of two), slab, per-block bump; reference-counted payloads


def fl_pop(D, k):
    base = D[O_FLC + NFL * QCS + k * 2]
    cap = D[O_FLC + NFL * QCS + k * 2 + 1]
    c = O_FLC + k * QCS
    while True:
        h = vload(D, c + QC_HEAD)
        if vload(D, c + QC_TAIL) - h <= 0:
            return -1
        slot = base + (h & (cap - 1))
        if vload(D, O_FLSEQ + slot) == h + 1:
            if atomic_cas(D, c + QC_HEAD, h, h + 1) == h:
                v = D[O_FL + slot]
                fence()
                vstore(D, O_FLSEQ + slot, h + cap)
                return v


def fl_push(D, k, v):
    base = D[O_FLC + NFL * QCS + k * 2]
    cap = D[O_FLC + NFL * QCS + k * 2 + 1]
    c = O_FLC + k * QCS
    while True:
        t = vload(D, c + QC_TAIL)
        slot = base + (t & (cap - 1))
        if vload(D, O_FLSEQ + slot) == t:
            if atomic_cas(D, c + QC_TAIL, t, t + 1) == t:
                D[O_FL + slot] = v
                fence()
                vstore(D, O_FLSEQ + slot, t + 1)
                return


def bin_of(nbytes):
    k = 0
    size = MIN_BLOCK
    while size < nbytes and k < NBINS:
        size <<= 1
        k += 1
    return k


def arena_alloc(D, blk, nbytes):
    """Block allocator: an arena offset with reference count 1, or -1 (ALLOC_FAIL)."""
    k = bin_of(nbytes)
    off = -1
    if k < NBINS:
        off = fl_pop(D, k)
    if off < 0:
        met_add(D, blk, M_ALLOC_FAIL, 1)
        return -1
    vstore(D, O_AREF + off // GRANULE, (k << 32) | 1)
    met_add(D, blk, M_ALLOC, 1)
    return off


def slab_alloc(D, blk):
    off = fl_pop(D, BIN_SLAB)
    if off < 0:
        met_add(D, blk, M_ALLOC_FAIL, 1)
        return -1
    vstore(D, O_AREF + off // GRANULE, (BIN_SLAB << 32) | 1)
    met_add(D, blk, M_SLAB_ALLOC, 1)
    return off


def arena_retain(D, off, n):
    atomic_add(D, O_AREF + off // GRANULE, n)


def arena_release(D, blk, off):
    """Drop one reference; the last one frees the block. Returns the references left."""
    old = atomic_add(D, O_AREF + off // GRANULE, -1)
    left = (old & 0xFFFFFFFF) - 1
    if left == 0:
        vstore(D, O_AREF + off // GRANULE, 0)
        fl_push(D, old >> 32, off)
        met_add(D, blk, M_FREE, 1)
    return left


def bump_alloc(D, blk, nbytes):
    """Per-worker transient memory, reset at every tick. -1 when this tick's share is used."""
    b = O_BS + blk * BSS + B_BUMP
    need = (nbytes + 15) & ~15
    # reserve atomically (lanes of one block allocate at once); a failed reservation is
    # undone: any reservation made after it starts past the end and fails too
    cur = blk_add(D, b, need)
    if cur + need > BUMP_PER_BLOCK:
        blk_add(D, b, -need)
        met_add(D, blk, M_BUMP_FAIL, 1)
        return -1
    met_add(D, blk, M_BUMP_ALLOC, 1)
    return BUMP_BASE + blk * BUMP_PER_BLOCK + cur


# ---------------------------------------------------------------------------------------------
# task completion (the lane that ran the task, or lane 0 of its warp/block)


def finish_ok(S, blk, o):
    """The OK outcome less its counter (a scalar segment adds its OKs up once)."""
    D = S[0]
    if TRACE_TASKS:
        trace_if(S, blk, EV_TASK_END, LV_ALL, D[o], 0, 0)
    settle(S, blk, D[o], D[o + 1], D[o + 2])


def finish(S, blk, ti, tick, o, r):
    D = S[0]
    w0 = D[o]
    w1 = D[o + 1]
    w2 = D[o + 2]
    w3 = D[o + 3]
    w4 = D[o + 4]
    w5 = D[o + 5]
    if r == OK:
        met_type(D, blk, ti, PT_OK, 1)
        if TRACE_TASKS:
            trace_if(S, blk, EV_TASK_END, LV_ALL, w0, 0, 0)
        settle(S, blk, w0, w1, w2)
        return
    if r == YIELD:
        y = rec_yields(w3) + 1
        # the u16 count saturates, as the CPU kernel's (worker._yield): at max_yields 65535
        # the yield past it stored 65536 & 0xFFFF = 0 on its sys.error record
        yc = y
        if yc > 0xFFFF:
            yc = 0xFFFF
        w3 = (w3 & ~(0xFFFF << 32)) | (yc << 32)
        met_type(D, blk, ti, PT_YIELD, 1)
        trace_if(S, blk, EV_TASK_YIELD, LV_INFO, w0, y, 0)
        if y > type_max_yields(ti):
            met_add(D, blk, M_MAX_YIELDS, 1)
            to_sys(S, blk, CH_SYS_ERROR, MAX_YIELDS, w0, w1, w2, w3, w4, w5)
            settle(S, blk, w0, w1, w2)
            return
        if enqueue(S, blk, w0, w1, w2, w3, w4, w5, ENQ_YIELD) != OK:
            settle(S, blk, w0, w1, w2)          # it went to sys.error
        return
    if r == WAIT:
        # come back later (a full channel): not a yield, so a producer waiting on a slow
        # consumer never reaches max_yields; parked on this worker's wait queue, which it
        # looks at again only when the wake-up generation moved (``wait_open``): re-running
        # it at once, like a yield, burnt a core while the consumer stalled
        met_type(D, blk, ti, PT_WAIT, 1)
        blk_add(D, O_BS + blk * BSS + B_WAITS, 1)
        # this worker's wait queue, else another's (any worker opens its own when the
        # generation moves); when all are full, the next tick (the event queue: re-run at
        # once from the local queue, 48 such tasks ran 16 M times a second); only when that
        # is full too, the local queue
        for k in range(NB):
            if rq_push(D, Q_WAIT0 + (blk + k) % NB, w0, w1, w2, w3, w4, w5, WQ_CAP, 0) >= 0:
                met_type(D, blk, ti, PT_ENQ, 1)
                return
        if rq_push(D, Q_EVIN, w0, w1, w2, w3, w4, w5, EVIN_CAP, tick + 1) >= 0:
            met_add(D, blk, M_EVENTS_PUSHED, 1)
            return
        if enqueue(S, blk, w0, w1, w2, w3, w4, w5, ENQ_YIELD) != OK:
            settle(S, blk, w0, w1, w2)          # it went to sys.error
        return
    if r == RETRY:
        n = rec_retries(w3) + 1
        met_type(D, blk, ti, PT_RETRY, 1)
        trace_if(S, blk, EV_TASK_RETRY, LV_WARN, w0, n, 0)
        if n > MAX_RETRIES:
            met_add(D, blk, M_RETRY_EXHAUSTED, 1)
            to_sys(S, blk, CH_SYS_ERROR, RETRY_EXHAUSTED, w0, w1, w2, set_pad(w3, 0), w4, w5)
            settle(S, blk, w0, w1, w2)
            return
        # backoff 1, 2, 4 .. ticks, at most 64 (core.faults.backoff_ticks): the shift is
        # capped at 7 (64's bit length), so it never overflows (1 << 63 was negative, and
        # past 63 x86 masks the shift and a GPU gives 0: no backoff from the 64th retry on)
        shift = n - 1
        if shift > 7:
            shift = 7
        back = 1 << shift
        if back > 64:
            back = 64
        met_add(D, blk, M_RETRY_SCHEDULED, 1)
        if schedule_event(S, blk, tick + back, w0, w1, w2, set_pad(w3, n), w4, w5) != OK:
            settle(S, blk, w0, w1, w2)          # it went to sys.error
        return
    met_type(D, blk, ti, PT_FAIL, 1)
    code = r
    if code >= 0 or code < -32768:
        # not a code (a positive value other than OK/RETRY/YIELD/WAIT), or a failure code
        # the record's int16 cannot hold (-40000 arrived as 25536, -65536 as 0 = OK): as the
        # CPU kernel does for what is not a code
        code = BAD_RETURN
    to_sys(S, blk, CH_SYS_ERROR, code, w0, w1, w2, w3, w4, w5)
    settle(S, blk, w0, w1, w2)


# ---------------------------------------------------------------------------------------------
# gather (lead lane): choose one source, claim up to BATCH records


def pick_bucket(D, blk, aging_now):
    """Sticky bucket while it has work, else the next non-empty one; on aging turns the
    non-empty bucket with the largest priority weight x age (pops since it was last served)."""
    cur = D[O_BS + blk * BSS + B_CUR]
    if aging_now:
        now = vload(D, O_GLOB + G_GPOP)
        best = -1
        best_score = -1
        for t in range(NTYPES):
            if rq_depth(D, t) > 0:
                hpos = vload(D, O_QC + t * QCS + QC_HEAD)
                slot = D[O_QINFO + t * 2] + (hpos & (D[O_QINFO + t * 2 + 1] - 1))
                weight = 4 - rec_prio(D[O_Q + slot * W])
                score = weight * (now - D[O_BSTAMP + t] + 1)
                if score > best_score:
                    best_score = score
                    best = t
        if best >= 0 and best != cur:
            met_add(D, blk, M_AGING_PICKS, 1)
        return best
    for k in range(NTYPES):
        t = (cur + k) % NTYPES
        if rq_depth(D, t) > 0:
            D[O_BS + blk * BSS + B_CUR] = t
            return t
    return -1


def gather_local(D, blk, sh):
    qi = Q_LOCAL0 + blk
    h = D[O_QC + qi * QCS + QC_HEAD]
    n = D[O_QC + qi * QCS + QC_TAIL] - h
    if n <= 0:
        return False
    # the local queue only grows between two of its gathers: its depth now is its high
    # watermark since the last one (kept here, not on every push)
    blk_max(D, O_MET + blk * NMET + M_LOCAL_HWM, n)
    if n > BATCH:
        n = BATCH
    sh[SH_SRC] = SRC_LOCAL
    sh[SH_Q] = qi
    sh[SH_POS] = h
    sh[SH_N] = n
    met_add(D, blk, M_GATHER_LOCAL, 1)
    return True


def wait_open(D, blk):
    """Whether this worker may run its waiting tasks again: its wait queue is open, or the
    wake-up generation moved since the batch that closed it (a credit came back), or, as a
    fallback for a wait no bump announces, it stayed closed for WGATE_LOOPS_FIRST, then twice
    as many, ... up to WGATE_LOOPS_MAX of its gathers."""
    bo = O_BS + blk * BSS
    if D[bo + B_WGATED] == 0:
        return True
    if vload(D, O_GLOB + G_WGEN) != D[bo + B_WGATE]:
        D[bo + B_WGATED] = 0
        D[bo + B_WNEXT] = WGATE_LOOPS_FIRST
        D[bo + B_WLOOPS] = 0
        return True
    k = D[bo + B_WLOOPS] + 1
    nxt = D[bo + B_WNEXT]
    if nxt < WGATE_LOOPS_FIRST:
        nxt = WGATE_LOOPS_FIRST
    if k >= nxt:
        nxt = nxt * 2
        if nxt > WGATE_LOOPS_MAX:
            nxt = WGATE_LOOPS_MAX
        D[bo + B_WNEXT] = nxt
        D[bo + B_WLOOPS] = 0
        return True
    D[bo + B_WLOOPS] = k
    return False


def gather_wait(D, blk, sh):
    """The wait queue, if open: the generation is read before the claim, so a bump during
    the batch reopens it."""
    qi = Q_WAIT0 + blk
    if rq_depth(D, qi) <= 0 or not wait_open(D, blk):
        return False
    D[O_BS + blk * BSS + B_WGEN_AT] = vload(D, O_GLOB + G_WGEN)
    h, n = rq_claim(D, qi, BATCH)
    if n <= 0:
        return False
    sh[SH_SRC] = SRC_WAIT
    sh[SH_Q] = qi
    sh[SH_POS] = h
    sh[SH_N] = n
    return True


def wait_close(S, blk, sh, n):
    """Lead, after a batch: a batch of the wait queue in which every task came back WAIT
    closes it until the generation it was gathered at moves; any progress keeps it open.
    Returns the nap this worker wishes: such a batch is an idle round (nothing moved), so a
    worker whose only work is tasks waiting for a stalled consumer naps like an idle one
    instead of re-running them flat out (millions of runs a second, a core burnt)."""
    if sh[SH_SRC] != SRC_WAIT:
        return 0
    D = S[0]
    bo = O_BS + blk * BSS
    if D[bo + B_WAITS] >= n:
        D[bo + B_WGATED] = 1
        D[bo + B_WGATE] = D[bo + B_WGEN_AT]
        D[bo + B_WLOOPS] = 0
        return idle_nap(S, blk)
    D[bo + B_WGATED] = 0
    worker_woke(S, blk)
    return 0


def gather(D, blk, sh):
    """Lead lane: claim a batch. Sets sh[SH_SRC], sh[SH_Q], sh[SH_POS], sh[SH_N]. Order: the
    overflow queue, the wait queue (tasks that returned WAIT, while open), the local queue, a
    type bucket."""
    sh[SH_SRC] = SRC_NONE
    sh[SH_N] = 0
    # 1. the yield-overflow queue drains at top priority
    if rq_depth(D, Q_OVF) > 0:
        h, n = rq_claim(D, Q_OVF, BATCH)
        if n > 0:
            sh[SH_SRC] = SRC_OVF
            sh[SH_Q] = Q_OVF
            sh[SH_POS] = h
            sh[SH_N] = n
            met_add(D, blk, M_GATHER_OVERFLOW, 1)
            return
    g = D[O_BS + blk * BSS + B_GATHERS]
    D[O_BS + blk * BSS + B_GATHERS] = g + 1
    aging = D[O_GLOB + G_AGING]
    aging_now = aging > 0 and g % aging == aging - 1
    # 2. the wait queue while open (it opens when something its tasks wait for happened: a
    # local queue that holds waiting tasks must not keep it closed), then the local queue,
    # except on aging turns
    if not aging_now:
        if gather_wait(D, blk, sh):
            return
        if gather_local(D, blk, sh):
            return
    # 3. a type bucket
    t = pick_bucket(D, blk, aging_now)
    if t < 0:
        if aging_now:
            if not gather_local(D, blk, sh):
                gather_wait(D, blk, sh)
        return
    h, n = rq_claim(D, t, BATCH)
    if n > 0:
        D[O_BSTAMP + t] = atomic_add(D, O_GLOB + G_GPOP, 1) + 1
        sh[SH_SRC] = SRC_BUCKET
        sh[SH_Q] = t
        sh[SH_POS] = h
        sh[SH_N] = n
        met_add(D, blk, M_GATHER_BUCKET, 1)


# ---------------------------------------------------------------------------------------------
# one worker iteration (all lanes of a block call it)


def publish(S, blk):
    """Copy this block's metric row to the host-visible mirror."""
    D = S[0]
    M = S[1]
    o = blk * NMET
    for m in range(NMET):
        vstore(M, O_MPUB + o + m, vload(D, O_MET + o + m))
    for s in range(NCSUB):
        vstore(M, O_CPUB + s, vload(D, O_CSUB + s * CSS + CS_INFL))
    for c in range(NCHAN):
        vstore(M, O_CHPUB + c, vload(D, O_CHS + c * CHS + CH_SEQ))
    fence_system()


def trace_worker(S, ev, blk):
    """A worker's park / wake (level ``all``): compiled in with ``TRACE_WORKER``, recorded
    while the run-time worker word (``tlv`` at NTYPES, set by the host) says ``all``."""
    if TRACE_WORKER:
        if vload(S[1], O_TLV + NTYPES) >= LV_ALL:
            trace_event(S, blk, ev, 0, 0, blk, 0, 0)
            met_add(S[0], blk, M_TRACE_EVENTS, 1)


def iteration_start(S, blk, sh):
    """Phase 0 (lead): stop flag, clock, heartbeat, host arrivals to take (worker 0), due
    events, spilled host records onto the tx ring. Leaves the stop flag and the tick in
    ``sh``."""
    D = S[0]
    M = S[1]
    bo = O_BS + blk * BSS
    sh[SH_STOP] = vload(M, O_CTL + C_STOP)
    tick = (clock_ns() - vload(D, O_GLOB + G_BOOT_NS)) // TICK_NS
    sh[SH_TICK] = tick
    if tick != D[bo + B_TICK]:
        D[bo + B_TICK] = tick          # a new tick: this worker's bump region resets
        D[bo + B_BUMP] = 0
        if blk == 0:
            vstore(M, O_CTL + C_TICK, tick)
    loops = D[bo + B_LOOPS] + 1
    D[bo + B_LOOPS] = loops
    vstore(M, O_HB + blk * 8, loops)
    sh[SH_RXN] = 0
    if blk == 0:
        h = M[O_CTL + C_RX_HEAD]
        n = vload(M, O_CTL + C_RX_TAIL) - h
        if n > RX_INGEST_MAX:
            n = RX_INGEST_MAX
        if n > 0:
            sh[SH_RXN] = n
            sh[SH_RXH] = h
    service_events(S, blk, tick)
    tx_move(S, False)                  # spilled host records onto the tx ring


def ingest_host(S, blk, sh):
    """Phase 1 (all lanes, worker 0 only has any): the host arrivals phase 0 found go through
    the enqueue core to the buckets; then the lead hands their ring slots back."""
    D = S[0]
    M = S[1]
    rxn = sh[SH_RXN]
    if rxn > 0:
        rxh = sh[SH_RXH]
        for k in range(lane_id(), rxn, lane_step()):
            o = O_RX + ((rxh + k) & (RX_CAP - 1)) * W
            w0 = vload(M, o)
            w1 = vload(M, o + 1)
            w2 = vload(M, o + 2)
            w3 = vload(M, o + 3)
            w4 = vload(M, o + 4)
            w5 = vload(M, o + 5)
            c = w1 & 0xFFFFFFFF
            if c >= 1 and c <= NCHAN:
                # a host record holds no device channel credit: not a delivery here
                w0 = w0 & ~(FLAG_CHANNEL_MSG << 32)
            r = enqueue(S, blk, w0, w1, w2, set_pad(w3, 0), w4, w5, ENQ_SHARED)
            if r != OK:
                to_sys(S, blk, CH_SYS_DROPPED, r, w0, w1, w2, w3, w4, w5)
        syncthreads()
        if is_lead():
            met_add(D, blk, M_RX_IN, rxn)
            fence_system()
            vstore(M, O_CTL + C_RX_HEAD, rxh + rxn)


def idle_round(S, blk, sh):
    """Phase 2 found no work (all lanes): count the idle round and return the nap this
    worker wishes (ns)."""
    if is_lead():
        sh[SH_NAP] = idle_nap(S, blk)
    syncthreads()
    return sh[SH_NAP]


def idle_nap(S, blk):
    """Lead: one more idle round; park after IDLE_SPIN of them (publishing the metrics once).
    The nap this worker wishes (ns)."""
    D = S[0]
    bo = O_BS + blk * BSS
    idle = D[bo + B_IDLE] + 1
    D[bo + B_IDLE] = idle
    met_add(D, blk, M_IDLE_LOOPS, 1)
    if idle == IDLE_SPIN:
        met_add(D, blk, M_PARKS, 1)
        trace_worker(S, EV_WORKER_PARK, blk)
        publish(S, blk)
    # naps double from 1 us up to IDLE_SLEEP_MAX (a host push, stop and shared work ring the
    # doorbell whatever the nap): growing 1 us a round, an idle gap of 2 ms between sporadic
    # requests cost ~45 wake-ups, 38% of a core on the reference machine; doubling, ~11
    nap = 0
    if idle >= IDLE_SPIN:
        k = idle - IDLE_SPIN
        nap = IDLE_SLEEP_MAX
        if k < 40:
            nap = 1000 << k
            if nap > IDLE_SLEEP_MAX:
                nap = IDLE_SLEEP_MAX
    return nap


def worker_woke(S, blk):
    """Lead: this worker moved something: no longer idle (a parked one says so)."""
    D = S[0]
    bo = O_BS + blk * BSS
    if D[bo + B_IDLE] >= IDLE_SPIN:
        trace_worker(S, EV_WORKER_WAKE, blk)
    D[bo + B_IDLE] = 0


def batch_base(blk):
    """This worker's batch buffer (its first word in D); the sort buffer follows it."""
    return O_BAT + blk * 2 * BATCH * W


def batch_at(D, blk, sh):
    """Where the gathered batch is read: record k is at rb + ((rpos + k) & rmask) * W. A
    local batch is read in place (only this worker pushes to its local queue, and not before
    the dispatch, after the scatter has copied the batch out); a shared queue's batch was
    copied into the batch buffer. Returns (rb, rpos, rmask)."""
    if sh[SH_SRC] == SRC_LOCAL:
        return O_Q + D[O_QINFO + sh[SH_Q] * 2] * W, sh[SH_POS], LQ_CAP - 1
    return batch_base(blk), 0, -1


def load_batch(S, blk, sh, n):
    """Phase 3 (all lanes): records of a shared queue are copied into the batch buffer (their
    slots are freed for other producers); then the records are counted by type (slot 0 = no
    device handler: never expected, the enqueue core sends those to the host)."""
    D = S[0]
    bo = O_BS + blk * BSS
    src = sh[SH_SRC]
    qi = sh[SH_Q]
    if src != SRC_LOCAL:
        b0 = batch_base(blk)
        pos = sh[SH_POS]
        for k in range(lane_id(), n, lane_step()):
            rq_take(D, qi, pos + k, D, b0 + k * W)
    if is_lead():
        if src != SRC_WAIT:            # (a wait-queue batch: wait_close knows if it moved)
            worker_woke(S, blk)
        D[bo + B_WAITS] = 0
        for t in range(NTYPES + 1):
            sh[SH_CNT + t] = 0
    syncthreads()
    rb, rpos, rmask = batch_at(D, blk, sh)
    for k in range(lane_id(), n, lane_step()):
        ti = type_index(rec_type(D[rb + ((rpos + k) & rmask) * W]))
        blk_add(sh, SH_CNT + ti + 1, 1)
        if src == SRC_BUCKET and ti != qi:
            met_add(D, blk, M_BUCKET_MIXED, 1)   # a bucket must hold one type only


def type_offsets(sh):
    """Phase 4 (lead): each type's first position in the sort buffer, and its cursor."""
    acc = 0
    for t in range(NTYPES + 1):
        c = sh[SH_CNT + t]
        sh[SH_CNT + (NTYPES + 1) + t] = acc
        sh[SH_CNT + 2 * (NTYPES + 1) + t] = acc
        acc += c


def scatter_batch(D, blk, sh, n):
    """Phase 5 (all lanes): the batch into the sort buffer, grouped by type; then the lead
    frees a local batch's queue slots (copied out)."""
    s0 = batch_base(blk) + BATCH * W
    rb, rpos, rmask = batch_at(D, blk, sh)
    for k in range(lane_id(), n, lane_step()):
        o = rb + ((rpos + k) & rmask) * W
        p = blk_add(sh, SH_CNT + 2 * (NTYPES + 1) + type_index(rec_type(D[o])) + 1, 1)
        copy_rec(D, s0 + p * W, D, o)
    syncthreads()
    if is_lead() and sh[SH_SRC] == SRC_LOCAL:
        D[O_QC + sh[SH_Q] * QCS + QC_HEAD] = sh[SH_POS] + n   # the slots are free again


def dispatch_batch(S, blk, sh, tick, smem):
    """Phase 6 (all lanes): each homogeneous sub-batch of the sort buffer to its handler's
    segment (a block-uniform loop); records of no device type to sys.dropped."""
    D = S[0]
    s0 = batch_base(blk) + BATCH * W
    for t in range(NTYPES + 1):
        c = sh[SH_CNT + t]
        if c > 0:
            start = sh[SH_CNT + (NTYPES + 1) + t]
            if t == 0:
                if is_lead():
                    for i in range(start, start + c):
                        o = s0 + i * W
                        to_sys(S, blk, CH_SYS_DROPPED, UNKNOWN_TYPE, D[o], D[o + 1], D[o + 2],
                               D[o + 3], D[o + 4], D[o + 5])
            else:
                if is_lead():
                    met_type(D, blk, t - 1, PT_RUN, c)
                    if TRACE_TASKS:
                        trace_segment(S, blk, EV_TASK_START, t - 1, c)
                dispatch_segment(S, blk, tick, t - 1, s0 + start * W, c, smem)
            syncthreads()
            if TRACE_TASKS:
                if t > 0 and is_lead():    # after the barrier: every lane's task is done
                    trace_segment(S, blk, EV_TASK_END, t - 1, c)


def iteration_end(S, blk, n):
    """Phase 7 (lead): bookkeeping; the metric row is published every PUBLISH_EVERY loops."""
    D = S[0]
    met_add(D, blk, M_DISPATCHED, n)
    met_add(D, blk, M_LOOPS, 1)
    if D[O_BS + blk * BSS + B_LOOPS] % PUBLISH_EVERY == 0:
        publish(S, blk)


def worker_iteration(S, blk, sh, smem):
    """One iteration of worker ``blk``, one function per phase (barriers between them).
    Returns -1 once the host raised the stop flag, else the nanoseconds this worker would
    like to sleep (0 when it found work). The caller sleeps once per round over its blocks,
    the shortest wish: on ``cpu`` one host thread runs every block, and a sleep per idle block
    would hold up the busy ones (and the host's arrivals) for the sum of them."""
    D = S[0]
    if is_lead():
        iteration_start(S, blk, sh)        # 0: stop flag, clock, arrivals, events
    syncthreads()
    if sh[SH_STOP] != 0:
        return -1
    tick = sh[SH_TICK]
    ingest_host(S, blk, sh)                # 1: host arrivals to the buckets
    if is_lead():
        gather(D, blk, sh)                 # 2: the next batch
    syncthreads()
    n = sh[SH_N]
    if n == 0:
        return idle_round(S, blk, sh)
    load_batch(S, blk, sh, n)              # 3: batch buffer, counts per type
    syncthreads()
    if is_lead():
        type_offsets(sh)                   # 4: offsets per type
    syncthreads()
    scatter_batch(D, blk, sh, n)           # 5: grouped by type
    syncthreads()
    dispatch_batch(S, blk, sh, tick, smem)  # 6: each type's handler
    if is_lead():
        sh[SH_NAP] = wait_close(S, blk, sh, n)   # 7: bookkeeping (all WAIT: an idle round)
        iteration_end(S, blk, n)
    syncthreads()
    return sh[SH_NAP]


def kernel_body(D, M, A):
    S = (D, M, A)
    if is_lead():
        atomic_cas(D, O_GLOB + G_BOOT_NS, 0, clock_ns())
        atomic_add(M, O_CTL + C_STARTED, 1)
        fence_system()
    # every worker needs the boot clock before its first tick
    while vload(D, O_GLOB + G_BOOT_NS) == 0:
        pass
    first = first_block(D)
    running = True
    while running:
        nap = IDLE_SLEEP_MAX
        for blk in range(first, NB, block_step(D)):
            r = worker_iteration(S, blk, block_shared(D, blk), block_smem(D, blk))
            if r < 0:
                running = False
            elif r < nap:
                nap = r
        if is_lead():
            wake_idle(D, M)     # cpu: shared queues hold work and a host thread is parked
        if running and nap > 0:
            idle_wait(M, nap)               # every block of this round is parked
    for blk in range(first, NB, block_step(D)):
        if is_lead():
            publish(S, blk)
            atomic_add(M, O_CTL + C_EXITED, 1)
            fence_system()
