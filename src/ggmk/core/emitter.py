"""The emitter: a worker's per-channel emit buffer for per-message emits, what a handler gets
from ``send = ctx.emitter(channel)`` (and what ``ctx.emit(channel, ...)`` uses once it has
seen the channel).

Credit is taken from the channel under its lock, then per-message emits append to plain lists
with no lock; the handler batch's end commits them (one array, one stamp, one push per
subscriber). Backpressure stays synchronous: a message is accepted only against credit, i.e.
room already reserved in every ring (the channel's ``granted`` counts the credit out, and its
admission subtracts it).

Everything staged shares one header (``hdr``: flags, tenant, parent seq); ``bind`` commits
before the header changes. ``send`` is a closure over the lists (no attribute lookups: ~30 ns
a message against ~100 for a method): it stages while ``len(m0) < lim[0]``, the credit granted,
and meta1 only when it is not 0 (sparse: most messages carry one word).

Example::

    @prod.handler("TICK")
    def tick(ctx):
        send = ctx.emitter(out)                 # out: a channel declaration or name
        for i in range(ctx.task.meta0):
            if send(i) == ggmk.CHAN_FULL:       # no credit and no room: back off
                return ggmk.RETRY
        return ggmk.OK
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ggmk.task import CHAN_CLOSED, CHAN_FULL, FLAG_CHANNEL_MSG, PRIO_MASK, make, word

if TYPE_CHECKING:
    from ggmk.core.channel import Channel

STAGE_CREDIT = 1024                # per-worker emit credit taken from a channel at once


class Emitter:
    """One worker's emit buffer for one channel (see the module docstring). The context makes
    it (one per channel target and worker), ``bind``s it to each parent's header, calls
    ``send`` per message and ``commit`` at the end of the handler batch (every emitter that
    took credit is on ``ctx._emitters_active``)."""

    __slots__ = ("chan", "hdr", "grant", "m0", "m1", "lim", "active", "ctx", "send")

    def __init__(self, chan: "Channel"):
        self.chan = chan
        self.hdr = -1
        self.grant = 0
        self.m0: list = []                # meta0 of each staged message
        self.m1: list = []                # (index, meta1) of those whose meta1 != 0
        self.lim = [0]                    # messages the current grant allows
        self.active = False
        self.ctx = None
        self.send = self._sender()

    def _sender(self):
        m0, m1, lim = self.m0, self.m1, self.lim
        add0, add1 = m0.append, m1.append
        slow = self.slow

        def send(meta0, meta1=0) -> int:
            """Per-message emit with the header bound by ``ctx.emitter`` (the leanest path):
            returns OK, CHAN_FULL or CHAN_CLOSED."""
            # the word is checked here, inside the handler's guard (at commit it would
            # fail outside it); anything but a plain int in range takes the slow path
            if len(m0) < lim[0] and meta0.__class__ is int and not meta0 >> 64:
                if meta1:
                    add1((len(m0), word("meta1", meta1)))
                add0(meta0)
                return 0
            return slow(meta0, meta1)
        return send

    def bind(self, ctx, hdr: int) -> None:
        """Stage under header ``hdr`` from now on (what was staged under another is committed)."""
        self.ctx = ctx
        if hdr != self.hdr:
            if self.m0 or self.grant:
                self.commit()
            self.hdr = hdr

    def slow(self, meta0, meta1=0) -> int:
        """Credit ran out (or none yet): commit, take new credit, stage one. Also where a
        word that is not a plain int comes (checked: EmitError names it; a NumPy integer is
        staged while credit lasts)."""
        meta0 = word("meta0", meta0)
        meta1 = word("meta1", meta1)
        if len(self.m0) < self.lim[0]:
            if meta1:
                self.m1.append((len(self.m0), meta1))
            self.m0.append(meta0)
            return 0
        ch = self.chan
        hdr = self.hdr
        self.commit()
        prio0 = (hdr & PRIO_MASK) == 0
        for attempt in (0, 1):
            with ch.lock:
                if ch.closed:
                    return CHAN_CLOSED
                if ch.lossy or ch.subs:
                    room = ch._room(True)
                    if not prio0 and not ch.lossy:
                        room -= ch.reserve
                else:
                    # lossless, no subscriber yet: one may join before the commit and gets
                    # at most a ring's worth, so grant no more than a ring holds
                    room = ch.capacity - ch.reserve - ch.granted - ch.held_n
                g = min(STAGE_CREDIT, room)
                if g > 0:
                    ch.granted += g
                    self.grant = self.lim[0] = g
                    break
            if attempt == 0:
                ch.reg._drain_channel(ch)
        else:
            ch._count_full(1, None)
            return CHAN_FULL
        if not self.active:
            self.active = True
            self.ctx._emitters_active.append(self)
        self.m0.append(meta0)
        if meta1:
            self.m1.append((0, meta1))
        return 0

    def commit(self) -> None:
        m0, m1 = self.m0, self.m1
        n = len(m0)
        ch = self.chan
        if n:
            hdr = self.hdr
            meta1 = np.zeros(n, dtype=np.uint64)
            if m1:
                idx, val = zip(*m1)
                meta1[list(idx)] = val
            # seq: the parent's (determinism order), restamped by the channel
            recs = make(n, type=ch.type_id, flags=(hdr & 0xFFFF) | FLAG_CHANNEL_MSG,
                        tenant=(hdr >> 16) & 0xFFFF, channel=ch.id, seq=hdr >> 32,
                        meta0=np.array(m0, dtype=np.uint64), meta1=meta1)
            m0.clear()                    # in place: the send closure holds these lists
            m1.clear()
        with ch.lock:
            ch.granted -= self.grant
            self.grant = self.lim[0] = 0
            if n:
                # staged under credit before a suspend(): accepted, so delivered; only a
                # channel closed for good drops what was staged
                if ch.closed and not ch.suspended:
                    recs["channel"] = ch.id
                    ch.emitted += n       # send() said OK: emitted, then dropped
                    for sub in ch.subs or [None]:
                        ch._drop(recs, CHAN_CLOSED, sub, release=False)
                else:
                    ch._stamp_commit(recs, built=True)
        if n and not ch.det:
            ch._drain_channel()


__all__ = ["Emitter", "STAGE_CREDIT"]
