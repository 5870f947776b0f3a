"""ggmk.drivers.pci.sysfs: a sysfs tree rebuilt from captured attributes, and the real sysfs
of this machine."""
from __future__ import annotations

import json
import os
import select
import signal
import struct
from pathlib import Path

import pytest

from ggmk.drivers import pci
from ggmk.drivers.pci import PciParseError, ids as pci_ids

from pci_helpers import NVIDIA_RESOURCES, SYSFS, built_nvidia_config, fixture_config, _mutated


REAL_SYSFS = "/sys/bus/pci/devices"


@pytest.mark.skipif(not os.path.isdir(REAL_SYSFS) or not os.listdir(REAL_SYSFS),
                    reason="no /sys/bus/pci/devices")
def test_unprivileged_read_of_real_sysfs():
    """A process without CAP_SYS_ADMIN really gets 64 bytes of config; discovery copes."""
    addr = next((a for a in sorted(os.listdir(REAL_SYSFS))
                 if pci.read_function(os.path.join(REAL_SYSFS, a)).capabilities), None)
    if addr is None:
        pytest.skip("no real function with a capability list")
    path = os.path.join(REAL_SYSFS, addr)

    def probe():
        f = pci.read_function(path)
        return [f.config_length, f.capabilities_complete, list(f.notes),
                [b.size for b in f.bars], len(f.capabilities)]

    if os.geteuid() != 0:
        result = probe()
    else:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, read, report, exit without running pytest code
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, json.dumps(probe()).encode())
            finally:
                os._exit(0)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 30)
        data = os.read(r, 1 << 16) if ready else b""
        os.close(r)
        if not data:
            os.kill(pid, signal.SIGKILL)  # never leave a stuck child behind
        os.waitpid(pid, 0)
        assert data, "unprivileged child reported nothing"
        result = json.loads(data)
    length, complete, notes, sizes, ncaps = result
    if length > 64:
        pytest.skip("this kernel lets unprivileged processes read all of config space")
    assert length == 64 and not complete and ncaps == 0
    assert any("not walked" in n for n in notes)
    full = pci.read_function(path)
    assert sizes == [b.size for b in full.bars]  # BAR sizes come from sysfs, not config


# ---------------------------------------------------------------------------------------------
# A sysfs tree rebuilt from the captured attributes
# ---------------------------------------------------------------------------------------------
def _make_fn_dir(root: Path, addr: str, attrs: dict, config: bytes, drivers: Path) -> Path:
    d = root / addr
    d.mkdir()
    for key in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                "revision", "irq", "numa_node", "resource"):
        if key in attrs:
            (d / key).write_text(attrs[key])
    (d / "config").write_bytes(config)
    if attrs.get("driver"):
        target = drivers / attrs["driver"]
        target.mkdir(exist_ok=True)
        (d / "driver").symlink_to(target)
    for key in ("current_link_speed", "current_link_width", "max_link_speed", "max_link_width"):
        if key in attrs:
            (d / key).write_text(attrs[key])
    return d


@pytest.fixture
def fake_sysfs(tmp_path):
    root, drivers = tmp_path / "devices", tmp_path / "drivers"
    root.mkdir()
    drivers.mkdir()
    for addr, attrs in SYSFS.items():
        _make_fn_dir(root, addr, attrs, fixture_config(addr), drivers)
    nv = {"vendor": "0x10de\n", "device": "0x2335\n", "subsystem_vendor": "0x10de\n",
          "subsystem_device": "0x0001\n", "class": "0x030200\n", "revision": "0xa1\n",
          "irq": "0\n", "numa_node": "1\n", "driver": "nvidia",
          "resource": "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n"
                              for s, e, f in NVIDIA_RESOURCES),
          "current_link_speed": "16.0 GT/s PCIe\n", "current_link_width": "8\n",
          "max_link_speed": "32.0 GT/s PCIe\n", "max_link_width": "16\n"}
    _make_fn_dir(root, "0000:41:00.0", nv, built_nvidia_config(), drivers)
    (root / "not-a-device").mkdir()
    return root


