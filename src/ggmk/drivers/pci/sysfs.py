"""sysfs: a function's attributes, ``resource`` and ``config`` files (``read_function``), and
the walk over ``/sys/bus/pci/devices`` (``list_functions``, ``find_gpus``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ggmk.drivers.pci import ids
from ggmk.drivers.pci.config import CFG_SPACE_EXP_SIZE, parse_config
from ggmk.drivers.pci.records import (_ADDR_RE, Bar, Capability, ConfigSpace, PciAddress,
                                      PciParseError, VirtioInfo, VirtioPciCap,
                                      _CapabilityShortcuts)

SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"

# sysfs resource flags (include/linux/ioport.h)
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000


# ---------------------------------------------------------------------------------------------
# sysfs
# ---------------------------------------------------------------------------------------------
def parse_resource(text: str) -> list[tuple[int, int, int]]:
    """Parse a sysfs ``resource`` file: one ``start end flags`` line (hex) per resource.

    Lines 0-5 are the BARs, line 6 the expansion ROM, later lines bridge windows or SR-IOV BARs.

    >>> parse_resource("0x0000004000000000 0x000000400007ffff 0x0000000000140204\\n")
    [(274877906944, 274878431231, 1311236)]
    """
    out, problems = _parse_resource_lines(text)
    if problems:
        raise PciParseError(problems[0])
    return out


def _parse_resource_lines(text: str) -> tuple[list[tuple[int, int, int]], list[str]]:
    """``parse_resource`` that keeps going: a bad line becomes (0, 0, 0) (an unsized resource,
    so the line numbers of the others still match their BARs) plus a problem message."""
    out: list[tuple[int, int, int]] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            problems.append(f"sysfs resource line {lineno}: want 'start end flags', "
                            f"got {line!r}")
            out.append((0, 0, 0))
            continue
        try:
            out.append(tuple(int(p, 16) for p in parts))  # type: ignore[arg-type]
        except ValueError:
            problems.append(f"sysfs resource line {lineno}: not hex: {line!r}")
            out.append((0, 0, 0))
    return out, problems


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


def _read_text(path: str, notes: list[str] | None = None) -> str | None:
    """The stripped text of a sysfs attribute; None when missing or unreadable. A file that is
    not UTF-8 text counts as unreadable (and, given ``notes``, says so there)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        if notes is not None:
            notes.append(f"{os.path.basename(path)}: not text (undecodable bytes {data[:16]!r}),"
                         f" ignored")
        return None


def _read_int(path: str, base: int = 0, notes: list[str] | None = None) -> int | None:
    """A sysfs attribute as an int; None when missing, unreadable or not a number (given
    ``notes``, the last two say so there: a garbage vendor file became vendor 0xffff)."""
    text = _read_text(path, notes)
    if text is None or text == "":
        return None
    try:
        return int(text, base)
    except ValueError:
        if notes is not None:
            notes.append(f"{os.path.basename(path)}: {text[:32]!r} is not a number, ignored")
        return None


# sysfs id attributes and how many bits the PCI field holds
_ID_BITS = {"vendor": 16, "device": 16, "subsystem_vendor": 16, "subsystem_device": 16,
            "class_code": 24, "revision": 8}


def _fmt_id(value: int | None, bits: int) -> str:
    """An id as lspci shows it (zero-padded hex); an out-of-range value as read (``-0x1``)."""
    if value is None:
        return "-"
    if 0 <= value < (1 << bits):
        return f"{value:0{bits // 4}x}"
    return hex(value)


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
    (``list_functions(strict=True)`` raises instead); ``notes`` say what else was odd (config
    space unreadable or short, a bad ``resource`` line, an attribute that is not text or not a
    number, an id out of range - kept as read). ``responding`` is False when config space reads
    vendor id 0xffff: nothing answers at the address (the device fell off the bus, is powered
    down or in reset); its ids and class are then sysfs's, cached from before.
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
    responding: bool = True

    # -- names ------------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        if not 0 <= self.class_code <= 0xFFFFFF:
            return f"Invalid class {self.class_code:#x}"
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
            "responding": self.responding,
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
                  resources: list[tuple[int, int, int]], s: dict,
                  sysfs_notes: list[str] | None = None) -> "PciFunction":
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
        responding = s.get("responding", True)
        if not responding:
            notes.append("not responding: config space reads vendor id 0xffff (the device fell "
                         "off the bus, is powered down or in reset)")
        elif error:
            notes.append(f"config space malformed: {error}")
        notes.extend(sysfs_notes or ())
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
            notes=tuple(notes), responding=responding)


