"""GPU discovery: what is there, and where each fact came from.

PCI facts (bus id, vendor/device id, product name, PCIe link, bound kernel driver) come from
``ggmk.drivers.pci`` (sysfs and config space); NVML (``nvidia-ml-py``, imported lazily) adds
what PCI cannot tell (memory, driver version, UUID) and wins where both know a fact (NVML's name
and negotiated link). Without NVML the driver version comes from ``/sys/module/nvidia/version``
or ``/proc/driver/nvidia/version``. ``GpuInfo.sources`` maps each fact to ``"nvml"``,
``"pci"``, ``"sysfs"`` or ``"procfs"``; ``notes`` say why a source was not used.

>>> d = discover()                          # doctest: +SKIP
>>> [(g.name, g.pci_bus_id, g.sources["memory_total"]) for g in d.gpus]   # doctest: +SKIP
[('NVIDIA H200', '0000:41:00.0', 'nvml')]
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ggmk.drivers.pci import PciAddress, PciParseError, find_gpus, list_functions

SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"
PCIE_GEN_GTS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0, 7: 128.0}
VIRTIO_GPU_TYPE = 16


@dataclass
class GpuInfo:
    """One GPU as gpu_drv found it. ``link``: speed_gts, width, max_speed_gts, max_width."""

    index: int
    name: str | None = None
    pci_bus_id: str | None = None
    vendor_id: int | None = None
    device_id: int | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    link: dict = field(default_factory=dict)
    kernel_driver: str | None = None
    driver_version: str | None = None
    uuid: str | None = None
    sources: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def set(self, fact: str, value, source: str) -> None:
        if value is None:
            return
        setattr(self, fact, value)
        self.sources[fact] = source

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "pci_bus_id": self.pci_bus_id,
                "vendor_id": self.vendor_id, "device_id": self.device_id,
                "memory_total": self.memory_total, "memory_free": self.memory_free,
                "link": dict(self.link), "kernel_driver": self.kernel_driver,
                "driver_version": self.driver_version, "uuid": self.uuid,
                "sources": dict(self.sources), "notes": list(self.notes)}


@dataclass
class Discovery:
    """Everything discovery found: NVIDIA GPUs, virtio-gpu PCI functions, NVML's state."""

    gpus: list
    virtio_gpus: list
    nvml: dict
    notes: list

    def to_dict(self) -> dict:
        return {"gpus": [g.to_dict() for g in self.gpus], "virtio_gpus": list(self.virtio_gpus),
                "nvml": dict(self.nvml), "notes": list(self.notes)}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _bus_id(text) -> str | None:
    try:
        return str(PciAddress.parse(_text(text).lower()))
    except (PciParseError, ValueError):
        return None


def _load_nvml(nvml):
    """(module or None, why not)."""
    if nvml is None or nvml is False:
        return None, "NVML not used (disabled)"
    if nvml == "auto":
        try:
            import pynvml as nvml           # nvidia-ml-py; imported only here
        except ImportError:
            return None, "NVML not used: pynvml (nvidia-ml-py) is not installed"
    try:
        nvml.nvmlInit()
    except Exception as e:                  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML not used: nvmlInit failed: {type(e).__name__}: {e}"
    return nvml, None


def _nvml_devices(nvml, notes: list) -> tuple[list[dict], str | None]:
    devs, driver = [], None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception as e:
        notes.append(f"NVML driver version failed: {e}")
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as e:
        notes.append(f"NVML device count failed: {e}")
        return [], driver
    for i in range(count):
        d: dict = {"index": i, "errors": []}

        def q(key, fn):
            try:
                d[key] = fn()
            except Exception as e:      # one query failing (NotSupported) loses only that fact
                d["errors"].append(f"{key}: {type(e).__name__}: {e}")
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
        except Exception as e:
            notes.append(f"NVML device {i}: handle failed: {e}")
            continue
        q("name", lambda: _text(nvml.nvmlDeviceGetName(h)))
        q("pci", lambda: nvml.nvmlDeviceGetPciInfo(h))
        q("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        q("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(h)))
        q("gen", lambda: int(nvml.nvmlDeviceGetCurrPcieLinkGeneration(h)))
        q("width", lambda: int(nvml.nvmlDeviceGetCurrPcieLinkWidth(h)))
        q("max_gen", lambda: int(nvml.nvmlDeviceGetMaxPcieLinkGeneration(h)))
        q("max_width", lambda: int(nvml.nvmlDeviceGetMaxPcieLinkWidth(h)))
        devs.append(d)
    return devs, driver


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def os_driver_version(module_root: str = "/sys/module", proc_root: str = "/proc"):
    """(version, source) of the loaded NVIDIA kernel module, or (None, None)."""
    v = _read(os.path.join(module_root, "nvidia", "version"))
    if v and v.strip():
        return v.strip(), "sysfs"
    v = _read(os.path.join(proc_root, "driver", "nvidia", "version"))
    if v:
        m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+([0-9][0-9.]*)", v)
        if m:
            return m.group(1), "procfs"
    return None, None


