"""Device state: the arrays the persistent kernel works on, their sizes and their host mirrors.

Everything the kernel touches is a flat 1-D array (int64 unless noted) so that the same code
indexes it on every target. A task record is 6 int64 words, bit-identical to ``TASK_DTYPE``
(SPEC §2), so a host ``TASK_DTYPE`` array is ``records.view(np.int64)`` with no copy:

    w0 = type | flags << 32 | tenant << 48
    w1 = channel | seq << 32
    w2 = payload_ptr
    w3 = payload_len | yield_count << 32 | _pad << 48   (the device runtime keeps the retry
                                                         count in _pad; it is 0 on arrival)
    w4 = meta0          w5 = meta1

Arrays are either *device* arrays (device memory on ``cuda``) or *mapped* arrays (host-mapped
pinned memory on ``cuda``: the words both sides touch, the host rings, heartbeats, published
metrics and the trace ring). On ``cpu`` and ``sim`` both kinds are plain NumPy arrays.

The state travels through the kernel as one tuple ``S``; ``S[SQ]`` is the queue pool and so on.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, asdict

import numpy as np

from ggmk.core import bigbuf
from ggmk.core.det import check_int
from ggmk.errors import BootError

W = 6                      # int64 words per task record
TW = 4                     # int64 words per trace ring record (32 bytes, DEVICE_TRACE_DTYPE:
                           # the 24-byte TRACE_DTYPE event, then worker and slice task count)
WARP = 32

# a trace ring record as the host drains it (``DeviceKernel.drain_trace``): the 24-byte
# ``events.TRACE_DTYPE`` event, then the worker (block) that recorded it and, for a task
# slice's TASK_START / TASK_END, the number of tasks of the segment (0 for other events)
DEVICE_TRACE_DTYPE = np.dtype([("ts", "<u8"), ("event", "<u2"), ("tenant", "<u2"),
                               ("task_type", "<u4"), ("arg0", "<u4"), ("arg1", "<u4"),
                               ("worker", "<u4"), ("n", "<u4")])
assert DEVICE_TRACE_DTYPE.itemsize == TW * 8

# ---- the state: three flat arrays. Regions (name, dtype, kind) in region order; each region's
# offset within its home array is the compile-time constant O_<NAME>.
REGIONS = (
    ("q", "dev"),        # record slots of every device queue
    ("qseq", "dev"),     # per-slot sequence numbers (bounded MPMC ring protocol)
    ("qdue", "dev"),     # per-slot due tick (used by the event inbox only)
    ("qc", "dev"),       # per-queue head/tail counters, one cache line apart
    ("qinfo", "dev"),    # per-queue (base slot, capacity)
    ("bat", "dev"),      # per-block batch buffer + sort buffer
    ("met", "dev"),      # per-block metric rows
    ("bs", "dev"),       # per-block private words
    ("glob", "dev"),     # global device words (locks, counters, clocks)
    ("bstamp", "dev"),   # per-bucket: global pop count when last served (aging)
    ("evk", "dev"),      # event heap: due tick keys
    ("evr", "dev"),      # event heap: records
    ("aref", "dev"),     # reference count (and bin) per arena granule
    ("fl", "dev"),       # free-list rings (block bins + slab): offsets
    ("flseq", "dev"),
    ("flc", "dev"),      # free-list head/tail counters and (base, cap)
    ("scratch", "dev"),  # shared-memory stand-in for targets without shared memory
    ("user", "dev"),     # USER_WORDS words for handlers (g.user_words): counters, logs
    ("chs", "dev"),      # per device channel: sequence counter (CHS words apart)
    ("csub", "dev"),     # per channel subscriber slot: in-flight credit count (CSS apart)
    ("txsp", "dev"),     # tx spill area: host-bound records waiting for room on the tx ring
    ("txspseq", "dev"),  # per spill slot: position + 1 of the record in it, 0 when free
    ("ctl", "map"),      # control words: stop flag, ring indices
    ("rx", "map"),       # host -> device ring records
    ("tx", "map"),       # device -> host ring records
    ("txseq", "map"),    # tx per-slot sequence (device publishes, host consumes)
    ("hb", "map"),       # per-worker heartbeats
    ("mpub", "map"),     # published metric rows (host reads these)
    ("tr", "map"),       # trace ring records
    ("trseq", "map"),    # trace ring per-slot sequence
    ("cpub", "map"),     # published in-flight count per subscriber slot (channel depth)
    ("chpub", "map"),    # published last assigned sequence number per device channel
    ("tlv", "map"),      # run-time trace levels: one word per handler type index (the host
                         # writes, ``DeviceKernel.set_trace_level``; at most the build level),
                         # then the worker events' (park / wake) at index NTYPES
)
# kernel arguments, in order: device words, mapped words, arena bytes
STATE_NAMES = ("dev", "map", "arena")
SD, SM, SA = 0, 1, 2

# ---- handler context: ctx = (S, blk, tick, parent_w0, parent_w1)
CTX_S, CTX_BLK, CTX_TICK, CTX_PW0, CTX_PW1 = 0, 1, 2, 3, 4

# ---- queue counters
QCS = 16                  # stride between queues' counters (128 bytes)
QC_HEAD, QC_TAIL = 0, 8

# ---- ctl words (mapped; each on its own 64-byte line)
C_STOP = 0                # host sets 1: workers finish their iteration and exit
C_RX_TAIL = 8             # host writes: records pushed
C_RX_HEAD = 16            # device writes: records consumed
C_TX_HEAD = 24            # host writes: records pulled
C_EXITED = 32             # device: number of workers that have exited
C_STARTED = 40            # device: number of workers that have started
C_ARENA_BASE = 48         # host writes: address of arena byte 0 (payload_ptr = base + offset)
C_TICK = 56               # device publishes its current tick
C_TARGET0 = 64            # two words the target owns and names (Target.constants): cpu's
C_TARGET1 = 72            # doorbell (host-written) and parked count (device-written)
C_TX_HELD = 80            # device: producers held back right now (tx ring and spill full)
C_HOST_WAIT = 88          # host writes: 1 while a host thread (the bridge pump) sleeps on the
                          # device -> host bell (C_HOST_BELL); the device rings only then
C_HOST_BELL = 96          # the device -> host bell: the device adds 1 after each tx publish
                          # (a locked add on ``cpu``: it orders the record before it), the
                          # host adds 1 (atomically, in the kernel: FUTEX_WAKE_OP) to wake its
                          # own sleeper; a futex word on ``cpu`` (low 32 bits), unused
                          # on ``sim`` / ``cuda`` (no device atomics on host-mapped words there)
NCTL = 104

# ---- glob words (device)
G_EV_LOCK = 0
G_EV_SIZE = 8
G_TX_RES = 16             # tx reservations
G_TR_HEAD = 24            # trace reservations
G_GPOP = 32               # global bucket-pop counter (aging clock)
G_BOOT_NS = 40            # first worker's clock at start: tick 0
G_AGING = 48              # aging interval in gathers (0 = off): a run-time setting
G_TARGET0 = 56            # two words the target owns and names (Target.constants), set
G_TARGET1 = 64            # up by its Target.init_images: cpu's host-thread ticket and count
G_TX_MCUR = 72            # tx spill mover: first tx position not yet known to be on the ring
G_TX_MLOCK = 80           # tx spill mover: try-lock (one mover at a time)
G_TX_SPILLN = 88          # records waiting in the tx spill area
G_WGEN = 96               # wake-up generation: bumped whenever something a WAIT-ing task may
                          # need became available (a channel credit given back by ``settle``,
                          # the bridge's CREDIT, ``api.wake_waiters``); a worker whose waiting
                          # tasks all came back WAIT runs them again only once it changed
NGLOB = 104

# ---- per-block private words (stride BSS)
BSS = 16
B_CUR = 0                 # sticky bucket
B_GATHERS = 1             # gathers so far (aging every AGING gathers)
B_SEQ = 2                 # per-block enqueue sequence counter
B_IDLE = 3                # consecutive idle iterations
B_LOOPS = 4
B_TICK = 5                # last tick this block saw (bump reset)
B_BUMP = 6                # bump allocator offset within this block's bump region
B_PARKED = 7
B_WGATED = 8              # 1 while this block's wait queue is closed (its last batch all WAIT)
B_WGATE = 9               # the G_WGEN value that batch was gathered at
B_WGEN_AT = 10            # G_WGEN read when the wait queue was last gathered
B_WAITS = 11              # WAIT outcomes of the current batch
B_WLOOPS = 12             # gathers while closed with G_WGEN unchanged
B_WNEXT = 13              # ... at which it opens anyway (doubling up to WGATE_LOOPS_MAX)

# ---- shared-memory words of the worker loop
SH_N = 0                  # batch size
SH_SRC = 1                # source kind
SH_POS = 2                # first claimed position
SH_Q = 3                  # source queue
SH_STOP = 4
SH_RXN = 5
SH_RXH = 6
SH_TICK = 7
SH_OK = 8                 # per-segment result counters
SH_FAIL = 9
SH_RETRY = 10
SH_YIELD = 11
SH_NAP = 12               # an idle worker's wished sleep (ns)
SH_CNT = 16               # per-type counts start here; then offsets, then cursors

SRC_NONE, SRC_LOCAL, SRC_BUCKET, SRC_OVF, SRC_WAIT = 0, 1, 2, 3, 4
# a closed wait queue opens anyway after this many of its block's gathers, doubling from the
# first to the max (tasks waiting for something no G_WGEN bump announces are not stranded)
WGATE_LOOPS_FIRST = 16
WGATE_LOOPS_MAX = 256

# ---- per-block metric row
METRIC_NAMES = (
    "dispatched", "enqueued", "to_host", "tx_full", "rx_in", "overflow_push", "yield_overflow",
    "max_yields", "aging_picks", "events_fired", "events_dropped", "alloc", "alloc_fail",
    "free", "loops", "idle_loops", "bucket_full", "errors", "retry_exhausted",
    "gather_local", "gather_bucket", "gather_overflow", "local_hwm", "bucket_hwm", "dropped",
    "trace_events", "parks", "retry_scheduled", "events_pushed", "bump_alloc", "bump_fail",
    "slab_alloc", "foreign_type", "chan_full", "bucket_mixed", "chan_emitted",
    "chan_delivered", "chan_dropped", "chan_unknown",
    # (tx_full, above, counts records that found the device -> host ring full and waited in
    # its spill area in device memory; none is dropped.) tx_held: producers held back because
    # the spill area was full too; tx_lost: records given up because the host stopped the
    # kernel while their producer was held back (the only way a host record is not delivered)
    "tx_held", "tx_lost",
    # waits_skipped: tasks put back on a wait queue unrun, behind a task of the same handler
    # that came back WAIT with the one channel it emits on refusing, or of a handler declared
    # waits_together (see codegen.source); counted in their type's "run" and "wait" too, so
    # run == enqueued still means idle
    "waits_skipped",
) + tuple(f"user{i}" for i in range(16))
for _i, _n in enumerate(METRIC_NAMES):
    globals()["M_" + _n.upper()] = _i
NGLOBAL_METRICS = len(METRIC_NAMES)
HWM_METRICS = ("local_hwm", "bucket_hwm")
PER_TYPE_NAMES = ("run", "ok", "fail", "retry", "yield", "enqueued", "wait")
PT_RUN, PT_OK, PT_FAIL, PT_RETRY, PT_YIELD, PT_ENQ, PT_WAIT = range(7)
NPT = len(PER_TYPE_NAMES)
# per device channel and per subscriber slot (after the per-type block of a metric row)
PER_CHAN_NAMES = ("emitted", "full", "dropped", "delivered", "high_watermark")
PC_EMITTED, PC_FULL, PC_DROPPED, PC_DELIVERED, PC_HWM = range(5)
NPC = len(PER_CHAN_NAMES)
PER_SUB_NAMES = ("delivered", "dropped", "high_watermark")
PS_DELIVERED, PS_DROPPED, PS_HWM = range(3)
NPS = len(PER_SUB_NAMES)
CHS = 8                        # words per channel in "chs" (one 64-byte line each)
CH_SEQ = 0                     # next channel sequence number
CSS = 8                        # words per subscriber slot in "csub"
CS_INFL = 0                    # messages in flight (waiting in a queue or running)

# ---- device handler return code (besides ggmk.task's OK, RETRY, YIELD, failures): come back
# later and resume (a full lossless channel): not counted as a yield, so waiting on a slow
# consumer never trips the max_yields circuit breaker; the task waits on its worker's wait
# queue until G_WGEN moves (kernel_src.wait_open), not re-run on every iteration
WAIT = 3

# ---- special channels on records sent to the host
CH_SYS_ERROR = 0xFFFFFF01      # the record failed: _pad holds the (int16) error code
CH_SYS_DROPPED = 0xFFFFFF02    # undeliverable (e.g. full queues): _pad holds the code

# ---- arena
NBINS = 12                     # block allocator: 64 B .. 128 KiB power-of-two bins
MIN_BLOCK = 64
GRANULE = 64                   # refcount granularity (bytes)
SLAB_SIZE = 64                 # slab objects
BIN_SLAB = NBINS               # free-list index of the slab
NFL = NBINS + 1

USER_WORDS = 1 << 16           # handler-owned device words (g.user_words)

# event queue
EV_DRAIN_MAX = 256             # due events drained per loop (SPEC §3)


#: the most ``DeviceConfig.max_retries`` can be: the retry counter (``_pad``) is a u16
MAX_RETRIES_LIMIT = 0xFFFF


def _pow2(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise BootError(f"device config: {what}={n} must be a power of two")
    return n


def check_sizes(cfg: dict) -> dict:
    """The int fields of ``DeviceConfig`` in ``cfg`` (keyword arguments) as plain ints >= 0:
    BootError naming the field and the value otherwise (a string or a float was a raw
    TypeError in the range checks; a bool is refused, not taken for 0 or 1). Returns
    {name: int}; ``max_retries`` is ``validate``'s own check."""
    ints = [f.name for f in fields(DeviceConfig)
            if f.type in (int, "int") and f.name != "max_retries" and f.name in cfg]
    return {name: check_int(f"device config: {name}", cfg[name], 0, err=BootError)
            for name in ints}


