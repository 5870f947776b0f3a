"""Issue 12, halt loses nothing accepted: ``halt()`` while a GPU -> CPU lossless channel is
backed up into the GPU kernel (its CPU consumer stalled). Every message the device channel
accepted (``emitted`` in the stopped kernel's final metrics) is delivered, or on sys.error or
sys.dropped with a reason. The messages still on the device channel were counted nowhere
(64 of 5,440 here, the channel's capacity), and an in-process GPU kernel's halt accounted for
nothing inside it at all; now each is named on sys.error with HALTED as a record of the
channel's type carrying its channel seq (their contents died with the kernel)."""
import numpy as np
import pytest

from ggmk import task as T
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, gen, wait_for

N = 20_000
FULL = W.GPU_OUT_CAPACITY - W.GPU_OUT_CAPACITY // 10     # (the last 10% is for priority 0)


@pytest.mark.parametrize("device_process", [True, False], ids=["device_process", "in_process"])
def test_halt_names_every_message_left_inside_the_gpu_kernel(device_process):
    s = boot(device_process=device_process)
    try:
        W.REC.gate.clear()                    # SINK stalls: gpu.out backs up into the GPU kernel
        gen(s, "GEN", N)
        wait_for(lambda: s.kernel.chan_depth("gpu.out") >= FULL, what="gpu.out full on device")
    finally:
        # the stalled SINK goes on (halt joins the CPU workers: a handler blocked for good
        # would hold it); the bridge stops first, so no credit reaches the device any more
        # and GEN keeps gpu.out full there until the kernel stops
        W.REC.gate.set()
        rep = s.halt(timeout=0)
    emitted = s._last_gpu["channels"]["gpu.out"]["emitted"]
    assert rep["device_halted"] >= FULL
    # a message is a READING on gpu.out, or a SINK task once its CPU channel delivered it
    mine = (W.TYPES["READING"], W.TYPES["SINK"])
    err, ecodes = s.cpu.dead_letters("sys.error")
    drop, dcodes = s.cpu.dead_letters("sys.dropped")
    me, md = np.isin(err["type"], mine), np.isin(drop["type"], mine)
    assert set(np.asarray(ecodes)[me].tolist()) <= {T.HALTED}
    assert set(np.asarray(dcodes)[md].tolist()) <= {T.CHAN_CLOSED}
    named = (err["type"] == W.TYPES["READING"]) & (err["meta0"] == 0) & (err["meta1"] == 0)
    # the generator was still waiting for room: named too, as a task of its own type
    assert rep["device_tasks"] == {W.TYPES["GEN"]: 1}
    assert int(((err["type"] == W.TYPES["GEN"]) & (np.asarray(ecodes) == T.HALTED)).sum()) == 1
    assert int(named.sum()) >= rep["device_halted"] - 1
    got = len(W.REC.sink_val) + int(me.sum()) + int(md.sum())
    assert got == emitted, f"{len(W.REC.sink_val)} delivered + {int(me.sum())} on sys.error " \
                           f"+ {int(md.sum())} on sys.dropped, of {emitted} accepted"
