"""PCI hardware discovery from sysfs and raw configuration space.

The CPU kernel owns the peripherals; this module tells it what is there. It reads the operating
system's view of every PCI function (``/sys/bus/pci/devices``) and decodes the function's
configuration space: header, BARs, the capability list (power management, MSI, MSI-X, PCI
Express, vendor-specific, with virtio's vendor capabilities decoded into their BAR windows) and
the extended capability list when more than 256 bytes are readable. It never writes config space:
BAR sizes come from sysfs ``resource``.

Two entry points:

* :func:`list_functions` walks sysfs and returns one :class:`PciFunction` per function;
* :func:`parse_config` decodes raw config-space bytes with no sysfs at all (fixtures, tests).

Malformed capability lists (a loop, a pointer into the 64-byte header, a structure running past
the config space) raise :class:`PciParseError`, whose message names the offending offset; every
walk is bounded, so no input can hang it. A short read (unprivileged processes get only the
first 64 bytes of ``config``) is not an error: the walk stops where the readable bytes end and
the result says so (``capabilities_complete`` is False, ``notes`` explains).

Example::

    >>> from ggmk.drivers import pci
    >>> for fn in pci.list_functions():              # doctest: +SKIP
    ...     print(fn.address, fn.name, [hex(c.offset) for c in fn.capabilities])
    0000:00:02.0 virtio block (modern) ['0x40', '0x50', '0x60', '0x70', '0x84', '0x98']
    >>> blk = pci.list_functions()[2]                # doctest: +SKIP
    >>> blk.virtio.notify                            # doctest: +SKIP
    VirtioPciCap(cap_offset=112, cfg_type=2, bar=0, id=0, offset=24576, length=4096,
                 notify_off_multiplier=4, ...)
    >>> print(pci.lspci_like(verbose=True))          # doctest: +SKIP
    >>> [g.name for g in pci.find_gpus()]            # doctest: +SKIP
    ['NVIDIA H200 SXM 141GB']

Run ``python -m ggmk.drivers.pci [-v]`` for an lspci-like listing of this machine.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from ggmk.errors import GgmkError
from ggmk.drivers import pci_ids as ids

__all__ = [
    "PciParseError",
    "PciAddress",
    "Bar",
    "Capability",
    "PowerManagement",
    "Msi",
    "MsiX",
    "PciExpress",
    "VirtioPciCap",
    "VirtioInfo",
    "ConfigSpace",
    "PciFunction",
    "parse_config",
    "parse_resource",
    "list_functions",
    "read_function",
    "find_gpus",
    "lspci_like",
    "SYSFS_PCI_DEVICES",
]

SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"

HEADER_SIZE = 0x40          # the standard header every function has; unprivileged reads stop here
CFG_SPACE_SIZE = 0x100      # conventional PCI config space
CFG_SPACE_EXP_SIZE = 0x1000  # PCI Express extended config space

# Upper bounds on the walks. Loop detection already guarantees termination (each aligned offset
# is visited once); these are a second, independent guard.
MAX_CAPABILITIES = (CFG_SPACE_SIZE - HEADER_SIZE) // 4          # 48
MAX_EXT_CAPABILITIES = (CFG_SPACE_EXP_SIZE - CFG_SPACE_SIZE) // 4  # 960

STATUS_CAP_LIST = 0x10

# sysfs resource flags (include/linux/ioport.h)
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000


class PciParseError(GgmkError):
    """Config space is malformed; ``offset`` is the config-space offset at fault."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
