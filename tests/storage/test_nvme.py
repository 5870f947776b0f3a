"""The nvme module on the CPU kernel: disk.read / disk.write served asynchronously by the
storage pool, responses on disk.read.resp / disk.write.resp with the data as arena payloads."""
from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import make_file, punch_hole

import ggmk
from ggmk import ALLOC_FAIL
from ggmk.modules.nvme import E_NOFILE, PART_MAX, WRITE_SYNC, NvmeModule


def _client(requests, writes=()):
    """A module that sends ``requests`` (dicts) on disk.read and ``writes`` on disk.write when
    it gets a KICK task, and collects every response (decoded) in ``got``/``wrote``."""
    app = ggmk.Module("client")
    rd = app.produces("disk.read", "DISK_READ")
    wr = app.produces("disk.write", "DISK_WRITE")
    got, wrote = [], []

    @app.handler("KICK")
    def kick(ctx):
        for q in writes:
            assert ctx.emit(wr, payload=q) == ggmk.OK
        for q in requests:
            assert ctx.emit(rd, payload=q) == ggmk.OK

    @app.handler("CLIENT_READ", batch=True, consumes="disk.read.resp", message="DISK_READ_RESP")
    def on_read(ctx, batch):
        info = ctx.system.types.info("DISK_READ_RESP")
        for ptr, ln, m0, m1 in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist(),
                                   batch.meta0.tolist(), batch.meta1.tolist()):
            d = info.decode(bytes(ctx.system.arena.view(ptr, ln)))
            assert (m0, m1) == (d["tag"], d["length"])
            got.append(d)

    @app.handler("CLIENT_WROTE", consumes="disk.write.resp", message="DISK_WRITE_RESP")
    def on_wrote(ctx):
        wrote.append(ctx.system.types.info("DISK_WRITE_RESP").decode(
            bytes(ctx.system.arena.view(ctx.task.payload_ptr, ctx.task.payload_len))))

    return app, got, wrote


def test_reads_multi_part_sparse_short_and_errors(disk_dir, rng):
    data = rng.integers(0, 256, 700_000, dtype=np.uint8)
    p = make_file(disk_dir / "d.bin", data)
    punch_hole(p, 256 << 10, 128 << 10)
    data[256 << 10:384 << 10] = 0
    nvme = NvmeModule(workers=2)
    fid = nvme.register(p)
    gone = nvme.register(disk_dir / "not-there.bin", lazy=True)
    reqs = [
        {"tag": 1, "offset": 0, "file": fid, "length": 4096},
        {"tag": 2, "offset": 13, "file": fid, "length": 1001},
        {"tag": 3, "offset": 5, "file": fid, "length": 3 * PART_MAX + 77},   # 4 parts, sparse
        {"tag": 4, "offset": 699_000, "file": fid, "length": 5000},          # short
        {"tag": 5, "offset": 0, "file": gone, "length": 10},                  # missing file
        {"tag": 6, "offset": 0, "file": 999, "length": 10},                   # unknown id
        {"tag": 7, "offset": 800_000, "file": fid, "length": 10},             # past EOF
    ]
    app, got, _ = _client(reqs)
    with ggmk.boot([nvme, app], workers=2) as system:
        base = system.arena.live_count()
        system.submit("KICK")
        assert system.run(timeout=60)
        by = {}
        for d in got:
            by.setdefault(d["tag"], []).append(d)
        for q in reqs[:4]:
            parts = sorted(by[q["tag"]], key=lambda d: d["part"])
            assert {d["parts"] for d in parts} == {len(parts)}
            assert all(d["status"] == 0 for d in parts)
            blob = b"".join(bytes(d["data"]) for d in parts)
            assert blob == data[q["offset"]:q["offset"] + q["length"]].tobytes()
            for d in parts:
                assert d["length"] == len(d["data"])
                assert d["offset"] == q["offset"] + d["part"] * PART_MAX
        assert len(by[3]) == 4
        assert by[4][0]["length"] == 1000 and by[4][0]["requested"] == 5000
        assert by[5][0]["status"] == E_NOFILE and by[5][0]["errno"] == 2
        assert by[6][0]["status"] == E_NOFILE
        assert by[7][0]["status"] == 0 and by[7][0]["length"] == 0
        s = nvme.stats()
        assert s["reads"] == 7 and s["in_flight"] == 0
        # every handler batch's reads went as one read_batch (fast path), none one by one
        assert 1 <= s["read_batches"] <= 6 and s["storage"]["fast_batches"] == s["read_batches"]
        assert s["storage"]["ops"]["read"] == 9      # parts: 1 + 1 + 4 + 1 + 1 + 1 (tag 6: none)
        assert s["storage"]["errors"]["not_found"] == 1
        assert system.arena.live_count() == base            # every payload released
        recs, codes = system.dead_letters()
        assert len(recs) == 0


