"""The bridge's own device handlers: the GPU kernel's half of every bridge channel.

They are ordinary device handlers (``ggmk.device.Module`` "bridge"), generated per bridge
channel with its constants baked in (so the kernel cache key is stable run after run), and
compiled into the one persistent kernel with the user's modules. Their type ids live in a
range no user type can take (``BASE`` = 0x7B000000; user types are 1..0xFFFF).

CPU -> GPU (a channel produced on the CPU kernel, consumed on the GPU kernel):
  the device side of the channel is a *proxy* device channel of the same name, type, mode and
  guarantee, declared by the "bridge" module, so GPU consumers subscribe to it exactly as to
  any device channel. Each message crosses as one record of type ``RX(k)`` (the ingress task:
  the message's words, priority and tenant, its payload already copied into the device arena);
  the ingress handler emits it on the proxy channel. Lossless: a full subscriber makes it
  return WAIT (come back later, not a yield), holding the bridge's credit: backpressure
  reaches the CPU producer as CHAN_FULL. Lossy: the device channel drops the copy to
  sys.dropped (it comes back to the host and lands on the CPU kernel's sys.dropped).

GPU -> CPU (produced on the GPU kernel, consumed on the CPU kernel):
  the "bridge" module subscribes an egress handler ``TX(k)`` to the device channel. It takes
  one credit (lossless: the user words ``SENT(k)`` < ``LIMIT(k)`` + window; the host grants
  more with ``CREDIT`` records as the CPU side accepts messages), keeps the payload alive
  (``retain``; the host's ``RELEASE`` record gives that reference back after copying the
  bytes) and forwards the message to the host as a record of type ``MARK(k)`` whose
  ``channel`` field carries the device channel sequence number (the host restores channel
  order from it). No credit: WAIT, so the device channel fills and the GPU producer gets
  CHAN_FULL; the waiting egress tasks run again when a ``CREDIT`` record arrives (it calls
  ``wake_waiters``), not on every worker iteration.

Service handlers: ``ALLOC`` (meta0 bytes, meta1 tag: allocates a block in the device arena and
answers ``ALLOC_REPLY`` (address or 0 = ALLOC_FAIL, tag)), ``RELEASE`` (meta0/meta1: device
addresses whose bridge reference is dropped), ``CREDIT`` (meta0 user word, meta1 delta).

User words ``USER_WORDS - 2*MAX_BRIDGE_CHANNELS`` .. ``USER_WORDS - 1`` are the bridge's.
"""
from __future__ import annotations

import ggmk.device as gd
from ggmk.device import api as _api
from ggmk.device import layout

BASE = 0x7B000000
ALLOC = BASE + 1
ALLOC_REPLY = BASE + 2
RELEASE = BASE + 3
CREDIT = BASE + 4
MAX_BRIDGE_CHANNELS = 1024
DEVICE_MAX_PAYLOAD = layout.MIN_BLOCK << (layout.NBINS - 1)   # the largest device block


def RX(k: int) -> int:
    return BASE + 0x1000 + k


def TX(k: int) -> int:
    return BASE + 0x2000 + k


def MARK(k: int) -> int:
    return BASE + 0x3000 + k


def is_bridge_type(t) -> bool:
    return BASE <= int(t) < BASE + 0x4000


def mark_index(t: int) -> int:
    return int(t) - (BASE + 0x3000)


def tx_index(t: int) -> int:
    return int(t) - (BASE + 0x2000)


def rx_index(t: int) -> int:
    return int(t) - (BASE + 0x1000)


def limit_word(k: int) -> int:
    return layout.USER_WORDS - 1 - 2 * k


def sent_word(k: int) -> int:
    return layout.USER_WORDS - 2 - 2 * k


_INGRESS = '''
def {name}(ctx, task):
    r = g.emit_chan_full(ctx, CH, g.meta0(task), g.meta1(task), g.payload_ptr(task),
                         g.payload_len(task), -1)
    if r == CHAN_FULL:
        return WAIT
    return r
'''

