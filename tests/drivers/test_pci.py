"""PCI discovery: real sysfs, config bytes captured from this machine's devices, a sysfs tree
rebuilt from captured attributes, and hypothesis-generated corrupt config spaces."""
from __future__ import annotations

import doctest
import json
import os
import select
import signal
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggmk.drivers import pci, pci_ids
from ggmk.drivers.pci import PciParseError, parse_config
from ggmk.errors import GgmkError

FIXTURES = Path(__file__).parent / "fixtures" / "pci"
SYSFS = json.loads((FIXTURES / "sysfs.json").read_text())
REAL_SYSFS = "/sys/bus/pci/devices"


def fixture_config(addr: str) -> bytes:
    return (FIXTURES / SYSFS[addr]["config_file"]).read_bytes()


# ---------------------------------------------------------------------------------------------
# Fixtures captured from real devices
# ---------------------------------------------------------------------------------------------
def test_captured_virtio_block_decodes_exactly():
    cs = parse_config(fixture_config("0000:00:02.0"))
    assert (cs.vendor, cs.device, cs.class_code, cs.revision) == (0x1AF4, 0x1042, 0x018000, 1)
    assert (cs.subsystem_vendor, cs.subsystem_device) == (0x1AF4, 0x1042)
    assert cs.header_type == 0 and not cs.multifunction
    assert cs.bars == (pci.Bar(index=0, kind="mem", address=0x40_0008_0000, is_64bit=True,
                               prefetchable=False, register_offset=0x10),)
    assert [(c.offset, c.id) for c in cs.capabilities] == [
        (0x40, 0x09), (0x50, 0x09), (0x60, 0x09), (0x70, 0x09), (0x84, 0x09), (0x98, 0x11)]
    assert cs.capabilities_complete and cs.ext_capabilities == () and cs.notes == ()

    v = cs.virtio
    assert (v.device_type, v.type_name, v.transitional, v.modern) == (2, "block", False, True)
    assert (v.common.bar, v.common.offset, v.common.length) == (0, 0x0000, 0x38)
    assert (v.isr.bar, v.isr.offset, v.isr.length) == (0, 0x2000, 1)
    assert (v.device_cfg.bar, v.device_cfg.offset, v.device_cfg.length) == (0, 0x4000, 0x1000)
    assert (v.notify.bar, v.notify.offset, v.notify.length) == (0, 0x6000, 0x1000)
    assert v.notify.notify_off_multiplier == 4 and v.common.notify_off_multiplier is None
    assert (v.pci_cfg.cap_offset, v.pci_cfg.cfg_type, v.pci_cfg.bar) == (0x84, 5, 0)

    assert cs.msix == pci.MsiX(enabled=True, function_mask=False, table_size=2, table_bar=0,
                               table_offset=0x8000, pba_bar=0, pba_offset=0x48000)
    assert cs.msi is None and cs.pcie is None and cs.pm is None


VIRTIO_FIXTURES = {
    "0000:00:01.0": ("balloon", 5, 5),
    "0000:00:02.0": ("block", 2, 2),
    "0000:00:03.0": ("net", 1, 3),
    "0000:00:04.0": ("vsock", 19, 4),
    "0000:00:05.0": ("entropy", 4, 2),
}


@pytest.mark.parametrize("addr", sorted(VIRTIO_FIXTURES))
def test_captured_virtio_functions(addr):
    type_name, dtype, msix_size = VIRTIO_FIXTURES[addr]
    cs = parse_config(fixture_config(addr))
    assert cs.virtio.type_name == type_name and cs.virtio.device_type == dtype
    assert cs.device == 0x1040 + dtype
    assert [c.cfg_name for c in cs.virtio.caps] == ["common", "isr", "device", "notify", "pci-cfg"]
    assert cs.msix.table_size == msix_size
    # the kernel allocated one vector per table entry (msi_irqs captured with the config)
    assert len(SYSFS[addr]["msi_irqs"]) == msix_size


