"""nvme and reset_module (``ggmk mod reset nvme``, audit s17): init runs again in the same
system; the module keeps its storage pool (a second pool was created and the first one's
threads and bounce buffers ran on for good, never closed), and still serves reads."""
from __future__ import annotations

import threading

import ggmk
from ggmk.modules.nvme import NvmeModule

WAIT = 30.0


def _storage_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("ggmk-storage")}


def test_reset_keeps_the_storage_pool(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(bytes(range(256)) * 4)
    nvme = NvmeModule(workers=2)
    fid = nvme.register(p)
    app = ggmk.Module("client")
    got = []

    @app.handler("CLIENT_READ", batch=True, consumes="disk.read.resp",
                 message="DISK_READ_RESP")
    def on_read(ctx, batch):
        info = ctx.system.types.info("DISK_READ_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            got.append(info.decode(bytes(ctx.system.arena.view(ptr, ln))))

    before = _storage_threads()
    with ggmk.boot([nvme, app], workers=2) as system:
        st = nvme.storage
        mine = _storage_threads() - before
        system.reset_module("nvme")
        assert nvme.storage is st and not st._closed
        assert _storage_threads() - before == mine          # no second pool
        system.channel("disk.read").publish(payload={"tag": 1, "offset": 10, "file": fid,
                                                     "length": 20})
        assert system.run(timeout=WAIT)
        assert [(d["tag"], d["status"], bytes(d["data"])) for d in got] == \
            [(1, 0, bytes(range(10, 30)))]
    assert st._closed                                       # closed by the halt
    for t in mine:
        t.join(WAIT)
    assert not (_storage_threads() - before)
