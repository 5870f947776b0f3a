"""The device gate (``gate.device_module(..., channels=True)``) holds the arrivals of a round
short of ``n`` as module state in user words, as the CPU gate holds them in its state: they
finish, so a dual system with a short round is idle (``run(timeout=5)`` True at once; before,
each waited as a task the GPU kernel kept running: False after 5 s, and ``run()`` never
returned). The n-th arrival releases the held ones and itself in arrival order, resuming
after CHAN_FULL without loss or duplicate; the gate is reusable; at halt the arrivals still
held are on sys.dropped with CHAN_CLOSED, named (``m.halt_records``). Each scenario also runs
on the CPU gate: the observable results are the same."""
import threading
import time

import numpy as np
import pytest

import ggmk
import ggmk.dual
from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import gate, registry, std_module

N, CAP = 3, 8                 # (8: the smallest device channel)
WHERE = ["cpu", "device", "device-in-process"]


def _app(got, lock, hold=None):
    app = std_module("app", "gate")
    app.produces("gate.arrive", "GATE_ARRIVE")

    @app.handler("APP_OPEN", consumes="gate.open", message="GATE_PASS", name="on_open")
    def on_open(ctx):
        if hold is not None:
            assert hold.wait(120)             # a slow consumer: gate.open fills
        t = ctx.task
        pl = bytes(ctx.payload) if t.payload_ptr else b""
        with lock:
            got.append((ctx.chan_seq, t.meta0, t.meta1, pl))
    return app


def _boot(where, got, lock, hold=None):
    g = gate.module(n=N, capacity=CAP) if where == "cpu" else \
        gate.device_module(n=N, channels=True, capacity=CAP)
    s = ggmk.dual.boot([_app(got, lock, hold), g], device="cpu", workers=2,
                       device_process=(where == "device"), types=registry("gate"))
    assert s.cpu.nworkers >= 2
    assert (s.process is not None) == (where == "device")
    return s, g


def _arrive(s, gid, tags):
    for t in tags:                            # one publish each: its own payload
        assert s.channel("gate.arrive").publish(meta0=gid, meta1=t,
                                                payload=b"p%d" % t) == T.OK


def _passed(got, lock):
    """(gate, tag, payload) in gate.open order (its seq: the CPU workers may take turns)."""
    with lock:
        return [r[1:] for r in sorted(got)]


def _pass(gid, tags):
    return [(gid, t, b"p%d" % t) for t in tags]


def _idle(s, what):
    t0 = time.monotonic()
    assert s.run(timeout=5), f"{what}: not idle within 5 s"
    return time.monotonic() - t0


@pytest.mark.parametrize("where", WHERE)
def test_short_round_is_idle_then_opens_in_order_and_reuses(where):
    got, lock = [], threading.Lock()
    s, _ = _boot(where, got, lock)
    with s:
        _arrive(s, 1, [10, 11])                          # 2 of 3
        assert _idle(s, "a short round") < 4
        assert _passed(got, lock) == []
        _arrive(s, 1, [12])                              # the 3rd opens it
        _idle(s, "round 1")
        assert _passed(got, lock) == _pass(1, [10, 11, 12])
        tags = list(range(20, 32))                       # 4 more rounds, two gates mixed
        for a, b in zip(tags[0::2], tags[1::2]):
            _arrive(s, 1, [a])
            _arrive(s, 2, [b])
        _idle(s, "rounds 2..")
        rest = _passed(got, lock)[3:]
        assert [r for r in rest if r[0] == 1] == _pass(1, tags[0::2])
        assert [r for r in rest if r[0] == 2] == _pass(2, tags[1::2])
        rep = s.halt(timeout=5)
        drop, _ = s.dead_letters("sys.dropped")
        err, _ = s.dead_letters("sys.error")
    assert len(drop) == 0 and len(err) == 0, (drop, err)
    assert rep.get("device_held", 0) == 0


