"""``ggmk typegen`` (typed payload accessors from types.toml: the generated module imports and
round-trips payloads byte-for-byte with the registry) and ``ggmk build`` (the GPU kernel's
build report), through the real executable."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ggmk.typereg import load_types

ROOT = Path(__file__).resolve().parents[2]
GGMK = str(Path(sys.executable).parent / "ggmk")
TYPES = """
[types.POINT]
id = 102
payload = { x = "f64", n = "u32", tag = "bytes[4]" }

[types.BLOB]
id = 7
doc = "a key and some bytes"
payload = { k = "i16", ok = "bool", data = "bytes" }

[types.PING]
id = 9
"""


def ggmk(*args, timeout=300):
    return subprocess.run([GGMK, *args], capture_output=True, text=True, timeout=timeout)


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"gen_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_typegen_writes_accessors_that_round_trip(tmp_path):
    toml = tmp_path / "types.toml"
    toml.write_text(TYPES)
    out = tmp_path / "payloads.py"
    r = ggmk("typegen", str(toml), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "2 payload classes" in r.stdout
    gen = _import(out)
    reg = load_types(str(toml))
    assert gen.TYPE_IDS == {"BLOB": 7, "PING": 9, "POINT": 102}
    assert set(gen.PAYLOADS) == {7, 102} and gen.PAYLOADS[102] is gen.Point
    p = gen.Point(x=1.5, n=3, tag=b"\xca\xfe\x00\x01")
    raw = p.encode()
    assert raw == reg.info(102).encode(p.to_dict())          # the registry's exact layout
    assert gen.Point.decode(raw) == p and reg.info(102).decode(raw) == p.to_dict()
    b = gen.Blob(k=-3, ok=True, data=b"hello world")
    assert b.encode() == reg.info(7).encode(b.to_dict())
    assert gen.Blob.decode(b.encode()) == b
    assert gen.Blob.TYPE_ID == 7 and "a key and some bytes" in gen.Blob.__doc__
    with pytest.raises(AttributeError):
        p.y = 1                                               # __slots__: a typo fails at once
    with pytest.raises(ValueError, match="POINT: payload of 3 bytes"):
        gen.Point.decode(b"abc")
    with pytest.raises(ValueError, match="length prefix"):
        gen.Blob.decode(b.encode() + b"x")


def test_typegen_from_an_app_and_to_stdout():
    r = ggmk("typegen", str(ROOT / "examples" / "dual_app.py"))
    assert r.returncode == 0, r.stderr
    ns: dict = {}
    exec(compile(r.stdout, "<typegen>", "exec"), ns)
    s = ns["Sample"](x=2.0, n=5, tag=b"ggmk")
    assert ns["Sample"].decode(s.encode()) == s and ns["TYPE_IDS"]["SCALED"] == 141


def test_typegen_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[types.point]\nid = 1\npayload = { x = "f65" }\n')
    r = ggmk("typegen", str(bad))
    assert r.returncode == 1 and "typegen:" in r.stderr and "f65" in r.stderr
    r = ggmk("typegen", str(tmp_path / "missing.toml"))      # before any work: usage
    assert r.returncode == 2 and "missing.toml': no such file" in r.stderr
    r = ggmk("typegen", str(ROOT / "examples" / "particles.py"))
    assert r.returncode == 1
    good = tmp_path / "good.toml"
    good.write_text(TYPES)
    # an output file in a directory that is not there: a usage error naming it, before any
    # work (``trace --perfetto`` takes the same option type: it drained the trace buffer,
    # then died in a traceback)
    r = ggmk("typegen", str(good), "-o", str(tmp_path / "nodir" / "out.py"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'--output'" in r.stderr and "nodir' does not exist" in r.stderr


def test_build_report_of_an_apps_gpu_kernel():
    from ggmk.device.build import ToolchainMissing, find_ptxas
    try:
        find_ptxas()
    except ToolchainMissing as e:
        pytest.skip(f"no ptxas here: {e}")
    r = ggmk("build", str(ROOT / "examples" / "dual_app.py"), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    names = {h["module"] + "." + h["name"]: h for h in rep["handlers"]}
    # the user's handler and the bridge's own device handlers: the kernel that actually runs
    assert "gpu_scale.scale" in names and any(n.startswith("bridge.") for n in names)
    assert all(h["registers"] > 0 for h in rep["handlers"]) and rep["arch"] == "sm_90"
    assert rep["kernel"] == {}                                 # no --kernel: handlers only


def test_build_without_gpu_modules_is_a_clear_error():
    r = ggmk("build", str(ROOT / "examples" / "demo_app.py"))
    assert r.returncode == 1 and "no GPU (ggmk.device) modules" in r.stderr
