"""Observability fixes on the control side: ``ggmk trace --sample N`` samples each worker's
stream across the collector's chunks (and flags what it kept), and the Prometheus handler
exception counter counts every exception, not the 64 the system keeps."""
import tempfile
import threading

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import ggmk
from ggmk import OK
from ggmk.control import views
from ggmk.control.paths import StatePaths
from ggmk.control.prom import make_registry
from ggmk.control.server import ControlServer
from ggmk.core.trace import scaled_counts
from ggmk.events import SAMPLED_BIT, TRACE_DTYPE, EventType as E


def _chunk(n, start, ev_cycle=(E.TASK_START, E.TASK_END)):
    part = np.zeros(n, dtype=TRACE_DTYPE)
    part["ts"] = np.arange(start, start + n)
    part["event"] = [ev_cycle[(start + i) % len(ev_cycle)] for i in range(n)]
    part["arg0"] = np.arange(start, start + n)
    return part


def _server(s, modules):
    srv = ControlServer(s, StatePaths.resolve(tempfile.mkdtemp(prefix="ggobs-", dir="/tmp")),
                        modules=modules, app="obs")
    srv._driver = threading.current_thread()
    return srv


def test_sampling_runs_across_chunks_and_flags_what_it_keeps():
    # what the collector makes of a trickle: one or two events per worker per chunk
    chunks, pos = [], {0: 0, 1: 0}
    for i in range(400):
        w = i % 2
        n = 1 + (i % 3 == 0)
        chunks.append((w, _chunk(n, pos[w])))
        pos[w] += n
    before = [p.copy() for _, p in chunks]
    out = views.sample_events(chunks, 10)
    for (_, p), b in zip(chunks, before):          # the buffered chunks are left alone
        assert np.array_equal(p, b)
    for w in (0, 1):
        kept = np.concatenate([p for x, p in out if x == w])
        # one per block of 10 consecutive events of the worker: a full block keeps exactly
        # one, the last, partial block at most one
        assert pos[w] // 10 <= len(kept) <= -(-pos[w] // 10)
        assert (kept["event"] & SAMPLED_BIT).all()
        blocks = kept["arg0"] // 10                  # arg0 = the event's position
        assert len(np.unique(blocks)) == len(blocks)
        assert set(blocks[:pos[w] // 10].tolist()) == set(range(pos[w] // 10))
    allk = np.concatenate([p for _, p in out])
    total = sum(scaled_counts(allk, 10).values())
    assert abs(total - sum(pos.values())) <= 2 * 10


def test_a_carried_state_samples_one_stream_given_in_pieces():
    state = {}
    kept = 0
    for k in range(50):                              # 50 calls of 7 events: 350 events
        out = views.sample_events([(0, _chunk(7, 7 * k))], 10, state)
        kept += sum(len(p) for _, p in out)
    assert kept == 35


def test_without_state_short_pieces_are_kept_at_the_rate_on_average():
    calls, n, every = 3000, 3, 10
    kept = sum(len(p) for _, p in
               (c for k in range(calls)
                for c in views.sample_events([(0, _chunk(n, k * n))], every)))
    # each call keeps one event with probability 3/10: 900 expected, sd ~25
    assert abs(kept - calls * n / every) < 150


def test_trace_sample_keeps_one_in_n_of_a_trickle():
    m = ggmk.Module("m", trace_level="all")

    @m.handler("NOP")
    def nop(ctx):
        return OK

    s = ggmk.boot([m], workers=2)
    try:
        srv = _server(s, [m])
        for i in range(300):                     # a trickle: a few events per collection
            s.submit("NOP", meta0=i)
            assert s.run(until_idle=True, timeout=10)
            srv._collect_trace()
        full = srv.cmd_trace(None, 1, {})["events"]
        samp = srv.cmd_trace(None, 1, {"sample": 10})["events"]
    finally:
        s.halt()
    per = {}
    for e in full:
        per[e[0]] = per.get(e[0], 0) + 1
    got = {}
    for e in samp:
        got[e[0]] = got.get(e[0], 0) + 1
        assert e[2] & SAMPLED_BIT
    assert sum(per.values()) >= 600                  # 300 TASK_START + 300 TASK_END
    for w, n in per.items():
        assert n // 10 <= got.get(w, 0) <= -(-n // 10), (w, n, got)


def test_prometheus_counts_every_handler_exception():
    m = ggmk.Module("m")

    @m.handler("BOOM")
    def boom(ctx):
        raise RuntimeError("boom")

    s = ggmk.boot([m], workers=2, poison_threshold=1 << 30)
    try:
        reg = make_registry(lambda: {"stats": s.stats(), "kernels": [], "uptime_s": 1.0,
                                     "dual": False})

        def scrape():
            text = generate_latest(reg).decode()
            for f in text_string_to_metric_families(text):
                if f.name == "ggmk_handler_exceptions":
                    assert f.type == "counter"
                    return f.samples[0].value
        for k in range(1, 4):
            s.submit("BOOM", meta0=np.arange(100))
            assert s.run(until_idle=True, timeout=30)
            assert scrape() == 100 * k
        assert len(s.exceptions) == 64
    finally:
        s.halt()
