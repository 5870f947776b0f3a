"""``ggmk.bridge.plan``: a device channel that no other module declares is the host's, as a CPU
kernel's channel is (a standard module goes on either kernel, issue 16): consumed only by
GPU handlers it becomes a CPU -> GPU bridge channel the host publishes on
(``system.channel(name).publish``), with the type the consumer declares; produced only on
the GPU, a GPU -> CPU one the host subscribes to. Before, ``kv.device_module(channels=True)``
alone did not boot (``consumes unknown device channel 'kv.put'``), and beside an application
module it needed a CPU producer for ``kv.get`` and ``kv.del`` it never used."""
import threading
import time

import numpy as np
import pytest

import ggmk
import ggmk.device as gd
import ggmk.dual
from ggmk import sdk
from ggmk import task as T
from ggmk.bridge.plan import plan
from ggmk.modules import echo, kv, registry, timer
from ggmk.typereg import TypeRegistry

pytestmark = pytest.mark.timeout(900)       # a cold disk cache builds each GPU kernel


def _boot(mods, names, **kw):
    kw.setdefault("device_process", False)
    return ggmk.dual.boot(mods, device="cpu", workers=2, types=registry(*names), **kw)


def _take(sub, n, timeout=60.0):
    """``n`` records from a host subscriber (a bounded wait, not a sleep)."""
    parts, got, t_end = [], 0, time.monotonic() + timeout
    while got < n and time.monotonic() < t_end:
        sub.wait(0.2)
        r = sub.take()
        if len(r):
            parts.append(r)
            got += len(r)
    return T.concat(parts) if parts else T.empty(0)


def _clean(s):
    """Every accepted message delivered: nothing on sys.error or sys.dropped, on either
    kernel (the GPU kernel's land on the host's through the bridge)."""
    assert len(s.dead_letters("sys.error")[0]) == 0
    assert len(s.dead_letters("sys.dropped")[0]) == 0


def _noop(ctx, task):
    return 0


def test_a_device_channel_only_gpu_handlers_consume_is_a_host_fed_cpu_to_gpu_channel():
    reg = registry("kv")
    bcs = {b.name: b for b in plan([], [kv.device_module(capacity=4, channels=True)], reg,
                                   types_given=True)}
    assert sorted(bcs) == ["kv.del", "kv.get", "kv.put", "kv.resp"]
    for name, tname in (("kv.put", "KV_PUT"), ("kv.get", "KV_GET"), ("kv.del", "KV_DEL")):
        b = bcs[name]
        assert (b.direction, b.type_name, b.type_id, b.host) == ("c2g", tname, reg.id(tname),
                                                                 True)
        assert (b.mode, b.guarantee) == ("p2p", "lossless")
    r = bcs["kv.resp"]
    assert (r.direction, r.type_name, r.mode, r.host) == ("g2c", "KV_RESP", "fanout", True)


def test_the_consumers_message_type_is_the_channels():
    g = gd.Module("sink")
    g.handler("SINK", consumes="x.in", message="WORK")(_noop)
    reg = TypeRegistry()
    reg.register("SINK")
    reg.register("WORK")
    b, = plan([], [g], reg, types_given=True)
    assert (b.name, b.direction, b.type_name, b.host) == ("x.in", "c2g", "WORK", True)


def test_a_channel_local_to_the_gpu_kernel_stays_local():
    g = gd.Module("pair")
    g.channel("loc", message="WORK")
    g.handler("SINK", consumes="loc", message="WORK")(_noop)
    reg = TypeRegistry()
    reg.register("SINK")
    reg.register("WORK")
    assert plan([], [g], reg, types_given=True) == []


