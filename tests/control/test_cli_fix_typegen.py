"""``ggmk typegen`` writes a module that imports, for every types.toml the loader accepts: field
names that are Python keywords, ``self`` or a name the class itself uses get a trailing ``_``
(``to_dict()`` keeps the schema's names), docs are literals whatever they hold, and type names
that would make the same class name (or a keyword) get distinct ones. A field name Python would
mangle is refused naming the type and the field (only a hand-built registry has one: the loader
refuses them). Checked by importing the generated module and round-tripping payloads against
the registry."""
import importlib.util
import subprocess

import pytest
from conftest import GGMK

from ggmk.typereg import load_types


def _typegen(tmp_path, toml_text):
    toml = tmp_path / "types.toml"
    toml.write_text(toml_text)
    out = tmp_path / "payloads.py"
    r = subprocess.run([GGMK, "typegen", str(toml), "-o", str(out)], capture_output=True,
                       text=True, timeout=120)
    return r, toml, out


def _import(path):
    spec = importlib.util.spec_from_file_location(f"gen_{path.parent.name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _round_trip(gen, reg, attrs: dict):
    """Every class: built from ``attrs`` (attribute names), encoded as the registry does."""
    for tid, cls in gen.PAYLOADS.items():
        info = reg.info(tid)
        assert cls.TYPE_ID == tid and cls.TYPE_NAME == info.name
        obj = cls(**{a: attrs[a] for a in cls.ATTRS})
        d = obj.to_dict()
        assert list(d) == [f.name for f in info.fields]          # the schema's names
        raw = obj.encode()
        assert raw == info.encode(d) and info.decode(raw) == d
        assert cls.decode(raw) == obj
        assert repr(obj).startswith(cls.__name__ + "(")


@pytest.mark.parametrize("toml_text, classes, attrs", [
    # Python keywords and `self` as field names
    ('[types.KW]\nid = 10\npayload = { class = "u32", x = "f64", self = "u8", '
     'None = "u16" }\n', {10: "Kw"},
     {"class_": 7, "x": 1.5, "self_": 3, "None_": 9}),
    # names the class itself defines (FIELDS clashed with __slots__) and a renamed field
    # meeting another field's name
    ('[types.SC]\nid = 12\npayload = { FIELDS = "u32", encode = "u8", ATTRS = "u8", '
     'FIELDS_ = "u16", decode = "bytes" }\n', {12: "Sc"},
     {"FIELDS_": 1, "encode_": 2, "ATTRS_": 3, "FIELDS__": 4, "decode_": b"xy"}),
    # a doc with a backslash, quotes and a newline
    ('[types.DOC]\nid = 13\ndoc = \'path C:\\Users\\Nobody\\xyz """ end\'\n'
     'payload = { a = "u32" }\n', {13: "Doc"}, {"a": 5}),
    # type names that made the same class name (A1B), and ones that made a keyword
    ('[types.A1_B]\nid = 14\npayload = { a = "u32" }\n'
     '[types.A_1_B]\nid = 15\npayload = { s = "bytes" }\n'
     '[types.TRUE]\nid = 16\npayload = { a = "u32" }\n'
     '[types.VALUE_ERROR]\nid = 17\npayload = { a = "u32" }\n',
     {14: "A1B", 15: "A_1B", 16: "True_", 17: "ValueError"}, {"a": 1, "s": b"z"}),
])
def test_typegen_output_imports_and_round_trips(tmp_path, toml_text, classes, attrs):
    r, toml, out = _typegen(tmp_path, toml_text)
    assert r.returncode == 0, r.stderr
    gen = _import(out)
    assert {t: c.__name__ for t, c in gen.PAYLOADS.items()} == classes
    _round_trip(gen, load_types(str(toml)), attrs)
    if 13 in classes:
        assert gen.Doc.__doc__.startswith('path C:\\Users\\Nobody\\xyz """ end (type DOC')
    if 17 in classes:               # the class named ValueError does not break decode errors
        with pytest.raises(ValueError, match="VALUE_ERROR: payload of 3 bytes"):
            gen.PAYLOADS[17].decode(b"abc")


def test_typegen_to_stdout_is_the_same_module(tmp_path):
    r, toml, out = _typegen(tmp_path, '[types.KW]\nid = 10\npayload = { class = "u32" }\n')
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([GGMK, "typegen", str(toml)], capture_output=True, text=True,
                        timeout=120)
    assert r2.returncode == 0 and r2.stdout == out.read_text()


@pytest.mark.parametrize("field", ["__x", "__init__"])
def test_typegen_refuses_a_field_name_python_would_mangle(field):
    # the loader refuses '__' names already; a TypeInfo built by hand reaches generate()
    from ggmk.control.typegen import generate
    from ggmk.typereg.schema import Field, TypeInfo
    info = TypeInfo(id=11, name="MG", fields=(Field(field, "u32", 0, 4),))
    with pytest.raises(ValueError) as e:
        generate([info])
    assert "type MG" in str(e.value) and f"field '{field}'" in str(e.value)
    assert "'__'" in str(e.value)
