"""Channel specs (SPEC §5): what a channel is declared with, and its validation. The one home
of the channel modes, guarantees and limits, shared by the CPU kernel (``core/channel.py``,
``core/channel_registry.py``) and the device kernel's declarations (``device/module.py`` and
``device/codegen.py`` import them through ``ggmk.core.chan``).

Modes and guarantees
--------------------
* ``p2p``: one subscriber (a second gets CHAN_ALREADY_BOUND), FIFO.
* ``fanout``: up to ``MAX_FANOUT`` (32) subscribers; each gets its own copy of the 48-byte
  header, the payload is shared read-only: its reference count becomes the number of copies
  handed out, and each subscriber's handler return (or a drop) releases one.
* ``lossless``: emit is refused (CHAN_FULL, or a short count for batch emit) unless every
  subscriber's ring has room, so an accepted message is always delivered. The last 10%
  (``RESERVE_FRACTION``) of each ring is kept for priority-0 messages. With ``replay=N`` the
  channel also keeps up to N messages in a replay log (see ``core/replay.py``): a subscriber
  whose ring is full falls *behind* and is fed from the log instead of blocking the producer.
* ``lossy`` (drop-slow): emit always succeeds; a full subscriber's copy is dropped: traced
  (CHAN_DROP), put on ``sys.dropped`` with CHAN_FULL, its payload reference released.

A deterministic channel (one carrying a deterministic type, in determinism mode) holds its
messages until the tick boundary, so it has no replay log.

An invalid spec raises :class:`ggmk.errors.ChannelError` with ``code`` CHAN_UNKNOWN (the
device's ``ChannelBootError`` is a subclass of it).
"""
from __future__ import annotations

import numpy as np

from ggmk.errors import ChannelError
from ggmk.task import CHAN_UNKNOWN
from ggmk.typereg.decls import CHANNEL_NAME_RE

MODES = ("p2p", "fanout")
GUARANTEES = ("lossy", "lossless")
MAX_FANOUT = 32                     # subscribers of a fan-out channel (p2p: 1)
DEFAULT_CAPACITY = 4096             # messages per subscriber ring
MIN_CAPACITY = 8                    # a smaller capacity is raised to this
RESERVE_FRACTION = 10               # last 1/10 of a ring: priority 0 only


def max_subscribers(mode: str) -> int:
    """How many subscribers a channel of ``mode`` takes: 1 for p2p, MAX_FANOUT for fan-out."""
    return 1 if mode == "p2p" else MAX_FANOUT


def ring_capacity(capacity) -> int:
    """A subscriber ring's capacity for a requested ``capacity``: at least MIN_CAPACITY,
    rounded up to a power of two."""
    return 1 << (max(int(capacity), MIN_CAPACITY) - 1).bit_length()