@pytest.mark.parametrize("device_process", [False, True])
def test_device_kv_alone_is_driven_from_the_host(device_process):
    with _boot([kv.device_module(capacity=4, channels=True)], ["kv"],
               device_process=device_process) as s:
        assert (s.process is not None) == device_process
        cl = sdk.KV(s, timeout=60.0)
        cl.put(5, 555)
        cl.put(6, 666)
        assert cl.get(5) == 555 and cl.get(7, "none") == "none"
        assert cl.delete(6) is True and cl.get(6, "gone") == "gone"
        # the raw channel too, as with the CPU version
        sub = s.channel("kv.resp").subscribe(name="host")
        assert s.channel("kv.put").publish(meta0=9, meta1=kv.TAG_MASK & 77,
                                           payload=(999).to_bytes(8, "little")) == T.OK
        r = _take(sub, 1)
        assert len(r) == 1 and int(r["meta0"][0]) >> 56 == kv.OK
        assert s.run(timeout=60)
        _clean(s)
        st = s.stats()
        cpu, gpu, br = st["cpu"]["channels"], st["gpu"]["channels"], st["bridge"]["channels"]
        assert (cpu["kv.put"]["emitted"], cpu["kv.get"]["emitted"],
                cpu["kv.del"]["emitted"]) == (3, 3, 1)
        assert (gpu["kv.put"]["delivered"], gpu["kv.get"]["delivered"],
                gpu["kv.del"]["delivered"]) == (3, 3, 1)
        assert br["kv.put"]["done_on_device"] == 3 and br["kv.get"]["done_on_device"] == 3
        assert gpu["kv.resp"]["emitted"] == 7 == br["kv.resp"]["crossed"]
        assert cpu["kv.resp"]["emitted"] == 7


def test_device_kv_beside_an_app_that_only_puts():
    """The app produces kv.put and consumes kv.resp; kv.get and kv.del are the host's."""
    app = ggmk.Module("app")
    app.produces("kv.put", "KV_PUT")
    seen, lock = [], threading.Lock()

    @app.handler("APP_RESP", consumes="kv.resp", message="KV_RESP")
    def resp(ctx):
        with lock:
            m0 = int(ctx.task.meta0)
            seen.append((m0 & kv.TAG_MASK, m0 >> 56))

    with _boot([kv.device_module(capacity=4, channels=True), app], ["kv"]) as s:
        assert s.channel("kv.put").publish(meta0=3, meta1=11,
                                           payload=(33).to_bytes(8, "little")) == T.OK
        assert s.run(timeout=60)          # (two channels: the get must not pass the put)
        assert s.channel("kv.get").publish(meta0=3, meta1=12) == T.OK
        assert s.run(timeout=60)
        _clean(s)
    assert sorted(seen) == [(11, kv.OK), (12, kv.OK)]


def test_device_timer_alone_is_driven_from_the_host():
    with _boot([timer.device_module(channels=True)], ["timer"]) as s:
        fire = s.channel("timer.fire").subscribe(name="host")
        ack = s.channel("timer.ack").subscribe(name="host")
        assert s.channel("timer.set").publish(meta0=9, meta1=timer.arg(2)) == T.OK
        assert s.channel("timer.set").publish(meta0=10, meta1=timer.arg(10_000)) == T.OK
        a = _take(ack, 2)                 # (two channels: the cancel must not pass the set)
        assert s.channel("timer.cancel").publish(meta0=10) == T.OK
        a = T.concat([a, _take(ack, 1)])
        f = _take(fire, 1)
        assert s.run(timeout=60)
        _clean(s)
        assert f["meta0"].tolist() == [9]
        acks = sorted((int(m0), timer.ack_status(int(m1)))
                      for m0, m1 in zip(a["meta0"], a["meta1"]))
        assert acks == [(9, (timer.OP_SET, timer.OK)), (10, (timer.OP_SET, timer.OK)),
                        (10, (timer.OP_CANCEL, timer.OK))]
        st = s.stats()
        assert st["cpu"]["channels"]["timer.set"]["emitted"] == 2
        assert st["gpu"]["channels"]["timer.set"]["delivered"] == 2
        assert st["gpu"]["channels"]["timer.cancel"]["delivered"] == 1
        assert st["gpu"]["channels"]["timer.fire"]["emitted"] == 1 == \
            st["cpu"]["channels"]["timer.fire"]["emitted"]
        assert st["gpu"]["channels"]["timer.ack"]["emitted"] == 3 == \
            st["cpu"]["channels"]["timer.ack"]["emitted"]


def test_device_echo_alone_answers_the_host():
    with _boot([echo.device_module("e.out")], ["echo"]) as s:
        out = s.channel("e.out").subscribe(name="host")
        assert s.push_device(T.make(4, type=echo.type_id(), meta0=np.arange(4),
                                    meta1=7)) == 4
        r = _take(out, 4)
        assert s.run(timeout=60)
        _clean(s)
        assert sorted(r["meta0"].tolist()) == [0, 1, 2, 3] and set(r["meta1"].tolist()) == {7}
        st = s.stats()
        assert st["gpu"]["channels"]["e.out"]["emitted"] == 4
        assert st["bridge"]["channels"]["e.out"]["crossed"] == 4
        assert st["cpu"]["channels"]["e.out"]["emitted"] == 4
