"""A generated CPU module reads types.toml on its own: an error in it names types.toml and
its line. (module.toml and types.toml were joined into one text read as module.toml, so a bad
id in types.toml was reported as "module.toml:24", past module.toml's 20 lines, and an id
clash with another module was blamed on module.toml.)"""
from __future__ import annotations

import importlib.util
import sys

import pytest

import ggmk
from ggmk import scaffold
from ggmk.errors import TypesError


def _generated(tmp_path, name, edit=None):
    """Generate module ``name`` (``edit(text)`` of its types.toml, if given) and import it
    as the generated test does (by file, registered under a unique name)."""
    d = scaffold.new_module(name, "cpu", tmp_path)
    if edit is not None:
        (d / "types.toml").write_text(edit((d / "types.toml").read_text()))
    key = f"_gen_{name}_{id(tmp_path)}"
    spec = importlib.util.spec_from_file_location(key, d / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod                   # (module() looks itself up there)
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(key, None)
        raise
    return d, mod


@pytest.fixture(autouse=True)
def _forget_generated():
    yield
    for k in [k for k in sys.modules if k.startswith("_gen_")]:
        del sys.modules[k]


def _line_of(path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


@pytest.mark.parametrize("bad, what", [
    ("id = -5", "'id' -5 is out of range 1..65535"),
    ('id = "x"', "'id'"),
])
def test_a_bad_id_in_types_toml_names_types_toml_and_its_line(tmp_path, bad, what):
    base = scaffold.type_base("widget")
    d, mod = _generated(tmp_path, "widget", lambda t: t.replace(f"id = {base}\n", bad + "\n"))
    with pytest.raises(TypesError) as e:
        mod.module()
    msg = str(e.value)
    # the loader names the type's table, one line above its 'id'
    assert f"{d / 'types.toml'}:{_line_of(d / 'types.toml', 'WIDGET_REQ')}:" in msg, msg
    assert "WIDGET_REQ" in msg and what in msg and "module.toml" not in msg


def test_invalid_toml_in_types_toml_names_types_toml(tmp_path):
    d, mod = _generated(tmp_path, "widget", lambda t: t + "\n[types.BROKEN\n")
    with pytest.raises(TypesError) as e:
        mod.module()
    msg = str(e.value)
    assert msg.startswith(f"{d / 'types.toml'}: invalid TOML") and "module.toml" not in msg


def test_an_id_clash_between_generated_modules_names_both_types_toml(tmp_path):
    base = scaffold.type_base("alpha")
    d1, a = _generated(tmp_path, "alpha")
    d2, b = _generated(tmp_path, "beta", lambda t: t.replace(
        f"id = {scaffold.type_base('beta')}\n", f"id = {base}\n"))
    with pytest.raises(TypesError) as e:
        ggmk.boot([a.module(), b.module()], workers=1).halt()
    msg = str(e.value)
    assert f"duplicate id {base}" in msg, msg
    assert str(d1 / "types.toml") in msg and str(d2 / "types.toml") in msg, msg
    assert "module.toml" not in msg


def test_the_generated_module_still_brings_its_types(tmp_path):
    _, mod = _generated(tmp_path, "widget")
    got = []
    app = ggmk.Module("app")

    @app.handler("APP_TAKE", consumes="widget.out", message="WIDGET_OUT")
    def take(ctx):
        got.append(ctx.task.meta0)

    with ggmk.boot([mod.module(), app], workers=2) as system:
        assert system.type_id("WIDGET_REQ") == scaffold.type_base("widget")
        system.channel("widget.in").publish(meta0=[1, 2, 3])
        assert system.run(timeout=30)
    assert sorted(got) == [2, 4, 6]
