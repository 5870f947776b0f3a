"""How bridge batches reach the GPU kernel and come back: the ``BridgeTransport`` seam.

The bridge (``ggmk.bridge.pump``) never touches the device kernel directly; it talks to a
transport, so the GPU kernel can later live in a child process (a device process owning the
CUDA context, ARCHITECTURE.md "Across kernels and machines") behind a transport over shared
memory, with no change to the bridge.

A transport moves **batches** of 48-byte task records (``TASK_DTYPE`` arrays): ``send`` is one
copy of one batch onto the host -> device ring (``host.rx``), ``recv`` one copy of what the
device published on the device -> host ring (``host.tx``). Payload bytes move with
``write_payload`` / ``read_payload`` (device arena addresses). ``type_counts`` is the device's
published per-type counters (how the bridge learns that its ingress tasks finished: credits);
an optional ``done_counts(type_ids)`` (finished tasks of just those types) is its cheap form,
used when the transport has it.

:class:`InProcessTransport` is the transport over a ``DeviceKernel`` in this process.
:class:`FaultyTransport` wraps any transport and injects transfer failures (tests).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ggmk.errors import GgmkError, KernelStopped
from ggmk.task import TASK_DTYPE


_EMPTY = np.zeros(0, TASK_DTYPE)
_EMPTY.flags.writeable = False


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
    """The transport over a started :class:`~ggmk.device.DeviceKernel` of this process: its
    public host interface only (``push`` / ``pull`` / ``rx_pending`` / ``metrics`` and the
    payload hooks ``write_arena`` / ``read_arena``: plain memory copies on the ``cpu`` and
    ``sim`` targets, copies on a non-blocking stream of their own on ``cuda``)."""

    #: ``send(records, doorbell=False)`` leaves the device's doorbell to :meth:`ring` (the bridge
    #: rings it once it let go of its lock; looked up on the class, so a wrapper without it
    #: sends as before)
    RING_LATER = True

    def __init__(self, kernel):
        self.kernel = kernel
        self.target = kernel.target_name

    # -- records ---------------------------------------------------------------------------------
    def send(self, records: np.ndarray, doorbell: bool = True) -> int:
        k = self.kernel
        if not k.alive():
            raise KernelStopped(f"bridge: the GPU kernel ({self.target}) is not running")
        return k.push(records, doorbell)

    def ring(self) -> None:
        """Wake the GPU kernel's parked workers for what ``send(..., doorbell=False)`` put on the
        host -> device ring."""
        self.kernel._ring()

    def recv(self, max_records: int) -> np.ndarray:
        k = self.kernel
        if not k.tx_ready():
            return _EMPTY
        return k.pull(max_records)

    def tx_ready(self) -> bool:
        """Whether the device published a record ``recv`` would take (one word read)."""
        return self.kernel.tx_ready()

    def rx_pending(self) -> int:
        return self.kernel.rx_pending()

    def tx_bell(self):
        """The device -> host bell of the kernel (``DeviceKernel.tx_bell``) or None."""
        return self.kernel.tx_bell()

    def type_counts(self) -> dict:
        return self.kernel.metrics()["types"]

    def done_counts(self, type_ids) -> np.ndarray:
        """Finished tasks (ok + fail) of each of ``type_ids``, as last published."""
        return self.kernel.type_totals(type_ids)

    def device_backlog(self) -> int:
        """Tasks enqueued on the device and not run yet (every type, as last published)."""
        k = self.kernel
        return int(k.type_totals(k.type_ids, ("enqueued",)).sum()
                   - k.type_totals(k.type_ids, ("run",)).sum())

    def alive(self) -> bool:
        return self.kernel.alive()

    # -- payloads --------------------------------------------------------------------------------
    def write_payload(self, ptr: int, data: np.ndarray) -> None:
        self.kernel.write_arena(ptr, data)

    def read_payload(self, ptr: int, n: int) -> np.ndarray:
        return self.kernel.read_arena(ptr, n)


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
