"""Exceptions users see. Each message says what went wrong and where (file, type, field, channel)."""
from __future__ import annotations


class GgmkError(Exception):
    """Base class of every ggmk error."""


class BootError(GgmkError):
    """A declaration is invalid; raised at boot, before any task runs."""


class TypesError(GgmkError):
    """types.toml / module.toml is malformed (message names the file, type and field)."""


class PayloadError(GgmkError):
    """A payload does not match its type's schema (wrong JSON, wrong size)."""


class ChannelError(GgmkError):
    """A channel operation was refused; ``code`` is one of the CHAN_* codes in ggmk.task."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class EmitError(GgmkError, ValueError):
    """A handler emitted a value that does not fit the task record (raised inside the handler,
    so the task that did it fails with HANDLER_EXCEPTION and the traceback is kept)."""


class AllocError(GgmkError):
    """The arena could not satisfy an allocation."""


class UseAfterFree(GgmkError):
    """Debug canary: a freed payload was read, written, retained or released."""


class DoubleFree(UseAfterFree):
    """A payload was released after its reference count reached zero."""


class InvalidPointer(GgmkError):
    """An address does not belong to this arena (or is not the start of an allocation)."""


class KernelStopped(GgmkError):
    """The kernel is halted (or being reset) and cannot take work."""


class DeviceError(GgmkError):
    """The GPU (or its driver) failed or is not available."""
