"""ggmk.scaffold.new_module: generate into tmp_path, run the generated test in a subprocess."""
from __future__ import annotations

import importlib.util
import os
import py_compile
import tomllib

import pytest

from ggmk import scaffold
from ggmk.testing import run_module_tests


def test_cpu_module_generated_test_passes(tmp_path):
    d = scaffold.new_module("greeter", "cpu", tmp_path)
    assert sorted(os.listdir(d)) == ["greeter.py", "module.toml", "test_greeter.py", "types.toml"]
    types = tomllib.loads((d / "types.toml").read_text())["types"]
    base = scaffold.type_base("greeter")
    assert types["GREETER_REQ"]["id"] == base and 0x1000 <= base < 0x4000
    rc, out = run_module_tests(d)
    assert rc == 0, out
    assert "2 passed" in out


def test_the_relative_path_ggmk_new_prints_runs_the_test(tmp_path, monkeypatch):
    """`ggmk new widget` says "run its test: ggmk test widget"; that ran pytest on
    widget/widget from inside widget (no tests ran, exit 4)."""
    scaffold.new_module("widget", "cpu", tmp_path)
    monkeypatch.chdir(tmp_path)
    rc, out = run_module_tests("widget")
    assert rc == 0, out
    assert "2 passed" in out


def test_gpu_module_is_generated_and_compiles_as_python(tmp_path):
    d = scaffold.new_module("dbl", "gpu", tmp_path)
    assert sorted(os.listdir(d)) == ["dbl.py", "module.toml", "test_dbl.py", "types.toml"]
    for f in ("dbl.py", "test_dbl.py"):
        py_compile.compile(str(d / f), doraise=True)
    assert "numeric subset" in (d / "dbl.py").read_text()


def _import_generated(d, name):
    spec = importlib.util.spec_from_file_location(f"{name}_{id(d)}", d / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_module_takes_its_ids_from_types_toml_and_its_channels_from_module_toml(tmp_path):
    """The scaffold says to change clashing ids in types.toml; the generated GPU module had
    them written into its source and never read the file (nor had channels or a manifest)."""
    d = scaffold.new_module("dbl", "gpu", tmp_path)
    man = tomllib.loads((d / "module.toml").read_text())
    assert [c["name"] for c in man["channel"]] == ["dbl.in", "dbl.out"]
    text = (d / "types.toml").read_text()
    base = scaffold.type_base("dbl")
    (d / "types.toml").write_text(text.replace(f"id = {base}\n", "id = 4001\n")
                                  .replace(f"id = {base + 1}\n", "id = 4002\n"))
    m = _import_generated(d, "dbl")
    assert (m.REQ, m.OUT) == (4001, 4002)
    mod = m.module()
    assert mod.name == "dbl"
    (h,) = mod.handlers
    assert h.type == 4001 and h.consumes == ("dbl.in",)
    assert [(c.name, c.message) for c in mod.channels] == [("dbl.out", 4002)]


@pytest.mark.skipif(not os.environ.get("GGMK_LONG"), reason="compiles a device kernel "
                    "(1-2 min); GGMK_LONG=1 runs it")
def test_gpu_module_generated_test_passes(tmp_path):
    d = scaffold.new_module("dbl", "gpu", tmp_path)
    rc, out = run_module_tests(d, timeout=900)
    assert rc == 0, out


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="lowercase"):
        scaffold.new_module("Bad-Name", "cpu", tmp_path)
    with pytest.raises(ValueError, match="target must be"):
        scaffold.new_module("ok", "fpga", tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        scaffold.new_module("ggmk", "cpu", tmp_path)
    scaffold.new_module("twice", "cpu", tmp_path)
    with pytest.raises(FileExistsError, match="not overwriting"):
        scaffold.new_module("twice", "cpu", tmp_path)


def test_run_module_tests_reports_a_failure(tmp_path):
    d = scaffold.new_module("broken", "cpu", tmp_path)
    src = (d / "broken.py").read_text().replace("2 * ctx.task.meta0", "3 * ctx.task.meta0")
    (d / "broken.py").write_text(src)
    rc, out = run_module_tests(d)
    assert rc != 0 and "failed" in out


@pytest.mark.parametrize("name,why", [("class", "keyword"), ("import", "keyword"),
                                      ("queue", "standard library"),
                                      ("json", "standard library"),
                                      ("numpy", "installed module")])
def test_names_python_cannot_import_are_refused(tmp_path, name, why):
    """`ggmk new class` wrote a module whose test fails with a SyntaxError; `ggmk new queue`
    one whose `import queue` finds the standard library's (module() missing)."""
    with pytest.raises(ValueError, match=f"module name {name!r}.*{why}"):
        scaffold.new_module(name, "cpu", tmp_path)
    assert list(tmp_path.iterdir()) == []
