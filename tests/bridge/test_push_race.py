"""Issue 12: host threads that push to the GPU kernel at the same time as the bridge pump.

``DualSystem.push_device`` (any caller thread) and the bridge pump (``ggmk-bridge``, sending
ingress, CREDIT, ALLOC and RELEASE records) are both producers on the one host -> device ring.
Before ``DeviceKernel.push`` made its read-tail / copy / publish-tail one critical section, two
pushes could read the same C_RX_TAIL: one record was overwritten (a request that never arrived,
or a lost CREDIT / ALLOC that stalled a bridge channel for good), and a stale tail published
after the device had consumed past it hid the next records; nothing reached sys.error or
sys.dropped. About 1 round in 8 of the nvme-over-the-bridge workload lost messages.

Here: two threads push single GEN records (one ``push_device`` call per task; the GPU handler
answers each on GPU -> CPU ``gpu.out``) while a third publishes on CPU -> GPU ``cpu.in`` (so the
pump sends ingress records and credits at the same time), round after round, on a 16-slot
host -> device ring (pushes are refused while it is full and pushed again). Accounting: every
accepted push and every published message comes back exactly once; sys.error and sys.dropped
stay empty (nothing here may fail or drop).
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from ggmk import task as T
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot

RX_CAP = 16          # the host -> device ring: small, so pushes meet a full ring
ROUNDS = 12
PER_ROUND = 24       # single-record pushes per pusher thread per round (and publishes)
PUSHERS = 2


def _pusher(s, first, n, wait_until, out, errs):
    """Push GEN records meta0 = first .. first+n-1, one ``push_device`` call per record; a
    refused push (the ring is full) is pushed again."""
    try:
        for v in range(first, first + n):
            rec = T.make(1, type=W.TYPES["GEN"], meta0=v, meta1=v + 1)
            tries = [0]

            def step():
                tries[0] += 1
                if s.push_device(rec) == 1:
                    out["accepted"].append(v)
                    tries[0] = -tries[0]
            assert wait_until(lambda: tries[0] < 0, timeout=60, step=step), \
                f"push of {v} refused for 60 s"
            out["refused"] += -tries[0] - 1
    except BaseException as e:      # noqa: BLE001 - reported by the test thread
        errs.append(e)


def _publisher(s, first, n, wait_until, out, errs):
    """Publish WORK meta0 = first .. first+n-1 on ``cpu.in``, one message per call."""
    try:
        ch = s.channel("cpu.in")
        for v in range(first, first + n):
            assert wait_until(lambda: ch.publish(meta0=v) == 0, timeout=60), \
                f"publish of {v} refused for 60 s"
            out["published"].append(v)
    except BaseException as e:      # noqa: BLE001
        errs.append(e)


@pytest.mark.parametrize("device_process", [False, True], ids=["in_process", "device_process"])
def test_concurrent_single_record_pushes_lose_nothing(device_process, wait_until):
    s = boot(device_process=device_process, device_config={"rx_cap": RX_CAP})
    old_switch = sys.getswitchinterval()
    # switch threads every 10 us (default 5 ms): the pushers and the pump interleave inside
    # their pushes as often as a loaded machine makes them, in every round
    sys.setswitchinterval(1e-5)
    try:
        out = {"accepted": [], "published": [], "refused": 0}
        errs: list = []
        for rnd in range(ROUNDS):
            base = (rnd + 1) * 10_000
            threads = [threading.Thread(target=_pusher, name=f"pusher-{i}",
                                        args=(s, base + i * 1000, PER_ROUND, wait_until, out,
                                              errs)) for i in range(PUSHERS)]
            threads.append(threading.Thread(
                target=_publisher, name="publisher",
                args=(s, base + 5000, PER_ROUND, wait_until, out, errs)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errs, errs
            want_gen = sorted(out["accepted"])
            want_back = sorted(out["published"])

            def arrived():
                with W.REC.lock:
                    return len(W.REC.sink_val) >= len(want_gen) and \
                        len(W.REC.back) >= len(want_back)
            # every answer arrives; a lost record shows as a count that never completes
            ok = wait_until(arrived, timeout=30, step=lambda: s.run(timeout=0.5))
            with W.REC.lock:
                got_gen = sorted(W.REC.sink_val)
                got_back = sorted(b[0] for b in W.REC.back)
            missing = sorted(set(want_gen) - set(got_gen)) + \
                sorted(set(want_back) - set(got_back))
            assert ok, (f"round {rnd}: {len(missing)} accepted message(s) never arrived "
                        f"(first: {missing[:8]}); sys.error "
                        f"{len(s.dead_letters('sys.error')[0])}, sys.dropped "
                        f"{len(s.dead_letters('sys.dropped')[0])}; bridge "
                        f"{ {k: v for k, v in s.stats()['bridge'].items() if k != 'channels'} }")
            assert got_gen == want_gen            # each accepted push answered exactly once
            assert got_back == want_back          # each published message echoed exactly once
        assert s.run(timeout=60)
        n_total = ROUNDS * PUSHERS * PER_ROUND
        assert len(out["accepted"]) == n_total and len(W.REC.sink_val) == n_total
        assert len(W.REC.back) == ROUNDS * PER_ROUND
        assert len(s.dead_letters("sys.error")[0]) == 0
        assert len(s.dead_letters("sys.dropped")[0]) == 0
        b = s.stats()["bridge"]
        assert b["channels"]["cpu.in"]["in_flight"] == 0 and b["channels"]["cpu.in"]["dead"] == 0
        assert b["channels"]["gpu.out"]["crossed"] == n_total
        assert s.kernel.rx_pending() == 0
        print(f"refused pushes (ring full): {out['refused']}")
    finally:
        sys.setswitchinterval(old_switch)
        s.halt()
