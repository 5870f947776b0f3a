"""A strict registry (``[registry] strict = true`` in types.toml, ``load_types(..., strict=True)``):
a module naming a type the registry does not define is a boot error naming the module, the
handler or channel, the name and the closest defined names, instead of a handler booted at an
automatic id that never sees the defined type's tasks. Without strict the boot goes on and the
``ggmk`` log warns of a name that looks like a misspelt one."""
import logging

import pytest

import ggmk
from ggmk import OK
from ggmk.errors import BootError, TypesError
from ggmk.modules import kv, registry as std_registry
from ggmk.typereg import TypeRegistry, load_types

TOML = '[types.SENSOR_READING]\nid = 300\n'
STRICT = '[registry]\nstrict = true\n\n' + TOML


def _misspelt():
    m = ggmk.Module("sensors")
    m.handler("SENSOR_READNG")(lambda ctx: OK)
    return m


def _types_file(tmp_path, text):
    p = tmp_path / "types.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("how", ["file", "kwarg"])
def test_strict_registry_refuses_a_misspelt_handler_type(tmp_path, how):
    p = _types_file(tmp_path, STRICT if how == "file" else TOML)
    reg = load_types(p) if how == "file" else load_types(p, strict=True)
    assert reg.strict
    with pytest.raises(BootError) as ei:
        ggmk.boot([_misspelt()], workers=2, types=reg)
    msg = str(ei.value)
    for part in ("module 'sensors'", "handler", "SENSOR_READNG", "closest: SENSOR_READING",
                 "strict", str(p)):
        assert part in msg, (part, msg)
    assert len(ei.value.problems) == 1
    assert "SENSOR_READNG" not in reg            # the caller's registry is left as it was


def test_strict_registry_names_every_undefined_channel_and_handler_type(tmp_path):
    reg = load_types(_types_file(tmp_path, STRICT))
    m = ggmk.Module("sensors")
    m.handler("SENSOR_READING")(lambda ctx: OK)
    m.produces("sensor.out", "SENSOR_READINGS")
    c = ggmk.Module("sink")
    c.handler(301)(lambda ctx: OK)               # an id the file does not define
    with pytest.raises(BootError) as ei:
        ggmk.boot([m, c], workers=2, types=reg)
    probs = ei.value.problems
    assert any("module 'sensors'" in p and "channel 'sensor.out'" in p
               and "SENSOR_READINGS" in p and "SENSOR_READING" in p for p in probs), probs
    assert any("module 'sink'" in p and "type id 301 is not in the registry" in p
               for p in probs), probs
    assert len(probs) == 2


def test_strict_registry_boots_defined_types_std_instances_and_registered_names(tmp_path):
    reg = load_types(_types_file(tmp_path, STRICT))
    reg.merge(std_registry("kv"))
    reg.register("EXTRA", id=400)                # defined in code before the boot: fine
    m = ggmk.Module("sensors")
    seen = []
    m.handler("SENSOR_READING")(lambda ctx: seen.append(ctx.task.meta0) or OK)
    m.handler("EXTRA")(lambda ctx: OK)
    # a second kv instance handles KV_GET_CACHE ...: the instance's own types
    with ggmk.boot([m, kv.module(), kv.module(name="cache")], workers=2, types=reg) as s:
        assert s.type_id("SENSOR_READING") == 300
        s.submit("SENSOR_READING", meta0=7)
        s.run()
        assert "KV_GET_CACHE" in s.types.auto_registered()
    assert seen == [7]


def test_lax_registry_boots_and_warns_of_a_likely_misspelling(tmp_path, caplog):
    reg = load_types(_types_file(tmp_path, TOML))
    assert not reg.strict
    with caplog.at_level(logging.WARNING, logger="ggmk"):
        with ggmk.boot([_misspelt()], workers=2, types=reg) as s:
            assert s.type_id("SENSOR_READNG") >= 0x8000
            assert s.types.auto_registered()[0] == "SENSOR_READNG"
            assert "SENSOR_READNG" not in s.types.defined_names()
    said = [r.getMessage() for r in caplog.records if "SENSOR_READNG" in r.getMessage()]
    assert len(said) == 1, said
    assert "did you mean SENSOR_READING" in said[0] and "strict = true" in said[0]


def test_ad_hoc_names_without_a_types_file_boot_quietly(caplog):
    m = ggmk.Module("m")
    m.handler("PING")(lambda ctx: OK)
    m.handler("PONG")(lambda ctx: OK)
    with caplog.at_level(logging.WARNING, logger="ggmk"):
        with ggmk.boot([m], workers=2) as s:
            assert set(s.types.auto_registered()) >= {"PING", "PONG"}
    assert not [r for r in caplog.records if "PING" in r.getMessage()]


def test_registry_table_errors_name_file_and_line(tmp_path):
    p = _types_file(tmp_path, TOML + '\n[registry]\nstrict = 1\nstrikt = true\n')
    with pytest.raises(TypesError) as ei:
        load_types(p)
    assert [f"{p}:4: [registry]: 'strict' must be true or false, got 1",
            f"{p}:4: [registry]: unknown key 'strikt'; allowed: strict"] \
        == sorted(ei.value.problems)
    with pytest.raises(TypesError, match=r"strict='yes': allowed True, False or None"):
        load_types(TOML, strict="yes")
    with pytest.raises(TypesError, match="'registry' must be a table"):
        load_types('registry = true\n' + TOML)
    with pytest.raises(TypesError, match=r"strict=1: allowed True or False"):
        TypeRegistry(strict=1)


def test_strict_survives_copy_merge_and_to_toml(tmp_path):
    reg = load_types(STRICT)
    assert load_types(TOML, strict=False).strict is False
    assert load_types(STRICT, strict=False).strict is False   # the argument wins
    assert reg.copy().strict
    again = load_types(reg.to_toml())
    assert again.strict and [(t.name, t.id) for t in again] == [("SENSOR_READING", 300)]
    merged = std_registry("kv").merge(reg)        # a strict file merged in keeps its promise
    assert merged.strict and "SENSOR_READING" in merged.defined_names()
    # a bare name registered, then defined by a merged file, is no longer auto-registered
    lax = TypeRegistry()
    lax.register("X")
    assert lax.auto_registered() == ["X"]
    lax.merge(TypeRegistry([lax.info("X")]))
    assert lax.auto_registered() == []
