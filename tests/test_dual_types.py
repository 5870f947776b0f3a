"""Type ids of a dual boot: standard CPU modules (their .toml ids) next to custom GPU modules
whose type names get ids on first sight, with and without a ``types=`` registry."""
import threading

import pytest

import ggmk
import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device.layout import WAIT
from ggmk.modules import log, registry, stats
from tests.bridge.dualkit import publish_all, wait_for

# a custom GPU module feeding the CPU's standard log and stats modules over the bridge
gsrc = gd.Module("dtsrc", version="0.1.0")
TO_LOG = gsrc.channel("log.in", message="LOG", mode="p2p", guarantee="lossless", capacity=64)
TO_STAT = gsrc.channel("stats.add", message="STAT_ADD", mode="p2p", guarantee="lossless",
                       capacity=64)


@gsrc.handler("DT_SRC", consumes="dt.in", message="DT_SRC")
def on_src(ctx, task):
    if g.emit_chan(ctx, TO_LOG, 20, g.meta0(task)) == -100:
        return WAIT
    return 0


@gsrc.handler("DT_STAT", consumes="dt.stat", message="DT_STAT")
def on_stat(ctx, task):
    if g.emit_chan(ctx, TO_STAT, 1, 1) == -100:
        return WAIT
    return 0


def host():
    m = ggmk.Module("dthost")
    m.produces("dt.in", "DT_SRC", mode="p2p", guarantee="lossless")
    m.produces("dt.stat", "DT_STAT", mode="p2p", guarantee="lossless")
    return m


@pytest.mark.parametrize("types", [None, "registry"])
def test_std_cpu_modules_next_to_custom_gpu_module(types):
    """log/stats keep their .toml ids (no clash with auto ids), the custom names get ids on
    both kernels, and GPU -> CPU traffic reaches both modules, every message accounted."""
    lines, lock = [], threading.Lock()

    def sink(lv, text):
        with lock:
            lines.append((lv, text))

    lg = log.module(sink=sink, rate=1e6, burst=1e6)
    st = stats.module(period=1_000_000)
    kw = {} if types is None else {"types": registry("log", "stats")}
    s = ggmk.boot([gsrc, host(), lg, st], device="cpu", workers=2, device_process=False, **kw)
    try:
        # the standard modules' ids are their .toml ids, the same on both kernels
        assert s.cpu.types.id("LOG") == log.type_ids()["LOG"]
        assert s.cpu.types.id("STAT_ADD") == stats.type_ids()["STAT_ADD"]
        n = 300
        publish_all(s, "dt.in", n)
        publish_all(s, "dt.stat", n)
        wait_for(lambda: len(lines) >= n and st.stats.counters.get(1, 0) >= n, 60,
                 "log lines and stats counter")
        with lock:
            assert sorted(int(t.split()[-1]) for _, t in lines) == list(range(n)), lines[:5]
        assert st.stats.counters[1] == n
        assert lg.log.counters.get("dropped", 0) == 0
        for dl in ("sys.error", "sys.dropped"):
            assert len(s.dead_letters(dl)[0]) == 0, dl
    finally:
        s.halt()