_ADDR_RE = re.compile(r"^([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


@dataclass(frozen=True, order=True)
class PciAddress:
    """domain:bus:device.function, as sysfs names it (``0000:00:01.0``)."""

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> "PciAddress":
        m = _ADDR_RE.match(text.strip())
        if not m:
            raise PciParseError(f"not a PCI address (want DDDD:BB:DD.F): {text!r}")
        dom, bus, dev, fn = (int(g, 16) for g in m.groups())
        if dev > 0x1F:
            raise PciParseError(f"PCI device number {dev:#x} > 0x1f in address {text!r}")
        return cls(dom, bus, dev, fn)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"


@dataclass(frozen=True)
class Bar:
    """One base address register, decoded from config space and sized from sysfs.

    ``address`` is the bus address programmed in config space (the sysfs start when config is
    unreadable); ``cpu_address`` the kernel's resource start; ``size`` is None when only config
    space was available (sizing needs a write, which this module never does).
    """

    index: int
    kind: str                 # "mem" or "io"
    address: int
    size: int | None = None
    is_64bit: bool = False
    prefetchable: bool = False
    cpu_address: int | None = None
    register_offset: int = 0  # config offset of the BAR register

    @property
    def is_io(self) -> bool:
        return self.kind == "io"

    def describe(self) -> str:
        if self.kind == "io":
            text = f"I/O ports at {self.address:#x}"
        else:
            bits = "64-bit" if self.is_64bit else "32-bit"
            pf = "prefetchable" if self.prefetchable else "non-prefetchable"
            text = f"Memory at {self.address:#x} ({bits}, {pf})"
        if self.size is not None:
            text += f" [size={_fmt_size(self.size)}]"
        return text


@dataclass(frozen=True)
class PowerManagement:
    version: int
    power_state: str          # "D0".."D3hot"
    pme_support: int          # PMC bits 15:11 (D0, D1, D2, D3hot, D3cold)


@dataclass(frozen=True)
class Msi:
    enabled: bool
    is_64bit: bool
    per_vector_masking: bool
    vectors_capable: int      # 1, 2, 4 .. 32
    vectors_enabled: int


@dataclass(frozen=True)
class MsiX:
    enabled: bool
    function_mask: bool
    table_size: int           # number of vectors
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


@dataclass(frozen=True)
class PciExpress:
    version: int
    port_type: int
    port_type_name: str
    max_link_speed_gts: float | None = None
    max_link_width: int | None = None
    link_speed_gts: float | None = None
    link_width: int | None = None


@dataclass(frozen=True)
class VirtioPciCap:
    """A ``struct virtio_pci_cap``: a window of ``length`` bytes at ``offset`` in BAR ``bar``."""

    cap_offset: int           # where the capability sits in config space
    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int
    notify_off_multiplier: int | None = None  # notify capability only

    @property
    def cfg_name(self) -> str:
        return ids.VIRTIO_CFG_TYPE_NAMES.get(self.cfg_type, f"cfg-type-{self.cfg_type}")

    @property
    def bar_valid(self) -> bool:
        """BAR numbers 0x0-0x5 are usable; the specification reserves the rest (drivers ignore)."""
        return self.bar <= 5

    def describe(self) -> str:
        text = f"virtio {self.cfg_name}: BAR{self.bar} +{self.offset:#x} len={self.length:#x}"
        if self.notify_off_multiplier is not None:
            text += f" multiplier={self.notify_off_multiplier}"
        return text


@dataclass(frozen=True)
class Capability:
    """One entry of the capability list (or of the extended list when ``extended``)."""

    offset: int
    id: int
    next: int
    extended: bool = False
    version: int | None = None   # extended capabilities carry a version
    length: int | None = None    # vendor-specific capabilities carry a length
    decoded: object | None = None  # PowerManagement, Msi, MsiX, PciExpress, VirtioPciCap, ...

    @property
    def name(self) -> str:
        return ids.ext_capability_name(self.id) if self.extended else ids.capability_name(self.id)

    def describe(self) -> str:
        d = self.decoded
        if isinstance(d, VirtioPciCap):
            return f"{self.name}: {d.describe()}"
        if isinstance(d, MsiX):
            return (f"MSI-X: Enable{'+' if d.enabled else '-'} Count={d.table_size} "
                    f"Masked{'+' if d.function_mask else '-'} "
                    f"Table: BAR{d.table_bar} +{d.table_offset:#x} "
                    f"PBA: BAR{d.pba_bar} +{d.pba_offset:#x}")
        if isinstance(d, Msi):
            return (f"MSI: Enable{'+' if d.enabled else '-'} Count={d.vectors_enabled}/"
                    f"{d.vectors_capable} {'64bit+' if d.is_64bit else '64bit-'}")
        if isinstance(d, PciExpress):
            text = f"Express (v{d.version}) {d.port_type_name}"
            if d.link_speed_gts is not None:
                text += f", link {_fmt_link(d.link_speed_gts, d.link_width)}"
            if d.max_link_speed_gts is not None:
                text += f" (max {_fmt_link(d.max_link_speed_gts, d.max_link_width)})"
            return text
        if isinstance(d, PowerManagement):
            return f"Power Management version {d.version}, state {d.power_state}"
        if isinstance(d, dict) and d:
            return f"{self.name}: " + ", ".join(
                f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}" for k, v in d.items())
        return self.name


@dataclass(frozen=True)
class VirtioInfo:
    """What the config space says about a virtio PCI function."""

    device_type: int
    transitional: bool
    caps: tuple[VirtioPciCap, ...] = ()

    @property
    def type_name(self) -> str:
        return ids.virtio_type_name(self.device_type)

    def find(self, cfg_type: int) -> VirtioPciCap | None:
        """The first capability of ``cfg_type`` with a usable BAR (the driver rule in the spec)."""
        for cap in self.caps:
            if cap.cfg_type == cfg_type and cap.bar_valid:
                return cap
        return None

    @property
    def common(self) -> VirtioPciCap | None:
        return self.find(ids.VIRTIO_PCI_CAP_COMMON_CFG)

    @property
    def notify(self) -> VirtioPciCap | None:
        return self.find(ids.VIRTIO_PCI_CAP_NOTIFY_CFG)

    @property
    def isr(self) -> VirtioPciCap | None:
        return self.find(ids.VIRTIO_PCI_CAP_ISR_CFG)

    @property
    def device_cfg(self) -> VirtioPciCap | None:
        return self.find(ids.VIRTIO_PCI_CAP_DEVICE_CFG)

    @property
    def pci_cfg(self) -> VirtioPciCap | None:
        # the PCI-config access window names a BAR through its own fields; any cap_bar is fine
        for cap in self.caps:
            if cap.cfg_type == ids.VIRTIO_PCI_CAP_PCI_CFG:
                return cap
        return None

    @property
    def modern(self) -> bool:
        """True when the function offers the virtio 1.x interface (a common-config window)."""
        return self.common is not None


class _CapabilityShortcuts:
    """Lookups shared by ConfigSpace and PciFunction (both carry ``capabilities``)."""

    def capability(self, cap_id: int) -> Capability | None:
        return next((c for c in self.capabilities if c.id == cap_id), None)

    def ext_capability(self, cap_id: int) -> Capability | None:
        return next((c for c in self.ext_capabilities if c.id == cap_id), None)

    @property
    def pm(self) -> PowerManagement | None:
        c = self.capability(ids.CAP_PM)
        return c.decoded if c else None  # type: ignore[return-value]

    @property
    def msi(self) -> Msi | None:
        c = self.capability(ids.CAP_MSI)
        return c.decoded if c else None  # type: ignore[return-value]

    @property
    def msix(self) -> MsiX | None:
        c = self.capability(ids.CAP_MSIX)
        return c.decoded if c else None  # type: ignore[return-value]

    @property
    def pcie(self) -> PciExpress | None:
        c = self.capability(ids.CAP_PCIE)
        return c.decoded if c else None  # type: ignore[return-value]


@dataclass(frozen=True)
class ConfigSpace(_CapabilityShortcuts):
    """Decoded configuration space. Built by :func:`parse_config`."""

    raw: bytes
    vendor: int
    device: int
    command: int
    status: int
    revision: int
    class_code: int
    header_type: int            # layout: 0 normal, 1 PCI-to-PCI bridge, 2 CardBus bridge
    multifunction: bool
    subsystem_vendor: int | None
    subsystem_device: int | None
    interrupt_line: int
    interrupt_pin: int
    bars: tuple[Bar, ...]
    rom_address: int | None
    capabilities: tuple[Capability, ...]
    ext_capabilities: tuple[Capability, ...]
    capabilities_complete: bool
    notes: tuple[str, ...] = ()
    virtio: VirtioInfo | None = None

    @property
    def length(self) -> int:
        return len(self.raw)



# ---------------------------------------------------------------------------------------------
# Config-space parsing
# ---------------------------------------------------------------------------------------------
def _u8(raw: bytes, off: int) -> int:
    return raw[off]


def _u16(raw: bytes, off: int) -> int:
    return raw[off] | (raw[off + 1] << 8)


def _u32(raw: bytes, off: int) -> int:
    return struct.unpack_from("<I", raw, off)[0]


class _Walk:
    """State shared by the decoders of one config space: readable length, notes, completeness."""

    def __init__(self, raw: bytes, limit: int):
        self.raw = raw
        self.n = len(raw)
        self.limit = limit            # CFG_SPACE_SIZE for the standard list
        self.complete = True
        self.notes: list[str] = []

    def need(self, off: int, length: int, what: str) -> bool:
        """True when ``length`` bytes at ``off`` are readable. Raises when they run past the
        config space (malformed); returns False on a short read (noted, walk incomplete)."""
        if off + length > self.limit:
            raise PciParseError(
                f"{what} at offset {off:#x} needs {length} bytes and runs past the "
                f"{self.limit:#x}-byte config space", off)
        if off + length > self.n:
            self.complete = False
            self.notes.append(
                f"{what} at offset {off:#x} lies past the {self.n} readable bytes of config "
                f"space; not decoded")
            return False
        return True


_PM_STATES = ("D0", "D1", "D2", "D3hot")


def _decode_pm(w: _Walk, off: int) -> PowerManagement | None:
    if not w.need(off, 6, "power management capability"):
        return None
    pmc = _u16(w.raw, off + 2)
    pmcsr = _u16(w.raw, off + 4)
    return PowerManagement(version=pmc & 0x7, power_state=_PM_STATES[pmcsr & 0x3],
                           pme_support=(pmc >> 11) & 0x1F)


def _decode_msi(w: _Walk, off: int) -> Msi | None:
    if not w.need(off, 4, "MSI capability"):
        return None
    ctrl = _u16(w.raw, off + 2)
    mmc, mme = (ctrl >> 1) & 0x7, (ctrl >> 4) & 0x7
    return Msi(enabled=bool(ctrl & 1), is_64bit=bool(ctrl & 0x80),
               per_vector_masking=bool(ctrl & 0x100),
               vectors_capable=1 << min(mmc, 5), vectors_enabled=1 << min(mme, 5))


def _decode_msix(w: _Walk, off: int) -> MsiX | None:
    if not w.need(off, 12, "MSI-X capability"):
        return None
    ctrl = _u16(w.raw, off + 2)
    table = _u32(w.raw, off + 4)
    pba = _u32(w.raw, off + 8)
    return MsiX(enabled=bool(ctrl & 0x8000), function_mask=bool(ctrl & 0x4000),
                table_size=(ctrl & 0x7FF) + 1,
                table_bar=table & 0x7, table_offset=table & ~0x7 & 0xFFFFFFFF,
                pba_bar=pba & 0x7, pba_offset=pba & ~0x7 & 0xFFFFFFFF)


def _decode_pcie(w: _Walk, off: int) -> PciExpress | None:
    if not w.need(off, 4, "PCI Express capability"):
        return None
    flags = _u16(w.raw, off + 2)
    version, ptype = flags & 0xF, (flags >> 4) & 0xF
    base = PciExpress(version=version, port_type=ptype,
                      port_type_name=ids.PCIE_PORT_TYPES.get(ptype, f"type {ptype}"))
    # Root-complex integrated endpoints and event collectors have no link.
    if ptype in (0x9, 0xA):
        return base
    if not w.need(off, 0x14, "PCI Express link registers"):
        return base
    lnkcap = _u32(w.raw, off + 0x0C)
    lnksta = _u16(w.raw, off + 0x12)
    max_w, cur_w = (lnkcap >> 4) & 0x3F, (lnksta >> 4) & 0x3F
    return PciExpress(
        version=version, port_type=ptype, port_type_name=base.port_type_name,
        max_link_speed_gts=ids.PCIE_LINK_SPEEDS_GTS.get(lnkcap & 0xF),
        max_link_width=max_w or None,
        link_speed_gts=ids.PCIE_LINK_SPEEDS_GTS.get(lnksta & 0xF),
        link_width=cur_w or None)


_VIRTIO_MIN_LEN = {
    ids.VIRTIO_PCI_CAP_NOTIFY_CFG: 20,   # + le32 notify_off_multiplier
    ids.VIRTIO_PCI_CAP_PCI_CFG: 20,      # + u8 pci_cfg_data[4]
    ids.VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: 24,  # virtio_pci_cap64: + offset_hi, length_hi
}


def _decode_vendor(w: _Walk, off: int, virtio: bool) -> tuple[int | None, object | None]:
    """(cap_len, decoded) of a vendor-specific capability; virtio's are decoded."""
    if not w.need(off, 3, "vendor-specific capability"):
        return None, None
    cap_len = _u8(w.raw, off + 2)
    if not virtio:
        return cap_len, None
    if cap_len < 16:
        raise PciParseError(
            f"virtio capability at offset {off:#x} has cap_len {cap_len}, shorter than the "
            f"16-byte struct virtio_pci_cap", off)
    if not w.need(off, 16, "virtio capability"):
        return cap_len, None
    cfg_type = _u8(w.raw, off + 3)
    need = _VIRTIO_MIN_LEN.get(cfg_type, 16)
    if cap_len < need:
        raise PciParseError(
            f"virtio {ids.VIRTIO_CFG_TYPE_NAMES.get(cfg_type, cfg_type)} capability at offset "
            f"{off:#x} has cap_len {cap_len}, needs at least {need}", off)
    # cap_len bytes must lie inside config space even if we only decode the first ``need``
    if off + cap_len > w.limit:
        raise PciParseError(
            f"virtio capability at offset {off:#x} (cap_len {cap_len}) runs past the "
            f"{w.limit:#x}-byte config space", off)
    if not w.need(off, need, "virtio capability"):
        return cap_len, None
    bar, cap_id = _u8(w.raw, off + 4), _u8(w.raw, off + 5)
    offset, length = _u32(w.raw, off + 8), _u32(w.raw, off + 12)
    mult = None
    if cfg_type == ids.VIRTIO_PCI_CAP_NOTIFY_CFG:
        mult = _u32(w.raw, off + 16)
    elif cfg_type == ids.VIRTIO_PCI_CAP_SHARED_MEMORY_CFG:
        offset |= _u32(w.raw, off + 16) << 32
        length |= _u32(w.raw, off + 20) << 32
    return cap_len, VirtioPciCap(cap_offset=off, cfg_type=cfg_type, bar=bar, id=cap_id,
                                 offset=offset, length=length, notify_off_multiplier=mult)


def _walk_capabilities(w: _Walk, ptr_off: int, virtio: bool) -> list[Capability]:
    raw = w.raw
    ptr = _u8(raw, ptr_off) & 0xFC   # the two low bits are reserved; software masks them
    came_from = ptr_off
    seen: set[int] = set()
    caps: list[Capability] = []
    for _ in range(MAX_CAPABILITIES + 1):
        if ptr == 0:
            return caps
        if ptr < HEADER_SIZE:
            raise PciParseError(
                f"capability pointer at offset {came_from:#x} points to {ptr:#x}, inside the "
                f"64-byte header", came_from)
        if ptr in seen:
            raise PciParseError(
                f"capability list loops: pointer at offset {came_from:#x} points back to "
                f"capability at {ptr:#x}", came_from)
        if not w.need(ptr, 2, "capability"):
            return caps
        seen.add(ptr)
        cap_id, nxt = _u8(raw, ptr), _u8(raw, ptr + 1) & 0xFC
        length: int | None = None
        decoded: object | None = None
        if cap_id == ids.CAP_PM:
            decoded = _decode_pm(w, ptr)
        elif cap_id == ids.CAP_MSI:
            decoded = _decode_msi(w, ptr)
        elif cap_id == ids.CAP_MSIX:
            decoded = _decode_msix(w, ptr)
        elif cap_id == ids.CAP_PCIE:
            decoded = _decode_pcie(w, ptr)
        elif cap_id == ids.CAP_VENDOR:
            length, decoded = _decode_vendor(w, ptr, virtio)
        caps.append(Capability(offset=ptr, id=cap_id, next=nxt, length=length, decoded=decoded))
        came_from, ptr = ptr + 1, nxt
    # unreachable while loop detection holds; kept so no input can ever spin
    raise PciParseError(f"more than {MAX_CAPABILITIES} capabilities", came_from)


def _decode_ext(w: _Walk, off: int, cap_id: int) -> object | None:
    raw = w.raw
    if cap_id == 0x0003:  # Device Serial Number
        if w.need(off, 12, "device serial number capability"):
            return {"serial": struct.unpack_from("<Q", raw, off + 4)[0]}
    elif cap_id == ids.EXT_CAP_VENDOR:
        if w.need(off, 8, "vendor-specific extended capability"):
            hdr = _u32(raw, off + 4)
            return {"vsec_id": hdr & 0xFFFF, "vsec_rev": (hdr >> 16) & 0xF,
                    "vsec_length": (hdr >> 20) & 0xFFF}
    elif cap_id == ids.EXT_CAP_DVSEC:
        if w.need(off, 10, "designated vendor-specific capability"):
            hdr1 = _u32(raw, off + 4)
            return {"dvsec_vendor": hdr1 & 0xFFFF, "dvsec_rev": (hdr1 >> 16) & 0xF,
                    "dvsec_length": (hdr1 >> 20) & 0xFFF, "dvsec_id": _u16(raw, off + 8)}
    elif cap_id == 0x0010:  # SR-IOV
        if w.need(off, 0x1C, "SR-IOV capability"):
            return {"initial_vfs": _u16(raw, off + 0x0C), "total_vfs": _u16(raw, off + 0x0E),
                    "num_vfs": _u16(raw, off + 0x10), "vf_device": _u16(raw, off + 0x1A)}
    return None


def _walk_ext_capabilities(raw: bytes) -> tuple[list[Capability], bool, list[str]]:
    w = _Walk(raw, CFG_SPACE_EXP_SIZE)
    caps: list[Capability] = []
    off, came_from = CFG_SPACE_SIZE, CFG_SPACE_SIZE
    seen: set[int] = set()
    for _ in range(MAX_EXT_CAPABILITIES + 1):
        if off == 0:
            return caps, w.complete, w.notes
        if off < CFG_SPACE_SIZE:
            raise PciParseError(
                f"extended capability pointer at offset {came_from:#x} points to {off:#x}, "
                f"below the extended config space (0x100)", came_from)
        if off in seen:
            raise PciParseError(
                f"extended capability list loops: pointer at offset {came_from:#x} points back "
                f"to capability at {off:#x}", came_from)
        if not w.need(off, 4, "extended capability"):
            return caps, w.complete, w.notes
        hdr = _u32(raw, off)
        # An empty list (0) or a failed/absent read (all ones) at 0x100 means no extended caps.
        if off == CFG_SPACE_SIZE and hdr in (0, 0xFFFFFFFF):
            return caps, w.complete, w.notes
        seen.add(off)
        cap_id, version, nxt = hdr & 0xFFFF, (hdr >> 16) & 0xF, (hdr >> 20) & 0xFFC
        caps.append(Capability(offset=off, id=cap_id, next=nxt, extended=True, version=version,
                               decoded=_decode_ext(w, off, cap_id)))
        came_from, off = off, nxt
    raise PciParseError(f"more than {MAX_EXT_CAPABILITIES} extended capabilities", came_from)


def _decode_bars(raw: bytes, count: int) -> list[Bar]:
    bars: list[Bar] = []
    i = 0
    while i < count:
        reg = 0x10 + 4 * i
        val = _u32(raw, reg)
        if val & 1:
            bars.append(Bar(index=i, kind="io", address=val & 0xFFFFFFFC, register_offset=reg))
            i += 1
            continue
        mtype = (val >> 1) & 0x3
        pf = bool(val & 0x8)
        if mtype == 0x2:
            if i + 1 >= count:
                raise PciParseError(
                    f"BAR{i} at offset {reg:#x} is 64-bit but is the last BAR (no upper half)",
                    reg)
            addr = (val & 0xFFFFFFF0) | (_u32(raw, reg + 4) << 32)
            if val or _u32(raw, reg + 4):
                bars.append(Bar(index=i, kind="mem", address=addr, is_64bit=True,
                                prefetchable=pf, register_offset=reg))
            i += 2
            continue
        # type 00 (32-bit), 01 (below 1 MiB, legacy) and 11 (reserved) decode as 32-bit
        if val:
            bars.append(Bar(index=i, kind="mem", address=val & 0xFFFFFFF0, prefetchable=pf,
                            register_offset=reg))
        i += 1
    return bars


def parse_config(raw: bytes) -> ConfigSpace:
    """Decode raw configuration-space bytes (64, 256, 4096 or any length >= 64).

    Raises :class:`PciParseError` (message names the offset) for malformed input: fewer than 64
    bytes, vendor id 0xffff (no function), an unknown header layout, a 64-bit last BAR, a
    capability pointer into the header, a loop, a structure past the config space, a virtio
    capability shorter than its struct. A short read is not malformed: decoding stops at the
    last readable byte and ``capabilities_complete`` is False with a note saying why.

    >>> cs = parse_config(open('tests/drivers/fixtures/pci/0000_00_02.0.config', 'rb').read())
    >>> cs.virtio.type_name, hex(cs.virtio.notify.offset)            # doctest: +SKIP
    ('block', '0x6000')
    """
    raw = bytes(raw)
    n = len(raw)
    if n < HEADER_SIZE:
        raise PciParseError(
            f"config space is {n} bytes; the 64-byte header ends at offset {n:#x}", n)
    vendor, device = _u16(raw, 0x00), _u16(raw, 0x02)
    if vendor == 0xFFFF:
        raise PciParseError("vendor id 0xffff at offset 0x0: no function responds (read failed)",
                            0x00)
    command, status = _u16(raw, 0x04), _u16(raw, 0x06)
    revision = raw[0x08]
    class_code = raw[0x09] | (raw[0x0A] << 8) | (raw[0x0B] << 16)
    htype = raw[0x0E]
    layout, multifunction = htype & 0x7F, bool(htype & 0x80)
    notes: list[str] = []

    if layout == 0:
        nbars, cap_ptr_off, rom_off = 6, 0x34, 0x30
        sub_vendor, sub_device = _u16(raw, 0x2C), _u16(raw, 0x2E)
    elif layout == 1:
        nbars, cap_ptr_off, rom_off = 2, 0x34, 0x38
        sub_vendor = sub_device = None  # bridges carry them in capability 0x0d
    elif layout == 2:
        nbars, cap_ptr_off, rom_off = 1, 0x14, None
        if n >= 0x44:
            sub_vendor, sub_device = _u16(raw, 0x40), _u16(raw, 0x42)
        else:
            sub_vendor = sub_device = None
    else:
        raise PciParseError(f"unknown header layout {layout:#x} at offset 0xe", 0x0E)

    bars = _decode_bars(raw, nbars)
    rom_address = None
    if rom_off is not None:
        rom = _u32(raw, rom_off)
        rom_address = (rom & 0xFFFFF800) or None

    virtio_fn = ids.is_virtio_device_id(vendor, device)
    caps: list[Capability] = []
    complete = True
    if not status & STATUS_CAP_LIST:
        pass  # no capability list: complete, and empty
    elif n <= HEADER_SIZE:
        complete = False
        notes.append(f"only {n} bytes of config space readable (unprivileged read?): "
                     f"capability list not walked")
    else:
        w = _Walk(raw, CFG_SPACE_SIZE)
        caps = _walk_capabilities(w, cap_ptr_off, virtio_fn)
        complete = w.complete
        notes.extend(w.notes)

    ext: list[Capability] = []
    if n > CFG_SPACE_SIZE:
        ext, ext_complete, ext_notes = _walk_ext_capabilities(raw)
        complete = complete and ext_complete
        notes.extend(ext_notes)

    virtio = None
    if virtio_fn:
        dtype, transitional = ids.virtio_device_type(device, sub_device)
        vcaps = tuple(c.decoded for c in caps if isinstance(c.decoded, VirtioPciCap))
        virtio = VirtioInfo(device_type=dtype, transitional=transitional, caps=vcaps)

    return ConfigSpace(
        raw=raw, vendor=vendor, device=device, command=command, status=status,
        revision=revision, class_code=class_code, header_type=layout,
        multifunction=multifunction, subsystem_vendor=sub_vendor, subsystem_device=sub_device,
        interrupt_line=raw[0x3C], interrupt_pin=raw[0x3D], bars=tuple(bars),
        rom_address=rom_address, capabilities=tuple(caps), ext_capabilities=tuple(ext),
        capabilities_complete=complete, notes=tuple(notes), virtio=virtio)


# ---------------------------------------------------------------------------------------------
# sysfs
# ---------------------------------------------------------------------------------------------
def parse_resource(text: str) -> list[tuple[int, int, int]]:
    """Parse a sysfs ``resource`` file: one ``start end flags`` line (hex) per resource.

    Lines 0-5 are the BARs, line 6 the expansion ROM, later lines bridge windows or SR-IOV BARs.

    >>> parse_resource("0x0000004000000000 0x000000400007ffff 0x0000000000140204\\n")
    [(274877906944, 274878431231, 1311236)]
    """
    out = []
    for lineno, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise PciParseError(f"sysfs resource line {lineno}: want 'start end flags', "
                                f"got {line!r}")
        try:
            out.append(tuple(int(p, 16) for p in parts))  # type: ignore[arg-type]
        except ValueError:
            raise PciParseError(f"sysfs resource line {lineno}: not hex: {line!r}") from None
    return out  # type: ignore[return-value]


def _res_size(start: int, end: int) -> int:
    return end - start + 1 if end > start or (end == start and start != 0) else 0


def _bar_from_resource(index: int, start: int, end: int, flags: int) -> Bar:
    return Bar(index=index, kind="io" if flags & IORESOURCE_IO else "mem", address=start,
               size=_res_size(start, end), is_64bit=bool(flags & IORESOURCE_MEM_64),
               prefetchable=bool(flags & IORESOURCE_PREFETCH), cpu_address=start,
               register_offset=0x10 + 4 * index)


def _merge_bars(cfg_bars: tuple[Bar, ...] | None, resources: list[tuple[int, int, int]],
                nbars: int) -> tuple[Bar, ...]:
    """Config-space decode for type bits and bus address, sysfs for sizes and CPU addresses."""
    by_index = {b.index: b for b in (cfg_bars or ())}
    out: list[Bar] = []
    skip = set()
    for i in range(nbars):
        if i in skip:
            continue
        res = resources[i] if i < len(resources) else (0, 0, 0)
        size = _res_size(res[0], res[1])
        b = by_index.get(i)
        if b is not None:
            out.append(Bar(index=i, kind=b.kind, address=b.address, size=size,
                           is_64bit=b.is_64bit, prefetchable=b.prefetchable,
                           cpu_address=res[0] if size else None,
                           register_offset=b.register_offset))
            if b.is_64bit:
                skip.add(i + 1)
        elif size:
            # config unreadable, or the BAR is implemented but programmed to 0: sysfs has it
            out.append(_bar_from_resource(i, *res))
    return tuple(out)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str, base: int = 0) -> int | None:
    text = _read_text(path)
    if text is None or text == "":
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _parse_speed(text: str | None) -> float | None:
    """'16.0 GT/s PCIe' -> 16.0; 'Unknown' / missing -> None."""
    if not text:
        return None
    m = re.match(r"\s*([0-9.]+)\s*GT/s", text)
    return float(m.group(1)) if m else None


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