_EGRESS_CREDIT = '''
def {name}(ctx, task):
    old = g.user_add(ctx, SENT_W, 1)
    if old >= g.user_get(ctx, LIMIT_W) + WINDOW:
        g.user_add(ctx, SENT_W, -1)
        return WAIT
    ptr = g.payload_ptr(task)
    if ptr != 0:
        g.retain(ctx, ptr, 1)
    return g.emit_full(ctx, MARK_T, g.meta0(task), g.meta1(task), ptr, g.payload_len(task), -1,
                       g.seq(task))
'''

_EGRESS_FREE = '''
def {name}(ctx, task):
    ptr = g.payload_ptr(task)
    if ptr != 0:
        g.retain(ctx, ptr, 1)
    return g.emit_full(ctx, MARK_T, g.meta0(task), g.meta1(task), ptr, g.payload_len(task), -1,
                       g.seq(task))
'''

_ALLOC = '''
def bridge_alloc(ctx, task):
    p = g.alloc(ctx, g.meta0(task))
    g.emit_host(ctx, ALLOC_REPLY_T, p, g.meta1(task))
    return 0
'''

_RELEASE = '''
def bridge_release(ctx, task):
    if g.meta0(task) != 0:
        g.release(ctx, g.meta0(task))
    if g.meta1(task) != 0:
        g.release(ctx, g.meta1(task))
    return 0
'''

_CREDIT = '''
def bridge_credit(ctx, task):
    g.user_add(ctx, g.meta0(task), g.meta1(task))
    g.wake_waiters(ctx)          # egress tasks waiting for credit run again
    return 0
'''


def _make(src: str, name: str, **consts):
    glb = {"__name__": __name__, "g": _api, "WAIT": layout.WAIT, "CHAN_FULL": -100}
    glb.update(consts)
    exec(compile(src.format(name=name), f"<ggmk.bridge {name}>", "exec"), glb)
    return glb[name]


def build_module(inbound: list, outbound: list) -> "gd.Module":
    """The "bridge" device module. ``inbound``: [(k, name, type id, mode, guarantee, capacity)]
    for CPU -> GPU channels (a proxy channel + an ingress handler each); ``outbound``:
    [(k, name, lossless, credit window)] for GPU -> CPU channels (an egress subscriber each)."""
    m = gd.Module("bridge", version="0.1.0", trace_level="warn")
    for k, name, tid, mode, guarantee, capacity in inbound:
        ch = m.channel(name, message=int(tid), mode=mode, guarantee=guarantee,
                       capacity=int(capacity))
        fn = _make(_INGRESS, f"bridge_rx_{k}", CH=ch)
        m.handler(RX(k), name=f"rx_{k}")(fn)
    for k, name, lossless, window in outbound:
        if lossless:
            fn = _make(_EGRESS_CREDIT, f"bridge_tx_{k}", SENT_W=sent_word(k),
                       LIMIT_W=limit_word(k), WINDOW=int(window), MARK_T=MARK(k))
        else:
            fn = _make(_EGRESS_FREE, f"bridge_tx_{k}", MARK_T=MARK(k))
        # every egress task of a lossless channel waits for the same credits
        m.handler(TX(k), name=f"tx_{k}", consumes=name, waits_together=lossless)(fn)
    m.handler(ALLOC, name="alloc")(_make(_ALLOC, "bridge_alloc", ALLOC_REPLY_T=ALLOC_REPLY))
    m.handler(RELEASE, name="release")(_make(_RELEASE, "bridge_release"))
    m.handler(CREDIT, name="credit")(_make(_CREDIT, "bridge_credit"))
    if outbound:
        top = max(k for k, *_ in outbound)
        m.user_words = (min(sent_word(top), limit_word(top)), layout.USER_WORDS,
                        f"the credit words of GPU -> CPU bridge channels 0..{top}")
    return m