def test_list_functions_on_rebuilt_sysfs(fake_sysfs):
    fns = pci.list_functions(str(fake_sysfs))
    assert [str(f.address) for f in fns] == sorted(SYSFS) + ["0000:41:00.0"]
    by = {str(f.address): f for f in fns}
    blk = by["0000:00:02.0"]
    assert blk.driver == "virtio-pci" and blk.numa_node is None and blk.irq == 0
    assert blk.bars[0].size == 512 << 10 and blk.bars[0].cpu_address == 0x40_0008_0000
    assert blk.config_length == 256 and blk.capabilities_complete
    bar, off, length = blk.virtio_window(pci_ids.VIRTIO_PCI_CAP_NOTIFY_CFG)
    assert (bar.index, off, length) == (0, 0x6000, 0x1000)
    assert by["0000:00:00.0"].driver is None and by["0000:00:00.0"].bars == ()
    gpu = by["0000:41:00.0"]
    # sysfs wins over the config decode for the link (the OS reports the trained link)
    assert (gpu.link_speed_gts, gpu.link_width, gpu.max_link_speed_gts, gpu.max_link_width) == (
        16.0, 8, 32.0, 16)
    assert gpu.numa_node == 1 and gpu.driver == "nvidia"
    assert [g.address for g in pci.find_gpus(str(fake_sysfs))] == [gpu.address]
    assert pci.find_gpus(str(fake_sysfs), nvidia_only=True)[0].name == "NVIDIA H200 SXM 141GB"
    text = pci.lspci_like(sysfs_root=str(fake_sysfs))
    assert len(text.splitlines()) == len(fns)
    d = json.loads(json.dumps(blk.to_dict()))
    assert d["name"] == "virtio block (modern)" and d["bars"][0]["size"] == 512 << 10
    assert d["capabilities"][3] == {
        "offset": 0x70, "id": 9, "name": "Vendor Specific", "length": 0x14,
        "decoded": {"cap_offset": 0x70, "cfg_type": 2, "bar": 0, "id": 0, "offset": 0x6000,
                    "length": 0x1000, "notify_off_multiplier": 4, "cfg_name": "notify"}}
    assert "0000:00:04.0 Unassigned class [ffff]: virtio vsock (modern) [1af4:1053]" in text


def test_virtio_window_past_bar_is_an_error(fake_sysfs):
    cfg = bytearray(fixture_config("0000:00:02.0"))
    struct.pack_into("<I", cfg, 0x70 + 8, 0x7F800)   # notify window 0x7f800+0x1000 > 512K
    (fake_sysfs / "0000:00:02.0" / "config").write_bytes(bytes(cfg))
    fn = pci.read_function(str(fake_sysfs / "0000:00:02.0"))
    with pytest.raises(PciParseError, match="runs past BAR0") as info:
        fn.virtio_window(pci_ids.VIRTIO_PCI_CAP_NOTIFY_CFG)
    assert info.value.offset == 0x70


def test_malformed_and_short_config_in_sysfs(fake_sysfs):
    d = fake_sysfs / "0000:00:03.0"
    (d / "config").write_bytes(bytes(_mutated("0000:00:03.0", o99=0x40)))  # loop
    fn = pci.read_function(str(d))
    assert fn.config_error and "loops" in fn.config_error and "0x99" in fn.config_error
    # the OS view survives a bad config space: ids, driver, BAR sizes
    assert fn.name == "virtio net (modern)" and fn.driver == "virtio-pci"
    assert fn.bars[0].size == 512 << 10 and fn.capabilities == ()
    with pytest.raises(PciParseError, match=r"0000:00:03\.0: capability list loops"):
        pci.list_functions(str(fake_sysfs), strict=True)
    assert "Error:" in pci.lspci_like([fn], verbose=True)

    d = fake_sysfs / "0000:00:05.0"
    (d / "config").write_bytes(fixture_config("0000:00:05.0")[:64])  # unprivileged read
    fn = pci.read_function(str(d))
    assert fn.config_error is None and fn.config_length == 64
    assert not fn.capabilities_complete and fn.virtio.type_name == "entropy"
    assert fn.bars[0].is_64bit and fn.bars[0].size == 512 << 10

    (d / "config").unlink()  # config unreadable altogether: sysfs ids and resources remain
    fn = pci.read_function(str(d))
    assert fn.config is None and fn.config_error is None   # unreadable, not malformed
    assert any(n.startswith("config space unreadable: ") for n in fn.notes), fn.notes
    assert fn.bars[0].is_64bit and fn.name == "virtio entropy (modern)"


def test_missing_sysfs_root_gives_no_functions(tmp_path):
    assert pci.list_functions(str(tmp_path / "absent")) == []
    assert pci.find_gpus(str(tmp_path / "absent")) == []


# ---------------------------------------------------------------------------------------------
# The real sysfs of this machine
# ---------------------------------------------------------------------------------------------
def _real_functions():
    if not os.path.isdir(REAL_SYSFS) or not os.listdir(REAL_SYSFS):
        pytest.skip("no PCI functions in /sys/bus/pci/devices on this machine")
    return pci.list_functions(REAL_SYSFS, strict=True)


def _hexfile(path: str) -> int:
    with open(path) as f:
        return int(f.read(), 16)