@dataclass
class DeviceConfig:
    """Sizes of the device kernel. Every field becomes a compile-time constant.

    ``blocks`` is the number of workers (one block each); ``threads`` the lanes per block
    (a multiple of 32). Capacities are in records and must be powers of two.
    """

    blocks: int = 2
    threads: int = 32
    batch: int = 256
    bucket_cap: int = 1 << 14
    local_cap: int = 1 << 12
    overflow_cap: int = 1 << 10
    event_cap: int = 1 << 16
    event_inbox_cap: int = 1 << 12
    rx_cap: int = 1 << 14
    tx_cap: int = 1 << 15
    tx_spill_cap: int = 1 << 14       # device-memory spill area behind the tx ring (records
                                      # for the host wait there while the ring is full)
    trace_cap: int = 1 << 14
    arena_bytes: int = 1 << 24
    bump_bytes_per_block: int = 1 << 16
    aging_interval: int = 64          # 0 disables the aging scan (for tests that show why)
    tick_ns: int = 1_000_000
    idle_spin: int = 64               # idle iterations before a worker starts sleeping
    idle_sleep_max_ns: int = 200_000
    publish_every: int = 16           # iterations between metric publications
    max_retries: int = 8
    rx_ingest_max: int = 1024
    host_threads: int = 1             # cpu: host threads running the blocks (block b on thread
                                      # b % host_threads); the other targets ignore it
    trace_tasks: bool = False         # compile in task slices (TASK_START/END per segment, every
                                      # type) for the Perfetto export; off: no cost at all
    trace: bool = True                # False strips tracing: no trace code is compiled in (SPEC
                                      # §7's build switch; DeviceKernel follows GGMK_TRACE=0 and
                                      # a dual system the CPU kernel's trace=False)

    def validate(self) -> "DeviceConfig":
        # (never checked before: "8" or 2.5 reached the compiler, and above 65535 the u16
        # retry counter wraps before it can pass the limit; as boot's max_retries)
        mr = self.max_retries
        if not isinstance(mr, (int, np.integer)) or isinstance(mr, (bool, np.bool_)) \
                or not 0 <= mr <= MAX_RETRIES_LIMIT:
            raise BootError(f"device config: max_retries={mr!r}: allowed an int "
                            f"0..{MAX_RETRIES_LIMIT} (retries of a task before it fails with "
                            f"RETRY_EXHAUSTED; its retry counter is a u16)")
        self.max_retries = int(mr)      # a compile-time constant: a plain int
        for name, v in check_sizes(asdict(self)).items():
            setattr(self, name, v)
        if self.blocks < 1:
            raise BootError(f"device config: blocks={self.blocks} (workers: one per block) "
                            f"must be >= 1")
        if self.threads < WARP or self.threads % WARP:
            raise BootError(f"device config: threads={self.threads} must be a multiple of {WARP}")
        for name in ("batch", "bucket_cap", "local_cap", "overflow_cap", "event_inbox_cap",
                     "rx_cap", "tx_cap", "tx_spill_cap", "trace_cap"):
            _pow2(getattr(self, name), name)
        if self.host_threads < 1 or self.host_threads > self.blocks:
            raise BootError(f"device config: host_threads={self.host_threads} must be between "
                            f"1 and blocks={self.blocks}")
        for name in ("trace_tasks", "trace"):
            if not isinstance(getattr(self, name), bool):
                raise BootError(f"device config: {name}={getattr(self, name)!r} must be True "
                                "or False")
        if self.batch > self.local_cap:
            raise BootError("device config: batch must not exceed local_cap")
        if self.arena_bytes < NBINS * (MIN_BLOCK << (NBINS - 1)) * 2:
            raise BootError(f"device config: arena_bytes={self.arena_bytes} is too small "
                            f"(need >= {NBINS * (MIN_BLOCK << (NBINS - 1)) * 2})")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """Where everything lives: derived from a config and the number of handler types."""

    cfg: DeviceConfig
    ntypes: int
    smem_words: int                    # handler shared memory, int64 words per block
    nchan: int = 0                     # device channels
    nsubs: int = 0                     # channel subscriber slots, all channels
    queues: list = field(default_factory=list)   # (name, base, cap)
    qtot: int = 0
    bins: list = field(default_factory=list)     # (size, arena offset, count, fl base, fl cap)
    fltot: int = 0
    bump_base: int = 0

    @property
    def nq(self) -> int:
        return len(self.queues)

    def qindex(self, name: str) -> int:
        for i, (n, _, _) in enumerate(self.queues):
            if n == name:
                return i
        raise KeyError(name)

    @property
    def sh_words(self) -> int:
        return SH_CNT + 3 * (self.ntypes + 1) + 8

    @property
    def nmet(self) -> int:
        """Words per block metric row, rounded up to a 64-byte line: blocks on different host
        threads (cpu) or SMs never write the same line."""
        n = NGLOBAL_METRICS + self.ntypes * NPT + self.nchan * NPC + self.nsubs * NPS
        return (n + 7) // 8 * 8

    @property
    def scratch_words(self) -> int:
        """Per-block scratch (shared words + handler shared memory), whole 64-byte lines."""
        return (self.sh_words + max(self.smem_words, 1) + 7) // 8 * 8

    @property
    def mch0(self) -> int:
        """Metric-row index of the first per-channel counter."""
        return NGLOBAL_METRICS + self.ntypes * NPT

    @property
    def msub0(self) -> int:
        return self.mch0 + self.nchan * NPC

    def constants(self) -> dict:
        """The compile-time constants the kernel source sees (besides the fixed ones above)."""
        c = self.cfg
        return dict(
            NB=c.blocks, NT=c.threads, NWARPS=c.threads // WARP, BATCH=c.batch,
            NTYPES=self.ntypes, NQ=self.nq, Q_LOCAL0=self.ntypes, Q_OVF=self.ntypes + c.blocks,
            Q_EVIN=self.ntypes + c.blocks + 1, Q_WAIT0=self.ntypes + c.blocks + 2,
            WQ_CAP=c.local_cap, LQ_CAP=c.local_cap,
            LQ_SPILL=c.local_cap // 2, BQ_CAP=c.bucket_cap, BQ_PRIO_RESERVE=c.bucket_cap // 10,
            OVF_CAP=c.overflow_cap, EV_CAP=c.event_cap, EVIN_CAP=c.event_inbox_cap,
            RX_CAP=c.rx_cap, TX_CAP=c.tx_cap, TXSP_CAP=c.tx_spill_cap, TR_CAP=c.trace_cap,
            ARENA_BYTES=c.arena_bytes, BUMP_BASE=self.bump_base,
            BUMP_PER_BLOCK=c.bump_bytes_per_block,
            TICK_NS=c.tick_ns, IDLE_SPIN=c.idle_spin, IDLE_SLEEP_MAX=c.idle_sleep_max_ns,
            PUBLISH_EVERY=c.publish_every, MAX_RETRIES=c.max_retries,
            RX_INGEST_MAX=min(c.rx_ingest_max, c.batch * 4),
            SHW=self.sh_words, SMEM_WORDS=max(self.smem_words, 1), NMET=self.nmet,
            SCRATCH_PER_BLOCK=self.scratch_words,
            NCHAN=self.nchan, NCSUB=self.nsubs, MCH0=self.mch0, MSUB0=self.msub0,
        ) | {"O_" + name.upper(): o for name, (kind, o, n) in offsets(self).items()
             if name != "_total"}

    def sizes(self) -> dict:
        """Element count of every state array."""
        c = self.cfg
        return dict(
            q=self.qtot * W, qseq=self.qtot, qdue=self.qtot, qc=self.nq * QCS, qinfo=self.nq * 2,
            bat=c.blocks * 2 * c.batch * W, met=c.blocks * self.nmet, bs=c.blocks * BSS,
            glob=NGLOB, bstamp=max(self.ntypes, 1), evk=c.event_cap, evr=c.event_cap * W,
            aref=c.arena_bytes // GRANULE, fl=self.fltot,
            flseq=self.fltot, flc=NFL * QCS + NFL * 2,
            scratch=c.blocks * self.scratch_words, user=USER_WORDS,
            ctl=NCTL, rx=c.rx_cap * W, tx=c.tx_cap * W, txseq=c.tx_cap, hb=c.blocks * 8,
            mpub=c.blocks * self.nmet, tr=c.trace_cap * TW, trseq=c.trace_cap,
            chs=max(self.nchan, 1) * CHS, csub=max(self.nsubs, 1) * CSS,
            cpub=max(self.nsubs, 1), chpub=max(self.nchan, 1),
            txsp=c.tx_spill_cap * W, txspseq=c.tx_spill_cap, tlv=self.ntypes + 1,
        )


