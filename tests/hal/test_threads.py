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


def _wait_parked(hal, n, timeout=10.0):
    end = time.monotonic() + timeout
    while hal.parked < n:
        assert time.monotonic() < end, f"only {hal.parked} of {n} workers parked"
        time.sleep(0.001)


def test_idle_workers_park_and_a_submit_wakes_exactly_one():
    m = Module("m")
    ran = threading.Event()

    @m.handler("ONE")
    def one(ctx):
        ran.set()

    with boot([m], workers=4) as s:
        hal = s.hal
        hal.park_timeout = 30.0           # no timed wake-ups during the test
        s.submit("ONE")                   # every worker has seen the new timeout after this
        assert s.run(timeout=30)
        _wait_parked(hal, 4)
        ran.clear()
        before = hal.wakes
        s.submit("ONE")
        assert ran.wait(10)
        assert s.run(timeout=30)
        assert hal.wakes - before == 1
        _wait_parked(hal, 4)


def test_a_big_submit_still_gets_every_worker():
    """One wake-up per submit; a worker that leaves work in the ready queue wakes the next."""
    m = Module("m")
    by = set()
    gate = threading.Barrier(2, timeout=20)

    @m.handler("W", batch=True)
    def w(ctx, batch):
        if batch.meta0[0] and ctx.worker not in by:
            by.add(ctx.worker)
            gate.wait()                   # hold this worker until a second one runs

    with boot([m], workers=2, max_batch=8) as s:
        s.hal.park_timeout = 30.0
        s.submit("W")                     # meta0 0: no gate
        assert s.run(timeout=30)
        _wait_parked(s.hal, 2)
        s.submit("W", meta0=list(range(1, 65)))
        assert s.run(timeout=30)
        assert not s.exceptions
    assert by == {0, 1}


def test_many_round_trips_lose_no_wake_up():
    m = Module("m")
    done = threading.Event()

    @m.handler("PING")
    def ping(ctx):
        done.set()

    with boot([m], workers=2) as s:
        s.hal.park_timeout = 30.0         # a lost wake-up would stall for 30 s
        for _ in range(500):
            done.clear()
            s.submit("PING")
            assert done.wait(10)
        assert s.run(timeout=30)


def test_stop_called_from_a_workers_own_step_does_not_join_that_thread():
    """A handler that halts the system stops the HAL from its worker's own thread: joining
    that thread raised 'cannot join current thread' (the halt died half way). It is skipped,
    not counted as stuck; the other worker is joined."""
    hal = ThreadsHal()
    out = {}
    done = threading.Event()

    class W:
        def __init__(self, wid):
            self.id = wid

        def step(self):
            if self.id == 0 and not done.is_set():
                try:
                    out["stepping"] = hal.stepping()
                    out["stop"] = hal.stop(join_timeout=10)
                finally:
                    done.set()
                return True
            return False

        def on_park(self):
            return None

    ws = [W(0), W(1)]
    hal.start(ws)
    assert done.wait(10)
    assert not hal.errors and out == {"stepping": [ws[0]], "stop": 0}
    end = time.monotonic() + 10
    while hal.alive_threads() and time.monotonic() < end:
        time.sleep(0.001)
    assert hal.alive_threads() == 0
