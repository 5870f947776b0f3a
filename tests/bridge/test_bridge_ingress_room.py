"""Issue 12, lossless across the bridge: the GPU kernel takes a CPU -> GPU message in as an
ingress task in its type bucket, and a host record that finds the bucket full is dropped at
the door (``sys.dropped``, CHAN_FULL). So the bridge must never have more ingress tasks in
flight than the bucket holds: with ``device_config={"bucket_cap": 256, ...}`` the default 1024
credits put up to 1024 there, and a lossless channel lost messages to ``sys.dropped`` (and
``run()`` never saw the system idle: the dropped tasks were never counted as done). Found
with ``bridge={"window": 65536}`` and 64 K-message device channels: 27,073 of 2 M messages
dropped, then a 600 s ``run`` timeout."""
import numpy as np

from ggmk import task as T
from ggmk.bridge import pump
from ggmk.bridge.plan import BridgeChannel, credit_window
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, publish_all

BUCKET = 256                    # device_config bucket_cap: below the default 1024 credits
# (and a small local queue: a full bucket's overflow goes there first, up to 3/4 of it)
CONFIG = {"bucket_cap": BUCKET, "local_cap": BUCKET, "batch": BUCKET}
ROOM = BUCKET - BUCKET // 10    # what a task of any priority finds there (10% kept for prio 0)
N = 20_000


def test_cpu_to_gpu_credits_stay_within_the_device_ingress_bucket():
    s = boot(device_config=CONFIG)
    try:
        assert s.stats()["bridge"]["channels"]["cpu.in"]["window"] == ROOM
        publish_all(s, "cpu.in", N)
        assert s.run(timeout=300)
        assert sorted(b[0] for b in W.REC.back) == list(range(N))      # each once
        dropped, _ = s.cpu.dead_letters("sys.dropped")
        errors, _ = s.cpu.dead_letters("sys.error")
        assert len(dropped) == 0 and len(errors) == 0
        assert s.stats()["bridge"]["channels"]["cpu.in"]["in_flight"] == 0
    finally:
        s.halt()


def test_ingress_dropped_at_the_device_door_is_accounted_and_the_system_goes_idle(monkeypatch):
    """Were credits to exceed the bucket anyway (here forced: the room ignored), what the
    device drops at the door is on sys.dropped with CHAN_FULL, counted as finished by the
    bridge (so ``run()`` returns True), and every message is delivered or dropped, once."""
    monkeypatch.setattr(pump, "credit_window",
                        lambda bc, window=None, room=None: credit_window(bc, window))
    s = boot(device_config=CONFIG)
    try:
        assert s.stats()["bridge"]["channels"]["cpu.in"]["window"] == 1024
        publish_all(s, "cpu.in", N)
        assert s.run(timeout=300)
        dropped, codes = s.cpu.dead_letters("sys.dropped")
        assert len(dropped) > 0, "no drop forced: the test no longer shows the door"
        assert set(np.asarray(codes).tolist()) == {T.CHAN_FULL}
        assert (dropped["type"] == W.TYPES["WORK"]).all(), np.unique(dropped["type"], return_counts=True)
        got = sorted([b[0] for b in W.REC.back] + dropped["meta0"].tolist())
        assert got == list(range(N))
        st = s.stats()["bridge"]["channels"]["cpu.in"]
        assert st["in_flight"] == 0 and st["dropped_on_device"] == len(dropped)
    finally:
        s.halt()


def test_credit_window_is_bounded_by_the_ingress_room():
    bc = BridgeChannel(0, "x", "c2g", 1, "X", "p2p", "lossless", 4096, None, [], False)
    assert credit_window(bc) == 1024
    assert credit_window(bc, room=230) == 230
    assert credit_window(bc, 100, room=230) == 100
    assert credit_window(bc, 8192, room=65536) == 4096      # the device channel's
    out = BridgeChannel(1, "y", "g2c", 1, "Y", "p2p", "lossless", 4096, None, [], False)
    assert credit_window(out, room=230) == 4096             # egress: not ingress room