def plan(cfg: DeviceConfig, ntypes: int, smem_words: int, nchan: int = 0,
         nsubs: int = 0) -> Plan:
    cfg.validate()
    p = Plan(cfg=cfg, ntypes=ntypes, smem_words=smem_words, nchan=nchan, nsubs=nsubs)
    base = 0
    for t in range(ntypes):
        p.queues.append((f"bucket{t}", base, cfg.bucket_cap))
        base += cfg.bucket_cap
    for b in range(cfg.blocks):
        p.queues.append((f"local{b}", base, cfg.local_cap))
        base += cfg.local_cap
    p.queues.append(("overflow", base, cfg.overflow_cap))
    base += cfg.overflow_cap
    p.queues.append(("evinbox", base, cfg.event_inbox_cap))
    base += cfg.event_inbox_cap
    for b in range(cfg.blocks):
        # tasks that returned WAIT: looked at only when G_WGEN moved (see kernel_src.gather)
        p.queues.append((f"wait{b}", base, cfg.local_cap))
        base += cfg.local_cap
    p.qtot = base
    # arena: bump regions first, then one equal share per bin, then the slab
    bump = cfg.bump_bytes_per_block * cfg.blocks
    p.bump_base = 0
    rest = cfg.arena_bytes - bump
    share = rest // (NBINS + 1)
    off = bump
    flbase = 0
    for k in range(NBINS + 1):
        size = SLAB_SIZE if k == BIN_SLAB else MIN_BLOCK << k
        count = share // size
        cap = 1
        while cap < max(count, 1):
            cap <<= 1
        p.bins.append((size, off, count, flbase, cap))
        off += count * size
        flbase += cap
    p.fltot = flbase
    return p


