"""The PCI name tables, now ``ggmk.drivers.pci.ids``; this name stays importable and is that
very module (``from ggmk.drivers import pci_ids`` gives ``ggmk.drivers.pci.ids``)."""
import sys

from ggmk.drivers.pci import ids as _ids

sys.modules[__name__] = _ids