def test_captured_host_bridge_has_no_capabilities_and_empty_extended_space():
    raw = fixture_config("0000:00:00.0")
    assert len(raw) == 4096
    cs = parse_config(raw)
    assert (cs.vendor, cs.device, cs.class_code) == (0x8086, 0x0D57, 0x060000)
    assert cs.capabilities == () and cs.ext_capabilities == ()
    assert cs.capabilities_complete and cs.bars == ()
    fn = pci.PciFunction.from_config(raw, "0000:00:00.0")
    assert fn.name == "Intel Host bridge" and not fn.is_virtio and not fn.is_nvidia_gpu


# ---------------------------------------------------------------------------------------------
# Short reads (unprivileged sysfs reads give 64 bytes)
# ---------------------------------------------------------------------------------------------
def test_64_byte_read_skips_the_walk_and_says_so():
    cs = parse_config(fixture_config("0000:00:03.0")[:64])
    assert cs.capabilities == () and not cs.capabilities_complete
    assert any("64 bytes" in n and "not walked" in n for n in cs.notes)
    # the header still gives ids, BAR type bits and the virtio type
    assert cs.bars[0].is_64bit and cs.virtio.type_name == "net" and cs.virtio.caps == ()


def test_partial_read_stops_at_the_last_readable_capability():
    cs = parse_config(fixture_config("0000:00:02.0")[:0x60])
    assert [c.offset for c in cs.capabilities] == [0x40, 0x50]
    assert not cs.capabilities_complete
    assert any("0x60" in n for n in cs.notes)


@pytest.mark.parametrize("length", range(64, 257, 4))
def test_every_truncation_is_a_prefix_of_the_full_decode(length):
    full = parse_config(fixture_config("0000:00:01.0"))
    cs = parse_config(fixture_config("0000:00:01.0")[:length])
    got = [c.offset for c in cs.capabilities]
    assert got == [c.offset for c in full.capabilities][: len(got)]
    # complete once the last structure (MSI-X at 0x98, 12 bytes) is readable: the rest is zeros
    assert cs.capabilities_complete == (length >= 0x98 + 12)
    decoded = [c for c in cs.capabilities if c.decoded is not None]
    assert all(c == f for c, f in zip(decoded, full.capabilities) if c.offset == f.offset)


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
# Malformed config spaces: error names the offset, never hangs
# ---------------------------------------------------------------------------------------------
def _mutated(addr: str, **patches: int) -> bytearray:
    raw = bytearray(fixture_config(addr))
    for key, value in patches.items():
        raw[int(key[1:], 16)] = value
    return raw


def _expect_error(raw, offset: int, *words: str) -> PciParseError:
    with pytest.raises(PciParseError) as info:
        parse_config(bytes(raw))
    err = info.value
    assert isinstance(err, GgmkError)
    assert err.offset == offset, str(err)
    assert f"{offset:#x}" in str(err), str(err)
    for word in words:
        assert word in str(err), str(err)
    return err


def test_pointer_into_header_is_an_error_naming_the_pointer():
    _expect_error(_mutated("0000:00:02.0", o34=0x20), 0x34, "0x20", "header")
    # a pointer further down the chain (next of the cap at 0x70 lives at 0x71)
    _expect_error(_mutated("0000:00:02.0", o71=0x3C), 0x71, "0x3c")


def test_loop_is_an_error_naming_the_pointer():
    _expect_error(_mutated("0000:00:02.0", o99=0x40), 0x99, "loops", "0x40")
    _expect_error(_mutated("0000:00:02.0", o41=0x40), 0x41, "loops")  # self loop


def test_structure_past_config_space_is_an_error():
    raw = _mutated("0000:00:02.0", o99=0xFC, oFC=0x11, oFD=0x00)  # MSI-X needs 12 bytes at 0xfc
    _expect_error(raw, 0xFC, "MSI-X", "runs past")
    raw = _mutated("0000:00:02.0", o72=0xF0)  # virtio cap at 0x70 claims 240 bytes
    _expect_error(raw, 0x70, "cap_len")


def test_short_virtio_capability_is_an_error():
    _expect_error(_mutated("0000:00:02.0", o42=8), 0x40, "cap_len 8")
    _expect_error(_mutated("0000:00:02.0", o72=16), 0x70, "notify")  # notify needs 20


