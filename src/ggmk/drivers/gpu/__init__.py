"""``gpu_drv``: the GhostNV-style driver surface over the device the system runs on.

* **Discovery** (:func:`discover`): NVIDIA GPUs from PCI (``ggmk.drivers.pci``: name, bus id,
  device id, PCIe link, kernel driver) and NVML when ``nvidia-ml-py`` is installed (memory,
  driver version, UUID); every fact says its source (``GpuInfo.sources``); NVML absent or
  failing falls back to the PCI / sysfs / procfs facts.
* **Backends** (:class:`Backend` / :class:`BackendContext`, one surface): ``cuda`` on
  ``cuda.core`` (non-blocking stream, events for fences, device and pinned memory resources;
  untested without a GPU) and ``cpu`` (host NumPy buffers, a worker thread per context, fences
  = completion of that host-side work), chosen by ``backend="auto"``.
* **Contexts, memory, pools, fences** (:class:`GpuDriver`, :class:`Context`): ``alloc`` /
  ``free`` / ``map`` / ``unmap``, a fixed-size :class:`PayloadPool` for payloads from the CPU
  (``ALLOC_FAIL`` when exhausted), ``submit`` a batch of :mod:`commands` returning a
  :class:`Fence`, ``wait`` with a timeout (:class:`FenceTimeout`, a ``TimeoutError``).
* **The persistent kernel**: ``launch(modules)`` / ``reset()`` drive
  :class:`ggmk.device.DeviceKernel` on the backend's target (``cpu`` or ``cuda``).
* **The dual-kernel boot's hook** (:func:`open_for_kernel`): the driver ``ggmk.dual.boot``
  launches the GPU kernel through (``kernel_boot``).
* **Displays**: ``displays()`` / ``set_mode()`` through the virtio-gpu display module when a
  virtio-gpu device (QEMU's vhost-user-gpu) exists; ``[]`` otherwise.
* **Config** (:class:`GpuConfig`): memory reservation, command timeout, payload pool, compute /
  display switches, validated with errors naming the option (:class:`GpuConfigError`).

Example (runs anywhere: the ``cpu`` backend where there is no GPU)::

    import numpy as np
    from ggmk.drivers import gpu
    from ggmk.drivers.gpu import Fill, Read, Write

    with gpu.GpuDriver(memory_reservation="64M", command_timeout_ms=2000) as drv:
        print(drv.backend.name, drv.device["name"], drv.device["sources"])
        ctx = drv.create_context()
        buf = ctx.alloc(1024)                               # device memory
        out = np.zeros(16, np.uint8)
        fence = ctx.submit([Fill(buf, 7), Write(buf, b"hello", offset=8), Read(buf, out)])
        ctx.wait(fence, timeout=5)                          # FenceTimeout if it does not signal
        print(bytes(out[8:13]), out[0])                     # b'hello' 7
        pool = ctx.payload_pool(slots=4, slot_size=256)     # payloads arriving from the CPU
        slot = pool.put(b"payload")                         # slot.address: where it lives
        slot.fence.wait()
        pool.free(slot)
        print(ctx.destroy()["freed_bytes"])                 # 2048: buf and the pool
        print(drv.stats()["bytes_in_use"])                  # 0
"""
from .backend import KINDS, Backend, BackendContext
from .commands import OP_FENCE, OP_NOP, Call, Copy, Fill, Nop, Read, Write
from .config import GpuConfig, parse_size
from .discovery import Discovery, GpuInfo, discover, host_info
from .driver import Context, Fence, GpuDriver, GpuMemory, PayloadPool, PoolSlot, probe
from .report import format_info
from .kernel_boot import KernelDriver, open_for_kernel
from .errors import (CommandError, ContextDestroyed, FenceTimeout, GpuAllocError, GpuConfigError,
                     GpuDriverError, PoolExhausted)

__all__ = [
    "GpuDriver", "Context", "open_for_kernel", "KernelDriver", "GpuMemory", "Fence", "PayloadPool", "PoolSlot", "probe", "format_info",
    "GpuConfig", "parse_size", "discover", "Discovery", "GpuInfo", "host_info",
    "Backend", "BackendContext", "KINDS",
    "Nop", "Fill", "Write", "Read", "Copy", "Call", "OP_NOP", "OP_FENCE",
    "GpuDriverError", "GpuConfigError", "GpuAllocError", "PoolExhausted", "FenceTimeout",
    "CommandError", "ContextDestroyed",
]
