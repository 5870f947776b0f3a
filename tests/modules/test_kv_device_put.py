"""Puts with a payload on the GPU kv (``kv.device_module``): the value's little-endian bytes
(at most 8; longer answers TOO_BIG), meta1 = the tag, answered with the tag, as the CPU kv
answers them (its answers are the reference); and ``sdk.KV.put`` / ``get`` (which send that
form) through a dual boot against the device kv on channels.

The device runs happen in a subprocess of this file (``python test_kv_device_put.py MODE``),
as ``test_devstd_fixes.py`` runs its own: ``cpu`` / ``sim`` a device kernel on that target,
``dual`` a dual boot on the ``cpu`` target."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")

from ggmk import task as T  # noqa: E402
from ggmk.modules import kv  # noqa: E402

U64 = (1 << 64) - 1
CAP = 4


def requests() -> list:
    """(op, key, meta1, payload or None), in order: payload puts of 1, 8 (high bit set) and 9
    bytes, an inline put, a payload put of an existing key (an update), payload puts into a
    full table, then gets of each key."""
    return [("KV_PUT", 1, 11, b"\x05"),
            ("KV_PUT", 2, 12, bytes([0x01, 2, 3, 4, 5, 6, 7, 0xFF])),
            ("KV_PUT", 3, 13, b"123456789"),                 # TOO_BIG, nothing stored
            ("KV_PUT", 4, 700, None),                        # inline: tag 0
            ("KV_PUT", 1, (7 << 48) | 14, b"\x34\x12"),      # the tag is meta1's low 48 bits
            ("KV_PUT", 5, 15, b"\x00\x00\x01"),
            ("KV_PUT", 6, 16, b"\x09"),                      # the fifth key: FULL
            ("KV_GET", 1, 21, None), ("KV_GET", 2, 22, None), ("KV_GET", 3, 23, None),
            ("KV_GET", 4, 24, None), ("KV_GET", 5, 25, None), ("KV_GET", 6, 26, None)]


def _answer(m0, m1) -> list:
    return list(kv.unpack(int(m0) & U64)) + [int(m1) & U64]


def cpu_answers() -> list:
    from ggmk.testing import Sandbox
    out = []
    with Sandbox(kv.module(capacity=CAP)) as sb:
        for t, key, m1, pl in requests():
            sb.feed(t, meta0=key, meta1=m1, payload=pl)
            sb.run()
            (e,) = sb.take("kv.resp")
            out.append(_answer(e.meta0, e.meta1))
    return out


def run_device(target: str) -> dict:
    """Each request alone (the answers' order is the requests'); a payload in a block from
    KV_ALLOC, which stays the host's (it reads it back unchanged)."""
    import numpy as np

    import ggmk.device as gd
    ids = kv.type_ids()
    out = []
    with gd.DeviceKernel([kv.device_module(capacity=CAP)], target=target) as k:
        for t, key, m1, pl in requests():
            ptr = n = 0
            if pl is not None:
                k.push(T.make(1, type=ids["KV_ALLOC"], meta0=len(pl), meta1=0))
                r = k.pull_until(1, timeout=600)
                assert int(r["type"][0]) == ids["KV_BUFFER"], r
                ptr, n = int(r["meta0"][0]), len(pl)
                assert ptr != 0
                k.write_arena(ptr, pl)
            k.push(T.make(1, type=ids[t], meta0=key, meta1=np.uint64(m1), payload_ptr=ptr,
                          payload_len=n))
            r = k.pull_until(1, timeout=600)
            assert int(r["type"][0]) == ids["KV_RESP"], r
            out.append(_answer(r["meta0"][0], r["meta1"][0]))
            if pl is not None:
                assert bytes(k.read_arena(ptr, n)) == pl
    return {"answers": out}


def run_dual(device_process=None) -> dict:
    """sdk.KV against the device kv on channels (a CPU module produces kv.put/get/del and
    consumes kv.resp, so the bridge carries them); ``device_process`` as ``ggmk.boot``'s."""
    import ggmk
    from ggmk import sdk
    from ggmk.modules import registry
    heard = []
    host = ggmk.Module("kvhost")
    for c, t in (("kv.put", "KV_PUT"), ("kv.get", "KV_GET"), ("kv.del", "KV_DEL")):
        host.produces(c, t, mode="p2p", guarantee="lossless")

    @host.handler("KVH_SINK", batch=True, consumes="kv.resp", message="KV_RESP")
    def sink(ctx, batch):
        heard.extend(kv.unpack(a) for a in batch.meta0.tolist())

    out = {}
    with ggmk.boot([kv.device_module(capacity=CAP, channels=True), host], device="cpu",
                   workers=2, types=registry("kv"), device_process=device_process) as s:
        out["process"] = s.process is not None and s.watchdog is None
        cl = sdk.KV(s.cpu, timeout=60.0)
        cl.put(5, 555)
        cl.put(6, U64)
        cl.put(7, b"\x01\x02")
        try:
            cl.put(8, b"123456789")
            out["too_big"] = "no error"
        except sdk.KV.KVError as e:
            out["too_big"] = str(e)
        out["got"] = [cl.get(5), cl.get(6), cl.get(7), cl.get(8)]
        s.run()
    out["heard_puts"] = sorted(x for x in heard if x[1] == kv.OP_PUT)
    return out


def _run(mode: str, timeout: int = 1500) -> dict:
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    if mode == "sim":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    p = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _check(r):
    cpu = cpu_answers()
    assert cpu[2][0] == kv.TOO_BIG and cpu[6][0] == kv.FULL      # the reference's refusals
    assert r["answers"] == cpu


@pytest.mark.timeout(1500)
def test_payload_puts_answer_as_the_cpu_kv_cpu():
    _check(_run("cpu"))


@pytest.mark.timeout(1500)
def test_payload_puts_answer_as_the_cpu_kv_sim():
    pytest.importorskip("numba.cuda")
    _check(_run("sim"))


@pytest.mark.timeout(1500)
def test_sdk_kv_put_get_against_the_device_kv():
    r = _run("dual")
    assert r["got"] == [555, U64, 0x0201, None]
    assert "TOO_BIG" in r["too_big"]
    # every put was answered with its own tag (sdk.KV's tags are nonzero)
    assert len(r["heard_puts"]) == 4 and all(tag != 0 for _, _, tag in r["heard_puts"])


@pytest.mark.timeout(1500)
def test_sdk_kv_against_the_device_kv_in_a_device_process():
    """The device kv's handlers are closures: the child rebuilds it from its factory's
    arguments (no watchdog here: ``device_process=True`` alone)."""
    r = _run("dualproc")
    assert r["process"]
    assert r["got"] == [555, U64, 0x0201, None]
    assert "TOO_BIG" in r["too_big"]
    assert len(r["heard_puts"]) == 4 and all(tag != 0 for _, _, tag in r["heard_puts"])


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sim":
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    print(json.dumps({"cpu": lambda: run_device("cpu"), "sim": lambda: run_device("sim"),
                      "dual": run_dual, "dualproc": lambda: run_dual(True)}[mode]()))
