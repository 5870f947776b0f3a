"""``ggmk.device.layout``: the state's regions, sizes, offsets and initial images, and the
configuration's validation. Pure NumPy: nothing compiles."""
import numpy as np
import pytest

from ggmk.device import layout
from ggmk.errors import BootError


def _plan(ntypes=3, nchan=2, nsubs=3, **cfg):
    c = layout.DeviceConfig(**cfg).validate()
    return layout.plan(c, ntypes, 5, nchan, nsubs)


def test_regions_are_aligned_and_do_not_overlap():
    p = _plan()
    offs = layout.offsets(p)
    _, ndev, nmap = offs.pop("_total")
    assert set(offs) == {n for n, _ in layout.REGIONS}
    for home, total in (("dev", ndev), ("map", nmap)):
        spans = sorted((o, o + n) for kind, o, n in offs.values() if kind == home)
        assert all(o % 8 == 0 for o, _ in spans)            # 64-byte lines
        assert all(a_end <= b for (_, a_end), (b, _) in zip(spans, spans[1:]))
        assert spans[-1][1] <= total


def test_sizes_follow_the_config():
    p = _plan(blocks=3, tx_cap=1 << 10, trace_cap=1 << 8)
    s = p.sizes()
    assert s["tx"] == (1 << 10) * layout.W and s["txseq"] == 1 << 10
    assert s["tr"] == (1 << 8) * layout.TW
    assert s["hb"] == 3 * 8 and s["met"] == 3 * p.nmet and s["ctl"] == layout.NCTL
    assert p.nmet % 8 == 0 and p.nmet >= layout.NGLOBAL_METRICS + 3 * layout.NPT


def test_queues_and_their_images():
    p = _plan(ntypes=2, blocks=2, bucket_cap=64, local_cap=32, overflow_cap=16,
              event_inbox_cap=8, batch=16)
    assert [q[0] for q in p.queues] == ["bucket0", "bucket1", "local0", "local1", "overflow",
                                        "evinbox", "wait0", "wait1"]
    assert p.qtot == 2 * 64 + 2 * 32 + 16 + 8 + 2 * 32     # wait queues: local_cap each
    c = p.constants()
    assert c["Q_WAIT0"] == p.qindex("wait0") and c["WQ_CAP"] == 32
    im = layout.images(p)
    for qi, (_, base, cap) in enumerate(p.queues):
        assert im["qinfo"][qi * 2] == base and im["qinfo"][qi * 2 + 1] == cap
        assert np.array_equal(im["qseq"][base:base + cap], np.arange(cap))
    assert im["glob"][layout.G_AGING] == p.cfg.aging_interval


def test_arena_bins_fit_and_free_lists_start_full():
    p = _plan()
    end = 0
    for size, off, count, fb, cap in p.bins:
        assert off >= end and count >= 1 and cap >= count and cap & (cap - 1) == 0
        end = off + size * count
    assert end <= p.cfg.arena_bytes
    im = layout.images(p)
    size, off, count, fb, cap = p.bins[0]
    assert np.array_equal(im["fl"][fb:fb + count], off + np.arange(count) * size)


def test_target_words_are_generic_and_set_by_the_targets_hook():
    ctl = [v for k, v in vars(layout).items() if k.startswith("C_") and isinstance(v, int)]
    assert len(ctl) == len(set(ctl)) and layout.C_TARGET0 in ctl and layout.C_TARGET1 in ctl
    glob = [v for k, v in vars(layout).items() if k.startswith("G_") and isinstance(v, int)]
    assert len(glob) == len(set(glob)) and max(glob) < layout.NGLOB
    p = _plan()
    assert not layout.images(p)["glob"][[layout.G_TARGET0, layout.G_TARGET1]].any()
    seen = []

    def init(plan, images):
        seen.append(plan)
        images["glob"][layout.G_TARGET1] = 7
    dev, mp, arena = layout.allocate(p, np.copy, np.copy, lambda n: np.zeros(n, np.uint8),
                                     init)
    assert seen == [p]
    assert layout.region(p, (dev, mp, arena), "glob")[layout.G_TARGET1] == 7
    assert len(arena) == p.cfg.arena_bytes


def test_allocate_places_every_region_in_its_home():
    p = _plan()
    arrays = layout.allocate(p, np.copy, np.copy, lambda n: np.zeros(n, np.uint8))
    im = layout.images(p)
    for name, kind in layout.REGIONS:
        assert np.array_equal(layout.region(p, arrays, name), im[name]), name


def test_constants_name_every_region_and_the_config():
    p = _plan(blocks=3, threads=64)
    c = p.constants()
    for name, _ in layout.REGIONS:
        assert "O_" + name.upper() in c
    assert (c["NB"], c["NT"], c["NWARPS"], c["NTYPES"]) == (3, 64, 2, 3)
    assert c["Q_OVF"] == 3 + 3 and c["Q_EVIN"] == 3 + 3 + 1


@pytest.mark.parametrize("kw,match", [
    (dict(blocks=0), "blocks=0"),
    (dict(threads=48), "threads=48"),
    (dict(batch=100), "batch=100 must be a power of two"),
    (dict(tx_cap=1000), "tx_cap=1000"),
    (dict(blocks=2, host_threads=3), "host_threads=3"),
    (dict(batch=1 << 13, local_cap=1 << 12), "batch must not exceed local_cap"),
    (dict(arena_bytes=1 << 10), "arena_bytes=1024 is too small"),
])
def test_config_validation(kw, match):
    with pytest.raises(BootError, match=match):
        layout.DeviceConfig(**kw).validate()
