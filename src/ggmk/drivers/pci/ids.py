"""Name tables for PCI discovery: vendors, classes, capabilities, NVIDIA GPUs, virtio types.

Pure data plus small lookup helpers; ``ggmk.drivers.pci`` uses them to give every function a
human name. Sources:

* class / subclass / programming-interface codes: PCI Code and ID Assignment Specification;
* capability ids and extended capability ids: PCI Local Bus 3.0 and PCI Express Base 5.0/6.0;
* NVIDIA device ids: the public PCI ID database (pci-ids.ucw.cz, the ``pci.ids`` file shipped by
  distributions) cross-checked against NVIDIA's own ``gpu-admin-tools`` (``devid_names.py``,
  ``devid_chips.py``); no id in :data:`NVIDIA_GPU_NAMES` is guessed;
* virtio device types and PCI capability types: the VIRTIO 1.2 specification (sections 4.1.2 and
  5) and Linux ``include/uapi/linux/virtio_ids.h`` / ``virtio_pci.h``.

Example::

    >>> nvidia_gpu_name(0x2335)
    'H200 SXM 141GB'
    >>> class_name(0x030200)
    '3D controller'
    >>> virtio_type_name(16)
    'gpu'
"""
from __future__ import annotations

VENDOR_NVIDIA = 0x10DE
VENDOR_VIRTIO = 0x1AF4  # Red Hat, Inc. (Qumranet): every virtio PCI function uses it

#: A short vendor table: the vendors this project meets (clouds, VMs, GPU servers), not a copy
#: of pci.ids.
VENDOR_NAMES: dict[int, str] = {
    0x1000: "Broadcom / LSI",
    0x1002: "AMD/ATI",
    0x1022: "AMD",
    0x10DE: "NVIDIA",
    0x1234: "QEMU (Bochs)",
    0x1414: "Microsoft",
    0x144D: "Samsung",
    0x14E4: "Broadcom",
    0x15AD: "VMware",
    0x15B3: "Mellanox",
    0x1AE0: "Google",
    0x1AF4: "Red Hat (virtio)",
    0x1B36: "Red Hat (QEMU)",
    0x1D0F: "Amazon",
    0x8086: "Intel",
}

# ---------------------------------------------------------------------------------------------
# Class codes: base class -> name, (base, sub) -> name, (base, sub, prog_if) -> name
# ---------------------------------------------------------------------------------------------
BASE_CLASS_NAMES: dict[int, str] = {
    0x00: "Unclassified device",
    0x01: "Mass storage controller",
    0x02: "Network controller",
    0x03: "Display controller",
    0x04: "Multimedia controller",
    0x05: "Memory controller",
    0x06: "Bridge",
    0x07: "Communication controller",
    0x08: "Generic system peripheral",
    0x09: "Input device controller",
    0x0A: "Docking station",
    0x0B: "Processor",
    0x0C: "Serial bus controller",
    0x0D: "Wireless controller",
    0x0E: "Intelligent controller",
    0x0F: "Satellite communications controller",
    0x10: "Encryption controller",
    0x11: "Signal processing controller",
    0x12: "Processing accelerators",
    0x13: "Non-Essential Instrumentation",
    0x40: "Coprocessor",
    0xFF: "Unassigned class",
}

