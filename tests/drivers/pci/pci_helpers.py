"""Helpers shared by the ggmk.drivers.pci tests (tests/drivers/pci/test_pci_*.py)."""
from __future__ import annotations

import json
import struct
from pathlib import Path


FIXTURES = Path(__file__).parent.parent / "fixtures" / "pci"
SYSFS = json.loads((FIXTURES / "sysfs.json").read_text())


def fixture_config(addr: str) -> bytes:
    return (FIXTURES / SYSFS[addr]["config_file"]).read_bytes()


def _mutated(addr: str, **patches: int) -> bytearray:
    raw = bytearray(fixture_config(addr))
    for key, value in patches.items():
        raw[int(key[1:], 16)] = value
    return raw


# A config space built from the PCI layout that looks like an H200 (no NVIDIA GPU was
# available to capture): 3D controller, PM, MSI, PCIe v2 endpoint at 32 GT/s x16, MSI-X,
# AER + DSN extended capabilities, BAR0 32-bit, BAR1/BAR3 64-bit prefetchable.
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
