"""ggmk.drivers.pci.records: the decoded records of a function (a config space built by the
test, looking like an H200), resource lines and addresses."""
from __future__ import annotations

import json

import pytest

from ggmk.drivers import pci
from ggmk.drivers.pci import PciParseError

from pci_helpers import NVIDIA_RESOURCES, SYSFS, built_nvidia_config


# ---------------------------------------------------------------------------------------------
# NVIDIA: a config space built by this test from the PCI layout (no NVIDIA GPU was available to
# capture). It looks like an H200: 3D controller, PM, MSI, PCIe v2 endpoint at 32 GT/s x16,
# MSI-X, AER + DSN extended capabilities, BAR0 32-bit, BAR1/BAR3 64-bit prefetchable.
# ---------------------------------------------------------------------------------------------
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


def test_parse_resource_and_addresses():
    assert pci.parse_resource(SYSFS["0000:00:01.0"]["resource"])[0] == (
        0x40_0000_0000, 0x40_0007_FFFF, 0x140204)
    with pytest.raises(PciParseError, match="line 1"):
        pci.parse_resource("0x0 0x0 0x0\n0x1 0x2\n")
    assert str(pci.PciAddress.parse("0000:3b:1f.7")) == "0000:3b:1f.7"
    with pytest.raises(PciParseError, match="not a PCI address"):
        pci.PciAddress.parse("00:01.0")