SUBCLASS_NAMES: dict[tuple[int, int], str] = {
    (0x00, 0x00): "Non-VGA unclassified device",
    (0x00, 0x01): "VGA compatible unclassified device",
    (0x01, 0x00): "SCSI storage controller",
    (0x01, 0x01): "IDE interface",
    (0x01, 0x02): "Floppy disk controller",
    (0x01, 0x04): "RAID bus controller",
    (0x01, 0x05): "ATA controller",
    (0x01, 0x06): "SATA controller",
    (0x01, 0x07): "Serial Attached SCSI controller",
    (0x01, 0x08): "Non-Volatile memory controller",
    (0x01, 0x80): "Mass storage controller",
    (0x02, 0x00): "Ethernet controller",
    (0x02, 0x01): "Token ring network controller",
    (0x02, 0x02): "FDDI network controller",
    (0x02, 0x03): "ATM network controller",
    (0x02, 0x07): "Infiniband controller",
    (0x02, 0x08): "Fabric controller",
    (0x02, 0x80): "Network controller",
    (0x03, 0x00): "VGA compatible controller",
    (0x03, 0x01): "XGA compatible controller",
    (0x03, 0x02): "3D controller",
    (0x03, 0x80): "Display controller",
    (0x04, 0x00): "Multimedia video controller",
    (0x04, 0x01): "Multimedia audio controller",
    (0x04, 0x03): "Audio device",
    (0x04, 0x80): "Multimedia controller",
    (0x05, 0x00): "RAM memory",
    (0x05, 0x01): "FLASH memory",
    (0x05, 0x02): "CXL",
    (0x05, 0x80): "Memory controller",
    (0x06, 0x00): "Host bridge",
    (0x06, 0x01): "ISA bridge",
    (0x06, 0x02): "EISA bridge",
    (0x06, 0x04): "PCI bridge",
    (0x06, 0x07): "CardBus bridge",
    (0x06, 0x09): "Semi-transparent PCI-to-PCI bridge",
    (0x06, 0x80): "Bridge",
    (0x07, 0x00): "Serial controller",
    (0x07, 0x80): "Communication controller",
    (0x08, 0x00): "PIC",
    (0x08, 0x01): "DMA controller",
    (0x08, 0x02): "Timer",
    (0x08, 0x03): "RTC",
    (0x08, 0x05): "SD Host controller",
    (0x08, 0x06): "IOMMU",
    (0x08, 0x80): "System peripheral",
    (0x0C, 0x03): "USB controller",
    (0x0C, 0x04): "Fibre Channel",
    (0x0C, 0x05): "SMBus",
    (0x0C, 0x06): "InfiniBand",
    (0x0C, 0x80): "Serial bus controller",
    (0x12, 0x00): "Processing accelerators",
    (0x12, 0x01): "SNAP accelerator",
    (0xFF, 0xFF): "Unassigned class",
}

PROG_IF_NAMES: dict[tuple[int, int, int], str] = {
    (0x01, 0x06, 0x01): "SATA controller (AHCI)",
    (0x01, 0x08, 0x02): "Non-Volatile memory controller (NVM Express)",
    (0x0C, 0x03, 0x00): "USB controller (UHCI)",
    (0x0C, 0x03, 0x10): "USB controller (OHCI)",
    (0x0C, 0x03, 0x20): "USB controller (EHCI)",
    (0x0C, 0x03, 0x30): "USB controller (xHCI)",
}


def class_name(class_code: int) -> str:
    """Name a 24-bit class code (base << 16 | sub << 8 | prog_if), most specific first.

    >>> class_name(0x010802)
    'Non-Volatile memory controller (NVM Express)'
    >>> class_name(0x06ab00)      # unknown subclass: the base class name
    'Bridge'
    """
    base, sub, pif = (class_code >> 16) & 0xFF, (class_code >> 8) & 0xFF, class_code & 0xFF
    name = PROG_IF_NAMES.get((base, sub, pif)) or SUBCLASS_NAMES.get((base, sub))
    if name:
        return name
    return BASE_CLASS_NAMES.get(base, f"Class {base:02x}{sub:02x}")


def vendor_name(vendor: int) -> str | None:
    """The short vendor name, or None when the vendor is not in the table."""
    return VENDOR_NAMES.get(vendor)


# ---------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------
CAP_PM = 0x01
CAP_MSI = 0x05
CAP_VENDOR = 0x09
CAP_PCIE = 0x10
CAP_MSIX = 0x11

CAPABILITY_NAMES: dict[int, str] = {
    0x01: "Power Management",
    0x02: "AGP",
    0x03: "Vital Product Data",
    0x04: "Slot Identification",
    0x05: "MSI",
    0x06: "CompactPCI Hot Swap",
    0x07: "PCI-X",
    0x08: "HyperTransport",
    0x09: "Vendor Specific",
    0x0A: "Debug port",
    0x0B: "CompactPCI Central Resource Control",
    0x0C: "PCI Hot-Plug",
    0x0D: "Bridge Subsystem Vendor ID",
    0x0E: "AGP 8x",
    0x0F: "Secure Device",
    0x10: "PCI Express",
    0x11: "MSI-X",
    0x12: "SATA Data/Index Configuration",
    0x13: "Advanced Features",
    0x14: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}

