"""How bridge batches reach the GPU kernel and come back: the ``BridgeTransport`` seam.

The bridge (``ggmk.bridge.pump``) never touches the device kernel directly; it talks to a
transport, so the GPU kernel can later live in a child process (a device process owning the
CUDA context, ARCHITECTURE.md "Across kernels and machines") behind a transport over shared
memory, with no change to the bridge.

A transport moves **batches** of 48-byte task records (``TASK_DTYPE`` arrays): ``send`` is one
copy of one batch onto the host -> device ring (``host.rx``), ``recv`` one copy of what the
device published on the device -> host ring (``host.tx``). Payload bytes move with
``write_payload`` / ``read_payload`` (device arena addresses). ``type_counts`` is the device's
published per-type counters (how the bridge learns that its ingress tasks finished: credits).

:class:`InProcessTransport` is the transport over a ``DeviceKernel`` in this process.
:class:`FaultyTransport` wraps any transport and injects transfer failures (tests).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ggmk.device import layout
from ggmk.errors import DeviceError, GgmkError, KernelStopped


class TransferError(GgmkError):
    """One batch transfer failed (the bridge retries it; the batch is unchanged)."""


@runtime_checkable
class BridgeTransport(Protocol):
    """What the bridge needs from the GPU kernel's side."""

    target: str

    def send(self, records: np.ndarray) -> int:
        """Copy a batch onto the host -> device ring; returns how many records fitted (a
        prefix). Raises TransferError (retry) or KernelStopped (the kernel is gone)."""

    def recv(self, max_records: int) -> np.ndarray:
        """Take up to ``max_records`` records the device sent to the host (one copy)."""

    def write_payload(self, ptr: int, data: np.ndarray) -> None:
        """Copy ``data`` (uint8) to device arena address ``ptr``."""

    def read_payload(self, ptr: int, n: int) -> np.ndarray:
        """A host copy of ``n`` bytes at device arena address ``ptr``."""

    def type_counts(self) -> dict:
        """{type id: {"run", "ok", "fail", "enqueued", ...}} as last published by the device."""

    def rx_pending(self) -> int:
        """Records sent but not yet taken in by the device."""

    def alive(self) -> bool: ...


class InProcessTransport:
    """The transport over a started :class:`~ggmk.device.DeviceKernel` of this process.

    Payload access (``write_payload`` / ``read_payload``): uses the kernel's
    ``write_arena`` / ``read_arena`` when it has them (the hook the bridge asks the device
    kernel for); until then it reads the arena through the target's host view, which is plain
    memory on the ``cpu`` and ``sim`` targets (on ``cuda`` the device arena is device memory:
    the hook is required there and its absence is a clear DeviceError)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.target = kernel.target_name
        self._arena = None
        self._base = None

    # -- records ---------------------------------------------------------------------------------
    def send(self, records: np.ndarray) -> int:
        k = self.kernel
        if not k.alive():
            raise KernelStopped(f"bridge: the GPU kernel ({self.target}) is not running")
        return k.push(records)

    def recv(self, max_records: int) -> np.ndarray:
        return self.kernel.pull(max_records)

    def rx_pending(self) -> int:
        k = self.kernel
        ctl = k._h["ctl"]               # hook wanted: DeviceKernel.rx_pending()
        return int(ctl[layout.C_RX_TAIL]) - int(ctl[layout.C_RX_HEAD])

    def type_counts(self) -> dict:
        return self.kernel.metrics()["types"]

    def alive(self) -> bool:
        return self.kernel.alive()

    # -- payloads --------------------------------------------------------------------------------
    def _host_arena(self):
        if self._arena is None:
            k = self.kernel
            arena = k.target.host_view(k._arrays[2])
            if not isinstance(arena, np.ndarray):
                raise DeviceError(
                    f"bridge: the device arena of target {self.target!r} is not host memory; "
                    "payloads need DeviceKernel.write_arena/read_arena (bridge hook)")
            self._arena = arena
            self._base = int(k._h["ctl"][layout.C_ARENA_BASE])
        return self._arena, self._base

    def _span(self, ptr: int, n: int) -> slice:
        arena, base = self._host_arena()
        off = int(ptr) - base
        if off < 0 or off + n > len(arena):
            raise DeviceError(f"bridge: device payload address {ptr:#x} (+{n} bytes) is outside "
                              f"the device arena ({base:#x}, {len(arena)} bytes)")
        return slice(off, off + n)

    def write_payload(self, ptr: int, data: np.ndarray) -> None:
        k = self.kernel
        if hasattr(k, "write_arena"):
            k.write_arena(ptr, data)
            return
        self._host_arena()[0][self._span(ptr, len(data))] = data

    def read_payload(self, ptr: int, n: int) -> np.ndarray:
        k = self.kernel
        if hasattr(k, "read_arena"):
            return k.read_arena(ptr, n)
        return self._host_arena()[0][self._span(ptr, n)].copy()


class FaultyTransport:
    """Wraps a transport and makes transfers fail: ``fail_send(i)`` / ``fail_recv(i)`` get the
    0-based attempt number of that direction and return True to fail it (TransferError). A
    failed send moves nothing; a failed receive keeps what it took and hands it out on the
    next successful receive (a failed copy is retried, never lost). ``persistent=True`` fails
    every send from the first failing attempt on (a link that died)."""

    def __init__(self, inner, *, fail_send: Callable[[int], bool] | None = None,
                 fail_recv: Callable[[int], bool] | None = None):
        self.inner = inner
        self.target = inner.target
        self.fail_send = fail_send or (lambda i: False)
        self.fail_recv = fail_recv or (lambda i: False)
        self.sends = 0
        self.recvs = 0
        self.injected = 0
        self._stash: list[np.ndarray] = []

    def send(self, records):
        i = self.sends
        self.sends += 1
        if self.fail_send(i):
            self.injected += 1
            raise TransferError(f"injected send failure (attempt {i})")
        return self.inner.send(records)

    def recv(self, max_records):
        i = self.recvs
        self.recvs += 1
        if self._stash and not self.fail_recv(i):
            out = self._stash.pop(0)
            return out
        got = self.inner.recv(max_records)
        if self.fail_recv(i):
            if len(got):
                self._stash.append(got)
            self.injected += 1
            raise TransferError(f"injected receive failure (attempt {i})")
        if self._stash:                  # keep order: what was stashed goes first
            self._stash.append(got)
            return self._stash.pop(0)
        return got

    def __getattr__(self, name):
        return getattr(self.inner, name)


__all__ = ["BridgeTransport", "InProcessTransport", "FaultyTransport", "TransferError"]
