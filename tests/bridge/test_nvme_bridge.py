"""nvme over the bridge (issue 17): a GPU module (device kernel, ``cpu`` target) asks for file
data on ``disk.read`` and receives it on ``disk.read.resp`` as a payload in the device arena;
the bytes at that device address are verified byte for byte against the file.

GPU module ``nvreader``: handler NV_ASK (pushed by the test: meta0 = file offset, meta1 =
length | file << 32 | tag << 40) allocates the 24-byte DISK_READ request in the device arena
and emits it on ``disk.read`` (GPU -> CPU); handler NV_GOT consumes ``disk.read.resp``
(CPU -> GPU), keeps a reference to the payload and reports its device address on ``nv.got``
(GPU -> CPU: meta0 = tag | payload length << 32, meta1 = address); handler NV_FREE (pushed by
the test, meta0 = address) drops that reference once the test has read the bytes.
"""
from __future__ import annotations

import threading

import numpy as np

import ggmk
import ggmk.dual
import ggmk.device as gd
from ggmk import task as T
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.modules.nvme import DATA_OFF, E_NOFILE, MANIFEST, PART_MAX, NvmeModule, _RESP_DTYPE
from ggmk.typereg import TypeRegistry, load_module_manifest

OWN_TYPES = {"NV_ASK": 0x4E40, "NV_GOT": 0x4E41, "NV_FREE": 0x4E42, "NV_GOT_AT": 0x4E43,
             "NV_SINK": 0x4E44}


def _registry() -> TypeRegistry:
    reg = TypeRegistry()
    reg.merge(load_module_manifest(MANIFEST).types)
    for name, tid in OWN_TYPES.items():
        reg.register(name, id=tid)
    return reg


# ---------------------------------------------------------------------------- the GPU side
gpu = gd.Module("nvreader")
ASK = gpu.channel("disk.read", message="DISK_READ", mode="p2p", guarantee="lossless",
                  capacity=64)
GOT_AT = gpu.channel("nv.got", message="NV_GOT_AT", mode="p2p", guarantee="lossless",
                     capacity=64)


@gpu.handler("NV_ASK")
def nv_ask(ctx, task):
    ptr = g.alloc(ctx, 24)
    if ptr == 0:
        return g.wait_at(task, 0)
    m1 = g.meta1(task)
    tag = m1 >> 40
    g.store_i64(ctx, ptr, tag)                                   # tag       u64
    g.store_i64(ctx, ptr + 8, g.meta0(task))                     # offset    u64
    g.store_i64(ctx, ptr + 16, ((m1 >> 32) & 0xFF) | ((m1 & 0xFFFFFFFF) << 32))  # file, length
    if g.emit_chan_full(ctx, ASK, tag, 0, ptr, 24, -1) == -100:  # our reference goes with it
        g.release(ctx, ptr)
        return g.wait_at(task, 0)
    return 0


@gpu.handler("NV_GOT", consumes="disk.read.resp", message="DISK_READ_RESP")
def nv_got(ctx, task):
    ptr = g.payload_ptr(task)
    n = g.payload_len(task)
    if ptr == 0 or g.offset(ctx, ptr) < 0:
        return -2                                                # not in the device arena
    if g.emit_chan(ctx, GOT_AT, (g.meta0(task) & 0xFFFFFFFF) | (n << 32), ptr) == -100:
        return WAIT
    g.retain(ctx, ptr, 1)             # kept for the test to read; NV_FREE drops it
    return 0


@gpu.handler("NV_FREE")
def nv_free(ctx, task):
    g.release(ctx, g.meta0(task))
    return 0


# ---------------------------------------------------------------------------- the CPU side
class _Seen:
    def __init__(self):
        self.lock = threading.Lock()
        self.rows: list = []              # (tag, payload length, device address)


SEEN = _Seen()
cpu = ggmk.Module("nvsink")


@cpu.handler("NV_SINK", consumes="nv.got", message="NV_GOT_AT", batch=True)
def nv_sink(ctx, batch):
    r = batch.records
    with SEEN.lock:
        for m0, m1 in zip(r["meta0"].tolist(), r["meta1"].tolist()):
            SEEN.rows.append((m0 & 0xFFFFFFFF, m0 >> 32, m1))