EXT_CAP_VENDOR = 0x000B
EXT_CAP_DVSEC = 0x0023

EXT_CAPABILITY_NAMES: dict[int, str] = {
    0x0000: "Null",
    0x0001: "Advanced Error Reporting",
    0x0002: "Virtual Channel",
    0x0003: "Device Serial Number",
    0x0004: "Power Budgeting",
    0x0005: "Root Complex Link Declaration",
    0x0006: "Root Complex Internal Link Control",
    0x0007: "Root Complex Event Collector Endpoint Association",
    0x0008: "Multi-Function Virtual Channel",
    0x0009: "Virtual Channel (MFVC present)",
    0x000A: "RCRB Header",
    0x000B: "Vendor Specific Extended",
    0x000C: "Configuration Access Correlation",
    0x000D: "Access Control Services",
    0x000E: "Alternative Routing-ID Interpretation",
    0x000F: "Address Translation Services",
    0x0010: "Single Root I/O Virtualization",
    0x0011: "Multi-Root I/O Virtualization",
    0x0012: "Multicast",
    0x0013: "Page Request Interface",
    0x0015: "Resizable BAR",
    0x0016: "Dynamic Power Allocation",
    0x0017: "TLP Processing Hints",
    0x0018: "Latency Tolerance Reporting",
    0x0019: "Secondary PCI Express",
    0x001A: "Protocol Multiplexing",
    0x001B: "Process Address Space ID",
    0x001C: "LN Requester",
    0x001D: "Downstream Port Containment",
    0x001E: "L1 PM Substates",
    0x001F: "Precision Time Measurement",
    0x0020: "PCI Express over M-PHY",
    0x0021: "FRS Queueing",
    0x0022: "Readiness Time Reporting",
    0x0023: "Designated Vendor-Specific",
    0x0024: "VF Resizable BAR",
    0x0025: "Data Link Feature",
    0x0026: "Physical Layer 16.0 GT/s",
    0x0027: "Lane Margining at the Receiver",
    0x0028: "Hierarchy ID",
    0x0029: "Native PCIe Enclosure Management",
    0x002A: "Physical Layer 32.0 GT/s",
    0x002B: "Alternate Protocol",
    0x002C: "System Firmware Intermediary",
}


def capability_name(cap_id: int) -> str:
    return CAPABILITY_NAMES.get(cap_id, f"Capability {cap_id:#04x}")


def ext_capability_name(cap_id: int) -> str:
    return EXT_CAPABILITY_NAMES.get(cap_id, f"Extended capability {cap_id:#06x}")


#: PCI Express Capabilities register, Device/Port Type field (bits 7:4).
PCIE_PORT_TYPES: dict[int, str] = {
    0x0: "Endpoint",
    0x1: "Legacy Endpoint",
    0x4: "Root Port",
    0x5: "Upstream Switch Port",
    0x6: "Downstream Switch Port",
    0x7: "PCIe-to-PCI/PCI-X Bridge",
    0x8: "PCI/PCI-X-to-PCIe Bridge",
    0x9: "Root Complex Integrated Endpoint",
    0xA: "Root Complex Event Collector",
}

#: Link speed encoding of the Link Capabilities / Link Status registers, in GT/s.
PCIE_LINK_SPEEDS_GTS: dict[int, float] = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}

# ---------------------------------------------------------------------------------------------
# virtio
# ---------------------------------------------------------------------------------------------
#: Device types (VIRTIO 1.2 section 5, Linux virtio_ids.h).
VIRTIO_TYPE_NAMES: dict[int, str] = {
    1: "net",
    2: "block",
    3: "console",
    4: "entropy",
    5: "balloon",
    6: "iomem",
    7: "rpmsg",
    8: "scsi",
    9: "9p",
    10: "mac80211-wlan",
    11: "rproc-serial",
    12: "caif",
    13: "memory-balloon",
    16: "gpu",
    17: "clock",
    18: "input",
    19: "vsock",
    20: "crypto",
    21: "signal-dist",
    22: "pstore",
    23: "iommu",
    24: "mem",
    25: "sound",
    26: "fs",
    27: "pmem",
    28: "rpmb",
    29: "mac80211-hwsim",
    30: "video-encoder",
    31: "video-decoder",
    32: "scmi",
    33: "nitro-sec-mod",
    34: "i2c-adapter",
    35: "watchdog",
    36: "can",
    37: "dmabuf",
    38: "param-serv",
    39: "audio-policy",
    40: "bluetooth",
    41: "gpio",
}