def offsets(p: Plan) -> dict:
    """{region: (home, offset, size)} with regions 64-byte aligned."""
    sizes = p.sizes()
    out, pos = {}, {"dev": 0, "map": 0}
    for name, kind in REGIONS:
        out[name] = (kind, pos[kind], sizes[name])
        pos[kind] += (sizes[name] + 7) // 8 * 8
    out["_total"] = (None, pos["dev"], pos["map"])
    return out


def images(p: Plan, init=None) -> dict:
    """Initial contents of every region (host NumPy arrays); ``init(p, images)`` (the target's
    ``init_images``) sets the target's own words."""
    sizes = p.sizes()
    im = {name: bigbuf.zeros(sizes[name], np.int64) for name, _ in REGIONS}
    for _, base, cap in p.queues:
        im["qseq"][base:base + cap] = np.arange(cap, dtype=np.int64)
    for qi, (_, base, cap) in enumerate(p.queues):
        im["qinfo"][qi * 2] = base
        im["qinfo"][qi * 2 + 1] = cap
    im["glob"][G_AGING] = p.cfg.aging_interval
    flc = im["flc"]
    for k, (size, off, count, fb, cap) in enumerate(p.bins):
        im["fl"][fb:fb + count] = off + np.arange(count, dtype=np.int64) * size
        im["flseq"][fb:fb + cap] = np.arange(cap, dtype=np.int64)
        im["flseq"][fb:fb + count] = np.arange(count, dtype=np.int64) + 1
        flc[k * QCS + QC_HEAD] = 0
        flc[k * QCS + QC_TAIL] = count
        flc[NFL * QCS + k * 2] = fb
        flc[NFL * QCS + k * 2 + 1] = cap
    if init is not None:
        init(p, im)
    return im


def allocate(p: Plan, dev_alloc, map_alloc, arena_alloc, init=None) -> tuple:
    """(dev, map, arena) arrays made by the target's allocators from initial host images
    (``init``: see :func:`images`)."""
    offs = offsets(p)
    im = images(p, init)
    _, ndev, nmap = offs["_total"]
    dev = bigbuf.zeros(ndev, np.int64)     # MiBs: freed, they go back to the OS at once
    mp = bigbuf.zeros(nmap, np.int64)
    for name, kind in REGIONS:
        _, o, n = offs[name]
        (dev if kind == "dev" else mp)[o:o + n] = im[name]
    return dev_alloc(dev), map_alloc(mp), arena_alloc(p.cfg.arena_bytes)


def region(p: Plan, arrays_host: tuple, name: str) -> np.ndarray:
    """A host view of one region (``arrays_host`` = host views of (dev, map, arena))."""
    kind, o, n = offsets(p)[name]
    return arrays_host[0 if kind == "dev" else 1][o:o + n]