@dataclass
class PciFunction(_CapabilityShortcuts):
    """One PCI function as the operating system and its config space describe it.

    ``name`` is the best human name (NVIDIA product from the device id, virtio device type,
    vendor + class); ``config`` is the decoded :class:`ConfigSpace` (None when unreadable);
    ``config_error`` holds the :class:`PciParseError` message when config space was malformed
    (``list_functions(strict=True)`` raises instead).
    """

    address: PciAddress
    vendor: int
    device: int
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    class_code: int = 0
    revision: int = 0
    header_type: int = 0
    multifunction: bool = False
    driver: str | None = None
    numa_node: int | None = None
    irq: int | None = None
    iommu_group: int | None = None
    bars: tuple[Bar, ...] = ()
    rom: Bar | None = None
    capabilities: tuple[Capability, ...] = ()
    ext_capabilities: tuple[Capability, ...] = ()
    capabilities_complete: bool = False
    config_length: int = 0
    link_speed_gts: float | None = None
    link_width: int | None = None
    max_link_speed_gts: float | None = None
    max_link_width: int | None = None
    virtio: VirtioInfo | None = None
    config: ConfigSpace | None = None
    config_error: str | None = None
    sysfs_path: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    # -- names ------------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return ids.class_name(self.class_code)

    @property
    def vendor_name(self) -> str | None:
        return ids.vendor_name(self.vendor)

    @property
    def is_nvidia_gpu(self) -> bool:
        """An NVIDIA display-class function (VGA/3D controller) or a known NVIDIA GPU id."""
        if self.vendor != ids.VENDOR_NVIDIA:
            return False
        return (self.class_code >> 16) == 0x03 or self.device in ids.NVIDIA_GPU_NAMES

    @property
    def is_display(self) -> bool:
        return (self.class_code >> 16) == 0x03

    @property
    def is_virtio(self) -> bool:
        return self.virtio is not None

    @property
    def name(self) -> str:
        if self.is_nvidia_gpu:
            product = ids.nvidia_gpu_name(self.device)
            if product:
                return f"NVIDIA {product}"
            chip = ids.nvidia_chip(self.device)
            if chip:
                return f"NVIDIA {chip[1]} ({chip[0]}) {self.class_name}"
            return f"NVIDIA {self.class_name}"
        if self.virtio is not None:
            kind = "transitional" if self.virtio.transitional else "modern"
            return f"virtio {self.virtio.type_name} ({kind})"
        vendor = self.vendor_name
        return f"{vendor} {self.class_name}" if vendor else self.class_name


    def bar(self, index: int) -> Bar | None:
        return next((b for b in self.bars if b.index == index), None)

    def resource_file(self, index: int) -> str | None:
        """Path of the sysfs ``resourceN`` file (mmap-able BAR) when the OS exposes it."""
        if self.sysfs_path is None:
            return None
        path = os.path.join(self.sysfs_path, f"resource{index}")
        return path if os.path.exists(path) else None

    def virtio_window(self, cfg_type: int) -> tuple[Bar, int, int] | None:
        """(BAR, offset, length) of a virtio window, checked to lie inside a sized BAR.

        Raises :class:`PciParseError` when the window names a BAR the function lacks or runs
        past its end.
        """
        if self.virtio is None:
            return None
        cap = self.virtio.find(cfg_type)
        if cap is None:
            return None
        bar = self.bar(cap.bar)
        if bar is None:
            raise PciParseError(
                f"{self.address}: virtio {cap.cfg_name} capability at offset "
                f"{cap.cap_offset:#x} names BAR{cap.bar}, which is not implemented",
                cap.cap_offset)
        if bar.size is not None and cap.offset + cap.length > bar.size:
            raise PciParseError(
                f"{self.address}: virtio {cap.cfg_name} window {cap.offset:#x}+{cap.length:#x} "
                f"(capability at offset {cap.cap_offset:#x}) runs past BAR{cap.bar} of size "
                f"{bar.size:#x}", cap.cap_offset)
        return bar, cap.offset, cap.length

    def to_dict(self) -> dict:
        """A JSON-ready summary (for ``ggmk`` hardware listings); ids as ints, no raw bytes.

        >>> json.dumps(fn.to_dict())                     # doctest: +SKIP
        """
        def cap(c: Capability) -> dict:
            d: dict = {"offset": c.offset, "id": c.id, "name": c.name}
            if c.version is not None:
                d["version"] = c.version
            if c.length is not None:
                d["length"] = c.length
            if isinstance(c.decoded, dict):
                d["decoded"] = dict(c.decoded)
            elif c.decoded is not None:
                d["decoded"] = dict(vars(c.decoded))
                if isinstance(c.decoded, VirtioPciCap):
                    d["decoded"]["cfg_name"] = c.decoded.cfg_name
            return d

        return {
            "address": str(self.address), "name": self.name, "vendor": self.vendor,
            "device": self.device, "subsystem_vendor": self.subsystem_vendor,
            "subsystem_device": self.subsystem_device, "class_code": self.class_code,
            "class_name": self.class_name, "revision": self.revision,
            "header_type": self.header_type, "driver": self.driver,
            "numa_node": self.numa_node, "irq": self.irq, "iommu_group": self.iommu_group,
            "is_nvidia_gpu": self.is_nvidia_gpu,
            "bars": [{"index": b.index, "kind": b.kind, "address": b.address, "size": b.size,
                      "is_64bit": b.is_64bit, "prefetchable": b.prefetchable} for b in self.bars],
            "capabilities": [cap(c) for c in self.capabilities],
            "ext_capabilities": [cap(c) for c in self.ext_capabilities],
            "capabilities_complete": self.capabilities_complete,
            "config_length": self.config_length,
            "link_speed_gts": self.link_speed_gts, "link_width": self.link_width,
            "max_link_speed_gts": self.max_link_speed_gts, "max_link_width": self.max_link_width,
            "virtio": None if self.virtio is None else {
                "device_type": self.virtio.device_type, "type_name": self.virtio.type_name,
                "transitional": self.virtio.transitional, "modern": self.virtio.modern},
            "config_error": self.config_error, "notes": list(self.notes),
        }

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, raw: bytes, address: str | PciAddress = "0000:00:00.0",
                    resources: list[tuple[int, int, int]] | None = None,
                    **sysfs_fields) -> "PciFunction":
        """Build a function from raw config bytes (and optionally parsed sysfs resources)."""
        cs = parse_config(raw)
        addr = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        return cls._assemble(addr, cs, None, resources or [], sysfs_fields)

    @classmethod
    def _assemble(cls, addr: PciAddress, cs: ConfigSpace | None, error: str | None,
                  resources: list[tuple[int, int, int]], s: dict) -> "PciFunction":
        def pick(key, cfg_value):
            v = s.get(key)
            return v if v is not None else cfg_value

        vendor = pick("vendor", cs.vendor if cs else 0xFFFF)
        device = pick("device", cs.device if cs else 0xFFFF)
        sub_vendor = pick("subsystem_vendor", cs.subsystem_vendor if cs else None)
        sub_device = pick("subsystem_device", cs.subsystem_device if cs else None)
        class_code = pick("class_code", cs.class_code if cs else 0)
        revision = pick("revision", cs.revision if cs else 0)
        layout = cs.header_type if cs else 0
        nbars = {0: 6, 1: 2, 2: 1}.get(layout, 6)
        bars = _merge_bars(cs.bars if cs else None, resources, nbars)
        rom = None
        if len(resources) > 6 and _res_size(resources[6][0], resources[6][1]):
            st, en, fl = resources[6]
            rom = Bar(index=6, kind="mem", address=st, size=_res_size(st, en), cpu_address=st,
                      register_offset=0x30 if layout == 0 else 0x38)
        pcie = None
        if cs is not None:
            c = cs.capability(ids.CAP_PCIE)
            pcie = c.decoded if c else None
        link_speed = pick("link_speed_gts", pcie.link_speed_gts if pcie else None)
        link_width = pick("link_width", pcie.link_width if pcie else None)
        max_speed = pick("max_link_speed_gts", pcie.max_link_speed_gts if pcie else None)
        max_width = pick("max_link_width", pcie.max_link_width if pcie else None)

        virtio = cs.virtio if cs else None
        if virtio is None and ids.is_virtio_device_id(vendor, device):
            dtype, transitional = ids.virtio_device_type(device, sub_device)
            virtio = VirtioInfo(device_type=dtype, transitional=transitional)
        notes = list(cs.notes) if cs else []
        if error:
            notes.append(f"config space malformed: {error}")
        return cls(
            address=addr, vendor=vendor, device=device, subsystem_vendor=sub_vendor,
            subsystem_device=sub_device, class_code=class_code, revision=revision,
            header_type=layout, multifunction=cs.multifunction if cs else False,
            driver=s.get("driver"), numa_node=s.get("numa_node"), irq=s.get("irq"),
            iommu_group=s.get("iommu_group"), bars=bars, rom=rom,
            capabilities=cs.capabilities if cs else (),
            ext_capabilities=cs.ext_capabilities if cs else (),
            capabilities_complete=cs.capabilities_complete if cs else False,
            config_length=cs.length if cs else s.get("config_length", 0),
            link_speed_gts=link_speed, link_width=link_width,
            max_link_speed_gts=max_speed, max_link_width=max_width,
            virtio=virtio, config=cs, config_error=error, sysfs_path=s.get("sysfs_path"),
            notes=tuple(notes))