def read_function(path: str, *, strict: bool = False) -> PciFunction:
    """Read one function from its sysfs directory (``/sys/bus/pci/devices/0000:00:01.0``).

    With ``strict`` a malformed config space, ``resource`` file or directory name raises
    :class:`PciParseError`. Otherwise the function is still returned: a malformed config space
    sets ``config_error`` (ids, driver, BAR sizes come from sysfs); an unreadable one leaves
    ``config`` None with a "config space unreadable" note; a malformed ``resource`` line, an
    attribute that is not text or not a number, an id out of range (class 24 bits, ids 16,
    revision 8 - kept as read) or a device number above 0x1f in the name become ``notes``; a
    config space that reads vendor id 0xffff sets ``responding`` False, with a note.
    """
    name = os.path.basename(os.path.normpath(path))
    notes: list[str] = []
    try:
        addr = PciAddress.parse(name)
    except PciParseError as exc:
        m = _ADDR_RE.match(name.strip())
        if strict or not m:
            raise
        # the name has the sysfs shape but a device number above 0x1f: keep it as read
        addr = PciAddress(*(int(g, 16) for g in m.groups()))
        notes.append(str(exc))
    j = lambda name: os.path.join(path, name)  # noqa: E731
    s: dict = {"sysfs_path": path}
    for key, fname in (("vendor", "vendor"), ("device", "device"),
                       ("subsystem_vendor", "subsystem_vendor"),
                       ("subsystem_device", "subsystem_device"), ("class_code", "class"),
                       ("revision", "revision")):
        v = _read_int(j(fname), 16, notes)
        bits = _ID_BITS[key]
        if v is not None and not 0 <= v < (1 << bits):
            notes.append(f"{fname} {v:#x} out of range ({bits} bits), shown as read")
        s[key] = v
    s["irq"] = _read_int(j("irq"), 10, notes)
    numa = _read_int(j("numa_node"), 10, notes)
    s["numa_node"] = numa if numa is not None and numa >= 0 else None
    s["driver"] = _link_name(j("driver"))
    group = _link_name(j("iommu_group"))
    s["iommu_group"] = int(group) if group and group.isdigit() else None
    s["link_speed_gts"] = _parse_speed(_read_text(j("current_link_speed")))
    s["max_link_speed_gts"] = _parse_speed(_read_text(j("max_link_speed")))
    for key, fname in (("link_width", "current_link_width"), ("max_link_width", "max_link_width")):
        w = _read_int(j(fname), 10)
        if w is not None and w < 0:     # was listed as "x-4"
            notes.append(f"{fname}: {w} is not a link width, ignored")
            w = None
        s[key] = w if w else None  # 0 = no link trained

    resources: list[tuple[int, int, int]] = []
    res_text = _read_text(j("resource"), notes)
    if res_text:
        resources, problems = _parse_resource_lines(res_text)
        if problems and strict:
            raise PciParseError(f"{addr}: {problems[0]}")
        notes.extend(problems)

    cs: ConfigSpace | None = None
    error: str | None = None
    try:
        with open(j("config"), "rb") as f:
            raw = f.read(CFG_SPACE_EXP_SIZE)
    except OSError as exc:
        raw = b""
        notes.append(f"config space unreadable: {j('config')}: {exc.strerror or exc}")
    if raw:
        s["config_length"] = len(raw)
        s["responding"] = raw[:2] != b"\xff\xff"
        try:
            cs = parse_config(raw)
        except PciParseError as exc:
            if strict:
                raise PciParseError(f"{addr}: {exc}", exc.offset) from exc
            error = str(exc)
    return PciFunction._assemble(addr, cs, error, resources, s, notes)


def list_functions(sysfs_root: str = SYSFS_PCI_DEVICES, *, strict: bool = False
                   ) -> list[PciFunction]:
    """Every PCI function under ``sysfs_root``, sorted by address; [] when there is none.

    Non-strict (the default), one odd function does not stop the walk: what is wrong with it is
    in its ``notes`` / ``config_error`` (see :func:`read_function`). An entry that is not a
    directory (a plain file, a broken link) is no function and is skipped.

    >>> [str(f.address) for f in list_functions()]      # doctest: +SKIP
    ['0000:00:00.0', '0000:00:01.0', '0000:00:02.0']
    """
    try:
        entries = os.listdir(sysfs_root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in entries:
        path = os.path.join(sysfs_root, name)
        # (a plain file or a broken link named like an address was listed as [ffff:ffff])
        if not _ADDR_RE.match(name) or not os.path.isdir(path):
            continue
        out.append(read_function(path, strict=strict))
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
