"""``python -m ggmk.drivers.pci [-v]``: an lspci-like listing of this machine."""
import sys

from ggmk.drivers.pci.listing import lspci_like

if __name__ == "__main__":  # pragma: no cover - manual listing
    print(lspci_like(verbose="-v" in sys.argv[1:]))
