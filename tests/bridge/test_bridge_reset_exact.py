"""A killed GPU kernel's GPU -> CPU messages are accounted exactly once. The watchdog kills a
hung device process in the middle of CPU -> GPU -> CPU traffic (wd.in -> WD_ECHO -> wd.back,
an 8-credit window) three times. ``Bridge.reset_device`` named the messages still inside the
old kernel from the egress subscriber's in-flight count, but a killed kernel published that
count up to PUBLISH_EVERY loops before it died: messages forwarded since were counted again,
as seqs that never were (+8 to +16 records on sys.error per reset in an audit). Now the lost
seqs are those the host never received up to the channel's last published seq: no wd.back
message is both delivered and named lost, and every accepted message is delivered or on
sys.error (a hung kernel's last batch of CPU -> GPU messages may be on both: see below)."""
import collections
import threading

import numpy as np

from ggmk import task as T
from ggmk.bridge import pump
from tests.bridge import watchdog_workloads as WW
from tests.bridge.dualkit import wait_for

HANGS = 3


def test_kill_resets_mid_traffic_account_each_gpu_to_cpu_message_once(monkeypatch):
    # per GPU kernel (epoch, ended by a reset): the device seqs of wd.back the host received
    # and the ones put on sys.error
    received = collections.defaultdict(list)
    lost = collections.defaultdict(list)
    epoch = [0]
    marks, to_err, reset = pump.Bridge._marks, pump.Bridge._to_sys_error, pump.Bridge.reset_device

    def _marks(self, st, part):
        if st.bc.name == "wd.back":
            received[epoch[0]].extend(part["channel"].tolist())
        return marks(self, st, part)

    def _to_err(self, recs, code, **kw):
        lost[epoch[0]].extend(recs["seq"][recs["type"] == WW.TYPES["WD_BACK"]].tolist())
        return to_err(self, recs, code, **kw)

    def _reset(self, code, **kw):
        try:
            return reset(self, code, **kw)
        finally:
            epoch[0] += 1

    monkeypatch.setattr(pump.Bridge, "_marks", _marks)
    monkeypatch.setattr(pump.Bridge, "_to_sys_error", _to_err)
    monkeypatch.setattr(pump.Bridge, "reset_device", _reset)
    s = WW.boot(bridge={"window": 8, "batch": 4},
                watchdog={"interval_s": 0.05, "warn_after": 2, "reset_after": 8})
    accepted = []
    stop = threading.Event()
    hang = threading.Event()

    def publish():
        ch = s.channel("wd.in")
        v = 0
        while not stop.is_set():
            h = hang.is_set()
            if ch.publish(meta0=v, meta1=WW.HANG if h else 0) == 0:
                accepted.append(v)
                v += 1
                if h:
                    hang.clear()
            else:                     # CHAN_FULL, or CHAN_CLOSED during a reset
                stop.wait(0.0003)

    th = threading.Thread(target=publish)
    try:
        th.start()
        for r in range(HANGS):
            n0 = len(WW.STATE.back)
            wait_for(lambda: len(WW.STATE.back) >= n0 + 500, what="traffic back")
            hang.set()                # a handler that never returns: the watchdog kills it
            wait_for(lambda: not hang.is_set(), what="the hanging message accepted")
            wait_for(lambda: s.watchdog.c["resets"] >= r + 1 and not s.resetting(), 120,
                     what=f"reset {r + 1}")
        n0 = len(WW.STATE.back)
        wait_for(lambda: len(WW.STATE.back) >= n0 + 500, what="traffic back after the resets")
        stop.set()
        th.join(30)
        assert not th.is_alive()
        assert s.run(timeout=60)
    finally:
        stop.set()
        th.join(10)
        s.halt()
    back = list(WW.STATE.back)
    err, codes = s.cpu.dead_letters("sys.error")
    drop, _ = s.cpu.dead_letters("sys.dropped")
    codes = np.asarray(codes)
    wk, bk = err["type"] == WW.TYPES["WD_WORK"], err["type"] == WW.TYPES["WD_BACK"]
    assert not np.isin(drop["type"], (WW.TYPES["WD_WORK"], WW.TYPES["WD_BACK"])).any()
    assert set(codes[wk | bk].tolist()) <= {T.BRIDGE_RESET}
    assert len(back) == len(set(back))                          # none delivered twice
    assert epoch[0] >= HANGS
    for e, seqs in lost.items():
        assert len(seqs) == len(set(seqs))
        # no wd.back message both received (delivered) and on sys.error
        assert not set(seqs) & set(received[e]), f"reset {e}: delivered and on sys.error"
    n_err = int(wk.sum()) + int(bk.sum())
    # none lost. The watchdog kills a hung kernel at once and counts from what it last
    # published (README, "What was inside the GPU kernel"): CPU -> GPU messages the stuck
    # worker finished in its last batch, after its last publication, are also named on
    # sys.error (3 of ~3,800 in one run of 15): at most the window's 8 per reset
    excess = len(back) + n_err - len(accepted)
    assert 0 <= excess <= 8 * epoch[0], \
        f"{len(back)} delivered + {int(wk.sum())} WD_WORK + {int(bk.sum())} WD_BACK on " \
        f"sys.error, of {len(accepted)} accepted ({sum(map(len, lost.values()))} wd.back seqs named lost)"
