"""Every standard module's docstring example runs (on real threads, workers=2)."""
from __future__ import annotations

import importlib
import os
import re
import textwrap

import pytest

MODULES = ["ggmk.modules." + m for m in
           ("kv", "echo", "reduce", "timer", "log", "gate", "stats", "nic")] \
    + ["ggmk.sdk", "ggmk.testing", "ggmk.scaffold"]


def example(modname: str) -> str:
    doc = importlib.import_module(modname).__doc__
    m = re.search(r"Example[^\n]*::\n", doc)
    assert m, f"{modname}: no runnable example in the docstring"
    body = doc[m.end() - 1:]
    lines = []
    for ln in body.splitlines()[1:]:
        if ln.strip() and not ln.startswith("    "):
            break
        lines.append(ln)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_example_runs(name, capsys):
    src = example(name)
    exec(compile(src, f"<{name} docstring>", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip(), f"{name}: the example printed nothing"


@pytest.mark.skipif(not os.environ.get("GGMK_LONG"), reason="compiles a device kernel; "
                    "GGMK_LONG=1 runs it (test_device_modules.py and test_device_std.py "
                    "cover the same code)")
@pytest.mark.parametrize("fn", ["kv", "echo", "reduce", "timer", "log", "gate", "stats"])
def test_device_module_docstring_example_runs(fn, capsys):
    mod = importlib.import_module(f"ggmk.modules.{fn}")
    doc = mod.device_module.__doc__
    m = re.search(r"Example[^\n]*::\n", doc)
    exec(compile(textwrap.dedent(doc[m.end():]), f"<{fn}.device_module>", "exec"), {})
    assert capsys.readouterr().out.strip()
