"""The call lane (ggmk.core.lane) through its user, sdk.KV.get: every count the kernel keeps
for a request is the same as on the direct path, a reply that cannot be handed over goes
out the normal way, and concurrent callers, workers and a halt lose nothing."""
import threading

import pytest

import ggmk
from ggmk import sdk
from ggmk.errors import KernelStopped
from ggmk.modules import kv

KEYS = 50


def _observed(system, store):
    """What an observer can read of the gets: the channels' counts, the per-type counts, the
    kv module's counts, the handler histogram's sample count, the trace's filtered count."""
    st = system.stats()
    chans = {}
    # (not the rate, nor the rings' high watermarks: a request that found no parked worker
    # went through the request ring on either path, which only they show)
    skip = {"name", "emit_rate", "high_watermark"}
    for name in ("kv.get", "kv.resp"):
        c = {k: v for k, v in st["channels"][name].items() if k not in skip}
        c["subs"] = [{k: v for k, v in s.items() if k not in skip} for s in c["subs"]]
        chans[name] = c
    hist = system.metrics.snapshot()["histograms"]["handler_batch_ns"]
    return {"channels": chans, "types": st["types"], "kv": store.kv.stats(),
            "batches": hist["count"], "filtered": st["trace"]["total"]["filtered"], "sys_error": st["sys_error"]}


def _run_gets(lane: bool, n: int = 400):
    store = kv.module(capacity=1024)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        for k in range(KEYS):
            cl.put(k, k * 3)
        if not lane:
            cl._lane = None
        got = [cl.get(i % (2 * KEYS), default=-1) for i in range(n)]
        seen = _observed(system, store)
        runs = 0 if cl._lane is None else cl._lane.runs
        cl.close()
    return got, seen, runs


def test_lane_counts_what_the_direct_path_counts():
    got_l, seen_l, runs = _run_gets(lane=True)
    got_d, seen_d, _ = _run_gets(lane=False)
    want = [(i % (2 * KEYS)) * 3 if i % (2 * KEYS) < KEYS else -1 for i in range(400)]
    assert got_l == got_d == want
    assert runs > 300                    # the lane ran (a parked worker is usually there)
    assert seen_l == seen_d


def test_every_subscriber_of_the_reply_channel_sees_every_reply():
    """A second subscriber of the reply channel must see every reply: the lane sends them
    the normal way then (the caller's own subscription files them by tag)."""
    store = kv.module(capacity=64)
    app = ggmk.Module("tap")
    seen = []

    @app.handler("KV_RESP", consumes="kv.resp", message="KV_RESP")
    def tap(ctx):
        seen.append(int(ctx.task.meta1))

    with ggmk.boot([store, app], workers=2) as system:
        cl = sdk.KV(system)
        cl.put(5, 55)
        assert [cl.get(5) for _ in range(20)] == [55] * 20
        system.run()
        assert seen.count(55) == 20
        assert store.kv.stats()["published"] == 21 and store.kv.lane_published == 0
        cl.close()


class _Wrapped:
    """A replier around kv's whose answer first runs ``before()``."""

    def __init__(self, inner, before):
        self.inner = inner
        self.before = before
        self.ready = inner.ready
        self.taken = inner.taken
        self.send = inner.send

    def answer(self, m0, m1):
        self.before()
        return self.inner.answer(m0, m1)


def test_reply_goes_the_normal_way_when_the_reply_channel_changed():
    store = kv.module(capacity=64)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        cl.put(9, 99)
        lane = cl._lane
        late_subs = []

        def join():
            # a second subscriber joins the reply channel between the request's acceptance
            # and its reply (what another thread may do): the reply must go out the normal
            # way, to both subscribers
            if not late_subs:
                late_subs.append(system.channel("kv.resp").subscribe(name="late"))
        lane.replier = _Wrapped(lane.replier, join)
        assert cl.get(9) == 99                   # the hub filed it by its tag
        assert lane.runs == 1
        late = late_subs[0].take(10)
        assert len(late) == 1 and int(late["meta1"][0]) == 99
        st = system.stats()
        assert st["types"]["KV_GET"]["ok"] == 1 and st["channels"]["kv.resp"]["emitted"] == 2
        assert store.kv.stats()["published"] == 2
        cl.close()


def test_concurrent_callers_workers_and_small_channels_lose_nothing():
    """Two threads of gets through the lane, a third publishing gets the normal way (the
    workers answer them), a reply channel of capacity 4 (its limit is hit): every request
    answered once, every count balanced, nothing on sys.error."""
    store = kv.module(capacity=256, resp_capacity=4, outbox_limit=8)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        for k in range(KEYS):
            cl.put(k, k + 1000)
        errors = []
        n_each = 1500

        def getter():
            try:
                for i in range(n_each):
                    k = i % KEYS
                    assert cl.get(k) == k + 1000
            except BaseException as e:           # noqa: BLE001 - reported below
                errors.append(e)

        def publisher():
            try:
                c = sdk.KV(system)
                vals = c.get_many(list(range(KEYS)) * 20, depth=16)
                assert vals == list(range(1000, 1000 + KEYS)) * 20
                c.close()
            except BaseException as e:           # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=getter) for _ in range(2)]
        threads.append(threading.Thread(target=publisher))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        system.run()
        total = 2 * n_each + 20 * KEYS
        st = system.stats()
        g = st["types"]["KV_GET"]
        assert g["ok"] == total and g["enqueued"] == g["dequeued"] == total + g["wait"]
        assert st["channels"]["kv.get"]["emitted"] == total
        assert store.kv.stats()["get"] == total
        assert st["sys_error"]["pushed"] == 0
        assert cl._lane.runs > 0
        cl.close()


