"""Config-space parsing: the header, BARs, the capability list and the extended capability
list, every walk bounded (``parse_config``)."""
from __future__ import annotations

import struct

from ggmk.drivers.pci import ids
from ggmk.drivers.pci.records import (Bar, Capability, ConfigSpace, Msi, MsiX, PciExpress,
                                      PciParseError, PowerManagement, VirtioInfo, VirtioPciCap)

HEADER_SIZE = 0x40          # the standard header every function has; unprivileged reads stop here
CFG_SPACE_SIZE = 0x100      # conventional PCI config space
CFG_SPACE_EXP_SIZE = 0x1000  # PCI Express extended config space

# Upper bounds on the walks. Loop detection already guarantees termination (each aligned offset
# is visited once); these are a second, independent guard.
MAX_CAPABILITIES = (CFG_SPACE_SIZE - HEADER_SIZE) // 4          # 48
MAX_EXT_CAPABILITIES = (CFG_SPACE_EXP_SIZE - CFG_SPACE_SIZE) // 4  # 960

STATUS_CAP_LIST = 0x10


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
