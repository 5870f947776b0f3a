"""The bridge: channels whose producer and consumer live on different kernels (SPEC §9).

* ``plan``: which channels cross, and cross-kernel declaration checks (boot errors);
* ``device_side``: the GPU kernel's half (ingress / egress / service device handlers);
* ``transport``: the ``BridgeTransport`` seam (``InProcessTransport`` over a ``DeviceKernel``
  of this process), fault injection for tests;
* ``process``: the device process (the GPU kernel in a spawn child over shared memory, so the
  watchdog can kill and reboot it) and its ``ProcessTransport``;
* ``pump``: the ``Bridge`` itself: batching, credits, order, payload marshaling, retries;
* ``fences``: tick fences for deterministic bridge channels;
* ``gpu_drv``: the hook for ``ggmk.drivers.gpu``.

The dual-kernel system that uses all this is ``ggmk.dual`` (``ggmk.dual.boot``).
"""
from ggmk.bridge.codes import (BRIDGE_DEVICE_STOPPED, BRIDGE_PAYLOAD_TOO_LARGE,  # noqa: F401
                               BRIDGE_RESET, BRIDGE_TRANSFER_FAILED)
from ggmk.bridge.fences import FenceError, Fences  # noqa: F401
from ggmk.bridge.plan import BridgeChannel, plan  # noqa: F401
from ggmk.bridge.process import DeviceProcess, ProcessTransport  # noqa: F401
from ggmk.bridge.pump import Bridge, BridgeError  # noqa: F401
from ggmk.bridge.transport import (BridgeTransport, FaultyTransport,  # noqa: F401
                                   InProcessTransport, TransferError)