def test_write_then_read(disk_dir, rng):
    data = rng.integers(0, 256, 50_000, dtype=np.uint8)
    p = disk_dir / "w.bin"
    p.write_bytes(b"")
    nvme = NvmeModule(workers=2)
    fid = nvme.register(p, write=True)
    writes = [{"tag": 10, "offset": 0, "file": fid, "flags": WRITE_SYNC, "data": data.tobytes()},
              {"tag": 11, "offset": 8192, "file": 4242, "flags": 0, "data": b"x"}]
    app, got, wrote = _client([], writes)
    with ggmk.boot([nvme, app], workers=2) as system:
        system.submit("KICK")
        assert system.run(timeout=60)
        w = {d["tag"]: d for d in wrote}
        assert w[10]["status"] == 0 and w[10]["length"] == len(data)
        assert w[11]["status"] == E_NOFILE
        assert p.read_bytes() == data.tobytes()
        system.channel("disk.read").publish(payload={"tag": 12, "offset": 100, "file": fid,
                                                     "length": 300})
        assert system.run(timeout=60)
        assert bytes(got[0]["data"]) == data[100:400].tobytes()


def test_arena_full_gives_alloc_fail_response(disk_dir, rng):
    data = rng.integers(0, 256, 300_000, dtype=np.uint8)
    p = make_file(disk_dir / "a.bin", data)
    nvme = NvmeModule(workers=1)
    fid = nvme.register(p)
    app, got, _ = _client([{"tag": 1, "offset": 0, "file": fid, "length": 100_000}])
    with ggmk.boot([nvme, app], workers=2, arena_size=4 << 20) as system:
        held = []
        while (ptr := system.arena.alloc(100 << 10)):
            held.append(ptr)
        system.submit("KICK")
        assert system.run(timeout=60)
        assert got[0]["status"] == ALLOC_FAIL and got[0]["length"] == 0
        system.arena.release_many(np.array(held, np.uint64))


@pytest.mark.cuda
def test_nvme_boots_with_gpu_present(disk_dir, rng):
    """On a GPU machine the module's storage reports GDS availability (may be False without
    libcufile) and still serves reads."""
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    p = make_file(disk_dir / "g.bin", data)
    nvme = NvmeModule()
    fid = nvme.register(p)
    app, got, _ = _client([{"tag": 1, "offset": 0, "file": fid, "length": 10_000}])
    with ggmk.boot([nvme, app], workers=2) as system:
        system.submit("KICK")
        assert system.run(timeout=60)
        assert bytes(got[0]["data"]) == data.tobytes()
        assert "available" in nvme.stats()["storage"]["gds"]


def test_many_reads_one_batch_byte_for_byte(disk_dir, rng):
    """64 reads published at once (random unaligned ranges over two files, with bad ones in
    the middle: an unregistered id, a missing lazy file, past the end): every request gets its
    own response, the data byte for byte, the errors per request; the storage saw them as
    fast-path batches (many reads per batch), and every payload went back to the arena."""
    a = rng.integers(0, 256, 400_000, dtype=np.uint8)
    b = rng.integers(0, 256, 123_457, dtype=np.uint8)
    pa, pb = make_file(disk_dir / "a.bin", a), make_file(disk_dir / "b.bin", b)
    nvme = NvmeModule(workers=2, fast_threads=4)
    fa, fb = nvme.register(pa), nvme.register(pb, lazy=True)
    gone = nvme.register(disk_dir / "gone.bin", lazy=True)
    files = {fa: a, fb: b}
    reqs = []
    for tag in range(64):
        fid = (fa, fb)[tag % 2]
        n = len(files[fid])
        off = int(rng.integers(0, n + 100))
        reqs.append({"tag": tag, "offset": off, "file": fid,
                     "length": int(rng.integers(0, 20_000))})
    reqs[20]["file"] = 777                               # unknown id
    reqs[31]["file"] = gone                              # missing file
    reqs[40].update(offset=10 ** 9)                      # past the end
    app, got, _ = _client(reqs)
    with ggmk.boot([nvme, app], workers=2) as system:
        base = system.arena.live_count()
        system.submit("KICK")
        assert system.run(timeout=60)
        by = {d["tag"]: d for d in got}
        assert len(got) == len(reqs) == len(by)              # one part each (< PART_MAX)
        for q in reqs:
            d = by[q["tag"]]
            if q["tag"] == 20:
                assert d["status"] == E_NOFILE and d["length"] == 0
            elif q["tag"] == 31:
                assert d["status"] == E_NOFILE and d["errno"] == 2
            else:
                want = files[q["file"]][q["offset"]:q["offset"] + q["length"]].tobytes()
                assert d["status"] == 0 and d["requested"] == q["length"]
                assert bytes(d["data"]) == want and d["length"] == len(want)
        s = nvme.stats()
        assert s["reads"] == 64 and s["in_flight"] == 0 and s["errors"] == 2
        st = s["storage"]
        assert st["fast_batches"] == s["read_batches"] and st["ops"]["read"] == 63
        assert st["batches"]["max"] > 1                       # several reads in one batch
        assert st["errors"]["not_found"] == 1
        assert system.arena.live_count() == base
        recs, codes = system.dead_letters()
        assert len(recs) == 0