def discover(sysfs_root: str = SYSFS_PCI_DEVICES, *, nvml="auto", module_root: str = "/sys/module",
             proc_root: str = "/proc") -> Discovery:
    """Find the NVIDIA GPUs (PCI, then NVML on top) and the virtio-gpu PCI functions.

    ``nvml``: ``"auto"`` (import ``pynvml`` if installed), ``None`` (do not use NVML) or an
    NVML-like module (its ``nvmlInit``, ``nvmlDeviceGet*`` functions). NVML failing or absent is
    not an error: the facts PCI and the OS know are still reported, with their sources."""
    notes: list[str] = []
    pci_gpus = find_gpus(sysfs_root, nvidia_only=True)
    virtio = [{"pci_bus_id": str(f.address), "name": f.name, "driver": f.driver}
              for f in list_functions(sysfs_root)
              if f.virtio is not None and f.virtio.device_type == VIRTIO_GPU_TYPE]
    mod, why = _load_nvml(nvml)
    nv_devs, nv_driver = [], None
    if mod is not None:
        try:
            nv_devs, nv_driver = _nvml_devices(mod, notes)
        finally:
            try:
                mod.nvmlShutdown()
            except Exception:
                pass
    nvml_state = {"used": mod is not None, "why_not": why, "driver_version": nv_driver,
                  "devices": len(nv_devs)}
    os_ver, os_src = os_driver_version(module_root, proc_root)

    by_bus = {}
    for d in nv_devs:
        pci = d.get("pci")
        bus = _bus_id(getattr(pci, "busId", "")) if pci is not None else None
        d["bus"] = bus
        if bus:
            by_bus[bus] = d
    gpus: list[GpuInfo] = []
    used = set()
    for f in pci_gpus:
        g = GpuInfo(index=len(gpus))
        bus = str(f.address)
        g.set("pci_bus_id", bus, "pci")
        g.set("vendor_id", f.vendor, "pci")
        g.set("device_id", f.device, "pci")
        g.set("name", f.name, "pci")
        g.set("kernel_driver", f.driver, "pci")
        if not getattr(f, "responding", True):
            g.notes.append("not responding: config space reads vendor id 0xffff (fallen off "
                           "the bus?); the facts above are sysfs's cached ones")
        link = {"speed_gts": f.link_speed_gts, "width": f.link_width,
                "max_speed_gts": f.max_link_speed_gts, "max_width": f.max_link_width}
        if any(v is not None for v in link.values()):
            g.set("link", link, "pci")
        d = by_bus.get(bus)
        if d is not None:
            used.add(id(d))
            _apply_nvml(g, d, nv_driver)
        elif mod is not None:
            g.notes.append(f"NVML does not list {bus}")
        gpus.append(g)
    for d in nv_devs:                       # NVML devices sysfs did not show (containers)
        if id(d) in used:
            continue
        g = GpuInfo(index=len(gpus))
        _apply_nvml(g, d, nv_driver)
        g.notes.append("not found in PCI sysfs; NVML facts only")
        gpus.append(g)
    for g in gpus:
        if g.driver_version is None and os_ver is not None:
            g.set("driver_version", os_ver, os_src)
        if g.memory_total is None:
            g.notes.append("memory unknown: needs NVML (PCI BARs do not give the memory size)"
                           + (f"; {why}" if why else ""))
    if why:
        notes.append(why)
    return Discovery(gpus=gpus, virtio_gpus=virtio, nvml=nvml_state, notes=notes)


def _apply_nvml(g: GpuInfo, d: dict, driver: str | None) -> None:
    g.set("name", d.get("name"), "nvml")
    if d.get("bus"):
        g.set("pci_bus_id", d["bus"], "nvml")
    pci = d.get("pci")
    dev_word = getattr(pci, "pciDeviceId", None) if pci is not None else None
    if dev_word is not None:
        g.set("vendor_id", int(dev_word) & 0xFFFF, "nvml")
        g.set("device_id", (int(dev_word) >> 16) & 0xFFFF, "nvml")
    mem = d.get("memory")
    if mem is not None:
        g.set("memory_total", int(mem.total), "nvml")
        g.set("memory_free", int(mem.free), "nvml")
    g.set("uuid", d.get("uuid"), "nvml")
    if d.get("gen") is not None or d.get("width") is not None:
        g.set("link", {"speed_gts": PCIE_GEN_GTS.get(d.get("gen")), "width": d.get("width"),
                       "max_speed_gts": PCIE_GEN_GTS.get(d.get("max_gen")),
                       "max_width": d.get("max_width")}, "nvml")
    g.set("driver_version", driver, "nvml")
    for e in d.get("errors", ()):
        g.notes.append(f"NVML {e}")


def host_info(proc_root: str = "/proc") -> dict:
    """What the ``cpu`` backend runs on: the host CPU and its memory (from procfs)."""
    name, mem = None, None
    cpu = _read(os.path.join(proc_root, "cpuinfo")) or ""
    m = re.search(r"^model name\s*:\s*(.+)$", cpu, re.MULTILINE)
    if m:
        name = m.group(1).strip()
    meminfo = _read(os.path.join(proc_root, "meminfo")) or ""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.MULTILINE)
    if m:
        mem = int(m.group(1)) * 1024
    return {"name": f"host CPU ({name})" if name else "host CPU", "memory_total": mem,
            "sources": {"name": "procfs", "memory_total": "procfs"} if mem else {"name": "procfs"},
            "cpus": os.cpu_count()}
