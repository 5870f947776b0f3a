"""``DualSystem.submit`` of a type only a GPU handler takes goes to the GPU kernel
(``push_device``), counted as push_device counts; before, it was accepted and landed on the
CPU kernel's sys.error with UNKNOWN_TYPE. What cannot travel that way is refused at the call."""
import threading

import pytest

import ggmk
import ggmk.dual
from ggmk import task as T
from ggmk.modules import reduce, registry, std_module


def _boot(got, lock):
    app = std_module("app", "reduce")
    app.produces("reduce.in", "REDUCE_PART")

    def on(ctx, b):
        with lock:
            got.extend(zip(b.records["meta0"].tolist(), b.records["meta1"].tolist()))
    app.handler("APP_RES", batch=True, consumes="reduce.out", message="REDUCE_RESULT",
                name="res")(on)
    app.handler("APP_MISS", batch=True, consumes="reduce.missing", message="REDUCE_MISSING",
                name="miss")(lambda ctx, b: None)
    return ggmk.dual.boot([app, reduce.device_module(n=3, channels=True)], device="cpu",
                          workers=2, device_process=False, types=registry("reduce"))


def test_submit_of_a_gpu_only_type_reaches_its_gpu_handler():
    got, lock = [], threading.Lock()
    with _boot(got, lock) as s:
        assert s.submit("REDUCE_PART", meta0=[9, 9, 9], meta1=[1, 2, 3]) == 3
        assert s.submit("REDUCE_PART", 4, 10) == 1          # one task, positional metas
        assert s.submit("REDUCE_PART", meta0=4, meta1=5, count=2) == 2
        assert s.run(timeout=120)
        with lock:
            assert sorted(got) == [(4, 20), (9, 6)]
        err, codes = s.dead_letters("sys.error")
        assert len(err) == 0, list(zip(err["type"].tolist(), codes.tolist()))
        s.halt(timeout=1)


def test_what_cannot_go_to_the_gpu_kernel_is_refused_at_the_call():
    got, lock = [], threading.Lock()
    with _boot(got, lock) as s:
        with pytest.raises(ValueError, match=r"payload=.*REDUCE_PART.*GPU handler.*push_device"):
            s.submit("REDUCE_PART", meta0=1, meta1=1, payload=b"abc")
        with pytest.raises(ValueError, match=r"due=5.*REDUCE_PART.*push_device"):
            s.submit("REDUCE_PART", meta0=1, meta1=1, due=5)
        with pytest.raises(ValueError, match="deterministic"):
            s.submit("REDUCE_PART", meta0=1, meta1=1, deterministic="no")
        tid = s.cpu.type_id("REDUCE_PART")
        with pytest.raises(ValueError, match=r"submit_batch: type .*REDUCE_PART.*push_device"):
            s.submit_batch(T.make(2, type=tid, meta0=1, meta1=1))
        assert s.run(timeout=60)
        err, _ = s.dead_letters("sys.error")
        assert len(err) == 0                        # nothing was submitted
        with lock:
            assert got == []
        # the CPU kernel's own types are not touched: an unknown name is still its error
        with pytest.raises(Exception, match="NOPE"):
            s.submit("NOPE")
