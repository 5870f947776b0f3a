"""Issue 12, a reset accounts for every message inside the GPU kernel: ``reset_device`` in the
middle of CPU -> GPU -> CPU traffic (cpu.in -> ECHO -> gpu.back). Every accepted message comes
back, or is on sys.error with BRIDGE_RESET: as the WORK message it was (ingress or ECHO not
finished), or as a BACK reply still on the device channel gpu.back (its contents died with the
kernel: a record of the channel's type carrying its seq). Those replies were counted nowhere
before: 256 of 30,000 were missing in an audit run, exactly gpu.back's capacity. The kernel is stopped before it is killed, so the counts it
publishes are final: killed while running, its workers' counters (published each at its own
time) counted up to 257 messages both delivered and lost (a CI run, and 1 run in 30 here)."""
import threading

import numpy as np

from ggmk import task as T
from ggmk.bridge import device_side as ds
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, wait_for

N = 20_000


def test_a_reset_mid_traffic_accounts_for_every_accepted_message():
    s = boot(device_process=True)
    accepted = []
    stop = threading.Event()

    def publish():
        ch = s.channel("cpu.in")
        v = 0
        while v < N and not stop.is_set():
            if ch.publish(meta0=v) == 0:
                accepted.append(v)
                v += 1
            else:                         # CHAN_FULL, or CHAN_CLOSED during the reset
                stop.wait(0.0002)
    th = threading.Thread(target=publish)
    try:
        th.start()
        wait_for(lambda: W.REC.back_n >= N // 3, what="a third of the traffic back")
        # the CPU consumer stalls: replies back up into the GPU kernel's gpu.back, where the
        # reset finds them (the messages the accounting missed)
        W.REC.back_gate.clear()
        wait_for(lambda: s.kernel.chan_depth("gpu.back", ds.TX(s.bridge.by_name["gpu.back"].k))
                 > 0, what="replies waiting on the device's gpu.back")
        acct = s.reset_device("test")
        W.REC.back_gate.set()
        th.join(120)
        assert not th.is_alive() and len(accepted) == N
        assert s.run(timeout=120)
        back = [b[0] for b in W.REC.back]
        assert len(back) == len(set(back))                       # none twice
        err, codes = s.dead_letters("sys.error")
        drop, _ = s.dead_letters("sys.dropped")
        assert len(drop) == 0
        mine = np.isin(err["type"], (W.TYPES["WORK"], W.TYPES["BACK"], W.TYPES["BACK_SINK"]))
        assert set(np.asarray(codes)[mine].tolist()) <= {T.BRIDGE_RESET}
        assert len(back) + int(mine.sum()) == N, \
            f"{len(back)} delivered + {int(mine.sum())} on sys.error, of {N} accepted " \
            f"(the reset's accounting: {acct})"
        assert s.resets["lost_in_reset"] == acct["lost"] == int(mine.sum())
    finally:
        stop.set()
        W.REC.back_gate.set()
        th.join(10)
        s.halt()
