"""Shared helpers for the bridge tests: one booted dual system of tests/bridge/bridge_workloads.py."""
import os
import time

import numpy as np
import pytest

import ggmk.dual
from ggmk.errors import AllocError
from ggmk import task as T
from tests.bridge import bridge_workloads as W

LONG = os.environ.get("GGMK_LONG") == "1"


def boot(**kw):
    W.REC.clear()
    W.REC.gate.set()
    W.REC.back_gate.set()
    W.REC.expect_payload = None
    kw.setdefault("workers", 2)
    mods = W.sized_modules() if kw.pop("sized", False) else W.modules()
    return ggmk.dual.boot(mods, device=kw.pop("device", "cpu"), types=W.registry(), **kw)


# the GPU kernel targets an acceptance test runs on: ``cpu`` everywhere (CI), ``cuda`` where a
# GPU is present (marked: tests/conftest.py skips it without one)
TARGETS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def wait_for(pred, timeout=60.0, what="condition"):
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def publish_all(s, name, n, *, payload=None, first=0, timeout=60.0):
    """Publish meta0 = first..first+n-1 on CPU channel ``name``, waiting while it is full."""
    ch = s.channel(name)
    done = 0
    t_end = time.monotonic() + timeout
    while done < n:
        if payload is None:
            m = min(n - done, 8192)       # more than a channel holds would only be refused
            k = ch.publish(meta0=np.arange(first + done, first + done + m, dtype=np.uint64),
                           count=m)
        else:
            try:
                k = 1 if ch.publish(meta0=first + done, payload=payload) == 0 else 0
            except AllocError:
                # the CPU arena is full for now (payloads in flight): wait, retry
                if time.monotonic() > t_end:
                    raise AssertionError(f"publish: {done}/{n} after {timeout} s")
                time.sleep(0.0005)
                continue
        done += k
        if k == 0 and not ch.wait_room(max(0.0, t_end - time.monotonic())):
            raise AssertionError(f"publish: {done}/{n} after {timeout} s")
    return done


def assert_sink_exact(s, n) -> None:
    """Every one of the n GEN messages reached SINK exactly once, in channel-sequence order,
    and none of them is on sys.error or sys.dropped."""
    assert W.REC.sink_val == list(range(n))
    assert W.REC.sink_seq == list(range(1, n + 1))
    err, _ = s.dead_letters("sys.error")
    drop, _ = s.dead_letters("sys.dropped")
    assert not (err["type"] == W.TYPES["READING"]).any()
    assert not (drop["type"] == W.TYPES["READING"]).any()


def gen(s, type_name, n, first=0):
    s.push_device(T.make(1, type=W.TYPES[type_name], meta0=first, meta1=first + n))
