"""nvme: a disk.write that fails part way answers with the bytes that reached the file (audit
s18, storage defect 1): its response said ``length == 0`` although the file held part of the
data. RLIMIT_FSIZE in a child process (SIGXFSZ ignored) cuts the write short at the limit,
then fails it with EFBIG: a real partial write on any file system."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

LIMIT = 10_000
_SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))

_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, {src!r})
    import ggmk
    from ggmk.modules.nvme import NvmeModule
    path = sys.argv[1]
    nvme = NvmeModule(workers=2)
    fid = nvme.register(path, write=True, create=True)
    app = ggmk.Module("client")
    wrote = []

    @app.handler("CLIENT_WROTE", batch=True, consumes="disk.write.resp",
                 message="DISK_WRITE_RESP")
    def on_wrote(ctx, batch):
        info = ctx.system.types.info("DISK_WRITE_RESP")
        for ptr, ln in zip(batch.payload_ptr.tolist(), batch.payload_len.tolist()):
            d = info.decode(bytes(ctx.system.arena.view(ptr, ln)))
            wrote.append({{k: int(d[k]) for k in ("tag", "offset", "status", "errno",
                                                  "length")}})

    with ggmk.boot([nvme, app], workers=2) as system:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        for tag, off, n in ((1, 0, 8192), (2, 8192, 8192), (3, 16384, 100)):
            system.channel("disk.write").publish(payload={{
                "tag": tag, "offset": off, "file": fid, "flags": 0,
                "data": bytes(i % 251 for i in range(n))}})
        ran = system.run(timeout=60)
        errors = len(system.dead_letters("sys.error")[0])
        in_flight = nvme.stats()["in_flight"]
    print(json.dumps({{"ran": ran, "wrote": wrote, "errors": errors, "in_flight": in_flight}}))
""")


def test_a_write_cut_short_answers_the_bytes_written(tmp_path):
    from ggmk.modules.nvme import E_TOOBIG
    p = tmp_path / "w.bin"
    out = subprocess.run([sys.executable, "-c", _CHILD.format(src=_SRC, limit=LIMIT), str(p)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ran"] and got["errors"] == 0 and got["in_flight"] == 0
    by = {d["tag"]: d for d in got["wrote"]}
    assert sorted(by) == [1, 2, 3]                             # every request answered
    assert (by[1]["status"], by[1]["length"]) == (0, 8192)
    assert (by[2]["status"], by[2]["errno"], by[2]["length"]) == (E_TOOBIG, 27, LIMIT - 8192)
    assert (by[3]["status"], by[3]["errno"], by[3]["length"]) == (E_TOOBIG, 27, 0)
    assert p.stat().st_size == LIMIT
    assert p.read_bytes()[8192:] == bytes(i % 251 for i in range(LIMIT - 8192))
