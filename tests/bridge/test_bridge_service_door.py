"""Issue 12, nothing lost across the bridge: the bridge's own service records (``RELEASE``,
``CREDIT``, ``ALLOC``) enter the GPU kernel as tasks in their type's bucket, as ingress does,
and one that finds the bucket full is dropped at the door (sys.dropped, CHAN_FULL). The
pump used to log such a drop as a bridge error and go on: a dropped ``RELEASE`` leaked its
device block for good, a dropped ``CREDIT`` left an egress waiting for credits that never
came, a dropped ``ALLOC`` left a payload message waiting for its block. Now a service record
refused at the door is sent again.

Forced here with a 16-slot bucket and the host's releases held back until a burst of
``2 * batch`` block addresses (64 ``RELEASE`` records in one transfer, with bridge batches
of 64): at scale the same burst comes from many payload messages copied in one round."""
from ggmk.bridge import device_side as ds
from ggmk.bridge.pump import Bridge
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, publish_all

CONFIG = {"bucket_cap": 16, "local_cap": 16, "batch": 16}
BATCH = 64
N = 1024                      # eight bursts of 128 addresses (2 x BATCH)


def test_a_service_record_refused_at_the_device_door_is_sent_again(monkeypatch):
    real = Bridge._stage_releases

    def in_bursts(self):
        if len(self._releases) >= 2 * self.batch:
            real(self)
    monkeypatch.setattr(Bridge, "_stage_releases", in_bursts)
    s = boot(device_config=CONFIG, bridge={"batch": BATCH})
    try:
        data = bytes(range(256)) * 16
        W.REC.expect_payload = data
        publish_all(s, "cpu.in", N, payload=data)
        assert s.run(timeout=60)
        back = W.REC.back
        assert sorted(b[0] for b in back) == list(range(N)) and all(b[2] for b in back)
        st = s.stats()
        b = st["bridge"]
        assert b["service_resent"] > 0, "no drop forced: the test no longer shows the door"
        assert b["errors"] == 0, list(s.bridge.errors)
        # every device block the payloads took was given back: no RELEASE was lost
        g = st["gpu"]["global"]
        assert g["alloc"] == N and g["free"] == N, g
        dropped, _ = s.cpu.dead_letters("sys.dropped")
        errors, _ = s.cpu.dead_letters("sys.error")
        assert len(dropped) == 0 and len(errors) == 0
        assert st["gpu"]["types"][ds.RELEASE]["ok"] == b["service_records"] - \
            st["gpu"]["types"][ds.CREDIT]["ok"] - st["gpu"]["types"][ds.ALLOC]["ok"]
    finally:
        s.halt()