VIRTIO_MODERN_BASE = 0x1040  # modern (virtio 1.x) PCI device id = 0x1040 + device type
VIRTIO_TRANSITIONAL_FIRST, VIRTIO_TRANSITIONAL_LAST = 0x1000, 0x103F
VIRTIO_MODERN_LAST = 0x107F

#: Transitional (legacy-capable) PCI device ids (VIRTIO 1.2 section 4.1.2.1).
VIRTIO_TRANSITIONAL_TYPES: dict[int, int] = {
    0x1000: 1,   # network card
    0x1001: 2,   # block device
    0x1002: 5,   # memory ballooning (traditional)
    0x1003: 3,   # console
    0x1004: 8,   # SCSI host
    0x1005: 4,   # entropy source
    0x1009: 9,   # 9P transport
}

#: ``cfg_type`` of a virtio vendor capability (struct virtio_pci_cap).
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
VIRTIO_PCI_CAP_SHARED_MEMORY_CFG = 8
VIRTIO_PCI_CAP_VENDOR_CFG = 9

VIRTIO_CFG_TYPE_NAMES: dict[int, str] = {
    1: "common",
    2: "notify",
    3: "isr",
    4: "device",
    5: "pci-cfg",
    8: "shared-memory",
    9: "vendor",
}


def virtio_type_name(device_type: int) -> str:
    return VIRTIO_TYPE_NAMES.get(device_type, f"type-{device_type}")


def is_virtio_device_id(vendor: int, device: int) -> bool:
    """True for a virtio PCI function: vendor 0x1af4, device 0x1000..0x107f."""
    return vendor == VENDOR_VIRTIO and VIRTIO_TRANSITIONAL_FIRST <= device <= VIRTIO_MODERN_LAST


def virtio_device_type(device: int, subsystem_device: int | None) -> tuple[int, bool]:
    """(virtio device type, transitional?) for a virtio PCI device id.

    Modern ids carry the type as ``device - 0x1040``; a transitional id carries it in the PCI
    Subsystem Device ID (which the legacy specification used), falling back to the fixed table.
    """
    if device >= VIRTIO_MODERN_BASE:
        return device - VIRTIO_MODERN_BASE, False
    if subsystem_device:
        return subsystem_device, True
    return VIRTIO_TRANSITIONAL_TYPES.get(device, 0), True


