"""The text form of :meth:`GpuDriver.info` (the ``gpu_drv`` section of ``ggmk hw``)."""
from __future__ import annotations


def _size(n) -> str:
    if n is None:
        return "unknown"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _src(d: dict, fact: str) -> str:
    s = d.get("sources", {}).get(fact)
    return f" [{s}]" if s else ""


def _link(link: dict) -> str:
    def one(speed, width):
        if speed is None and width is None:
            return "?"
        return f"{'?' if speed is None else f'{speed:g} GT/s'} x{'?' if width is None else width}"
    return f"{one(link.get('speed_gts'), link.get('width'))} (max " \
           f"{one(link.get('max_speed_gts'), link.get('max_width'))})"


def format_info(info: dict) -> str:
    """Indented lines: backend, device, GPUs with each fact's source, NVML, displays, config."""
    dev = info.get("device", {})
    lines = ["gpu_drv:",
             f"  backend: {info['backend']} (kernel target {info['kernel_target']}): "
             f"{info['backend_reason']}",
             f"  device: {dev.get('name')}{_src(dev, 'name')}, memory "
             f"{_size(dev.get('memory_total'))}{_src(dev, 'memory_total')}"]
    gpus = info.get("gpus", [])
    if not gpus:
        lines.append("  GPUs: none found")
    for g in gpus:
        ids = "" if g.get("device_id") is None else \
            f" [{g.get('vendor_id') or 0:04x}:{g['device_id']:04x}]{_src(g, 'device_id')}"
        lines.append(f"  GPU {g['index']}: {g.get('name')}{_src(g, 'name')} at "
                     f"{g.get('pci_bus_id')}{_src(g, 'pci_bus_id')}{ids}")
        lines.append(f"    memory {_size(g.get('memory_total'))}{_src(g, 'memory_total')}, "
                     f"link {_link(g.get('link') or {})}{_src(g, 'link')}, driver "
                     f"{g.get('driver_version') or 'unknown'}{_src(g, 'driver_version')}"
                     + (f" ({g['kernel_driver']})" if g.get("kernel_driver") else ""))
        for n in g.get("notes", ()):
            lines.append(f"    note: {n}")
    nv = info.get("nvml", {})
    lines.append("  NVML: " + (f"used (driver {nv.get('driver_version')}, "
                                f"{nv.get('devices')} devices)" if nv.get("used")
                                else (nv.get("why_not") or "not used")))
    for v in info.get("virtio_gpus", ()):
        lines.append(f"  virtio-gpu PCI function: {v['pci_bus_id']} {v['name']}")
    ds = info.get("displays")
    if ds is not None:
        if ds:
            for d in ds:
                lines.append(f"  display {d['id']}: mode {d['mode']} (preferred {d['preferred']})")
        else:
            lines.append(f"  displays: none ({info.get('display_note') or 'no virtio-gpu device'})")
    c = info.get("config", {})
    if c:
        lines.append(f"  config: memory_reservation={_size(c['memory_reservation'])} "
                     f"command_timeout_ms={c['command_timeout_ms']:g} payload pool "
                     f"{c['payload_slots']} x {c['payload_slot_size']} B "
                     f"compute={'on' if c['enable_compute'] else 'off'} "
                     f"display={'on' if c['enable_display'] else 'off'}")
    return "\n".join(lines)
