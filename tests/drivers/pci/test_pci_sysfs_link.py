"""A negative link width in sysfs (a garbled ``current_link_width``) is not listed as "x-4": it
is ignored with a note, and the width then comes from config space when that has it; gpu_drv's
discovery (what ``ggmk hw`` shows) agrees."""
from __future__ import annotations

from ggmk.drivers import gpu, pci

from pci_helpers import built_nvidia_config


def _gpu_dir(tmp_path, **attrs):
    root = tmp_path / "devices"
    d = root / "0000:41:00.0"
    d.mkdir(parents=True)
    base = {"vendor": "0x10de", "device": "0x2335", "class": "0x030200",
            "current_link_speed": "16.0 GT/s PCIe", "max_link_speed": "32.0 GT/s PCIe"}
    for k, v in {**base, **attrs}.items():
        (d / k).write_text(v + "\n")
    return root, d


def test_negative_width_falls_back_to_config_space_with_a_note(tmp_path):
    root, d = _gpu_dir(tmp_path, current_link_width="-4", max_link_width="-16")
    (d / "config").write_bytes(built_nvidia_config())          # LnkSta / LnkCap: x16
    (fn,) = pci.list_functions(str(root))
    assert (fn.link_width, fn.max_link_width) == (16, 16)
    assert "current_link_width: -4 is not a link width, ignored" in fn.notes
    assert "max_link_width: -16 is not a link width, ignored" in fn.notes
    assert "x-" not in pci.lspci_like([fn], verbose=True)


def test_negative_width_without_config_space_is_unknown(tmp_path):
    root, _ = _gpu_dir(tmp_path, current_link_width="-4")
    (fn,) = pci.list_functions(str(root))
    assert fn.link_width is None
    assert "x-4" not in pci.lspci_like([fn], verbose=True)
    (g,) = gpu.discover(str(root), nvml=None, module_root=str(tmp_path),
                        proc_root=str(tmp_path)).gpus
    assert g.link["width"] is None and g.link["speed_gts"] == 16.0
    with gpu.GpuDriver(backend="cpu", sysfs_root=str(root), nvml=None, display=None) as drv:
        assert "x-4" not in gpu.format_info(drv.info())