# ---------------------------------------------------------------------------------------------
# NVIDIA GPUs (vendor 0x10de). Names as in pci.ids, without the chip prefix.
# ---------------------------------------------------------------------------------------------
NVIDIA_GPU_NAMES: dict[int, str] = {
    # Turing / Volta data center
    0x1DB1: "Tesla V100 SXM2 16GB",
    0x1DB4: "Tesla V100 PCIe 16GB",
    0x1DB5: "Tesla V100 SXM2 32GB",
    0x1DB6: "Tesla V100 PCIe 32GB",
    0x1DF6: "Tesla V100S PCIe 32GB",
    0x1EB8: "Tesla T4",
    # Ampere data center
    0x20B0: "A100 SXM4 40GB",
    0x20B1: "A100 PCIe 40GB",
    0x20B2: "A100 SXM4 80GB",
    0x20B3: "A100-SXM-64GB",
    0x20B5: "A100 PCIe 80GB",
    0x20B7: "A30 PCIe",
    0x20B8: "A100X",
    0x20F1: "A100 PCIe 40GB",
    0x20F3: "A800-SXM4-80GB",
    0x20F5: "A800 80GB PCIe",
    0x2235: "A40",
    0x2236: "A10",
    0x2237: "A10G",
    0x25B6: "A2 / A16",
    # Ampere workstation
    0x2230: "RTX A6000",
    0x2231: "RTX A5000",
    0x2232: "RTX A4500",
    0x2233: "RTX A5500",
    0x24B0: "RTX A4000",
    # Hopper
    0x2313: "H100 CNX",
    0x2321: "H100 NVL",
    0x2322: "H800 PCIe",
    0x2324: "H800",
    0x2329: "H20",
    0x2330: "H100 SXM5 80GB",
    0x2331: "H100 PCIe",
    0x2335: "H200 SXM 141GB",
    0x2339: "H100",
    0x233B: "H200 NVL",
    0x2342: "GH200",
    # Ada Lovelace data center / workstation
    0x26B1: "RTX 6000 Ada Generation",
    0x26B2: "RTX 5000 Ada Generation",
    0x26B5: "L40",
    0x26B8: "L40G",
    0x26B9: "L40S",
    0x27B0: "RTX 4000 SFF Ada Generation",
    0x27B2: "RTX 4000 Ada Generation",
    0x27B8: "L4",
    # Blackwell data center / workstation
    0x2901: "B200",
    0x2941: "GB200",
    0x29BC: "B100",
    0x31C2: "GB300",
    0x2BB1: "RTX PRO 6000 Blackwell Workstation Edition",
    0x2BB5: "RTX PRO 6000 Blackwell Server Edition",
    # GeForce RTX 30
    0x2204: "GeForce RTX 3090",
    0x2203: "GeForce RTX 3090 Ti",
    0x2206: "GeForce RTX 3080",
    0x2208: "GeForce RTX 3080 Ti",
    0x2484: "GeForce RTX 3070",
    0x2482: "GeForce RTX 3070 Ti",
    0x2486: "GeForce RTX 3060 Ti",
    0x2487: "GeForce RTX 3060",
    0x2503: "GeForce RTX 3060",
    # GeForce RTX 40
    0x2684: "GeForce RTX 4090",
    0x2685: "GeForce RTX 4090 D",
    0x2702: "GeForce RTX 4080 SUPER",
    0x2704: "GeForce RTX 4080",
    0x2705: "GeForce RTX 4070 Ti SUPER",
    0x2782: "GeForce RTX 4070 Ti",
    0x2783: "GeForce RTX 4070 SUPER",
    0x2786: "GeForce RTX 4070",
    0x2803: "GeForce RTX 4060 Ti",
    0x2805: "GeForce RTX 4060 Ti 16GB",
    0x2882: "GeForce RTX 4060",
    # GeForce RTX 50
    0x2B85: "GeForce RTX 5090",
    0x2B87: "GeForce RTX 5090 D",
    0x2C02: "GeForce RTX 5080",
    0x2C05: "GeForce RTX 5070 Ti",
    0x2F04: "GeForce RTX 5070",
    0x2D04: "GeForce RTX 5060 Ti",
    0x2D05: "GeForce RTX 5060",
}

#: Device-id ranges of Blackwell chips (NVIDIA gpu-admin-tools devid_chips.py): an id missing
#: from the table above can still be named by its chip.
NVIDIA_CHIP_RANGES: tuple[tuple[int, int, str, str], ...] = (
    (0x2900, 0x297F, "Blackwell", "GB100"),
    (0x2980, 0x29FF, "Blackwell", "GB102"),
    (0x2B80, 0x2BFF, "Blackwell", "GB202"),
    (0x2C00, 0x2C7F, "Blackwell", "GB203"),
    (0x2D00, 0x2D7F, "Blackwell", "GB206"),
    (0x2D80, 0x2DFF, "Blackwell", "GB207"),
    (0x2F00, 0x2F7F, "Blackwell", "GB205"),
    (0x3180, 0x31FF, "Blackwell", "GB110"),
    (0x3200, 0x327F, "Blackwell", "GB112"),
)


def nvidia_gpu_name(device: int) -> str | None:
    """The product name of an NVIDIA GPU device id, or None when the id is not in the table."""
    return NVIDIA_GPU_NAMES.get(device)


def nvidia_chip(device: int) -> tuple[str, str] | None:
    """(architecture, chip) for a device id inside a known chip range, else None."""
    for lo, hi, arch, chip in NVIDIA_CHIP_RANGES:
        if lo <= device <= hi:
            return arch, chip
    return None
