"""A GPU -> CPU channel's credits go back to the device in batches (an eighth of the window),
even when traffic comes one message at a time: an idle pump step used to send every pending
credit, one service record (a push, a doorbell and a device wake-up) per round trip. What
must still hold: every message arrives, and the device never waits for credits left on the
host (fewer than an eighth of its window)."""
from ggmk.bridge import device_side as ds
from ggmk.bridge import pump
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot

N = 60


def test_sporadic_round_trips_send_credits_in_batches_not_one_each(monkeypatch):
    sent = []
    send = pump.Bridge._send

    def _send(self, chunk):
        sent.append(int((chunk["type"] == ds.CREDIT).sum()))
        return send(self, chunk)
    monkeypatch.setattr(pump.Bridge, "_send", _send)
    s = boot(device_process=False)
    try:
        ch, ev = s.channel("cpu.in"), W.REC.back_event
        st = next(st for st in s.bridge.outs.values() if st.bc.name == "gpu.back")
        assert st.window // 8 > N                   # (all of them fit below one batch)
        for i in range(N):
            W.REC.clear()
            assert ch.publish(meta0=i) == 0
            assert ev.wait(30), f"round trip {i} did not come back"
            assert s.run(timeout=30)                # idle: the pump's steps found nothing
        assert sum(sent) == 0, f"{sum(sent)} credit records for {N} round trips"
        assert st.grant == N                        # on the host, below an eighth
        assert s.bridge.idle()
    finally:
        s.halt()
