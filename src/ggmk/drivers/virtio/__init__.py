"""virtio-gpu driver: a vhost-user front end in Python driving QEMU's ``vhost-user-gpu``.

Layers (each usable alone):

- :mod:`.memory` guest memory (one memfd shared with the back end)
- :mod:`.virtqueue` split virtqueues in that memory, kick/call eventfds
- :mod:`.vhost_user` the vhost-user control protocol (features, memory table, rings)
- :mod:`.display_socket` the display side (VHOST_USER_GPU_SET_SOCKET): monitors, pixels, cursor
- :mod:`.gpu` the virtio-gpu 2D and cursor command sets, typed error responses
- :mod:`.backend` finding and launching the back-end process

The display API for users is :mod:`ggmk.modules.display`.

Example::

    from ggmk.drivers.virtio import VirtioGpu, Monitor, Rect
    with VirtioGpu.launch([Monitor(640, 480)]) as gpu:
        res = gpu.create_resource(640, 480)
        gpu.set_scanout(0, res.id, Rect(0, 0, 640, 480))
        res.pixels[:] = 255
        gpu.transfer_and_flush(res, Rect(0, 0, 640, 480))
        assert (gpu.display.scanouts[0].fb == 255).all()
"""
from .backend import BackendProcess, find_backend
from .display_socket import Monitor
from .errors import (BackendDied, BackendError, BackendNotFound, BackendTimeout, ErrInvalidContextId,
                     ErrInvalidParameter, ErrInvalidResourceId, ErrInvalidScanoutId,
                     ErrOutOfMemory, ErrUnspec, FeatureError, FrameError, GpuResponseError,
                     ProtocolError, VirtioError)
from .gpu import Cmd, DisplayMode, Format, Rect, Resource2D, Resp, VirtioGpu

__all__ = [
    "VirtioGpu", "Monitor", "Rect", "Resource2D", "DisplayMode", "Format", "Cmd", "Resp",
    "BackendProcess", "find_backend",
    "VirtioError", "BackendNotFound", "BackendError", "BackendDied", "BackendTimeout",
    "ProtocolError", "FeatureError", "FrameError", "GpuResponseError", "ErrUnspec",
    "ErrOutOfMemory", "ErrInvalidScanoutId", "ErrInvalidResourceId", "ErrInvalidContextId",
    "ErrInvalidParameter",
]