def read_function(path: str, *, strict: bool = False) -> PciFunction:
    """Read one function from its sysfs directory (``/sys/bus/pci/devices/0000:00:01.0``).

    With ``strict`` a malformed config space raises :class:`PciParseError`; otherwise the
    function is still returned (ids, driver, BAR sizes from sysfs) with ``config_error`` set.
    """
    addr = PciAddress.parse(os.path.basename(os.path.normpath(path)))
    j = lambda name: os.path.join(path, name)  # noqa: E731
    s: dict = {"sysfs_path": path}
    for key, fname in (("vendor", "vendor"), ("device", "device"),
                       ("subsystem_vendor", "subsystem_vendor"),
                       ("subsystem_device", "subsystem_device"), ("class_code", "class"),
                       ("revision", "revision")):
        s[key] = _read_int(j(fname), 16)
    s["irq"] = _read_int(j("irq"), 10)
    numa = _read_int(j("numa_node"), 10)
    s["numa_node"] = numa if numa is not None and numa >= 0 else None
    s["driver"] = _link_name(j("driver"))
    group = _link_name(j("iommu_group"))
    s["iommu_group"] = int(group) if group and group.isdigit() else None
    s["link_speed_gts"] = _parse_speed(_read_text(j("current_link_speed")))
    s["max_link_speed_gts"] = _parse_speed(_read_text(j("max_link_speed")))
    for key, fname in (("link_width", "current_link_width"), ("max_link_width", "max_link_width")):
        w = _read_int(j(fname), 10)
        s[key] = w if w else None  # 0 = no link trained

    resources: list[tuple[int, int, int]] = []
    res_text = _read_text(j("resource"))
    if res_text:
        resources = parse_resource(res_text)

    cs: ConfigSpace | None = None
    error: str | None = None
    try:
        with open(j("config"), "rb") as f:
            raw = f.read(CFG_SPACE_EXP_SIZE)
    except OSError as exc:
        raw = b""
        error = f"{j('config')}: {exc.strerror or exc}"
    if raw:
        s["config_length"] = len(raw)
        try:
            cs = parse_config(raw)
        except PciParseError as exc:
            if strict:
                raise PciParseError(f"{addr}: {exc}", exc.offset) from exc
            error = str(exc)
    return PciFunction._assemble(addr, cs, error, resources, s)


