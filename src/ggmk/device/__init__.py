"""The GPU kernel (GGMK/gpu): device modules, the persistent kernel and its host interface.

One kernel source (``kernel_src.py``) compiled for three targets: ``cuda`` (numba-cuda on a
real GPU), ``cpu`` (Numba on the host; the default without a GPU) and ``sim`` (numba-cuda's
simulator). See ``host.DeviceKernel`` for the host side and ``api`` for what handlers call;
``Module.channel`` / ``handler(consumes=...)`` / ``api.emit_chan`` for device channels;
``HandlerCompileError`` names a handler that does not compile.
Importing this package imports no GPU package.
"""
from ggmk.device.module import (Module, Handler, func, chan, Chan, ChannelDecl,  # noqa: F401
                                ChannelBootError)
from ggmk.device.layout import DeviceConfig, WAIT  # noqa: F401
from ggmk.device.host import DeviceKernel, SYS_ERROR, SYS_DROPPED, error_code  # noqa: F401
from ggmk.device.diagnose import HandlerCompileError  # noqa: F401
