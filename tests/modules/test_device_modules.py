"""The GPU-kernel versions of kv and echo, on the device kernel's ``cpu`` target.

One kernel (one compile, ~30 s) holds kv, a round-robin echo with a tap, and a sink that
reports what the channels delivered to the host."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

import ggmk.device as gd  # noqa: E402
from ggmk import task  # noqa: E402
from ggmk.device import api as g  # noqa: E402
from ggmk.device.host import SYS_DROPPED, error_code  # noqa: E402
from ggmk.errors import BootError  # noqa: E402
from ggmk.task import CHAN_FULL  # noqa: E402
from ggmk.modules import echo, kv  # noqa: E402

IDS = kv.type_ids()
SEEN, TAPPED = 901, 902


def _modules():
    store = kv.device_module(capacity=64)
    fwd = echo.device_module(["d.a", "d.b"], mode="round_robin", tap="d.tap", capacity=16)
    sink = gd.Module("sink")

    @sink.handler(900, consumes=("d.a", "d.b"))
    def seen(ctx, task):
        g.emit_host(ctx, SEEN, g.meta0(task), g.channel(task))
        return 0

    @sink.handler(903, consumes="d.tap")
    def tapped(ctx, task):
        g.emit_host(ctx, TAPPED, g.meta0(task), g.payload_len(task))
        return 0
    return [store, fwd, sink]


@pytest.fixture(scope="module")
def k():
    with gd.DeviceKernel(_modules(), target="cpu") as kern:
        yield kern


def _pull(k, n, want_type):
    out = k.pull_until(n, timeout=120)
    assert len(out) == n, out
    assert set(out["type"].tolist()) == {want_type}
    return out


def _status(out):
    return [kv.unpack(int(x))[0] for x in out["meta0"]]


@pytest.mark.timeout(900)            # builds the kernel: minutes on a cold cache
def test_device_kv_put_full_get_del(k):
    resp = IDS["KV_RESP"]
    k.push(task.make(100, type=IDS["KV_PUT"], meta0=np.arange(100) + 1000,
                     meta1=np.arange(100) * 3))
    st = _status(_pull(k, 100, resp))
    assert st.count(kv.OK) == 64 and st.count(kv.FULL) == 36       # never overwrites
    k.push(task.make(100, type=IDS["KV_GET"], meta0=np.arange(100) + 1000,
                     meta1=np.arange(100)))
    out = _pull(k, 100, resp)
    ok = [(kv.unpack(int(a))[2], int(b)) for a, b in zip(out["meta0"], out["meta1"])
          if kv.unpack(int(a))[0] == kv.OK]
    assert len(ok) == 64 and all(v == tag * 3 for tag, v in ok)
    stored = [tag + 1000 for tag, _ in ok]
    # update an existing key while full: OK; delete it; get: NOT_FOUND; put again: OK
    k.push(task.make(1, type=IDS["KV_PUT"], meta0=stored[0], meta1=777))
    assert _status(_pull(k, 1, resp)) == [kv.OK]
    k.push(task.make(2, type=IDS["KV_DEL"], meta0=[stored[0], 99999], meta1=[1, 2]))
    assert sorted(_status(_pull(k, 2, resp))) == [kv.OK, kv.NOT_FOUND]
    k.push(task.make(1, type=IDS["KV_GET"], meta0=stored[0], meta1=3))
    assert _status(_pull(k, 1, resp)) == [kv.NOT_FOUND]
    k.push(task.make(1, type=IDS["KV_PUT"], meta0=stored[0], meta1=5))
    assert _status(_pull(k, 1, resp)) == [kv.OK]
    k.push(task.make(1, type=IDS["KV_GET"], meta0=stored[0], meta1=4))
    out = _pull(k, 1, resp)
    assert _status(out) == [kv.OK] and int(out["meta1"][0]) == 5


def test_device_echo_round_robin_with_backpressure_and_tap(k):
    n = 300
    k.push(task.make(n, type=echo.type_id(), meta0=np.arange(n)))
    got = {SEEN: [], TAPPED: []}
    chans, dropped, other = [], [], []
    while len(got[SEEN]) < n or len(got[TAPPED]) + len(dropped) < n:
        out = k.pull_until(1, timeout=120)
        assert len(out), (len(got[SEEN]), len(got[TAPPED]), len(dropped))
        for r in out:
            if int(r["channel"]) == SYS_DROPPED:        # the lossy tap's overflow: counted
                dropped.append((int(r["meta0"]), int(error_code(r[None])[0])))
            elif int(r["type"]) in got:
                got[int(r["type"])].append(int(r["meta0"]))
                if int(r["type"]) == SEEN:
                    chans.append(int(r["meta1"]))
            else:
                other.append(r)
    assert other == []
    assert sorted(got[SEEN]) == list(range(n))          # each exactly once, none lost
    assert len(set(chans)) == 2                          # both outputs used
    # the tap: every message either observed or on sys.dropped with CHAN_FULL, never silent
    assert sorted(got[TAPPED] + [m0 for m0, _ in dropped]) == list(range(n))
    assert {c for _, c in dropped} <= {CHAN_FULL}


def test_device_bad_config():
    with pytest.raises(BootError, match="exceeds the 65536 user words"):
        kv.device_module(capacity=10000)
    with pytest.raises(BootError, match="1..4 distinct"):
        echo.device_module(["a.b", "c.d", "e.f", "g.h", "i.j"], mode="round_robin")
    with pytest.raises(BootError, match="exactly one output"):
        echo.device_module(["a.b", "c.d"])