def _diag(s, nvme) -> str:
    """What each side saw, for a failure message."""
    st = nvme.stats()
    st.pop("storage", None)
    b = s.stats()["bridge"]
    return (f"rows {sorted(SEEN.rows)}; nvme {st}; bridge "
            f"{ {k: v for k, v in b.items() if not isinstance(v, (dict, list))} }; "
            f"sys.error {len(s.dead_letters('sys.error')[0])}; "
            f"sys.dropped {len(s.dead_letters('sys.dropped')[0])}; device channels "
            f"{ {k: v for k, v in s.kernel.metrics().get('channels', {}).items()} }; "
            f"device quiet {s.device_quiet()}")


def _ask(tag, fid, offset, length):
    return T.make(1, type=OWN_TYPES["NV_ASK"], meta0=offset,
                  meta1=length | (fid << 32) | (tag << 40))


def _push_all(s, recs, wait_until) -> None:
    """Push every record to the GPU kernel: the host -> device ring is bounded and shared with
    the bridge, so ``push_device`` takes what fits now (the rest is pushed again)."""
    left = [recs]

    def step():
        if len(left[0]):
            left[0] = left[0][s.push_device(left[0]):]
    assert wait_until(lambda: len(left[0]) == 0, timeout=60, step=step), \
        f"{len(left[0])} of {len(recs)} records not pushed"


def test_gpu_module_reads_file_into_device_arena(tmp_path, wait_until):
    data = np.random.default_rng(17).integers(0, 256, 300_000, dtype=np.uint8)
    path = tmp_path / "blob.bin"
    data.tofile(path)
    nvme = NvmeModule(workers=2, fast_threads=2)
    fid = nvme.register(path)
    SEEN.rows.clear()
    s = ggmk.dual.boot([nvme, cpu, gpu], device="cpu", types=_registry(), workers=2)
    try:
        asks = {1: (0, 4096), 2: (4097, 10_000), 3: (123_456, 100_000),   # unaligned, large
                4: (299_000, 4096),                                       # short: 1000 bytes
                5: (0, 4096),                                             # unknown file
                6: (10, 200_000)}                          # two parts: PART_MAX + the rest
        _push_all(s, np.concatenate([_ask(tag, fid if tag != 5 else 99, off, ln)
                                     for tag, (off, ln) in asks.items()]), wait_until)
        assert s.run(timeout=300)
        # every answer has arrived once the system is idle; the wait (driving run()) is a
        # safety net that turns a lost answer into a failure naming what each side saw
        assert wait_until(lambda: len(SEEN.rows) >= len(asks) + 1, timeout=120,
                          step=lambda: s.run(timeout=2)), _diag(s, nvme)
        with SEEN.lock:
            rows = sorted(SEEN.rows)
        assert [t for t, _, _ in rows] == sorted(list(asks) + [6])
        got: dict = {}
        for tag, plen, addr in rows:
            raw = s.kernel.read_arena(addr, plen)                 # the bytes in device memory
            h = np.frombuffer(raw[:DATA_OFF].tobytes(), _RESP_DTYPE)[0]
            off, ln = asks[tag]
            part, parts = int(h["part"]), int(h["parts"])
            assert int(h["tag"]) == tag and int(h["offset"]) == off + part * PART_MAX
            assert parts == (2 if tag == 6 else 1)
            if tag == 5:
                assert int(h["status"]) == E_NOFILE and int(h["length"]) == 0
                continue
            po = int(h["offset"])
            want = data[po:min(po + int(h["requested"]), off + ln)]
            assert int(h["status"]) == 0 and int(h["file"]) == fid
            assert int(h["requested"]) == min(PART_MAX, ln - part * PART_MAX)
            assert int(h["length"]) == len(want) and plen == DATA_OFF + len(want)
            assert np.array_equal(raw[DATA_OFF:], want)           # byte for byte
            got[tag] = got.get(tag, 0) + len(want)
        assert got == {1: 4096, 2: 10_000, 3: 100_000, 4: 1000, 6: 200_000}
        _push_all(s, T.make(len(rows), type=OWN_TYPES["NV_FREE"],
                            meta0=np.array([a for _, _, a in rows], np.uint64)), wait_until)
        assert s.run(timeout=120)
        st = nvme.stats()
        assert st["reads"] == 6 and st["responses"] == 7 and st["in_flight"] == 0
        assert st["errors"] == 1                                  # the unknown file id
        assert st["storage"]["ops"]["read"] == 6                  # tag 6: two parts
        err, _ = s.dead_letters("sys.error")
        assert len(err) == 0
        b = s.stats()["bridge"]
        assert b["payload_copies"] >= 13                          # 6 requests up, 7 answers down
    finally:
        s.halt()