def priority_reserve(capacity: int) -> int:
    """Ring slots kept for priority-0 messages: the last RESERVE_FRACTION-th (at least 1)."""
    return max(1, capacity // RESERVE_FRACTION)


def validate_channel_name(name) -> None:
    """A channel name is ``namespace.verb`` (lowercase dotted, e.g. ``counter.in``: SPEC §5,
    the rule declarations are checked by); ChannelError(CHAN_UNKNOWN) otherwise. Channels
    opened at run time follow it too (``open("c")`` used to be accepted there)."""
    if not isinstance(name, str) or not CHANNEL_NAME_RE.fullmatch(name):
        raise ChannelError(f"invalid channel name {name!r}: channel names are namespace.verb, "
                           f"lowercase dotted (e.g. counter.in)", CHAN_UNKNOWN)


def validate_channel_spec(name, mode, guarantee, *, replay=0,
                          deterministic: bool = False) -> None:
    """Check a channel's declaration: its name, ``mode`` (one of MODES), ``guarantee`` (one
    of GUARANTEES), and that a deterministic channel asks for no replay log. Raises
    ChannelError(CHAN_UNKNOWN) naming the channel and the bad value."""
    validate_channel_name(name)
    if deterministic and replay:
        raise ChannelError(f"channel {name!r}: a deterministic channel has no replay log",
                           CHAN_UNKNOWN)
    if mode not in MODES:
        raise ChannelError(f"channel {name!r}: mode must be 'p2p' or 'fanout', got {mode!r}",
                           CHAN_UNKNOWN)
    if guarantee not in GUARANTEES:
        raise ChannelError(f"channel {name!r}: guarantee must be 'lossy' or 'lossless', got "
                           f"{guarantee!r}", CHAN_UNKNOWN)


__all__ = ["validate_window", "validate_capacity", "validate_replay", "validate_ordered",
           "validate_hook", "MAX_CAPACITY", "MODES",
           "GUARANTEES", "MAX_FANOUT", "DEFAULT_CAPACITY", "MIN_CAPACITY", "RESERVE_FRACTION",
           "max_subscribers", "ring_capacity", "priority_reserve", "validate_channel_name",
           "validate_channel_spec"]


MAX_CAPACITY = 1 << 30               # messages a ring or a replay log may be asked to hold


def validate_capacity(name, capacity) -> int:
    """``capacity=`` (open / declaration): an int 1..MAX_CAPACITY (rounded up to a power of
    two, at least MIN_CAPACITY: ``ring_capacity``); ChannelError(CHAN_UNKNOWN) naming the
    channel and the value otherwise (0, -5, 2.7 and True were taken as 8)."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
            or not 1 <= capacity <= MAX_CAPACITY:
        raise ChannelError(f"channel {name!r}: capacity={capacity!r} is not allowed: an int "
                           f"1..{MAX_CAPACITY} (messages per subscriber ring; rounded up to a "
                           f"power of two, at least {MIN_CAPACITY})", CHAN_UNKNOWN)
    return int(capacity)


def validate_replay(name, replay, guarantee) -> int:
    """``replay=``: an int 0..MAX_CAPACITY (messages kept for subscribers that fall behind;
    0: no log), and only on a lossless channel (a lossy one drops what a subscriber cannot
    take: a log would never be read, and was ignored without a word)."""
    if isinstance(replay, bool) or not isinstance(replay, (int, np.integer)) \
            or not 0 <= replay <= MAX_CAPACITY:
        raise ChannelError(f"channel {name!r}: replay={replay!r} is not allowed: an int "
                           f"0..{MAX_CAPACITY} (messages kept for a subscriber that falls "
                           f"behind; 0: none)", CHAN_UNKNOWN)
    if replay and guarantee == "lossy":
        raise ChannelError(f"channel {name!r}: replay={replay} on a lossy channel: a replay "
                           f"log is for lossless channels (a lossy one drops what a full "
                           f"subscriber cannot take)", CHAN_UNKNOWN)
    return int(replay)


def validate_window(name, window):
    """``window=`` (open / subscribe): None (the default) or a positive int; returned as an
    int (or None). ChannelError(CHAN_UNKNOWN) naming the channel and the value otherwise."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ChannelError(f"channel {name!r}: window={window!r} is not allowed: a positive "
                           "int (messages of one subscriber in the scheduler at once) or None "
                           "(the default)", CHAN_UNKNOWN)
    return int(window)


def validate_ordered(name, ordered):
    """``ordered=`` (open / subscribe / a declaration): None (the default), True or False;
    returned as a bool (or None). ChannelError(CHAN_UNKNOWN) naming the channel and the value
    otherwise (``ordered='no'`` turned ordering on)."""
    if ordered is None or isinstance(ordered, (bool, np.bool_)):
        return None if ordered is None else bool(ordered)
    raise ChannelError(f"channel {name!r}: ordered={ordered!r} is not allowed: True, False or "
                       f"None (the default)", CHAN_UNKNOWN)


def validate_hook(name, option: str, fn, what: str):
    """A callback option (``error_handler=``, ``notify=``): None or a callable (``what`` says
    how it is called); ChannelError(CHAN_UNKNOWN) naming the channel, the option and the value
    otherwise (``notify=5`` was taken, then raised at every delivery)."""
    if fn is None or callable(fn):
        return fn
    raise ChannelError(f"channel {name!r}: {option}={fn!r} is not allowed: a callable ({what}) "
                       f"or None", CHAN_UNKNOWN)
