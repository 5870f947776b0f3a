"""A write that fails part way says how much reached the file (audit s18, storage defect 1).

The file system's limit is RLIMIT_FSIZE in a child process (SIGXFSZ ignored): a write that
crosses it is cut short at the limit and the next write fails with EFBIG, a real partial
write on any file system. The result said ``nbytes == 0`` although bytes were in the file;
now ``nbytes`` (and ``error.written``) counts the bytes from the request's offset on that
reached the file, ``regions`` lists every range written, and the error names file, offset
and errno and says what was written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

LIMIT = 10_000
_SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))

_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, {src!r})
    import numpy as np
    from ggmk.storage import Storage, StorageError, WriteRequest
    d, o_direct = sys.argv[1], {{"auto": "auto", "off": False}}[sys.argv[2]]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    src = (np.arange(1 << 15) % 251).astype(np.uint8)
    out = {{}}

    def res(r):
        e = r.error
        return {{"status": r.status, "nbytes": r.nbytes, "regions": r.regions,
                 "kind": e and e.kind, "errno": e and e.errno, "written": e and e.written,
                 "msg": e and str(e)}}

    # a batch: one write fits, one crosses the limit, one starts past it
    p = os.path.join(d, "batch.bin")
    with Storage(workers=2, o_direct=o_direct) as st:
        b = st.submit([WriteRequest(p, 0, src[:8192]), WriteRequest(p, 8192, src[:8192]),
                       WriteRequest(p, 16384, src[:4096])])
        out["batch"] = [res(r) for r in b.wait(60)]
        out["batch_stats"] = st.stats()["bytes"]["written"]
    # one write cut in segments that run on several workers: past the limit they all fail
    q = os.path.join(d, "segs.bin")
    with Storage(workers=3, o_direct=o_direct, segment_size=4096, direct_chunk=4096) as st:
        out["segs"] = res(st.submit([WriteRequest(q, 0, src[:20000])]).wait(60)[0])
        try:
            st.write(q, 12288, src[:100])          # Storage.write raises: the error says it
        except StorageError as e:
            out["raised"] = {{"written": e.written, "kind": e.kind, "msg": str(e)}}
    print(json.dumps(out))
""")


def _run_child(d, o_direct):
    code = _CHILD.format(src=_SRC, limit=LIMIT)
    out = subprocess.run([sys.executable, "-c", code, str(d), o_direct], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("o_direct", ["auto", "off"])
def test_a_write_cut_short_reports_the_bytes_that_reached_the_file(tmp_path, o_direct):
    got = _run_child(tmp_path, o_direct)
    src = bytes((i % 251) for i in range(1 << 15))
    ok, cut, past = got["batch"]
    assert (ok["status"], ok["nbytes"], ok["regions"]) == ("ok", 8192, [[0, 8192, "written"]])
    # crossed the limit: 1808 bytes are in the file, and the result says so
    assert cut["status"] == "error" and cut["kind"] == "file_too_large" and cut["errno"] == 27
    assert cut["nbytes"] == cut["written"] == LIMIT - 8192
    assert cut["regions"] == [[8192, LIMIT - 8192, "written"]]
    p = str(tmp_path / "batch.bin")
    for words in (p, "[8192, 16384)", f"at file offset {LIMIT}", "[Errno 27]",
                  f"{LIMIT - 8192} of its 8192 bytes reached the file: [8192, {LIMIT})"):
        assert words in cut["msg"], (words, cut["msg"])
    # started past the limit: nothing written, and the error says that too
    assert past["status"] == "error" and past["nbytes"] == 0 and past["written"] == 0
    assert past["regions"] == [] and "none of its 4096 bytes reached the file" in past["msg"]
    with open(p, "rb") as f:
        assert f.read() == src[:8192] + src[:LIMIT - 8192]
    assert got["batch_stats"] == LIMIT              # counted: every byte that is in the file

    segs = got["segs"]                              # segments on 3 workers, merged in order
    assert segs["status"] == "error" and segs["kind"] == "file_too_large"
    assert segs["nbytes"] == segs["written"] == LIMIT
    assert segs["regions"] == [[0, LIMIT, "written"]]
    assert f"{LIMIT} of its 20000 bytes reached the file: [0, {LIMIT})" in segs["msg"]
    with open(tmp_path / "segs.bin", "rb") as f:
        assert f.read() == src[:LIMIT]
    assert got["raised"]["written"] == 0 and got["raised"]["kind"] == "file_too_large"
    assert "none of its 100 bytes reached the file" in got["raised"]["msg"]


def test_a_write_cancelled_mid_flight_reports_what_it_wrote(tmp_path):
    import threading

    import numpy as np

    from ggmk.storage import Storage, WriteRequest
    running, go = threading.Event(), threading.Event()

    def hook(index, pos):               # after the first 4096-byte chunk: held once
        if not running.is_set():
            running.set()
            assert go.wait(30)
    src = (np.arange(16384) % 249).astype(np.uint8)
    p = tmp_path / "c.bin"
    with Storage(workers=1, direct_chunk=4096, chunk_hook=hook) as st:
        b = st.submit([WriteRequest(p, 0, src)])
        assert running.wait(30)
        assert b.cancel() == 1
        go.set()
        r = b.wait(30)[0]
        assert r.status == "cancelled" and r.nbytes == r.error.written == 4096
        assert r.regions == [(0, 4096, "written")]
        assert "mid-flight; 4096 of its 16384 bytes reached the file: [0, 4096)" in str(r.error)
        assert st.stats()["bytes"]["written"] == 4096
    assert p.read_bytes() == src[:4096].tobytes()
