"""``ggmk.device.codegen.compiler``: the whole source written to the cache under its key and
executed with the target's namespace. ``build`` compiles nothing yet on ``cpu`` (Numba compiles
at the first call or launch), so these checks are fast."""
import sys

import ggmk.device as gd
from ggmk.device import layout
from ggmk.device.codegen import compiler, resolve
from ggmk.device.targets import get_target


def _h(ctx, task):
    return 0


def _built(tmp_path, monkeypatch, blocks=2):
    monkeypatch.setenv("GGMK_CACHE_DIR", str(tmp_path))
    m = gd.Module("comp")
    m.handler(21)(_h)
    hs = resolve.resolve_handlers([m])
    plan = layout.plan(layout.DeviceConfig(blocks=blocks).validate(), 1, 1)
    return compiler.build(hs, plan, get_target("cpu"))


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GGMK_CACHE_DIR", str(tmp_path))
    assert compiler.cache_dir() == tmp_path
    monkeypatch.delenv("GGMK_CACHE_DIR")
    assert compiler.cache_dir().parts[-2:] == (".cache", "ggmk")


def test_source_is_written_under_its_key_and_built_once(tmp_path, monkeypatch):
    b = _built(tmp_path, monkeypatch)
    cpu = get_target("cpu")
    assert b.path.parent == tmp_path / "kernels" / "cpu" / b.key
    assert b.path.name == f"ggmk_kernel_cpu_{b.key}.py" and b.path.read_text() == b.source
    assert b.source.startswith(cpu.PRIM_SRC)
    assert (compiler.SRC_DIR / "kernel_src.py").read_text() in b.source
    assert b.ns["C_DOORBELL"] == cpu.C_DOORBELL            # the target's own constants
    assert b.ns["NB"] == 2 and "h_0" in b.ns and b.kernel is not None
    assert sys.modules[f"ggmk_kernel_cpu_{b.key}"]._ggmk_built is b
    assert _built(tmp_path, monkeypatch) is b              # same key: the same build


def test_the_key_follows_the_configuration(tmp_path, monkeypatch):
    assert _built(tmp_path, monkeypatch, 2).key != _built(tmp_path, monkeypatch, 3).key
