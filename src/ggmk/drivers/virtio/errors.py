"""Errors of the virtio-gpu driver. Every message says what failed and what to do about it."""
from __future__ import annotations

from ggmk.errors import DeviceError


class VirtioError(DeviceError):
    """Base class of every virtio / vhost-user error."""


class BackendNotFound(VirtioError):
    """The vhost-user-gpu program is not installed (or not where we were told to look)."""


class BackendError(VirtioError):
    """The backend process could not be started or connected to."""


class BackendDied(BackendError):
    """The backend exited or closed a socket while we were talking to it."""


class BackendTimeout(VirtioError):
    """The backend did not answer within the deadline."""


class ProtocolError(VirtioError):
    """The backend sent a message that does not follow the vhost-user (gpu) protocol."""


class FeatureError(VirtioError):
    """Feature negotiation failed (a mandatory feature is not offered)."""


class FrameError(VirtioError, ValueError):
    """A frame, cursor image or rectangle given to the driver has the wrong shape, dtype or size."""


class GpuResponseError(VirtioError):
    """The device answered a control command with an error response.

    ``code`` is the VIRTIO_GPU_RESP_ERR_* value, ``command`` the command type that failed.
    """

    code = 0

    def __init__(self, message: str, code: int | None = None, command: int = 0):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.command = command


class ErrUnspec(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_UNSPEC: the device refused the command without saying why."""

    code = 0x1200


class ErrOutOfMemory(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY."""

    code = 0x1201


class ErrInvalidScanoutId(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID."""

    code = 0x1202


class ErrInvalidResourceId(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID."""

    code = 0x1203


class ErrInvalidContextId(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID."""

    code = 0x1204


class ErrInvalidParameter(GpuResponseError):
    """VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER."""

    code = 0x1205


RESPONSE_ERRORS: dict[int, type[GpuResponseError]] = {
    cls.code: cls
    for cls in (ErrUnspec, ErrOutOfMemory, ErrInvalidScanoutId, ErrInvalidResourceId,
                ErrInvalidContextId, ErrInvalidParameter)
}