def test_header_errors():
    _expect_error(b"\x00" * 63, 63, "64-byte header")
    _expect_error(b"\xff" * 256, 0x00, "0xffff")
    _expect_error(_mutated("0000:00:02.0", oE=0x05), 0xE, "layout")
    raw = _mutated("0000:00:02.0", o24=0x04)  # BAR5 claims 64-bit: no upper half
    _expect_error(raw, 0x24, "BAR5")


def _ext_space(chain: list[tuple[int, int, int]]) -> bytearray:
    """Host-bridge fixture (4096 bytes) with an extended capability chain written into it."""
    raw = bytearray(fixture_config("0000:00:00.0"))
    for off, cap_id, nxt in chain:
        struct.pack_into("<I", raw, off, cap_id | (1 << 16) | (nxt << 20))
    return raw


def test_extended_capabilities_walk_and_decode():
    raw = _ext_space([(0x100, 0x0001, 0x148), (0x148, 0x0003, 0x158), (0x158, 0x000B, 0)])
    struct.pack_into("<Q", raw, 0x14C, 0x0123456789ABCDEF)
    struct.pack_into("<I", raw, 0x15C, 0x0001 | (1 << 16) | (0x18 << 20))
    cs = parse_config(bytes(raw))
    assert [(c.offset, c.id, c.name) for c in cs.ext_capabilities] == [
        (0x100, 1, "Advanced Error Reporting"), (0x148, 3, "Device Serial Number"),
        (0x158, 0xB, "Vendor Specific Extended")]
    assert cs.ext_capabilities[1].decoded == {"serial": 0x0123456789ABCDEF}
    assert cs.ext_capabilities[2].decoded == {"vsec_id": 1, "vsec_rev": 1, "vsec_length": 0x18}
    assert cs.ext_capability(3).version == 1 and cs.capabilities_complete
    # a short read of extended space stops, incomplete, without error
    cs = parse_config(bytes(raw[:0x150]))
    assert [c.offset for c in cs.ext_capabilities] == [0x100, 0x148]
    assert not cs.capabilities_complete


def test_extended_capability_errors():
    _expect_error(_ext_space([(0x100, 1, 0x200), (0x200, 2, 0x100)]), 0x200, "loops")
    _expect_error(_ext_space([(0x100, 1, 0x0FC)]), 0x100, "0xfc", "below")


# ---------------------------------------------------------------------------------------------
# NVIDIA: a config space built by this test from the PCI layout (no NVIDIA GPU was available to
# capture). It looks like an H200: 3D controller, PM, MSI, PCIe v2 endpoint at 32 GT/s x16,
# MSI-X, AER + DSN extended capabilities, BAR0 32-bit, BAR1/BAR3 64-bit prefetchable.
# ---------------------------------------------------------------------------------------------
def built_nvidia_config(device: int = 0x2335, class_code: int = 0x030200) -> bytes:
    c = bytearray(4096)
    struct.pack_into("<HHHH", c, 0x00, 0x10DE, device, 0x0006, 0x0010)
    c[0x08] = 0xA1
    c[0x09:0x0C] = class_code.to_bytes(3, "little")
    struct.pack_into("<I", c, 0x10, 0xFA000000)                  # BAR0: 32-bit memory
    struct.pack_into("<II", c, 0x14, 0x0000000C, 0x00003800)     # BAR1: 64-bit prefetchable
    struct.pack_into("<II", c, 0x1C, 0x0000000C, 0x00003900)     # BAR3: 64-bit prefetchable
    struct.pack_into("<HH", c, 0x2C, 0x10DE, 0x0001)             # subsystem (arbitrary)
    c[0x34], c[0x3D] = 0x60, 0x01
    c[0x60:0x68] = bytes([0x01, 0x68, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00])  # PM v3, D0
    c[0x68:0x6C] = bytes([0x05, 0x78, 0x88, 0x00])               # MSI 64-bit, 16 vectors
    c[0x78:0x7C] = bytes([0x10, 0xB4, 0x02, 0x00])               # PCIe v2 endpoint
    struct.pack_into("<I", c, 0x78 + 0x0C, 5 | (16 << 4))        # LnkCap: 32 GT/s x16
    struct.pack_into("<H", c, 0x78 + 0x12, 5 | (16 << 4))        # LnkSta: 32 GT/s x16
    c[0xB4:0xB8] = bytes([0x11, 0x00, 0x05, 0x00])               # MSI-X, 6 entries, disabled
    struct.pack_into("<II", c, 0xB8, 0x00B90000, 0x00BA0000)
    struct.pack_into("<I", c, 0x100, 0x0001 | (2 << 16) | (0x148 << 20))    # AER v2
    struct.pack_into("<I", c, 0x148, 0x0003 | (1 << 16))                   # DSN, last
    struct.pack_into("<Q", c, 0x14C, 0xDEADBEEF)
    return bytes(c)


