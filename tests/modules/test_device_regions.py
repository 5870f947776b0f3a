"""Standard device modules made without ``base=`` (``rr_word=`` for echo) are placed by the
kernel's build (``gd.Module.movable``, ``codegen.resolve.place_user_words``): at their
default words when those are free, else at free words elsewhere.

Before: the defaults were fixed words, so a gate past n = 20 (64 gate slots of 6 + 3 (n - 1)
words from 8192) ran into the stats module's 12288 and the kernel did not build ("claim the
same user words"), and two round-robin echoes shared the turn word 32767 (the same error):
the user had to find free words by hand. An explicit ``base=`` / ``rr_word=`` still stays
where it is given, and modules that cannot fit the words together are a clear BootError.

The kernel test builds one kernel (one compile) on the device kernel's ``cpu`` target, and
the same on ``sim`` in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

import ggmk.device as gd  # noqa: E402
from ggmk import task as T  # noqa: E402
from ggmk.device import api as g  # noqa: E402
from ggmk.device.codegen import resolve_handlers  # noqa: E402
from ggmk.device.host import SYS_DROPPED, SYS_ERROR  # noqa: E402
from ggmk.errors import BootError  # noqa: E402
from ggmk.modules import echo, gate, kv, reduce, stats  # noqa: E402

E1, E2, SEEN, PEEK, WORD = 1001, 1002, 1003, 1004, 1005
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _disjoint(mods):
    spans = sorted(m.user_words[:2] for m in mods if m.user_words)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _probe():
    """A sink for the echoes' four outputs (meta0, channel id to the host) and a peek at a
    user word (meta0 = the word: its value to the host)."""
    p = gd.Module("probe")

    @p.handler(SEEN, consumes=("e1.a", "e1.b", "e2.a", "e2.b"))
    def seen(ctx, task):
        g.emit_host(ctx, SEEN, g.meta0(task), g.channel(task))
        return 0

    @p.handler(PEEK)
    def peek(ctx, task):
        g.emit_host(ctx, WORD, g.meta0(task), g.user_get(ctx, g.meta0(task)))
        return 0
    return p


def _pull(k, n, t):
    out = k.pull_until(n, timeout=300)
    bad = out[(out["channel"] == SYS_ERROR) | (out["channel"] == SYS_DROPPED)]
    assert len(bad) == 0, bad
    assert len(out) == n and set(out["type"].tolist()) == {t}, out
    return out


def _peek(k, words):
    k.push(T.make(len(words), type=PEEK, meta0=words))
    out = _pull(k, len(words), WORD)
    return dict(zip(out["meta0"].tolist(), out["meta1"].view(np.int64).tolist()))


def run(target: str) -> dict:
    """gate n=64, stats and reduce with their defaults, two round-robin echoes with theirs,
    in one kernel on ``target``: each works, in the words it says it has."""
    import time
    gid, sid, rid = gate.type_ids(), stats.type_ids(), reduce.type_ids()
    gt = gate.device_module(n=64)
    st = stats.device_module(period=5)
    rd = reduce.device_module(n=2)
    e1 = echo.device_module(["e1.a", "e1.b"], mode="round_robin", name="e1", type=E1)
    e2 = echo.device_module(["e2.a", "e2.b"], mode="round_robin", name="e2", type=E2)
    mods = [gt, st, rd, e1, e2, _probe()]
    asked = {m.name: m.user_words[:2] for m in mods if m.user_words}
    assert asked["gate"] == (8192, 8192 + 1 + 64 * (6 + 3 * 63))     # reaches past 12288
    assert asked["e1"] == asked["e2"] == (32767, 32768)
    with gd.DeviceKernel(mods, target=target, workers=2) as k:
        placed = {m.name: m.user_words[:2] for m in mods if m.user_words}
        assert _disjoint(mods), placed
        # the first at its default words stays; the ones there after it moved
        assert placed["gate"] == asked["gate"] and placed["reduce"] == asked["reduce"]
        assert placed["stats"] != asked["stats"] and placed["e1"] == asked["e1"]
        assert placed["e2"] != asked["e2"]
        # the gate: one round of 64 arrivals opens it
        k.push(T.make(64, type=gid["GATE_ARRIVE"], meta0=5, meta1=np.arange(64) + 100))
        out = _pull(k, 64, gid["GATE_PASS"])
        assert sorted(out["meta1"].tolist()) == list(range(100, 164))
        # stats: a counter in its (moved) words, snapshotted (the adds may straddle two
        # snapshots: the last one has them all)
        k.push(T.make(3, type=sid["STAT_ADD"], meta0=2, meta1=[1, 2, 3]))
        got, end = [], time.monotonic() + 300
        while True:
            got.append(k.pull())
            snaps = stats.collect(np.concatenate(got))
            if snaps and snaps[-1]["counters"] == {"#2": 6}:
                break
            assert time.monotonic() < end, snaps
            time.sleep(0.01)
        # reduce: two partials, one result
        k.push(T.make(2, type=rid["REDUCE_PART"], meta0=7, meta1=[30, 12]))
        out = _pull(k, 1, rid["REDUCE_RESULT"])
        assert out["meta0"].tolist() == [7] and out["meta1"].tolist() == [42]
        # each echo takes turns over its own two outputs with its own turn word
        for t in (E1, E2):
            k.push(T.make(4, type=t, meta0=np.arange(4) + t * 10))
            out = _pull(k, 4, SEEN)
            assert sorted(out["meta0"].tolist()) == list(range(t * 10, t * 10 + 4))
            assert sorted(np.unique(out["meta1"], return_counts=True)[1].tolist()) == [2, 2]
        # the words each module's handlers wrote are the ones it says it has
        lay = st.stats_layout
        counter = lay["metrics"] + lay["words_per_metric"] * 2 + 1     # metric 2's value
        assert _peek(k, [e1.user_words[0], e2.user_words[0], counter]) == \
            {e1.user_words[0]: 4, e2.user_words[0]: 4, counter: 6}
        assert lay["lock"] == st.user_words[0] and \
            rd.reduce_layout["lock"] == rd.user_words[0]
    return placed


@pytest.mark.timeout(900)            # builds the kernel: minutes on a cold cache
def test_gate_n64_stats_reduce_and_two_round_robin_echoes_boot_with_defaults_cpu():
    run("cpu")


@pytest.mark.timeout(1500)
def test_gate_n64_stats_reduce_and_two_round_robin_echoes_boot_with_defaults_sim():
    """The same on numba-cuda's simulator (a process of its own: the simulator is switched
    on before Numba loads)."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    p = subprocess.run([sys.executable, __file__, "sim"], env=env, capture_output=True,
                       text=True, timeout=1400)
    assert p.returncode == 0, p.stderr[-4000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == run_placed()


def run_placed() -> dict:
    """Where ``run`` finds its modules placed (nothing compiles)."""
    mods = [gate.device_module(n=64), stats.device_module(period=5),
            reduce.device_module(n=2),
            echo.device_module(["e1.a", "e1.b"], mode="round_robin", name="e1", type=E1),
            echo.device_module(["e2.a", "e2.b"], mode="round_robin", name="e2", type=E2),
            _probe()]
    resolve_handlers(mods)
    return {m.name: list(m.user_words[:2]) for m in mods if m.user_words}


def test_two_default_round_robin_echoes_get_a_turn_word_each():
    e1 = echo.device_module(["a.x", "a.y"], mode="round_robin", name="e1", type=E1)
    e2 = echo.device_module(["b.x", "b.y"], mode="round_robin", name="e2", type=E2)
    resolve_handlers([e1, e2])
    assert e1.user_words[:2] == (32767, 32768) and e2.user_words[1] - e2.user_words[0] == 1
    assert e2.user_words[0] != 32767 and "e2: echo (device) round-robin turn" in e2.user_words
    # the recipe a device process rebuilds it from still asks for no word: the child
    # places it as this build did
    assert e2._ggmk_rebuild[2]["rr_word"] is None


def test_an_explicit_base_or_rr_word_stays_where_given():
    gt = gate.device_module(n=64)
    st = stats.device_module(base=12288)
    e1 = echo.device_module(["a.x", "a.y"], mode="round_robin", name="e1", type=E1)
    e2 = echo.device_module(["b.x", "b.y"], mode="round_robin", name="e2", type=E2,
                            rr_word=32767)
    resolve_handlers([gt, st, e1, e2])
    assert st.user_words[:2] == (12288, 16900) and e2.user_words[:2] == (32767, 32768)
    assert gt.user_words[0] != 8192 and e1.user_words[0] != 32767 and _disjoint([gt, st, e1,
                                                                                e2])
    # two explicit claims on one word: still refused, naming both
    x = echo.device_module(["c.x", "c.y"], mode="round_robin", name="x", type=E1, rr_word=9)
    y = echo.device_module(["d.x", "d.y"], mode="round_robin", name="y", type=E2, rr_word=9)
    with pytest.raises(BootError, match=r"'x' and 'y' claim the same user words"):
        resolve_handlers([x, y])
    # and the explicit word's checks
    with pytest.raises(BootError, match=r"rr_word must be an int user word 0\.\.65535"):
        echo.device_module(["c.x", "c.y"], mode="round_robin", rr_word=65536)


def test_modules_that_cannot_fit_together_fail_naming_each_and_its_size():
    big_gate = gate.device_module(n=297)                 # 57217 words: alone it fits
    big_stats = stats.device_module(metrics=739)         # 53212 words: alone it fits
    with pytest.raises(BootError) as e:
        gd.DeviceKernel([big_gate, big_stats, kv.device_module(capacity=4, base=32768)],
                        target="cpu")
    msg = str(e.value)
    for w in ("do not fit the 65536 user words together", "'gate' 57217 words",
              "'stats' 53212 words", "fixed: 'kv' 32768..", "free: 0..32767 (32768 words)",
              "smaller sizes"):
        assert w in msg, (w, msg)


def test_a_kv_without_base_moves_out_of_a_fixed_claim_on_its_default_words():
    """kv's default words (32768..) taken by an explicit claim: the build moves the table and
    its layout says where (the host reads the table through ``m.kv_layout``)."""
    from ggmk.device.codegen.resolve import resolve_handlers
    other = gd.Module("other")
    other.handler(5)(lambda ctx, task: 0)
    other.user_words = (32768, 32800, "other: a user's own words")
    k = kv.device_module(capacity=4)
    resolve_handlers([other, k])                         # (where the build places regions)
    lo, hi, _ = k.user_words
    assert (hi <= 32768 or lo >= 32800) and k.kv_layout["count"] == lo
    assert k.kv_layout["table"] == lo + 2


if __name__ == "__main__":
    print(json.dumps({n: list(w) for n, w in run(sys.argv[1]).items()}))


def test_a_movable_module_is_bounded_by_the_user_words_not_its_default_place():
    """Made without base=, a region too large to fit from its default words asks for lower
    ones (``default_base``): kv capacity 4096 and stats metrics 900 fit the 65536 words."""
    k = kv.device_module(capacity=4096)
    assert k.user_words[1] == 65536 and k.kv_layout["count"] == k.user_words[0]
    s = stats.device_module(metrics=900)
    assert s.user_words[1] == 65536
    with pytest.raises(BootError, match=r"capacity <= 2048 at this base"):
        kv.device_module(capacity=4096, base=32768)     # a given base still bounds it
