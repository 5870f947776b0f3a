"""ggmk.sdk against a dual boot (``ggmk.boot(..., device=)``): Client and KV given the
DualSystem itself, and Client calls to a GPU request/reply module while the GPU kernel (a
device process) is reset: a call waits the reset out (up to its timeout) instead of failing
at once, and a halt still ends the calls at once with KernelStopped."""
from __future__ import annotations

import collections
import threading
import time

import ggmk
import ggmk.device as gd
from ggmk import sdk
from ggmk import task as T
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.errors import KernelStopped
from ggmk.modules import kv
from tests.bridge.dualkit import wait_for

# the GPU server: meta0 = tag, meta1 = x -> svc.resp: meta0 = tag, meta1 = 3x + 1
svc = gd.Module("rsvc", version="0.1.0")
RESP = svc.channel("rsvc.resp", message="RSVC_RESP", mode="fanout", guarantee="lossless",
                   capacity=64)


@svc.handler("RSVC_REQ", consumes="rsvc.req", message="RSVC_REQ")
def on_req(ctx, task):
    if g.emit_chan(ctx, RESP, g.meta0(task), g.meta1(task) * 3 + 1) == -100:
        return WAIT
    return 0


def host():
    """The request channel's producer and a CPU consumer of the replies (the bridge wires a
    GPU -> CPU channel only when a CPU module consumes it)."""
    m = ggmk.Module("rhost")
    m.produces("rsvc.req", "RSVC_REQ", mode="p2p", guarantee="lossless")

    @m.handler("RSVC_SINK", batch=True, consumes="rsvc.resp", message="RSVC_RESP")
    def sink(ctx, batch):
        return None
    return m


def test_client_and_kv_take_the_dual_system():
    """sdk.Client / sdk.KV given what ggmk.boot(..., device=) returns use its CPU kernel."""
    s = ggmk.boot([svc, host(), kv.module()], device="cpu", workers=2, device_process=False)
    try:
        cl = sdk.Client(s, "rsvc.req", "rsvc.resp", timeout=10.0)
        for x in range(20):
            tag = sdk.new_tags()
            assert cl.call(tag, x, tag=tag)[:2] == (tag, 3 * x + 1)
        lo = sdk.new_tags(8)
        m0, m1, _ = cl.call_many([lo + i for i in range(8)], list(range(8)), lo)
        assert m0.tolist() == [lo + i for i in range(8)]
        assert m1.tolist() == [3 * i + 1 for i in range(8)]
        cl.close()
        kvc = sdk.KV(s, timeout=10.0)
        kvc.put(7, 70)
        assert kvc.get(7) == 70
        kvc.close()
    finally:
        s.halt()


def test_client_calls_wait_out_a_reset_and_stop_at_halt():
    timeout = 8.0
    s = ggmk.boot([svc, host()], device="cpu", workers=2, device_process=True)
    stop = threading.Event()
    res = collections.Counter()
    bad, fast_timeouts, slow_stops, timed_out_tags = [], [], [], []
    lock = threading.Lock()
    calls_done = [0]
    halt_at = [None]

    def caller(w):
        cl = sdk.Client(s, "rsvc.req", "rsvc.resp", timeout=timeout)
        i = 0
        while not stop.is_set():
            tag, x = sdk.new_tags(), (w << 20) | i
            t0 = time.monotonic()
            try:
                m0, m1, _ = cl.call(tag, x, tag=tag)
                r = "ok"
                if (m0, m1) != (tag, 3 * x + 1):
                    bad.append((tag, x, m0, m1))
            except TimeoutError as e:
                r = "timeout"
                with lock:
                    timed_out_tags.append(tag)
                    if time.monotonic() - t0 < timeout:
                        fast_timeouts.append((round(time.monotonic() - t0, 3), str(e)))
            except KernelStopped:
                r = "stopped"
                # (from the halt's start, or the call's if later: a call that waited out the
                # reset may have begun long before the halt, 4.1 s on a loaded machine)
                since = time.monotonic() - max(t0, halt_at[0] or t0)
                if since > timeout / 2:
                    slow_stops.append(round(since, 3))
                stop.set()
            with lock:
                res[r] += 1
                calls_done[0] += 1
            i += 1

    ths = [threading.Thread(target=caller, args=(w,)) for w in range(3)]
    for t in ths:
        t.start()
    try:
        wait_for(lambda: res["ok"] >= 200, 60, "calls before the reset")
        acct = s.reset_device("test")
        n0 = res["ok"]
        wait_for(lambda: res["ok"] >= n0 + 200, 60, "calls after the reset")
    finally:
        halt_at[0] = time.monotonic()
        rep = s.halt(timeout=2.0)
        stop.set()
        for t in ths:
            t.join(timeout + 5)
    assert not any(t.is_alive() for t in ths)
    assert bad == []
    # a refusal while the request channel was suspended was waited out, not a TimeoutError
    assert fast_timeouts == [], fast_timeouts[:5]
    # the halt ends the calls in flight at once
    assert slow_stops == [], slow_stops
    assert s.stats()["device_process"]["resets"] == 1
    # every call that timed out had its request inside the killed kernel: on sys.error
    err, codes = s.dead_letters("sys.error")
    lost = {int(r["meta0"]) for r, c in zip(err, codes)
            if c == T.BRIDGE_RESET and int(r["type"]) == s.cpu.types.id("RSVC_REQ")}
    assert set(timed_out_tags) <= lost, (timed_out_tags, lost, acct)
    assert rep is not None