NVIDIA_RESOURCES = [
    (0xFA000000, 0xFAFFFFFF, 0x40200),
    (0x3800_0000_0000, 0x381F_FFFF_FFFF, 0x14220C),
    (0, 0, 0),
    (0x3900_0000_0000, 0x3900_01FF_FFFF, 0x14220C),
    (0, 0, 0), (0, 0, 0),
    (0xFB000000, 0xFB07FFFF, 0x46200),
]


def test_built_nvidia_function_decodes_and_is_named():
    fn = pci.PciFunction.from_config(built_nvidia_config(), "0000:41:00.0", NVIDIA_RESOURCES)
    assert fn.is_nvidia_gpu and fn.is_display and fn.name == "NVIDIA H200 SXM 141GB"
    assert [(b.index, b.kind, b.is_64bit, b.prefetchable, b.size) for b in fn.bars] == [
        (0, "mem", False, False, 16 << 20), (1, "mem", True, True, 128 << 30),
        (3, "mem", True, True, 32 << 20)]
    assert fn.bar(1).address == 0x3800_0000_0000 and fn.rom.size == 512 << 10
    assert fn.pm == pci.PowerManagement(version=3, power_state="D0", pme_support=0)
    assert fn.msi == pci.Msi(enabled=False, is_64bit=True, per_vector_masking=False,
                             vectors_capable=16, vectors_enabled=1)
    assert fn.msix.table_size == 6 and not fn.msix.enabled and fn.msix.pba_offset == 0xBA0000
    assert fn.pcie.port_type_name == "Endpoint" and fn.pcie.version == 2
    assert (fn.link_speed_gts, fn.link_width, fn.max_link_speed_gts) == (32.0, 16, 32.0)
    assert [c.id for c in fn.ext_capabilities] == [1, 3]
    d = json.loads(json.dumps(fn.to_dict()))
    assert d["ext_capabilities"][1]["decoded"] == {"serial": 0xDEADBEEF}
    assert d["capabilities"][2]["decoded"]["link_speed_gts"] == 32.0 and d["is_nvidia_gpu"]
    text = pci.lspci_like([fn], verbose=True)
    assert "0000:41:00.0 3D controller [0302]: NVIDIA H200 SXM 141GB [10de:2335] (rev a1)" in text
    assert "Link: 32 GT/s x16" in text and "BAR1: Memory at 0x380000000000 (64-bit, prefetchable)" \
        " [size=128G]" in text


REQUIRED_NVIDIA = {
    0x2330: "H100 SXM5 80GB", 0x2331: "H100 PCIe", 0x2335: "H200 SXM 141GB",
    0x20B0: "A100 SXM4 40GB", 0x20B2: "A100 SXM4 80GB", 0x20B5: "A100 PCIe 80GB",
    0x20F1: "A100 PCIe 40GB", 0x26B9: "L40S", 0x27B8: "L4", 0x2901: "B200",
    0x2684: "GeForce RTX 4090", 0x2B85: "GeForce RTX 5090", 0x2704: "GeForce RTX 4080",
}


@pytest.mark.parametrize("device", sorted(REQUIRED_NVIDIA))
def test_nvidia_names_from_device_ids(device):
    fn = pci.PciFunction.from_config(built_nvidia_config(device))
    assert fn.name == "NVIDIA " + REQUIRED_NVIDIA[device]