def list_functions(sysfs_root: str = SYSFS_PCI_DEVICES, *, strict: bool = False
                   ) -> list[PciFunction]:
    """Every PCI function under ``sysfs_root``, sorted by address; [] when there is none.

    >>> [str(f.address) for f in list_functions()]      # doctest: +SKIP
    ['0000:00:00.0', '0000:00:01.0', '0000:00:02.0']
    """
    try:
        entries = os.listdir(sysfs_root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in entries:
        if not _ADDR_RE.match(name):
            continue
        out.append(read_function(os.path.join(sysfs_root, name), strict=strict))
    out.sort(key=lambda f: f.address)
    return out


def find_gpus(sysfs_root: str = SYSFS_PCI_DEVICES, *, nvidia_only: bool = False
              ) -> list[PciFunction]:
    """Display-class functions (VGA / 3D controllers) and known NVIDIA GPU ids.

    >>> [g.name for g in find_gpus(nvidia_only=True)]   # doctest: +SKIP
    ['NVIDIA H200 SXM 141GB']
    """
    fns = list_functions(sysfs_root)
    if nvidia_only:
        return [f for f in fns if f.is_nvidia_gpu]
    return [f for f in fns if f.is_display or f.is_nvidia_gpu]


# ---------------------------------------------------------------------------------------------
# Text listing
# ---------------------------------------------------------------------------------------------
def _fmt_size(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _fmt_link(speed: float | None, width: int | None) -> str:
    s = f"{speed:g} GT/s" if speed is not None else "? GT/s"
    return s + (f" x{width}" if width else "")


def lspci_like(functions: list[PciFunction] | None = None, *, verbose: bool = False,
               sysfs_root: str = SYSFS_PCI_DEVICES) -> str:
    """An ``lspci``-style listing, one line per function (``verbose`` adds BARs, capabilities).

    >>> print(lspci_like())                              # doctest: +SKIP
    0000:00:02.0 Mass storage controller [0180]: virtio block (modern) [1af4:1042] (rev 01) ...
    """
    if functions is None:
        functions = list_functions(sysfs_root)
    lines: list[str] = []
    for f in functions:
        head = (f"{f.address} {f.class_name} [{f.class_code >> 8:04x}]: {f.name} "
                f"[{f.vendor:04x}:{f.device:04x}] (rev {f.revision:02x})")
        if f.driver:
            head += f" driver={f.driver}"
        lines.append(head)
        if not verbose:
            continue
        if f.subsystem_vendor is not None:
            lines.append(f"\tSubsystem: [{f.subsystem_vendor:04x}:{f.subsystem_device or 0:04x}]")
        numa = "-" if f.numa_node is None else str(f.numa_node)
        irq = "-" if f.irq is None else str(f.irq)
        lines.append(f"\tNUMA node: {numa}, IRQ: {irq}, config: {f.config_length} bytes")
        for b in f.bars:
            lines.append(f"\tBAR{b.index}: {b.describe()}")
        if f.rom is not None:
            lines.append(f"\tExpansion ROM at {f.rom.address:#x} [size={_fmt_size(f.rom.size or 0)}]")
        if f.link_speed_gts is not None or f.max_link_speed_gts is not None:
            lines.append(f"\tLink: {_fmt_link(f.link_speed_gts, f.link_width)} "
                         f"(max {_fmt_link(f.max_link_speed_gts, f.max_link_width)})")
        for c in f.capabilities:
            lines.append(f"\tCapabilities: [{c.offset:02x}] {c.describe()}")
        for c in f.ext_capabilities:
            lines.append(f"\tCapabilities: [{c.offset:03x} v{c.version}] {c.describe()}")
        if f.virtio is not None:
            lines.append(f"\tvirtio: type {f.virtio.device_type} ({f.virtio.type_name}), "
                         f"{'transitional' if f.virtio.transitional else 'modern'}")
        for note in f.notes:
            lines.append(f"\tNote: {note}")
        if f.config_error:
            lines.append(f"\tError: {f.config_error}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual listing
    import sys

    print(lspci_like(verbose="-v" in sys.argv[1:]))