def test_real_sysfs_agrees_with_independent_reads():
    fns = _real_functions()
    assert [str(f.address) for f in fns] == sorted(os.listdir(REAL_SYSFS))
    for f in fns:
        d = os.path.join(REAL_SYSFS, str(f.address))
        assert f.vendor == _hexfile(os.path.join(d, "vendor"))
        assert f.device == _hexfile(os.path.join(d, "device"))
        assert f.class_code == _hexfile(os.path.join(d, "class"))
        with open(os.path.join(d, "config"), "rb") as fh:
            head = fh.read(4)
        assert struct.unpack("<HH", head) == (f.vendor, f.device)
        drv = os.path.join(d, "driver")
        assert f.driver == (os.path.basename(os.readlink(drv)) if os.path.islink(drv) else None)
        with open(os.path.join(d, "resource")) as fh:
            lines = [tuple(int(x, 16) for x in line.split()) for line in fh]
        for i, (start, end, _flags) in enumerate(lines[:6]):
            if end:
                assert f.bar(i) is not None and f.bar(i).size == end - start + 1, (f.address, i)
        assert f.config_error is None and f.name


def test_real_virtio_functions_match_the_virtio_bus():
    virtio = [f for f in _real_functions() if f.is_virtio]
    if not virtio:
        pytest.skip("no virtio PCI functions on this machine")
    for f in virtio:
        d = os.path.join(REAL_SYSFS, str(f.address))
        vdevs = [e for e in os.listdir(d) if e.startswith("virtio") and e[6:].isdigit()]
        if vdevs:  # bound to virtio-pci: the virtio bus reports the device type
            assert f.virtio.device_type == _hexfile(os.path.join(d, vdevs[0], "device"))
        if not f.capabilities_complete:
            continue
        assert f.virtio.modern, f"{f.address} lacks a virtio common-config capability"
        for cfg_type in (1, 2, 3, 4):  # common, notify, ISR, device windows lie inside BARs
            bar, off, length = f.virtio_window(cfg_type)
            assert off + length <= bar.size
        assert f.virtio.notify.notify_off_multiplier is not None
        msi_dir = os.path.join(d, "msi_irqs")
        if f.msix is not None and f.msix.enabled and os.path.isdir(msi_dir):
            assert len(os.listdir(msi_dir)) <= f.msix.table_size
    text = pci.lspci_like(verbose=True)
    for f in virtio:
        assert str(f.address) in text and f"virtio {f.virtio.type_name}" in text


# ---------------------------------------------------------------------------------------------
# One odd function must not take the whole listing down (non-strict)
# ---------------------------------------------------------------------------------------------
def _listed(root: Path) -> dict:
    fns = pci.list_functions(str(root))
    assert len(fns) == len(SYSFS) + 1            # every function is still listed
    pci.lspci_like(fns, verbose=True)             # and the listing formats
    return {str(f.address): f for f in fns}


def test_malformed_resource_line_is_a_note_not_a_crash(fake_sysfs):
    d = fake_sysfs / "0000:00:02.0"
    good = (d / "resource").read_text().splitlines()
    (d / "resource").write_text("\n".join(good[:1] + ["0x1000 0x1fff"] + good[2:]) + "\n")
    (fake_sysfs / "0000:00:03.0" / "resource").write_text("zz yy xx\n")
    by = _listed(fake_sysfs)
    blk = by["0000:00:02.0"]
    assert blk.bars[0].size == 512 << 10          # the good lines still size the BARs
    assert any("resource line 1" in n and "'0x1000 0x1fff'" in n for n in blk.notes), blk.notes
    net = by["0000:00:03.0"]
    assert any("not hex" in n and "'zz yy xx'" in n for n in net.notes), net.notes
    assert net.name == "virtio net (modern)" and net.bars[0].is_64bit   # from config
    with pytest.raises(PciParseError, match=r"0000:00:02\.0: .*resource line 1"):
        pci.read_function(str(d), strict=True)


def test_undecodable_attribute_is_unreadable(fake_sysfs):
    d = fake_sysfs / "0000:00:02.0"
    (d / "vendor").write_bytes(b"\xff\xfe\x00garbage")
    (d / "resource").write_bytes(b"\xff\xfe\n")
    by = _listed(fake_sysfs)
    blk = by["0000:00:02.0"]
    assert blk.vendor == 0x1AF4                   # from config space, as when unreadable
    assert any("vendor" in n and "not text" in n for n in blk.notes), blk.notes
    assert any("resource" in n and "not text" in n for n in blk.notes), blk.notes


def test_bad_device_number_in_a_name_is_listed_with_a_note(fake_sysfs):
    src = fake_sysfs / "0000:00:05.0"
    src.rename(fake_sysfs / "0000:00:3f.0")
    fns = pci.list_functions(str(fake_sysfs))
    assert len(fns) == len(SYSFS) + 1
    bad = next(f for f in fns if "3f" in str(f.address))
    assert str(bad.address) == "0000:00:3f.0" and bad.name == "virtio entropy (modern)"
    assert any("device number 0x3f > 0x1f" in n for n in bad.notes), bad.notes
    with pytest.raises(PciParseError, match="device number 0x3f"):
        pci.list_functions(str(fake_sysfs), strict=True)


