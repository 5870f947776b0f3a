"""ggmk.drivers.pci.ids: NVIDIA and virtio names, the name tables' doctests and fallbacks."""
from __future__ import annotations

import doctest
import struct

import pytest

from ggmk.drivers import pci
from ggmk.drivers.pci import ids as pci_ids, parse_config

from pci_helpers import built_nvidia_config, fixture_config


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
