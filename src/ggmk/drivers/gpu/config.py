"""The GhostNV options that make sense for ``gpu_drv`` (``gpu_memory_size``,
``gpu_command_timeout_ms``, ``gpu_enable_compute``, ``gpu_enable_display``) plus the payload pool
and the backend choice, validated with errors that name the option.

>>> GpuConfig.make(memory_reservation="64M", command_timeout_ms=250).memory_reservation
67108864
>>> try:
...     GpuConfig.make(command_timeout_ms=0)
... except GpuConfigError as e:
...     print(e)
gpu_drv config: command_timeout_ms=0: must be a finite number of milliseconds > 0
"""
from __future__ import annotations

import dataclasses
import math
import re
import threading
from dataclasses import dataclass

import numpy as np

from .errors import GpuConfigError

BACKENDS = ("auto", "cpu", "cuda")
# GhostNV's KernelConfig names, accepted as aliases
ALIASES = {"gpu_memory_size": "memory_reservation", "gpu_command_timeout_ms": "command_timeout_ms",
           "gpu_enable_compute": "enable_compute", "gpu_enable_display": "enable_display"}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(option: str, value) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"2G"``, ``"4096"`` (binary units)."""
    if isinstance(value, bool):
        raise GpuConfigError(option, value, "must be a number of bytes (int, or '512M', '2G')")
    if isinstance(value, (int, np.integer)):     # (a NumPy size, as alloc takes one)
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).upper()]
    raise GpuConfigError(option, value, "must be a number of bytes (int, or '512M', '2G')")


def _same(a, b) -> bool:
    """Do two values of one option agree (``"64M"`` and ``67108864`` do; ``True`` and ``1``
    do not)?"""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        if a == b:
            return True
        return parse_size("", a) == parse_size("", b)
    except (GpuConfigError, TypeError, ValueError):
        return False


def _int(option: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GpuConfigError(option, value, f"must be an integer >= {minimum}")
    if value < minimum:
        raise GpuConfigError(option, value, f"must be an integer >= {minimum}")
    return int(value)


@dataclass(frozen=True)
class GpuConfig:
    """``gpu_drv`` options.

    * ``backend``: ``"auto"`` (``cuda`` when an NVIDIA GPU is usable, else ``cpu``), ``"cpu"``,
      ``"cuda"``; ``device``: which GPU (index in discovery order).
    * ``memory_reservation``: bytes ``gpu_drv`` may hold at once over all contexts (GhostNV
      ``gpu_memory_size``); an allocation past it fails with ``ALLOC_FAIL``.
    * ``command_timeout_ms``: the default timeout of a fence wait (GhostNV
      ``gpu_command_timeout_ms``), also how long ``destroy`` waits for pending batches.
    * ``payload_slots`` x ``payload_slot_size``: the default payload pool (payloads arriving
      from the CPU), preallocated in one piece; slot size a multiple of 8.
    * ``enable_compute`` (launching the persistent kernel), ``enable_display`` (displays).
    """

    backend: str = "auto"
    device: int = 0
    memory_reservation: int = 256 << 20
    command_timeout_ms: float = 5000.0
    payload_slots: int = 256
    payload_slot_size: int = 4096
    enable_compute: bool = True
    enable_display: bool = True

    @classmethod
    def make(cls, config: "GpuConfig | dict | None" = None, **options) -> "GpuConfig":
        """A validated config from a GpuConfig, a dict and/or keywords (GhostNV names such as
        ``gpu_memory_size`` are accepted; a keyword overrides ``config``); unknown options are
        an error naming them, and so is an option given twice in one place (dict or keywords)
        under its name and its GhostNV alias with different values."""
        base: dict = {}
        if isinstance(config, GpuConfig):
            base = dataclasses.asdict(config)
        elif isinstance(config, dict):
            base = cls._normalize(config)
        elif config is not None:
            raise GpuConfigError("config", config, "must be a GpuConfig, a dict or None")
        base.update(cls._normalize(options))
        return cls(**base).validate()

    @classmethod
    def _normalize(cls, options: dict) -> dict:
        """``options`` under canonical names; an unknown name, or a name and its alias that
        disagree, is a :class:`GpuConfigError` naming them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        norm: dict = {}
        given: dict = {}                # canonical name -> the name it was given under
        for k, v in options.items():
            key = ALIASES.get(k, k)
            if key not in fields:
                raise GpuConfigError(k, v, "unknown option; known: " + ", ".join(sorted(fields))
                                     + " (GhostNV aliases: " + ", ".join(sorted(ALIASES)) + ")")
            if key in norm and not _same(norm[key], v):
                raise GpuConfigError(k, v, f"conflicts with {given[key]}={norm[key]!r} (the "
                                           f"same option under two names); give one of them")
            norm[key], given[key] = v, k
        return norm

    def validate(self) -> "GpuConfig":
        """Check every option; returns a copy with sizes as ints and the timeout as a float."""
        if self.backend not in BACKENDS:
            raise GpuConfigError("backend", self.backend, "must be one of " + ", ".join(BACKENDS))
        device = _int("device", self.device, 0)
        res = parse_size("memory_reservation", self.memory_reservation)
        if res < 4096:
            raise GpuConfigError("memory_reservation", self.memory_reservation,
                                 "must be at least 4096 bytes")
        t = self.command_timeout_ms
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise GpuConfigError("command_timeout_ms", t,
                                 "must be a finite number of milliseconds > 0")
        if t / 1000.0 > threading.TIMEOUT_MAX:     # the platform's waits overflow past it
            raise GpuConfigError("command_timeout_ms", t,
                                 f"is too large: must be at most "
                                 f"{threading.TIMEOUT_MAX * 1000:g} ms (threading.TIMEOUT_MAX)")
        slots = _int("payload_slots", self.payload_slots, 1)
        size = parse_size("payload_slot_size", self.payload_slot_size)
        if size < 8 or size % 8:
            raise GpuConfigError("payload_slot_size", self.payload_slot_size,
                                 "must be a positive multiple of 8 bytes")
        if slots * size > res:
            raise GpuConfigError("payload_slots", slots,
                                 f"the payload pool ({slots} x {size} B = {slots * size} B) does "
                                 f"not fit in memory_reservation ({res} B)")
        for name in ("enable_compute", "enable_display"):
            if not isinstance(getattr(self, name), bool):
                raise GpuConfigError(name, getattr(self, name), "must be True or False")
        return dataclasses.replace(self, device=device, memory_reservation=res,
                                   command_timeout_ms=float(t), payload_slots=slots,
                                   payload_slot_size=size)

    @property
    def command_timeout(self) -> float:
        """``command_timeout_ms`` in seconds."""
        return self.command_timeout_ms / 1000.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
