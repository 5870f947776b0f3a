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

A package, one module per concept: ``records`` (addresses, BARs, capabilities, the decoded
config space, ``PciParseError``), ``config`` (config-space parsing), ``sysfs`` (``PciFunction``,
reading sysfs, ``list_functions``, ``find_gpus``), ``listing`` (``lspci_like``) and ``ids`` (the
name tables, also importable as ``ggmk.drivers.pci_ids``). Everything is importable from
``ggmk.drivers.pci`` itself.
"""
from __future__ import annotations

from ggmk.drivers.pci import ids  # noqa: F401
from ggmk.drivers.pci.records import (  # noqa: F401
    Bar, Capability, ConfigSpace, Msi, MsiX, PciAddress, PciExpress, PciParseError,
    PowerManagement, VirtioInfo, VirtioPciCap,
)
from ggmk.drivers.pci.config import (  # noqa: F401
    CFG_SPACE_EXP_SIZE, CFG_SPACE_SIZE, HEADER_SIZE, MAX_CAPABILITIES, MAX_EXT_CAPABILITIES,
    STATUS_CAP_LIST, parse_config,
)
from ggmk.drivers.pci.sysfs import (  # noqa: F401
    IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_MEM_64, IORESOURCE_PREFETCH, SYSFS_PCI_DEVICES,
    PciFunction, find_gpus, list_functions, parse_resource, read_function,
)
from ggmk.drivers.pci.listing import lspci_like  # noqa: F401

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
