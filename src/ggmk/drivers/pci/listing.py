"""The ``lspci``-like text listing."""
from __future__ import annotations

from ggmk.drivers.pci.records import _fmt_link, _fmt_size
from ggmk.drivers.pci.sysfs import SYSFS_PCI_DEVICES, PciFunction, _fmt_id, list_functions


# ---------------------------------------------------------------------------------------------
# Text listing
# ---------------------------------------------------------------------------------------------
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
        cls = (f"{f.class_code >> 8:04x}" if 0 <= f.class_code <= 0xFFFFFF
               else _fmt_id(f.class_code, 24))   # out of range: as read (a note says so)
        head = (f"{f.address} {f.class_name} [{cls}]: {f.name} "
                f"[{_fmt_id(f.vendor, 16)}:{_fmt_id(f.device, 16)}] "
                f"(rev {_fmt_id(f.revision, 8)})")
        if f.driver:
            head += f" driver={f.driver}"
        lines.append(head)
        if not verbose:
            continue
        if f.subsystem_vendor is not None:
            lines.append(f"\tSubsystem: [{_fmt_id(f.subsystem_vendor, 16)}:"
                         f"{_fmt_id(f.subsystem_device or 0, 16)}]")
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