def test_nvidia_fallbacks():
    # unknown id inside a known Blackwell chip range: the chip
    fn = pci.PciFunction.from_config(built_nvidia_config(0x2BFE))
    assert fn.name == "NVIDIA GB202 (Blackwell) 3D controller"
    # unknown id, no range: the class name
    fn = pci.PciFunction.from_config(built_nvidia_config(0x0FFF, class_code=0x030000))
    assert fn.is_nvidia_gpu and fn.name == "NVIDIA VGA compatible controller"
    # NVIDIA's HDMI audio function is not a GPU
    fn = pci.PciFunction.from_config(built_nvidia_config(0x22BB, class_code=0x040300))
    assert not fn.is_nvidia_gpu and fn.name == "NVIDIA Audio device"


def test_virtio_names_modern_and_transitional():
    raw = bytearray(fixture_config("0000:00:02.0"))
    struct.pack_into("<H", raw, 2, 0x1050)                      # modern virtio-gpu id
    fn = pci.PciFunction.from_config(bytes(raw))
    assert fn.name == "virtio gpu (modern)" and fn.virtio.device_type == 16
    struct.pack_into("<H", raw, 2, 0x1001)                      # transitional block
    struct.pack_into("<H", raw, 0x2E, 2)                        # legacy: type in subsystem id
    fn = pci.PciFunction.from_config(bytes(raw))
    assert fn.name == "virtio block (transitional)" and fn.virtio.transitional
    assert pci_ids.virtio_device_type(0x1009, 0) == (9, True)
    assert pci_ids.virtio_type_name(26) == "fs" and pci_ids.virtio_type_name(19) == "vsock"
    # vendor-specific capabilities of a non-virtio function are not read as virtio
    raw = bytearray(fixture_config("0000:00:02.0"))
    struct.pack_into("<H", raw, 0, 0x1234)
    cs = parse_config(bytes(raw))
    assert cs.virtio is None and cs.capabilities[0].length == 0x10
    assert all(c.decoded is None for c in cs.capabilities if c.id == 0x09)


def test_name_tables_doctests_and_class_fallback():
    assert doctest.testmod(pci_ids).failed == 0
    assert pci_ids.class_name(0x010802) == "Non-Volatile memory controller (NVM Express)"
    assert pci_ids.class_name(0x0C0330) == "USB controller (xHCI)"
    assert pci_ids.class_name(0x02AB00) == "Network controller"
    assert pci_ids.class_name(0x7E0000) == "Class 7e00"


def test_parse_resource_and_addresses():
    assert pci.parse_resource(SYSFS["0000:00:01.0"]["resource"])[0] == (
        0x40_0000_0000, 0x40_0007_FFFF, 0x140204)
    with pytest.raises(PciParseError, match="line 1"):
        pci.parse_resource("0x0 0x0 0x0\n0x1 0x2\n")
    assert str(pci.PciAddress.parse("0000:3b:1f.7")) == "0000:3b:1f.7"
    with pytest.raises(PciParseError, match="not a PCI address"):
        pci.PciAddress.parse("00:01.0")


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
    assert fn.config is None and "config" in fn.config_error
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
# Hypothesis: corrupt config spaces parse or raise PciParseError, and never hang
# ---------------------------------------------------------------------------------------------
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDS = [(0x1234, 0x5678), (0x1AF4, 0x1050), (0x10DE, 0x2335)]
PLAIN_CAP_IDS = [0x03, 0x04, 0x06, 0x07, 0x0D, 0x12, 0x13, 0x14]  # ids this module never decodes


def _check_invariants(cs: pci.ConfigSpace) -> None:
    offs = [c.offset for c in cs.capabilities]
    assert len(set(offs)) == len(offs) <= pci.MAX_CAPABILITIES
    assert all(0x40 <= o <= 0xFC and o % 4 == 0 for o in offs)
    ext = [c.offset for c in cs.ext_capabilities]
    assert len(set(ext)) == len(ext) and all(0x100 <= o <= 0xFFC for o in ext)


def _parse_or_error(raw: bytes) -> None:
    try:
        cs = parse_config(raw)
    except PciParseError as exc:
        assert exc.offset is None or 0 <= exc.offset <= 0x1000
        return
    _check_invariants(cs)


