"""The threads HAL's host-side wait: woken by the system going idle, not by polling."""
import threading
import time

from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.hal.threads import ThreadsHal


def test_wait_is_woken_by_notify_host_not_by_its_poll():
    hal = ThreadsHal()
    hal.host_poll = (30.0, 30.0)          # the backstop alone would take 30 s
    flag = threading.Event()

    def later():
        flag.set()
        hal.notify_host()

    t0 = time.monotonic()
    threading.Timer(0.05, later).start()
    assert hal.wait(flag.is_set, timeout=60)
    assert time.monotonic() - t0 < 20


def test_run_returns_when_the_last_task_finishes():
    m = Module("m")
    seen = []

    @m.handler("WORK")
    def work(ctx):
        seen.append(ctx.task.meta0)

    with boot([m], workers=2) as s:
        s.hal.host_poll = (30.0, 30.0)    # only the idle notification can end run() in time
        t0 = time.monotonic()
        for i in range(5):
            s.submit("WORK", meta0=i)
        assert s.run(timeout=60)
        assert time.monotonic() - t0 < 20
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_wait_times_out_without_notify():
    hal = ThreadsHal()
    assert not hal.wait(lambda: False, timeout=0.05)
