"""Split virtqueue and guest memory, without a backend: the test plays the device's part by
writing the used ring, exactly as the spec lays it out."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from ggmk.drivers.virtio.errors import ProtocolError, VirtioError
from ggmk.drivers.virtio.memory import GuestMemory
from ggmk.drivers.virtio.virtqueue import DESC_F_NEXT, DESC_F_WRITE, SplitQueue


@pytest.fixture
def mem():
    m = GuestMemory(1 << 20)
    yield m
    m.close()


def device_complete(q: SplitQueue, mem: GuestMemory, heads_written):
    """Play the device: append (head, len) to the used ring and publish used.idx."""
    used_idx = struct.unpack_from("<H", mem.buf, q.used_off + 2)[0]
    for head, written in heads_written:
        struct.pack_into("<II", mem.buf, q.used_off + 4 + 8 * (used_idx % q.size), head, written)
        used_idx = (used_idx + 1) & 0xFFFF
    struct.pack_into("<H", mem.buf, q.used_off + 2, used_idx)


def test_guest_memory_alloc_free_merge_and_exhaustion(mem):
    a = mem.alloc(4096, 4096)
    b = mem.alloc(100, 64)
    assert a % 4096 == 0 and b % 64 == 0 and b >= a + 4096
    assert mem.gpa(a) == mem.gpa_base + a
    assert mem.uaddr(0) == mem.buf.ctypes.data
    mem.free(a)
    mem.free(b)
    assert mem.available() == mem.size           # pieces merged back
    with pytest.raises(VirtioError, match="exhausted.*larger mem_size"):
        mem.alloc(2 << 20)
    with pytest.raises(VirtioError, match="not an allocation"):
        mem.free(12345)


def test_guest_memory_is_a_shared_file(mem):
    import mmap
    import os
    off = mem.alloc(16)
    mem.buf[off:off + 4] = [1, 2, 3, 4]
    other = mmap.mmap(os.dup(mem.fd), mem.size)     # what the backend's mapping sees
    assert other[off:off + 4] == bytes([1, 2, 3, 4])
    other.close()


def test_chain_layout_in_descriptor_table_and_avail_ring(mem):
    q = SplitQueue(mem, 0, 8)
    head = q.add([(0x1000, 24, False), (0x2000, 16, False), (0x3000, 408, True)])
    d = q.desc
    i1 = int(d[head]["next"])
    i2 = int(d[i1]["next"])
    assert (int(d[head]["addr"]), int(d[head]["len"]), int(d[head]["flags"])) == (0x1000, 24, DESC_F_NEXT)
    assert (int(d[i1]["addr"]), int(d[i1]["flags"])) == (0x2000, DESC_F_NEXT)
    assert (int(d[i2]["addr"]), int(d[i2]["len"]), int(d[i2]["flags"])) == (0x3000, 408, DESC_F_WRITE)
    # avail ring: flags, idx=1, ring[0]=head, laid out at avail_off
    assert struct.unpack_from("<HHH", mem.buf, q.avail_off) == (0, 1, head)
    assert q.free_descriptors == 5 and q.in_flight == 1
    assert not q.pending() and q.collect() == []
    device_complete(q, mem, [(head, 408)])
    assert q.pending()
    assert q.collect() == [(head, 408)]
    assert q.free_descriptors == 8 and q.in_flight == 0


def test_indices_wrap_past_16_bits(mem):
    q = SplitQueue(mem, 0, 4)
    for n in range(70000):
        h = q.add([(0x1000, 8, False), (0x2000, 8, True)])
        device_complete(q, mem, [(h, 8)])
        assert q.collect() == [(h, 8)]
    assert struct.unpack_from("<H", mem.buf, q.avail_off + 2)[0] == 70000 & 0xFFFF


def test_queue_rejects_bad_chains_and_overflow(mem):
    q = SplitQueue(mem, 1, 4)
    with pytest.raises(VirtioError, match="readable buffer follows a device-writable"):
        q.add([(0x1000, 8, True), (0x2000, 8, False)])
    with pytest.raises(VirtioError, match="empty"):
        q.add([])
    q.add([(0x1000, 8, False)] * 3)
    with pytest.raises(VirtioError, match="2 descriptors wanted, 1 free"):
        q.add([(0x1000, 8, False)] * 2)
    with pytest.raises(VirtioError, match="power of two"):
        SplitQueue(mem, 2, 6)


def test_corrupt_used_ring_is_a_protocol_error(mem):
    q = SplitQueue(mem, 0, 4)
    q.add([(0x1000, 8, False)])
    device_complete(q, mem, [(3, 0)])           # 3 was never a head in flight
    with pytest.raises(ProtocolError, match="descriptor 3.*corrupt used ring"):
        q.collect()


def test_call_eventfd_drain_is_idempotent(mem):
    import os
    q = SplitQueue(mem, 0, 4)
    os.write(q.call_fd, (1).to_bytes(8, "little"))
    q.drain_call()
    q.drain_call()              # nothing pending: must not block or raise
    q.close()
