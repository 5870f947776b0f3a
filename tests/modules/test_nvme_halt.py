"""nvme and halt() (audit s17): requests published just before halt() are drained by it and
answered. A handler's first emit that names a channel declaration while halt drains was
refused ("closed, the system has halted"), so every read and write published right before the
halt went to sys.error with HANDLER_EXCEPTION instead of being answered. The kernel now
resolves such a first emit (``System._resolve_channel``) and nvme emits to its declarations
(it no longer looks its response channels up at boot): this test guards the kernel's fix."""
from __future__ import annotations

import numpy as np

import ggmk
from ggmk.modules.nvme import NvmeModule

WAIT = 30.0


def test_requests_published_just_before_halt_are_answered(tmp_path):
    data = np.arange(50_000, dtype=np.uint32).view(np.uint8)
    p = tmp_path / "a.bin"
    data.tofile(p)
    pw = tmp_path / "w.bin"
    nvme = NvmeModule(workers=2)
    fid = nvme.register(p)
    fw = nvme.register(pw, write=True, create=True)
    app = ggmk.Module("client")
    got, wrote = {}, []

    @app.handler("CLIENT_READ", batch=True, consumes="disk.read.resp",
                 message="DISK_READ_RESP")
    def on_read(ctx, batch):
        info = ctx.system.types.info("DISK_READ_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            d = info.decode(bytes(ctx.system.arena.view(ptr, ln)))
            got[d["tag"]] = d

    @app.handler("CLIENT_WROTE", batch=True, consumes="disk.write.resp",
                 message="DISK_WRITE_RESP")
    def on_wrote(ctx, batch):
        wrote.extend(batch.meta0.tolist())

    system = ggmk.boot([nvme, app], workers=2)
    try:
        for t in range(10):                  # nothing emitted on the response channels yet
            system.channel("disk.read").publish(payload={"tag": t, "offset": t * 1000,
                                                         "file": fid, "length": 1000})
        system.channel("disk.write").publish(payload={"tag": 99, "offset": 0, "file": fw,
                                                      "flags": 0, "data": b"written"})
    finally:
        report = system.halt(timeout=WAIT)
    recs, codes = system.dead_letters("sys.error")
    assert list(codes) == [] and system.stats()["exceptions"] == 0, list(system.exceptions)
    assert report["drained"] and report["halted"] == 0
    assert sorted(got) == list(range(10)) and wrote == [99]
    for t, d in got.items():
        assert d["status"] == 0
        assert bytes(d["data"]) == data[t * 1000:t * 1000 + 1000].tobytes()
    assert pw.read_bytes() == b"written"
    assert nvme.stats()["in_flight"] == 0
