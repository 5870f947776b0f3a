"""Fixes in the device versions (``device_module()``) of kv, gate, log, stats and echo, each
checked against the CPU version's answers for the same input (``ggmk.testing.Sandbox``):

* kv reuses deleted slots: keys come and go for ever (``FULL`` only with ``capacity`` keys
  in, as the CPU's table answers), a key is never stored twice even while two workers put
  it at once, and ``channels=True`` consumes ``kv.put``/``kv.get``/``kv.del`` and answers on
  ``kv.resp`` (an answer that finds it full waits, the operation is not redone).
* gate answers ``GATE_BAD_ID`` for every id >= 2**31 whatever its high bits: bit 62 (the
  device's waiting marker) no longer merges gate 2**62 + 5 into gate 5 nor waits for ever.
* log writes a level above 255 and a malformed payload as the CPU version does (an ERROR
  line saying why), and with ``channels=True`` its drop report reaches the host as the CPU
  version's ``log: N lines dropped (rate limit)``.
* The standard device modules' default user words are disjoint (stats and log with their
  defaults in one kernel no longer corrupt each other), each records its range as
  ``m.user_words``, and bad factory arguments are BootErrors naming the argument, the value
  and what is allowed.

The device runs happen in a subprocess of this file (``python test_devstd_fixes.py MODE``),
as ``test_device_std.py`` runs its scenarios: ``scen-cpu`` / ``scen-sim`` use the scenario
kernel of ``device_std_scenarios.py`` (the same compile), ``dual`` the modules of its dual
boot."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")
sys.path.insert(0, str(HERE))

import ggmk.device as gd  # noqa: E402
from ggmk import task as T  # noqa: E402
from ggmk.device import api as g  # noqa: E402  (device handlers see it as a global)
from ggmk.errors import BootError  # noqa: E402
from ggmk.modules import echo, gate, kv, log, reduce, stats, timer  # noqa: E402

U64 = (1 << 64) - 1
KV_CAP = 16                                    # device_std_scenarios.KV_CAP
GATE_N = 3                                     # device_std_scenarios.GATE_N
BAD_GATE_IDS = [(1 << 62) + 5, (1 << 62) | (9 << 32) | 1, (1 << 63) + 5, 1 << 31]


# ------------------------------------------------------------------------------ the inputs

def kv_steps() -> list:
    """The kv sequence both versions answer: ("ops", type, keys, meta1s) answered as a
    multiset (the device runs one step's requests at once), ("batch", ops, keys, values,
    tags) answered in order (the device's KV_BATCH; the CPU's single requests in turn)."""
    steps = []
    key = 1000
    for r in range(6):                         # 6 x 16 new keys in a 16-key table
        keys = list(range(key, key + KV_CAP))
        key += KV_CAP
        steps.append(("ops", "KV_PUT", keys, [r * 100 + i for i in range(KV_CAP)]))
        steps.append(("ops", "KV_GET", keys, list(range(KV_CAP))))
        steps.append(("ops", "KV_DEL", keys, list(range(KV_CAP))))
    # churn inside one batch: 3 x (16 puts, then their 16 deletes), then a get of each
    ops, keys, vals = [], [], []
    for _ in range(3):
        ks = list(range(key, key + KV_CAP))
        key += KV_CAP
        ops += [kv.OP_PUT] * KV_CAP + [kv.OP_DEL] * KV_CAP
        keys += ks + ks
        vals += [k * 7 for k in ks] + [0] * KV_CAP
    ops += [kv.OP_GET] * KV_CAP
    keys += ks
    vals += [0] * KV_CAP
    steps.append(("batch", ops, keys, vals, list(range(len(ops)))))
    # a full table: a new key is FULL, an update is OK; a delete makes room for it
    keys = list(range(key, key + KV_CAP))
    extra = key + KV_CAP
    key += KV_CAP + 1
    steps.append(("ops", "KV_PUT", keys, [5] * KV_CAP))
    steps.append(("ops", "KV_PUT", [extra, keys[3]], [6, 7]))
    steps.append(("ops", "KV_GET", keys + [extra], list(range(KV_CAP + 1))))
    steps.append(("ops", "KV_DEL", [keys[0]], [1]))
    steps.append(("ops", "KV_PUT", [extra], [8]))
    steps.append(("ops", "KV_GET", [extra, keys[0], keys[3]], [1, 2, 3]))
    steps.append(("ops", "KV_DEL", keys[1:] + [extra], list(range(KV_CAP))))
    # two keys put 32 times each at once (both workers): stored once each
    steps.append(("ops", "KV_PUT", [key] * 32 + [key + 1] * 32, list(range(64))))
    for k in (key, key, key + 1, key + 1):
        steps.append(("ops", "KV_DEL", [k], [9]))
    key += 2
    steps.append(("ops", "KV_PUT", list(range(key, key + KV_CAP)), [1] * KV_CAP))
    steps.append(("ops", "KV_PUT", [key + KV_CAP], [1]))      # FULL: 16 keys in, none twice
    return steps


def gate_steps() -> list:
    """(meta0s, meta1s) pushed in turn: bad ids (>= 2**31, bit 62 among them) and two
    arrivals at gate 5, then the third; a round at gate 6; gate 5 again."""
    return [(BAD_GATE_IDS + [5, 5], [100, 200, 300, 400, 101, 102]),
            ([5], [103]),
            ([6, 6, 6], [60, 61, 62]),
            ([5, 5, 5], [104, 105, 106])]


def log_inputs() -> list:
    """LOG inputs, one at a time: (meta0, meta1, payload bytes or None)."""
    return [(296, 4242, None),                 # not a level: ERROR "[bad level 296 ...]"
            (256, 4243, None),
            (U64, 4244, None),
            (0, 77, b"\x05"),                  # malformed (1 byte): ERROR, not level 5
            (0, 78, b"\x00" * 37),
            (0, 79, log.encode(log.WARN, "disk %d at %d%%", 3, 97)),
            (log.ERROR, 4245, None)]


# ---------------------------------------------------------------------- the CPU's answers

def _resp(e) -> tuple:
    st, op, tag = kv.unpack(e.meta0)
    return (st, op, tag, int(e.meta1) & U64)


def cpu_kv() -> list:
    from ggmk.testing import Sandbox
    out = []
    m = kv.module(capacity=KV_CAP)
    with Sandbox(m) as sb:
        for step in kv_steps():
            if step[0] == "ops":
                _, t, keys, m1 = step
                sb.feed(t, meta0=keys, meta1=m1)
                sb.run()
                out.append(sorted(_resp(e) for e in sb.take("kv.resp")))
            else:               # a batch: the CPU version's table, one operation at a time
                _, ops, keys, vals, tags = step
                tab = m.kv.table
                out.append([tab.put(k, v) if op == kv.OP_PUT else
                            (kv.OK if tab.get(k) is not None else kv.NOT_FOUND)
                            if op == kv.OP_GET else
                            (kv.OK if tab.delete(k) else kv.NOT_FOUND)
                            for op, k, v in zip(ops, keys, vals)])
    return out


def cpu_gate() -> list:
    from ggmk.testing import Sandbox
    out = []
    with Sandbox(gate.module(n=GATE_N)) as sb:
        for m0, m1 in gate_steps():
            sb.feed("GATE_ARRIVE", meta0=m0, meta1=m1)
            sb.run()
            out.append(sorted((int(e.meta0), int(e.meta1)) for e in sb.take("gate.open")))
    return out


def cpu_log() -> list:
    from ggmk.testing import Sandbox
    lines = []
    lg = log.module(level="info", rate=1e6, sink=lambda lv, ln: lines.append((lv, ln)))
    with Sandbox(lg) as sb:
        for m0, m1, pl in log_inputs():
            sb.feed("LOG", meta0=m0, meta1=m1, payload=pl)
            sb.run()
    return lines


# ---------------------------------------------------------------------- the device's answers

def dev_kv(k, c) -> list:
    ids = kv.type_ids()
    resp = ids["KV_RESP"]
    out = []
    for step in kv_steps():
        if step[0] == "ops":
            _, t, keys, m1 = step
            k.push_all(T.make(len(keys), type=ids[t], meta0=np.array(keys, np.uint64),
                              meta1=np.array(m1, np.uint64)))
            c.until(lambda: c.n(resp) >= len(keys), what=f"{len(keys)} answers to {t}")
            got = c.take(resp)
            out.append(sorted(kv.unpack(a & U64) + (b & U64,) for a, b in got))
        else:
            _, ops, keys, vals, tags = step
            n = len(ops)
            k.push_all(T.make(1, type=ids["KV_ALLOC"], meta0=24 * n, meta1=1))
            c.until(lambda: c.n(ids["KV_BUFFER"]) == 1, what="a batch buffer")
            (ptr, _), = c.take(ids["KV_BUFFER"])
            assert ptr != 0
            k.write_arena(ptr, kv.batch_encode(ops, keys, vals, tags))
            k.push_all(T.make(1, type=ids["KV_BATCH"], meta0=n, payload_ptr=ptr,
                              payload_len=24 * n))
            c.until(lambda: c.n(ids["KV_BATCH_DONE"]) == 1, what="the batch")
            c.take(ids["KV_BATCH_DONE"])
            d = kv.batch_decode(k.read_arena(ptr, 24 * n))
            assert d["tag"].tolist() == tags
            out.append(d["status"].tolist())
    return out


def dev_gate(k, c) -> dict:
    ids = gate.type_ids()
    ps = ids["GATE_PASS"]
    out = {"passes": [], "errors": []}
    for i, (m0, m1) in enumerate(gate_steps()):
        k.push_all(T.make(len(m0), type=ids["GATE_ARRIVE"], meta0=np.array(m0, np.uint64),
                          meta1=m1))
        if i == 0:          # the bad ids answered (one that waited for ever timed out here)
            c.until(lambda: len(c.errors) >= len(BAD_GATE_IDS), what="the bad ids' errors")
            out["errors"] = sorted((e[1], e[3] & U64) for e in c.take_errors())
            out["passes"].append(sorted(c.take(ps)))          # gate 5: 2 of 3, closed
        else:
            c.until(lambda: c.n(ps) >= GATE_N, what=f"gate round {i}")
            out["passes"].append(sorted(c.take(ps)))
    c.pull()
    out["extra"] = c.take(ps) + c.take_errors()
    return out


def dev_log(k, c) -> list:
    """Each input pushed until a LOG_LINE of it passed the rate limit (a dropped one is
    counted and pushed again); the lines formatted by ``log.device_line``."""
    ids = log.type_ids()
    kids = kv.type_ids()
    lt, line = ids["LOG"], ids["LOG_LINE"]
    lines = []
    handled = int(k.type_totals([lt])[0])
    for m0, m1, pl in log_inputs():
        for _ in range(200):
            ptr = 0
            if pl is not None:      # a buffer per try: a task's payload is released after it
                k.push_all(T.make(1, type=kids["KV_ALLOC"], meta0=max(len(pl), 1), meta1=2))
                c.until(lambda: c.n(kids["KV_BUFFER"]) == 1, what="a payload buffer")
                (ptr, _), = c.take(kids["KV_BUFFER"])
                if pl:
                    k.write_arena(ptr, pl)
            k.push_all(T.make(1, type=lt, meta0=np.uint64(m0), meta1=m1, payload_ptr=ptr,
                              payload_len=len(pl) if pl is not None else 0))
            handled += 1
            c.until(lambda: int(k.type_totals([lt])[0]) >= handled, what="a LOG handled")
            mine = [r for r in c.raw if int(r["type"]) == line and int(r["meta1"]) == m1]
            c.raw = [r for r in c.raw if int(r["type"]) != line]
            if mine:
                r = mine[0]
                raw = None
                if int(r["payload_ptr"]):
                    raw = bytes(k.read_arena(int(r["payload_ptr"]), int(r["payload_len"])))
                lines.append(log.device_line(line, int(r["meta0"]), int(r["meta1"]), raw))
                break
    return lines


class RawCollector:
    """device_std_scenarios.Collector that also keeps the raw records (payload fields)."""

    def __init__(self, k):
        import device_std_scenarios as S
        self._c = S.Collector(k)
        self.raw = []
        self.k = k
        pull = self._c.k.pull

        def pull_keep():
            r = pull()
            self.raw.extend(r.copy())
            return r
        self._c.k = type("K", (), {"pull": staticmethod(pull_keep),
                                   "alive": staticmethod(k.alive)})()

    def __getattr__(self, name):
        return getattr(self._c, name)


def run_scenarios(target: str) -> dict:
    import device_std_scenarios as S
    res = {}
    with S.kernel(target) as k:
        c = RawCollector(k)
        for name, fn in (("kv", dev_kv), ("gate", dev_gate), ("log", dev_log)):
            try:
                res[name] = fn(k, c)
            except Exception as e:          # noqa: BLE001 - reported to the test, which fails
                res[name] = {"exception": repr(e)}
            res[name + "_left"] = c.take_errors()
    return json.loads(json.dumps(res, default=int))


def run_stress(target: str = "cpu", rounds: int = 30, n: int = 400, seed: int = 7) -> dict:
    """Two workers on mixed puts, gets and deletes of 40 keys in a 16-key table (the scenario
    kernel), pushed at once: every get answers a value put for that key; then, quiet, each
    key is deleted twice (at most one OK: stored once) and the table takes exactly as many
    new keys as the OKs freed (its count matches its keys). On ``sim`` (each lane a thread)
    lanes meet on slots and locks (yields); on ``cpu`` rarely."""
    import device_std_scenarios as S
    ids = kv.type_ids()
    resp = ids["KV_RESP"]
    rng = np.random.default_rng(seed)
    out = {"bad_values": 0, "answers": 0}
    with S.kernel(target) as k:
        c = S.Collector(k)
        seq = 0
        for _ in range(rounds):
            ops = rng.choice(["KV_PUT", "KV_GET", "KV_DEL"], size=n, p=[0.45, 0.2, 0.35])
            keys = rng.integers(0, 40, size=n)
            recs = []
            for t in ("KV_PUT", "KV_GET", "KV_DEL"):
                sel = ops == t
                kk = keys[sel].astype(np.uint64)
                m1 = (kk << np.uint64(32)) + np.arange(seq, seq + len(kk), dtype=np.uint64) \
                    if t == "KV_PUT" else kk
                seq += len(kk)
                recs.append(T.make(len(kk), type=ids[t], meta0=kk, meta1=m1))
            allr = np.concatenate(recs)
            k.push_all(allr[rng.permutation(len(allr))])
            c.until(lambda: c.n(resp) >= n, what=f"{n} answers", timeout=600)
            for a, b in c.take(resp):
                st, op, tag = kv.unpack(a & U64)
                out["answers"] += 1
                if op == kv.OP_GET and st == kv.OK and (b & U64) >> 32 != tag:
                    out["bad_values"] += 1
        dels = []
        for _ in range(2):
            k.push_all(T.make(40, type=ids["KV_DEL"], meta0=np.arange(40, dtype=np.uint64),
                              meta1=np.arange(40)))
            c.until(lambda: c.n(resp) >= 40, what="the deletes")
            dels.append(sorted(kv.unpack(a & U64)[2] for a, _ in c.take(resp)
                               if kv.unpack(a & U64)[0] == kv.OK))
        out["deleted"] = dels
        k.push_all(T.make(KV_CAP + 4, type=ids["KV_PUT"],
                          meta0=np.arange(1000, 1000 + KV_CAP + 4, dtype=np.uint64), meta1=1))
        c.until(lambda: c.n(resp) >= KV_CAP + 4, what="the refill")
        out["refill"] = sorted(kv.unpack(a & U64)[0] for a, _ in c.take(resp))
        out["errors"] = c.take_errors()
        mt = k.metrics()["types"]
        out["yields"] = sum(mt.get(ids[t], {}).get("yield", 0) for t in ("KV_PUT", "KV_DEL"))
    return json.loads(json.dumps(out, default=int))


# ----------------------------------------------------- stats + log with their default words

def overlap_observations() -> list:
    # 2**53 and 2**60 fall in buckets 54 and 61 of metric 56: log's words under the old
    # defaults (stats 12288..16900 covered log's 16384..16391)
    return [1, 1 << 53, 1 << 60, 5]


def run_overlap() -> dict:
    from ggmk.device.host import SYS_DROPPED, SYS_ERROR
    sids, lids = stats.type_ids(), log.type_ids()
    out = {"lines": [], "errors": []}
    recs = []

    def pull():
        r = k.pull()
        bad = np.isin(r["channel"], (SYS_ERROR, SYS_DROPPED))
        out["errors"] += [(int(x["type"]), int(x["meta0"])) for x in r[bad]]
        recs.extend(r[~bad].copy())

    def until(pred, what, timeout=120):
        end = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            assert k.alive()
            pull()
            time.sleep(0.0005)

    def lines():
        return [(int(r["meta0"]), int(r["meta1"])) for r in recs
                if int(r["type"]) == lids["LOG_LINE"]]

    with gd.DeviceKernel([stats.device_module(), log.device_module()], target="cpu",
                         workers=2) as k:
        k.push_all(T.make(3, type=lids["LOG"], meta0=log.WARN, meta1=[1, 2, 3]))
        until(lambda: len(lines()) == 3, "3 log lines")
        obs = overlap_observations()
        k.push_all(T.make(len(obs), type=sids["STAT_OBS"], meta0=56,
                          meta1=np.array(obs, np.uint64)))
        until(lambda: int(k.type_totals([sids["STAT_OBS"]])[0]) >= len(obs), "observations")
        k.push_all(T.make(2, type=lids["LOG"], meta0=log.ERROR, meta1=[10, 11]))
        until(lambda: len(lines()) == 5, "2 more log lines (the log's lock was a bucket)")

        def snap():
            a = np.array(recs, dtype=T.TASK_DTYPE)
            s = stats.collect(a)
            h = s[-1]["histograms"].get("#56") if s else None
            return h if h and h["count"] == len(obs) else None
        until(lambda: snap() is not None, "a snapshot with every observation")
        out["hist"] = snap()
        out["lines"] = lines()
        out["dropped_reports"] = sum(1 for r in recs if int(r["type"]) == lids["LOG_DROPPED"])
        pull()
    return json.loads(json.dumps(out, default=int))


# ------------------------------------------------------------------- kv with channels=True

FEED_PUT, FEED_GET, FEED_DEL, GO, BACK, SINK = 760, 761, 762, 763, 764, 765
GO_WORD = 100                     # a user word of the test's own (kv's are at 32768..)


def kvchan_modules():
    ids = kv.type_ids()
    app = gd.Module("kv_app")
    c_put = app.channel("kv.put", message=ids["KV_PUT"], capacity=256)
    c_get = app.channel("kv.get", message=ids["KV_GET"], capacity=256)
    c_del = app.channel("kv.del", message=ids["KV_DEL"], capacity=256)

    @app.handler(FEED_PUT)
    def feed_put(ctx, task):
        if g.emit_chan(ctx, c_put, g.meta0(task), g.meta1(task)) != 0:
            return g.wait_at(task, g.meta0(task))
        return 0

    @app.handler(FEED_GET)
    def feed_get(ctx, task):
        if g.emit_chan(ctx, c_get, g.meta0(task), g.meta1(task)) != 0:
            return g.wait_at(task, g.meta0(task))
        return 0

    @app.handler(FEED_DEL)
    def feed_del(ctx, task):
        if g.emit_chan(ctx, c_del, g.meta0(task), g.meta1(task)) != 0:
            return g.wait_at(task, g.meta0(task))
        return 0

    @app.handler(SINK, consumes="kv.resp")
    def sink(ctx, task):
        if g.user_get(ctx, GO_WORD) == 0:               # stalled until GO: kv.resp fills up
            return gd.WAIT
        g.emit_host(ctx, BACK, g.meta0(task), g.meta1(task))
        return 0

    @app.handler(GO)
    def go(ctx, task):
        g.user_set(ctx, GO_WORD, 1)
        g.wake_waiters(ctx)
        return 0
    return [kv.device_module(capacity=KV_CAP, channels=True, resp_capacity=8), app]


def kvchan_phases() -> list:
    keys = list(range(500, 500 + KV_CAP))
    more = list(range(600, 604))
    return [("KV_PUT", keys, [k * 3 for k in keys]),
            ("KV_PUT", more + [keys[2]], [1, 2, 3, 4, 99]),
            ("KV_GET", keys + more, list(range(KV_CAP + 4))),
            ("KV_DEL", keys + more, list(range(KV_CAP + 4))),
            ("KV_GET", keys[:2], [7, 8])]


def cpu_kvchan() -> list:
    from ggmk.testing import Sandbox
    got = []
    with Sandbox(kv.module(capacity=KV_CAP)) as sb:
        for t, keys, m1 in kvchan_phases():
            sb.feed(t, meta0=keys, meta1=m1)      # (what its kv.put/get/del handlers run)
            sb.run()
            got += [_resp(e) for e in sb.take("kv.resp")]
    return sorted(got)


def run_kvchan() -> dict:
    from ggmk.device.host import SYS_DROPPED, SYS_ERROR
    ids = kv.type_ids()
    feed = {"KV_PUT": FEED_PUT, "KV_GET": FEED_GET, "KV_DEL": FEED_DEL}
    got, errors = [], []
    with gd.DeviceKernel(kvchan_modules(), target="cpu", workers=2) as k:
        n = {}
        for t, keys, m1 in kvchan_phases():
            k.push_all(T.make(len(keys), type=feed[t], meta0=np.array(keys, np.uint64),
                              meta1=m1))
            n[t] = n.get(t, 0) + len(keys)
            end = time.monotonic() + 120      # this phase applied before the next one
            while int(k.type_totals([ids[t]])[0]) < n[t]:
                assert time.monotonic() < end, f"{t} not applied"
                time.sleep(0.0005)
        waiting = int(k.type_totals([ids["KV_FLUSH"]], names=("ok",))[0])
        k.push_all(T.make(1, type=GO))
        want = sum(n.values())

        def pull():
            for r in k.pull():
                if int(r["channel"]) in (SYS_ERROR, SYS_DROPPED):
                    errors.append((int(r["type"]), int(r["meta0"])))
                elif int(r["type"]) == BACK:
                    got.append(kv.unpack(int(r["meta0"])) + (int(r["meta1"]) & U64,))
                else:
                    got.append(("other", int(r["type"])))
        end = time.monotonic() + 120
        while len(got) < want and time.monotonic() < end:
            pull()
            time.sleep(0.0005)
        # every delivery handled (an answer sent twice would be pulled below)
        while int(k.type_totals([SINK], names=("ok",))[0]) < want \
                or int(k.type_totals([ids["KV_FLUSH"]], names=("ok",))[0]) == 0:
            assert time.monotonic() < end, "the sink's and flushes' counters"
            time.sleep(0.0005)
        pull()
        flushes = int(k.type_totals([ids["KV_FLUSH"]], names=("ok",))[0])
    return json.loads(json.dumps({"got": sorted(got), "errors": errors, "flushes": flushes,
                                  "flushed_before_go": waiting}, default=int))


# --------------------------------------------------- log with channels=True (dual boot)

def run_dual_log() -> dict:
    """The modules of device_std_scenarios.run_dual (the same compile); a flood on log.in,
    then lines one at a time until one passes: it brings the drop report; then a bad level
    and a malformed payload, each until it passes."""
    import threading

    import device_std_scenarios as S
    import ggmk.dual
    from ggmk.modules import registry
    got, lock, lines = {}, threading.Lock(), []
    cpu = [S._app("app_r", "reduce", [("reduce.in", "REDUCE_PART")],
                  [("reduce.out", "REDUCE_RESULT"), ("reduce.missing", "REDUCE_MISSING")],
                  got, lock),
           S._app("app_g", "gate", [("gate.arrive", "GATE_ARRIVE")],
                  [("gate.open", "GATE_PASS")], got, lock),
           S._app("app_l", "log", [("log.in", "LOG")], [], got, lock),
           log.module(name="hostlog", level="info", sink=lambda lv, ln: lines.append((lv, ln)))]
    gpu = [reduce.device_module(n=4, timeout=200, channels=True),
           gate.device_module(n=3, channels=True),
           log.device_module(channels=True, rate=1000, burst=2, out="hostlog.in")]
    out = {"sent": 0}
    with ggmk.dual.boot(cpu + gpu, device="cpu", workers=2,
                        types=registry("reduce", "gate", "log")) as s:
        lin = s.channel("log.in")
        lin.publish(meta0=log.WARN, meta1=[101, 102, 103, 104, 105, 106, 107, 108], count=8)
        out["sent"] += 8
        out["idle1"] = s.run(timeout=60)

        def publish_raw(m0, m1, raw):
            # a malformed payload as a GPU module could send one: publish() refuses bytes
            # that do not match the type's schema at the sender, so the record is built here
            p = s.cpu.arena.alloc(len(raw))
            s.cpu.arena.view(p, len(raw))[:] = np.frombuffer(raw, np.uint8)
            if not lin.emit(T.make(1, type=lin.type_id, meta0=m0, meta1=m1, payload_ptr=p,
                                   payload_len=len(raw))):
                s.cpu.arena.release(p)

        def until_passed(m0, m1, payload, text):
            for _ in range(200):
                n0 = len(lines)
                if payload is None:
                    lin.publish(meta0=m0, meta1=m1)
                else:
                    publish_raw(m0, m1, payload)
                out["sent"] += 1
                s.run(timeout=60)
                if any(text in ln for _, ln in lines[n0:]):
                    return True
            return False
        out["passed_200"] = until_passed(log.WARN, 200, None, "200")
        out["passed_bad_level"] = until_passed(296, 4242, None, "4242")
        out["passed_malformed"] = until_passed(0, 77, b"\x05", "malformed")
        out["errors"] = len(s.dead_letters("sys.error")[0])
    out["lines"] = lines
    return json.loads(json.dumps(out))


def cpu_log_report() -> list:
    """The CPU log module's lines for a flood (5 lines at once against a bucket of 2), then a
    line 10 ms later (its state's ``line(now_ns, level, text)``, the handler's path)."""
    lines = []
    lg = log.module(level="info", rate=1000, burst=2, sink=lambda lv, ln: lines.append((lv, ln)))
    for n in (101, 102, 103, 104, 105):
        lg.log.line(0, log.WARN, f"{n}")
    lg.log.line(10_000_000, log.WARN, "200")
    return lines


# ------------------------------------------------------------------------------ the runner

def _run(mode: str, timeout: int = 1500) -> dict:
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    if mode.endswith("sim"):
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    p = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scen_cpu():
    return _run("scen-cpu")


@pytest.fixture(scope="module")
def scen_sim():
    pytest.importorskip("numba.cuda")
    return _run("scen-sim")


def _check_kv(r):
    assert "exception" not in r["kv"], r["kv"]
    dev, cpu = r["kv"], json.loads(json.dumps(cpu_kv()))
    assert len(dev) == len(cpu)
    for i, (d, c) in enumerate(zip(dev, cpu)):
        assert d == c, (i, kv_steps()[i][:2])
    assert r["kv_left"] == []


def _check_gate(r):
    g = r["gate"]
    assert "exception" not in g, g
    # the passes are the CPU version's (which also holds each bad id's arrival at a gate
    # of its own: the device supports ids 0..2**31-1 and refuses the others)
    assert [[tuple(p) for p in step] for step in g["passes"]] == cpu_gate()
    assert [tuple(e) for e in g["errors"]] == sorted((T.GATE_BAD_ID, i) for i in BAD_GATE_IDS)
    assert g["extra"] == [] and r["gate_left"] == []


def _check_log(r):
    assert "exception" not in r["log"], r["log"]
    assert [tuple(x) for x in r["log"]] == cpu_log()
    assert r["log_left"] == []


@pytest.mark.timeout(900)
def test_kv_reuses_tombstones_and_stores_a_key_once_cpu(scen_cpu):
    _check_kv(scen_cpu)


@pytest.mark.timeout(1500)
def test_kv_reuses_tombstones_and_stores_a_key_once_sim(scen_sim):
    _check_kv(scen_sim)


@pytest.mark.timeout(900)
def test_gate_bad_ids_whatever_their_high_bits_cpu(scen_cpu):
    _check_gate(scen_cpu)


@pytest.mark.timeout(1500)
def test_gate_bad_ids_whatever_their_high_bits_sim(scen_sim):
    _check_gate(scen_sim)


@pytest.mark.timeout(900)
def test_log_bad_level_and_malformed_payload_as_cpu_cpu(scen_cpu):
    _check_log(scen_cpu)


@pytest.mark.timeout(1500)
def test_log_bad_level_and_malformed_payload_as_cpu_sim(scen_sim):
    _check_log(scen_sim)


def _check_stress(r, answers):
    assert r["errors"] == [] and r["answers"] == answers
    assert r["bad_values"] == 0                       # a get never read another key's value
    assert r["deleted"][1] == []                      # each key was stored once
    # the count matched the keys: exactly the 16 places are free again
    assert r["refill"] == [kv.OK] * KV_CAP + [kv.FULL] * 4


@pytest.mark.timeout(900)
def test_kv_concurrent_churn_keeps_count_and_values_cpu():
    _check_stress(_run("stress-cpu"), 30 * 400)


@pytest.mark.timeout(1500)
def test_kv_concurrent_churn_keeps_count_and_values_sim():
    pytest.importorskip("numba.cuda")
    r = _run("stress-sim")
    _check_stress(r, 20 * 200)
    assert r["yields"] > 0                            # lanes did meet on locks and slots


def test_log_device_line_formats_as_cpu():
    ids = log.type_ids()
    assert log.device_line(ids["LOG_DROPPED"], 3, 9) == (log.WARN,
                                                         "log: 3 lines dropped (rate limit)")
    assert log.device_line(ids["LOG_LINE"], 296, 4242) == \
        (log.ERROR, "4242 [bad level 296: allowed 0..255]")
    assert log.device_line(ids["LOG_LINE"], log.WARN, 7) == (log.WARN, "7")
    assert log.device_line(ids["LOG_LINE"], log.ERROR, 0, b"\x05") == \
        (log.ERROR, "log: malformed LOG payload (1 bytes)")
    assert log.device_line(ids["LOG"], 0, 0) is None


@pytest.mark.timeout(900)
def test_kv_channels_answer_like_cpu_and_wait_when_resp_is_full():
    r = _run("kvchan")
    assert r["errors"] == []
    assert [tuple(x) for x in r["got"]] == cpu_kvchan()      # each answer exactly once
    assert r["flushes"] > 0 and r["flushed_before_go"] == 0   # kv.resp was full: flushed


@pytest.mark.timeout(900)
def test_stats_and_log_default_words_do_not_interfere():
    from ggmk.testing import Sandbox
    r = _run("overlap")
    assert r["errors"] == []
    assert [tuple(x) for x in r["lines"]] == [(log.WARN, 1), (log.WARN, 2), (log.WARN, 3),
                                              (log.ERROR, 10), (log.ERROR, 11)]
    assert r["dropped_reports"] == 0
    st = stats.module()
    with Sandbox(st) as sb:
        sb.feed("STAT_OBS", meta0=56, meta1=overlap_observations())
        sb.run()
        want = st.stats.snapshot()["histograms"]["#56"]
    assert r["hist"] == want


@pytest.mark.timeout(900)
def test_log_channels_drop_report_reaches_host_as_cpu_line():
    r = _run("dual")
    assert r["passed_200"] and r["passed_bad_level"] and r["passed_malformed"], r
    assert r["errors"] == 0
    rep = re.compile(r"log: (\d+) lines dropped \(rate limit\)$")
    cpu = [(lv, ln) for lv, ln in cpu_log_report() if rep.match(ln)]
    assert cpu and all(lv == log.WARN for lv, _ in cpu)       # what the CPU version writes
    lines = [tuple(x) for x in r["lines"]]
    reports = [(lv, int(rep.match(ln).group(1))) for lv, ln in lines if rep.match(ln)]
    assert reports and all(lv == log.WARN for lv, _ in reports)
    numbers = [int(ln) for _, ln in lines if ln.isdigit()]
    others = [x for x in lines if not rep.match(x[1]) and not x[1].isdigit()]
    # every line sent passed as itself or is counted in a report (8 flooded against a
    # bucket of 2); a bad level and a malformed payload are written as the CPU writes them
    assert len(numbers) + sum(n for _, n in reports) + len(others) == r["sent"]
    assert len(set(numbers)) == len(numbers) and 200 in numbers
    assert others == [(log.ERROR, "4242 [bad level 296: allowed 0..255]"),
                      (log.ERROR, "log: malformed LOG payload (1 bytes)")]


def test_default_user_words_are_disjoint_and_recorded():
    """Every standard device module with its defaults: the ranges are disjoint, below the
    bridge's 2048 words, and (reduce, timer) what their layouts use; the kernel's own check
    (resolve_handlers) takes them all together."""
    from ggmk.device.codegen import resolve_handlers
    mods = {"kv": kv.device_module(), "gate": gate.device_module(n=2),
            "log": log.device_module(), "stats": stats.device_module(),
            "echo": echo.device_module(["a.x", "a.y"], mode="round_robin"),
            "reduce": reduce.device_module(n=2), "timer": timer.device_module()}
    ranges = {n: m.user_words[:2] for n, m in mods.items()}
    for n, m in mods.items():
        lo, hi, what = m.user_words
        assert 0 <= lo < hi <= 65536 - 2048 and n in what
    assert echo.device_module("a.x").user_words is None      # no round-robin turn
    rl = mods["reduce"].reduce_layout
    assert ranges["reduce"] == (rl["lock"], rl["table"] + 6 * rl["groups"])
    tl = mods["timer"].timer_layout
    assert ranges["timer"] == (tl["lock"], tl["table"] + 6 * tl["timers"])
    spans = sorted(ranges.values())
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2, ranges
    assert len(resolve_handlers(list(mods.values()))) > len(mods)
    assert ranges["stats"] == (12288, 16900) and ranges["log"] == (28672, 28681)
    assert ranges["kv"] == (32768, 40962) and ranges["gate"] == (8192, 8769)


@pytest.mark.parametrize("make, words", [
    (lambda: log.device_module(rate=float("nan")), ["rate", "nan", "> 0 and finite"]),
    (lambda: log.device_module(rate=float("inf")), ["rate", "inf", "> 0 and finite"]),
    (lambda: echo.device_module("a.b", rr_word="5"), ["rr_word", "'5'", "0..65535"]),
    (lambda: echo.device_module("a.b", rr_word=True), ["rr_word", "True", "0..65535"]),
    (lambda: kv.device_module(capacity=4, base=-1), ["base", "-1", "0..65535"]),
    (lambda: kv.device_module(capacity=4, base="0"), ["base", "'0'", "0..65535"]),
    (lambda: kv.device_module(capacity=4096, base=32768), ["capacity=4096",
                                                           "capacity <= 2048 at this base",
                                                           "base <= 32766"]),
    # without base= the bound is the user words, not the default's place (default_base)
    (lambda: kv.device_module(capacity=8192), ["capacity=8192", "capacity <= 4096"]),
    (lambda: kv.device_module(channels=True, resp_capacity=0), ["resp_capacity", "0"]),
    (lambda: stats.device_module(metrics=800, base=12288), ["metrics=800",
                                                            "metrics <= 739 at this base",
                                                            "base <= 7932"]),
    (lambda: stats.device_module(metrics=900, period=0), ["period", "0"]),
    (lambda: gate.device_module(n=2, gates=8192, base=40000), ["n=2, gates=8192",
                                                              "gates <= 2048 at n=2"]),
    (lambda: log.device_module(base=65530), ["base=65530", "base <= 65527"]),
])
def test_factory_errors_name_argument_value_and_allowed(make, words):
    with pytest.raises(BootError) as e:
        make()
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "base must" not in str(e.value) or "base" in words[0]


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode.endswith("sim"):
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    run = {"scen-cpu": lambda: run_scenarios("cpu"), "scen-sim": lambda: run_scenarios("sim"),
           "overlap": run_overlap, "kvchan": run_kvchan, "dual": run_dual_log,
           "stress-cpu": run_stress,
           "stress-sim": lambda: run_stress("sim", rounds=20, n=200)}[mode]
    print(json.dumps(run()))
