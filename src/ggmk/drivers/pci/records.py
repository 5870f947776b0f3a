"""PCI records: an address, BARs, capabilities (and their decoded forms), virtio's windows,
a decoded config space; and the error malformed config space raises."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ggmk.drivers.pci import ids
from ggmk.errors import GgmkError


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



def _fmt_size(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _fmt_link(speed: float | None, width: int | None) -> str:
    s = f"{speed:g} GT/s" if speed is not None else "? GT/s"
    return s + (f" x{width}" if width else "")
