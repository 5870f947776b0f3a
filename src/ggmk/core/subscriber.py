"""A channel's subscriber (:class:`Subscriber`): its ring, its handler type or the host that
pulls it, its replay position and, for an ordered handler, its one batch in flight. Created by
:meth:`ggmk.core.channel.Channel.subscribe`."""
from __future__ import annotations

import threading
import traceback
from typing import TYPE_CHECKING

import numpy as np

from ggmk.core.channel_spec import validate_hook, validate_window
from ggmk.core.ring import Ring, WakingRing
from ggmk.errors import ChannelError
from ggmk.task import CHAN_UNKNOWN


if TYPE_CHECKING:
    from ggmk.core.channel import Channel


class Subscriber:
    """One subscriber of a channel: its ring, its handler type (0 = pulled by the host with
    :meth:`take`), and its position for replay (``next``: the next sequence its ring needs)."""

    __slots__ = ("chan", "type_id", "ring", "name", "next", "behind", "degraded", "acked",
                 "delivered", "dropped", "overflows", "drain_lock", "window", "ordered", "busy",
                 "b_lo", "b_hi", "busy_lock", "after", "awaited")

    def __init__(self, chan: "Channel", type_id: int, name: str, window: int,
                 ordered: bool = False):
        self.chan = chan
        self.type_id = type_id
        self.name = name
        # a host-side subscriber's ring wakes its reader (wait(), notify hooks) on each push
        self.ring = (Ring if type_id else WakingRing)(chan.capacity, name=f"{chan.name}->{name}")
        if not type_id:
            self.ring.hook_failed = self.hook_failed
        self.next = chan.committed + 1
        self.behind = False
        self.degraded = False
        self.acked = chan.committed
        self.delivered = 0
        self.dropped = 0
        self.overflows = 0
        self.drain_lock = threading.Lock()
        self.window = validate_window(name, window)
        # ordered delivery: at most one delivered batch in the scheduler at a time; ``busy``
        # counts its messages not finished yet, ``b_lo``..``b_hi`` its channel seqs
        self.ordered = ordered
        self.busy = 0
        self.b_lo = self.b_hi = 0
        self.busy_lock = threading.Lock()
        self.after: tuple = ()            # host-side: called after an emit, outside the lock
        # host-side: a callable, true while a reader waits for messages of this ring (an sdk
        # client with replies outstanding): halt lets it take them before the close drops them
        self.awaited = None

    @property
    def pull(self) -> bool:
        return self.type_id == 0

    def take(self, max_n: int = 1 << 30) -> np.ndarray:
        """Pull up to ``max_n`` messages (host-side subscriber); acknowledges them."""
        return self.chan._take(self, max_n)

    def wait(self, timeout: float | None = None) -> bool:
        """Host-side subscriber: block until :meth:`take` has something (True) or ``timeout``
        seconds passed (False). A real wake-up on delivery, not a poll::

            sub = system.channel("results").subscribe()
            while sub.wait(1.0):
                handle(sub.take())
        """
        r = self.ring
        if self.type_id:
            raise ChannelError(f"channel {self.chan.name!r}: subscriber {self.name!r} is "
                               "delivered to a handler; only a host-side subscriber waits",
                               CHAN_UNKNOWN)
        if r.tail != r.head or self.behind:
            return True
        r.ready.clear()
        if r.tail != r.head or self.behind:       # a push between the check and the clear
            return True
        return r.ready.wait(timeout) or r.tail != r.head or self.behind

    def add_notify(self, fn) -> None:
        """Host-side subscriber: call ``fn()`` after each delivery into its ring (under the
        ring's lock: keep it as cheap as ``Event.set``). One that raises is reported
        (``hook_failed``); the delivery stands."""
        if self.type_id:
            raise ChannelError(f"channel {self.chan.name!r}: subscriber {self.name!r} is "
                               "delivered to a handler; notify hooks are for host-side "
                               "subscribers", CHAN_UNKNOWN)
        validate_hook(self.chan.name, "notify", fn, "called with no arguments after each "
                      "delivery")
        self.ring.hooks = self.ring.hooks + (fn,)

    def add_after(self, fn) -> None:
        """Host-side subscriber: call ``fn()`` on the emitting thread once an emit (or a
        handler's emitter commit) has delivered and let go of the channel's lock. Why: a
        notify hook runs under the lock, so it can only wake a reader; this one may do the
        reader's work itself (the bridge sends the message to the GPU kernel from the
        publisher's thread instead of waking its pump: one thread wake-up less)."""
        if self.type_id:
            raise ChannelError(f"channel {self.chan.name!r}: subscriber {self.name!r} is "
                               "delivered to a handler; after-emit hooks are for host-side "
                               "subscribers", CHAN_UNKNOWN)
        validate_hook(self.chan.name, "after", fn, "called with no arguments after an emit")
        self.after = self.after + (fn,)

    def hook_failed(self, fn, exc: Exception) -> None:
        """A notify or after-emit hook raised: the message it was called for was accepted all
        the same (a publish that raised then looked failed, and a retry duplicated it), so
        the error is reported as a handler's is (``system.exceptions``) instead of raised."""
        self.chan.kernel.note_exception((self.chan.name, f"hook {fn!r} of subscriber "
                                         f"{self.name!r}", repr(exc),
                                         "".join(traceback.format_exception(exc))))

    def stats(self) -> dict:
        r = self.ring
        return {"name": self.name, "type": self.type_id, "depth": len(r),
                "high_watermark": r.high_watermark, "delivered": self.delivered,
                "dropped": self.dropped, "acked": self.acked, "behind": self.behind,
                "degraded": self.degraded, "replay_overflows": self.overflows,
                "ordered": self.ordered, "in_flight": self.busy if self.ordered else None}