@pytest.mark.parametrize("where", WHERE)
def test_release_resumes_after_chan_full(where):
    """gate.open holds CAP messages and its consumer is held back: releases of 20 rounds (60
    arrivals published at once) find it full; every arrival still passes once, in arrival
    order."""
    got, lock, hold = [], threading.Lock(), threading.Event()
    s, g = _boot(where, got, lock, hold)
    with s:
        tags = list(range(100, 160))
        _arrive(s, 7, tags)

        def full():
            if where == "cpu":
                return g.gate.stats()["waiting_releases"] > 0
            return s.gpu_metrics()["channels"]["gate.open"]["full"] > 0
        end = time.monotonic() + 120
        while not full():
            assert time.monotonic() < end, "gate.open never full"
            time.sleep(0.005)
        hold.set()
        assert s.run(timeout=120)
        assert _passed(got, lock) == _pass(7, tags)
        rep = s.halt(timeout=5)
        drop, _ = s.dead_letters("sys.dropped")
        err, _ = s.dead_letters("sys.error")
    assert len(drop) == 0 and len(err) == 0, (drop, err)
    assert rep.get("device_held", 0) == 0


@pytest.mark.parametrize("where", WHERE)
def test_halt_names_the_held_arrivals_on_sys_dropped(where):
    got, lock = [], threading.Lock()
    s, _ = _boot(where, got, lock)
    with s:
        _arrive(s, 1, [10, 11, 12, 13, 14])              # a round, then 2 of 3
        _arrive(s, 2, [20])                              # 1 of 3
        assert _idle(s, "short rounds") < 4
        assert _passed(got, lock) == _pass(1, [10, 11, 12])
        rep = s.halt(timeout=1)
        drop, dc = s.dead_letters("sys.dropped")
        err, _ = s.dead_letters("sys.error")
    named = sorted((s.cpu.type_name(int(t)), int(a), int(b), int(c))
                   for t, a, b, c in zip(drop["type"], drop["meta0"], drop["meta1"], dc))
    assert named == [("GATE_ARRIVE", 1, 13, T.CHAN_CLOSED), ("GATE_ARRIVE", 1, 14, T.CHAN_CLOSED),
                     ("GATE_ARRIVE", 2, 20, T.CHAN_CLOSED)], named
    assert len(err) == 0, err
    if where != "cpu":
        assert rep["device_held"] == 3, rep


def test_halt_records_of_a_release_stopped_half_way():
    """The hook on its own: a collecting slot names what it holds, a releasing one what it
    has not sent yet (not the releaser itself: a task, named as one), a free one nothing."""
    m = gate.device_module(n=4, gates=4, base=100)
    lay = m.gate_layout
    sw, hdr, t0 = lay["slot_words"], lay["header"], lay["table"]
    assert (m.user_words[0], m.user_words[1]) == (100, 101 + 4 * sw) and sw == hdr + 9
    words = np.zeros(1 << 16, np.int64)

    def slot(i, state, gid, held, rel=0, me=0, tags=()):
        s = t0 + sw * i
        words[s:s + hdr] = (state, gid, held, 5, rel, me)
        for j, t in enumerate(tags):
            words[s + hdr + 3 * j] = t
    slot(0, 1, 3, 2, tags=(30, 31, 99))                  # holds 2 (a stale third word)
    slot(1, 2, 8, 0, rel=1, me=2, tags=(80, 81, 82))     # sent 80; 81, me, 82 left
    slot(2, 0, 6, 3, tags=(60, 61, 62))                  # free
    slot(3, 2, 9, 0, rel=3, me=1, tags=(90, 91, 92))     # sent 90, me, 91: 92 left
    r = m.halt_records(words)
    assert r["type"].tolist() == [gate.type_ids()["GATE_ARRIVE"]] * 5
    assert list(zip(r["meta0"].tolist(), r["meta1"].tolist())) == \
        [(3, 30), (3, 31), (8, 81), (8, 82), (9, 92)]


@pytest.mark.parametrize("kw, words", [
    (dict(n=298, base=8192), ["n=298", "n <= 297 at gates=64", "gates <= 32 at n=298"]),
    (dict(n=341), ["n=341", "n <= 340 at gates=64", "gates <= 32 at n=341"]),
    (dict(n=5, gates=4096, base=0), ["n=5", "gates=4096", "n <= 4 at gates=4096",
                                     "gates <= 2048 at n=5"]),
    (dict(n=2**31), ["n=2147483648", "n <= 340 at gates=64"]),
])
def test_n_is_bounded_by_the_user_words(kw, words):
    with pytest.raises(BootError) as e:
        gate.device_module(**kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "base=" not in str(e.value) or "base" in kw   # (a base the user never gave)
    gate.device_module(n=297, base=8192)                 # the largest from the default place
    m = gate.device_module(n=340)                        # the largest without base=: lower down
    assert m.user_words[1] == 65536