def test_unreadable_config_is_not_called_malformed(fake_sysfs):
    d = fake_sysfs / "0000:00:02.0"
    (d / "config").unlink()
    (d / "config").mkdir()
    fn = pci.read_function(str(d))
    assert fn.config is None and fn.config_error is None
    assert [n for n in fn.notes if "malformed" in n] == []
    assert any(n.startswith("config space unreadable: ") and "Is a directory" in n
               for n in fn.notes), fn.notes
    assert fn.name == "virtio block (modern)" and fn.bars[0].size == 512 << 10
    assert "Error:" not in pci.lspci_like([fn], verbose=True)


def test_out_of_range_ids_are_noted_and_shown_as_read(fake_sysfs):
    d = fake_sysfs / "0000:00:02.0"
    (d / "class").write_text("0xffffffff\n")
    (d / "vendor").write_text("-0x1\n")
    (d / "revision").write_text("0x1ff\n")
    fn = pci.read_function(str(d))
    assert fn.vendor == -1 and fn.class_code == 0xFFFFFFFF and fn.revision == 0x1FF
    notes = " | ".join(fn.notes)
    assert "vendor -0x1 out of range (16 bits)" in notes, notes
    assert "class 0xffffffff out of range (24 bits)" in notes, notes
    assert "revision 0x1ff out of range (8 bits)" in notes, notes
    head = pci.lspci_like([fn]).splitlines()[0]
    assert "[-0x1:1042]" in head and "[0xffffffff]" in head and "(rev 0x1ff)" in head, head
    assert "Unassigned class [ffffff]" not in head
    # in-range values format as before
    ok = pci.read_function(str(fake_sysfs / "0000:00:03.0"))
    assert not any("out of range" in n for n in ok.notes)
    assert "[0200]: virtio net (modern) [1af4:1041] (rev 01)" in pci.lspci_like([ok])


def test_an_id_attribute_that_is_not_a_number_is_a_note(fake_sysfs):
    """(A vendor file holding 'garbage' became vendor 0xffff with no word said.)"""
    d = fake_sysfs / "0000:00:02.0"
    (d / "vendor").write_text("garbage\n")
    (d / "irq").write_text("none\n")
    blk = _listed(fake_sysfs)["0000:00:02.0"]
    assert blk.vendor == 0x1AF4 and blk.irq is None      # from config space / unknown
    assert "vendor: 'garbage' is not a number, ignored" in blk.notes, blk.notes
    assert "irq: 'none' is not a number, ignored" in blk.notes, blk.notes
    (d / "config").unlink()                               # no config to fall back on
    fn = pci.read_function(str(d))
    assert fn.vendor == 0xFFFF and "vendor: 'garbage' is not a number, ignored" in fn.notes


def test_entries_that_are_not_directories_are_no_functions(fake_sysfs):
    """A plain file and a broken link named like an address were listed as functions
    ``Non-VGA unclassified device [ffff:ffff]``."""
    (fake_sysfs / "0000:00:0b.0").write_text("x")
    (fake_sysfs / "0000:00:0c.0").symlink_to(fake_sysfs / "absent" / "0000:00:0c.0")
    by = _listed(fake_sysfs)
    assert "0000:00:0b.0" not in by and "0000:00:0c.0" not in by
    assert "[ffff:ffff]" not in pci.lspci_like(sysfs_root=str(fake_sysfs))
    # a link to a function's directory, as sysfs has them, is listed
    real = fake_sysfs.parent / "pci0000:00" / "0000:00:0d.0"
    real.parent.mkdir()
    (fake_sysfs / "0000:00:02.0").rename(real)
    (fake_sysfs / "0000:00:0d.0").symlink_to(real)
    assert pci.read_function(str(fake_sysfs / "0000:00:0d.0")).name == "virtio block (modern)"
    assert "0000:00:0d.0" in {str(f.address) for f in pci.list_functions(str(fake_sysfs))}


def test_a_gpu_whose_config_space_reads_all_ones_is_not_responding(fake_sysfs):
    d = fake_sysfs / "0000:41:00.0"
    assert pci.read_function(str(d)).responding
    (d / "config").write_bytes(b"\xff" * 256)
    fn = pci.read_function(str(d))
    assert not fn.responding and fn.is_nvidia_gpu        # sysfs's cached ids still say GPU
    assert fn.notes == ("not responding: config space reads vendor id 0xffff (the device fell "
                        "off the bus, is powered down or in reset)",), fn.notes
    assert fn.to_dict()["responding"] is False
    assert "\tNote: not responding: " in pci.lspci_like([fn], verbose=True)
    with pytest.raises(PciParseError, match="0xffff"):
        pci.read_function(str(d), strict=True)
