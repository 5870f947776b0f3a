"""Split virtqueues (virtio 1.x, section 2.7) laid out in guest memory.

A queue of ``size`` entries is three areas: the descriptor table (16 bytes per entry: addr, len,
flags, next), the available ring (flags, idx, ring[size], used_event) written by us, and the used
ring (flags, idx, ring[size] of (id, len), avail_event) written by the device. A request is a
*chain* of descriptors (NEXT flag), device-readable ones first, then device-writable ones
(WRITE flag). We publish the chain's head in the available ring, bump ``avail.idx``, kick the
device through its eventfd, and learn of completion by polling ``used.idx``.

Ordering: the descriptors and the ring slot are stored before ``avail.idx``; NumPy stores are
plain stores and x86-64 keeps stores in program order, which is all the protocol needs here.

Example::

    q = SplitQueue(mem, index=0, size=64)
    head = q.add([(mem.gpa(req), 24, False), (mem.gpa(resp), 24, True)])
    q.kick()
    while not (done := q.collect()): pass      # [(head, written_len)]
"""
from __future__ import annotations

import os

import numpy as np

from .errors import ProtocolError, VirtioError
from .memory import GuestMemory

DESC_F_NEXT = 1
DESC_F_WRITE = 2
AVAIL_F_NO_INTERRUPT = 1

DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
USED_ELEM_DTYPE = np.dtype([("id", "<u4"), ("len", "<u4")])


class SplitQueue:
    """One split virtqueue: rings in guest memory plus its kick and call eventfds."""

    def __init__(self, mem: GuestMemory, index: int, size: int = 64):
        if size <= 0 or size & (size - 1) or size > 32768:
            raise VirtioError(f"virtqueue {index}: size {size} must be a power of two <= 32768")
        self.mem = mem
        self.index = index
        self.size = size
        self.desc_off = mem.alloc(16 * size, 16)
        self.avail_off = mem.alloc(6 + 2 * size, 2)
        self.used_off = mem.alloc(6 + 8 * size, 4)
        buf = mem.buf
        buf[self.desc_off:self.desc_off + 16 * size] = 0
        buf[self.avail_off:self.avail_off + 6 + 2 * size] = 0
        buf[self.used_off:self.used_off + 6 + 8 * size] = 0
        self.desc = buf[self.desc_off:self.desc_off + 16 * size].view(DESC_DTYPE)
        self.avail_hdr = buf[self.avail_off:self.avail_off + 4].view("<u2")      # flags, idx
        self.avail_ring = buf[self.avail_off + 4:self.avail_off + 4 + 2 * size].view("<u2")
        self.used_hdr = buf[self.used_off:self.used_off + 4].view("<u2")          # flags, idx
        self.used_ring = buf[self.used_off + 4:self.used_off + 4 + 8 * size].view(USED_ELEM_DTYPE)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._free = list(range(size - 1, -1, -1))    # free descriptor indices (a stack)
        self._chain_len: dict[int, int] = {}          # head -> descriptors in its chain
        self._avail_idx = 0                            # our shadow of avail.idx (free-running)
        self._last_used = 0                            # next used.idx entry to consume
        self._kick = (1).to_bytes(8, "little")

    # addresses the front end hands to the backend (SET_VRING_ADDR takes user addresses)
    @property
    def desc_uaddr(self) -> int:
        return self.mem.uaddr(self.desc_off)

    @property
    def avail_uaddr(self) -> int:
        return self.mem.uaddr(self.avail_off)

    @property
    def used_uaddr(self) -> int:
        return self.mem.uaddr(self.used_off)

    @property
    def free_descriptors(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return len(self._chain_len)

    def add(self, buffers: list[tuple[int, int, bool]]) -> int:
        """Publish one chain of ``(gpa, length, device_writable)`` buffers; return its head.

        Device-readable buffers must come before device-writable ones (virtio 2.7.4.2).
        """
        n = len(buffers)
        if n == 0:
            raise VirtioError(f"virtqueue {self.index}: empty descriptor chain")
        if n > len(self._free):
            raise VirtioError(f"virtqueue {self.index}: {n} descriptors wanted, "
                              f"{len(self._free)} free; wait for completions first")
        seen_write = False
        for _, _, writable in buffers:
            if seen_write and not writable:
                raise VirtioError(f"virtqueue {self.index}: a device-readable buffer follows a "
                                  "device-writable one")
            seen_write = seen_write or writable
        idx = [self._free.pop() for _ in range(n)]
        desc = self.desc
        for i, (addr, length, writable) in enumerate(buffers):
            last = i == n - 1
            desc[idx[i]] = (addr, length,
                            (DESC_F_WRITE if writable else 0) | (0 if last else DESC_F_NEXT),
                            0 if last else idx[i + 1])
        head = idx[0]
        self._chain_len[head] = n
        self.avail_ring[self._avail_idx % self.size] = head
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        self.avail_hdr[1] = self._avail_idx            # publish last
        return head

    def kick(self) -> None:
        """Notify the device that the available ring moved."""
        os.write(self.kick_fd, self._kick)

    def pending(self) -> bool:
        """True when the device has returned chains we have not collected."""
        return int(self.used_hdr[1]) != self._last_used

    def collect(self) -> list[tuple[int, int]]:
        """Consume new used-ring entries; return ``[(head, bytes_written)]`` and free their chains."""
        used_idx = int(self.used_hdr[1])
        out = []
        while self._last_used != used_idx:
            elem = self.used_ring[self._last_used % self.size]
            head, written = int(elem["id"]), int(elem["len"])
            n = self._chain_len.pop(head, None)
            if n is None:
                raise ProtocolError(
                    f"virtqueue {self.index}: device returned descriptor {head}, which is not "
                    "the head of a chain in flight (corrupt used ring)")
            i = head
            for _ in range(n):
                self._free.append(i)
                i = int(self.desc[i]["next"])
            out.append((head, written))
            self._last_used = (self._last_used + 1) & 0xFFFF
        return out

    def drain_call(self) -> None:
        """Clear the call eventfd (it may fire with nothing new: we always re-read used.idx)."""
        try:
            os.read(self.call_fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1