@pytest.mark.timeout(120)
@HYP
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes_parse_or_raise(raw):
    _parse_or_error(raw)


@pytest.mark.timeout(120)
@HYP
@given(ids_=st.sampled_from(IDS), length=st.sampled_from([64, 72, 128, 256, 300, 4096]),
       layout=st.sampled_from([0x00, 0x01, 0x02, 0x80]), cap_ptr=st.integers(0, 255),
       header=st.binary(min_size=64, max_size=64), data=st.data())
def test_valid_header_random_capability_bytes(ids_, length, layout, cap_ptr, header, data):
    body = data.draw(st.binary(min_size=length - 64, max_size=length - 64))
    raw = bytearray(header) + bytearray(body)
    struct.pack_into("<HHHH", raw, 0, ids_[0], ids_[1], 0, 0x10)
    raw[0x0E] = layout
    raw[0x34] = raw[0x14] = cap_ptr  # 0x14 is the CardBus (layout 2) capability pointer
    _parse_or_error(bytes(raw))


chains = st.lists(st.integers(0x10, 0x3F).map(lambda x: x * 4), unique=True, min_size=1,
                  max_size=48)


def _write_chain(raw: bytearray, chain: list[int], cap_ids: list[int], last_next: int) -> None:
    raw[0x34] = chain[0]
    for i, off in enumerate(chain):
        raw[off] = cap_ids[i]
        raw[off + 1] = chain[i + 1] if i + 1 < len(chain) else last_next


@pytest.mark.timeout(120)
@HYP
@given(chain=chains, data=st.data())
def test_random_valid_chain_round_trips(chain, data):
    raw = bytearray(64) + bytearray(data.draw(st.binary(min_size=192, max_size=192)))
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0x10)
    raw[0x0E] = 0
    raw[0x10:0x28] = bytes(24)  # keep the BARs plain: this test is about the chain
    cap_ids = data.draw(st.lists(st.sampled_from(PLAIN_CAP_IDS), min_size=len(chain),
                                 max_size=len(chain)))
    _write_chain(raw, chain, cap_ids, 0)
    cs = parse_config(bytes(raw))
    assert [(c.offset, c.id) for c in cs.capabilities] == list(zip(chain, cap_ids))
    assert cs.capabilities_complete


@pytest.mark.timeout(120)
@HYP
@given(chain=chains, data=st.data())
def test_random_looping_chain_raises_with_the_offset(chain, data):
    raw = bytearray(256)
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0x10)
    back = data.draw(st.sampled_from(chain))
    _write_chain(raw, chain, [0x03] * len(chain), back)
    with pytest.raises(PciParseError, match="loops") as info:
        parse_config(bytes(raw))
    assert info.value.offset == chain[-1] + 1
    assert f"{chain[-1] + 1:#x}" in str(info.value)


ext_chains = st.lists(st.integers(0x41, 0x3FF).map(lambda x: x * 4), unique=True, max_size=40)
PLAIN_EXT_IDS = [0x0001, 0x0002, 0x0004, 0x000D, 0x000E, 0x0015, 0x0018]


@pytest.mark.timeout(120)
@HYP
@given(rest=ext_chains, loop=st.booleans(), data=st.data())
def test_random_extended_chains(rest, loop, data):
    chain = [0x100] + rest
    raw = bytearray(4096)
    struct.pack_into("<HHHH", raw, 0, 0x1234, 0x5678, 0, 0)
    cap_ids = data.draw(st.lists(st.sampled_from(PLAIN_EXT_IDS), min_size=len(chain),
                                 max_size=len(chain)))
    last_next = data.draw(st.sampled_from(chain)) if loop else 0
    for i, off in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else last_next
        struct.pack_into("<I", raw, off, cap_ids[i] | (1 << 16) | (nxt << 20))
    if loop:
        with pytest.raises(PciParseError, match="loops") as info:
            parse_config(bytes(raw))
        assert info.value.offset == chain[-1]
    else:
        cs = parse_config(bytes(raw))
        assert [(c.offset, c.id) for c in cs.ext_capabilities] == list(zip(chain, cap_ids))
