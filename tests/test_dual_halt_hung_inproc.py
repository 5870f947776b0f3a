"""A GPU kernel in this process (``device_process=False``) whose handler never returns: halt
gives it ``DualSystem.STOP_S`` to stop (it waited the 60 s default of ``DeviceKernel.stop``),
accounts for everything, then raises the stop's DeviceError; a second halt() returns the
report. (The stuck thread is released at the end: nothing can end it otherwise.)"""
import time

import pytest

from ggmk.bridge import device_tasks
from ggmk.device import layout
from ggmk.errors import DeviceError
from tests.bridge import watchdog_workloads as WW
from tests.bridge.dualkit import wait_for


def test_halt_of_a_hung_in_process_kernel_is_bounded_and_accounts():
    s = WW.boot(device_process=False)
    dev = device_tasks._dev_words(s.kernel)
    _, user, _ = layout.offsets(s.kernel.plan)["user"]
    try:
        assert s.channel("wd.in").publish(meta0=1, meta1=WW.HANG) == 0
        # on the device (its handler starts within milliseconds; halt's drain waits 1 s more)
        wait_for(lambda: s.bridge.stats()["records"] >= 1 and not s.kernel.rx_pending(),
                 what="the message taken by the GPU kernel")
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="did not stop within"):
            s.halt(timeout=1)
        assert time.monotonic() - t0 < s.STOP_S + 20        # (was 60 s and more)
        rep = s.halt()
        assert rep["outstanding"] == 0 and rep["device_halted"] + rep["device_unfinished"] >= 1
    finally:
        dev[user + WW.HANG_WORD] = 1                        # lets the stuck handler return
        s.kernel.stop(timeout=60)                           # its threads end now