def test_halt_while_callers_loop_loses_nothing():
    store = kv.module(capacity=64)
    system = ggmk.boot([store], workers=2)
    cl = sdk.KV(system)
    cl.put(1, 11)
    started = threading.Event()
    outcome = []

    def getter():
        n = 0
        try:
            while True:
                assert cl.get(1) == 11
                n += 1
                if n == 50:
                    started.set()
        except KernelStopped:
            outcome.append(("stopped", n))
        except BaseException as e:               # noqa: BLE001
            outcome.append(("error", e))
        finally:
            started.set()

    th = threading.Thread(target=getter)
    th.start()
    assert started.wait(60)
    report = system.halt(timeout=10)
    th.join(30)
    assert not th.is_alive()
    assert outcome and outcome[0][0] == "stopped", outcome
    assert report["outstanding"] == 0
    g = system.stats()["types"]["KV_GET"]
    # every accepted get answered, or dropped by the halt (counted in its report)
    assert g["enqueued"] == g["ok"] + g["fail"] + g["dropped"]
    assert g["dropped"] == report["halted"]


@pytest.mark.parametrize("hal", ["sim"])
def test_no_lane_without_caller_runs_on_threads(hal):
    store = kv.module(capacity=64)
    with ggmk.boot([store], workers=2, hal=hal) as system:
        cl = sdk.KV(system)
        assert cl._lane is None
        cl.close()


def test_a_replier_that_raises_fails_the_request_onto_sys_error():
    from ggmk.task import HANDLER_EXCEPTION

    def boom():
        raise ZeroDivisionError("replier bug")

    store = kv.module(capacity=64)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        cl.put(3, 33)
        lane = cl._lane
        good = lane.replier
        lane.replier = _Wrapped(good, boom)
        with pytest.raises(ZeroDivisionError):
            cl.get(3)
        lane.replier = good
        assert cl.get(3) == 33                 # the lane goes on
        st = system.stats()
        g = st["types"]["KV_GET"]
        assert (g["enqueued"], g["dequeued"], g["ok"], g["fail"]) == (2, 2, 1, 1)
        assert st["exceptions"] == 1 and "replier bug" in system.exceptions[-1][2]
        assert st["channels"]["kv.get"]["emitted"] == 2
        recs, codes = system.dead_letters("sys.error")
        assert recs["meta0"].tolist() == [3] and codes.tolist() == [HANDLER_EXCEPTION]
        cl.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="SIGINT goes to the main thread")
def test_ctrl_c_inside_the_lane_waits_for_the_request_to_be_counted():
    import os
    import signal

    store = kv.module(capacity=64)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        cl.put(4, 44)
        lane = cl._lane
        good = lane.replier
        lane.replier = _Wrapped(good, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            cl.get(4)
        lane.replier = good
        st = system.stats()
        g = st["types"]["KV_GET"]
        assert (g["enqueued"], g["dequeued"], g["ok"]) == (1, 1, 1)
        assert system.sched.outstanding == 0
        assert st["channels"]["kv.resp"]["subs"][0]["delivered"] == \
            st["channels"]["kv.resp"]["emitted"] == 2          # the put's answer, the get's
        assert cl.get(4) == 44
        cl.close()


def test_the_lane_runs_on_the_cpu_kernel_of_a_dual_system():
    """``ggmk.boot(..., device=)``: a CPU kv module of the dual system's CPU kernel, its
    client given the DualSystem, takes the lane like on a CPU-only system."""
    from ggmk.modules import echo, registry

    with ggmk.boot([kv.module(capacity=64), echo.device_module(["echo.out"])], device="cpu",
                   workers=2,
                   types=registry("kv", "echo"), device_process=False) as dual:
        cl = sdk.KV(dual)
        assert cl._lane is not None and cl._lane.k is dual.cpu
        cl.put(8, 88)
        assert [cl.get(8) for _ in range(10)] == [88] * 10
        assert cl._lane.runs >= 8
        g = dual.stats()["cpu"]["types"]["KV_GET"]
        assert g["enqueued"] == g["ok"] == 10
        cl.close()


def test_a_bytes_table_takes_the_normal_path():
    store = kv.module(capacity=8, value_size=16)
    with ggmk.boot([store], workers=2) as system:
        cl = sdk.KV(system)
        assert cl._lane is None
        cl.put(1, b"sixteen bytes!!!")
        assert cl.get(1) == b"sixteen bytes!!!"
        with pytest.raises(ValueError, match="inline"):
            kv.GetReplier(store.kv, system)
        cl.close()
