"""Channels (SPEC §5): named, typed pipes between modules, with nothing lost silently.

This module gathers the channel names other code imports; each concept lives in its own module:

* ``core/channel.py``: :class:`Channel`, the producer side: subscribe, emit, admission
  (lossless backpressure, the priority-0 reserve, lossy drop-slow), close, metrics. Its
  docstring is the overview.
* ``core/subscriber.py``: :class:`Subscriber` (its ring, handler type, replay position).
* ``core/delivery.py``: delivery into the subscribers' rings and draining them into the
  scheduler (ordered delivery): a mixin of ``Channel``.
* ``core/channel_spec.py``: the modes (p2p, fan-out), guarantees (lossless, lossy) and limits
  (``MAX_FANOUT``, capacities, the reserve) a channel is declared with, and their validation;
  shared with the device kernel's declarations.
* ``core/replay.py``: the replay log of a lossless channel (``replay=N``): behind subscribers,
  eviction, degrading a subscriber far behind the others.
* ``core/channel_registry.py``: :class:`Channels` (``system.channels``): names to ids, the
  system channels (:class:`SysChannel` for ``sys.error`` / ``sys.dropped``), dead letters,
  draining every channel, the tick boundary.
* ``core/emitter.py``: :class:`~ggmk.core.emitter.Emitter`, a worker's per-channel emit buffer
  behind ``ctx.emitter`` (credit, then lock-free per-message sends).

The error codes (CHAN_*, including ``CHAN_NO_SUBSCRIBER``) live in ``ggmk.task`` with the others.
"""
from __future__ import annotations

from ggmk.core.channel import Channel, Subscriber
from ggmk.core.channel_registry import SYS_CHANNELS, Channels, SysChannel
from ggmk.core.channel_spec import (DEFAULT_CAPACITY, GUARANTEES, MAX_FANOUT, MIN_CAPACITY, MODES,
                                    RESERVE_FRACTION, max_subscribers, priority_reserve,
                                    ring_capacity, validate_channel_spec)
from ggmk.core.emitter import STAGE_CREDIT, Emitter
from ggmk.core.replay import ReplayLog
from ggmk.task import CHAN_NO_SUBSCRIBER, TASK_DTYPE

__all__ = ["Channel", "Channels", "Subscriber", "SysChannel", "Emitter", "ReplayLog",
           "CHAN_NO_SUBSCRIBER", "MAX_FANOUT", "MODES", "GUARANTEES", "DEFAULT_CAPACITY",
           "MIN_CAPACITY", "RESERVE_FRACTION", "STAGE_CREDIT", "SYS_CHANNELS", "TASK_DTYPE",
           "max_subscribers", "priority_reserve", "ring_capacity", "validate_channel_spec"]
