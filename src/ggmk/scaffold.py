"""``ggmk.scaffold``: a new module's skeleton (what ``ggmk new NAME`` writes).

:func:`new_module` writes ``DEST/NAME/``:

==================  ===========================================================================
file                what
==================  ===========================================================================
``NAME.py``         the handlers and a ``module()`` factory (CPU: ``ggmk.Module.from_manifest``;
                    GPU: a ``ggmk.device.Module`` in the numeric subset Numba compiles)
``module.toml``     name, version, channel and handler declarations (the GPU module reads its
                    channel from it; the CPU one is built from it)
``types.toml``      the module's message types, with ids in a block derived from the name
``test_NAME.py``    a passing pytest test (CPU: the ``ggmk.testing`` sandbox and a real boot with
                    workers=2; GPU: a dual boot, the module on the GPU kernel's ``cpu`` target
                    fed by a CPU module across the bridge, ~1-2 min to compile)
==================  ===========================================================================

The generated module takes ``NAME_REQ`` on channel ``NAME.in`` (meta0 = a number) and answers
``NAME_OUT`` on ``NAME.out`` with meta0 doubled, waiting when that channel is full (CPU:
``ctx.wait_()``; GPU: returns ``WAIT``) - the pattern to grow from. Both read their type ids from
``types.toml``. Type ids: 16 per module starting at
``0x1000 + 16 * (crc32(NAME) % 768)`` (0x1000..0x3FFF, clear of the standard modules' 0x45xx..0x54xx
and of automatic ids 0x8000..); change them in ``types.toml`` if they clash with yours.

Example::

    import tempfile
    from ggmk import scaffold
    from ggmk.testing import run_module_tests

    with tempfile.TemporaryDirectory() as d:
        path = scaffold.new_module("greeter", "cpu", d)
        rc, out = run_module_tests(path)
        print(rc)        # 0
"""
from __future__ import annotations

import importlib.util
import keyword
import re
import sys
import zlib
from pathlib import Path

__all__ = ["new_module", "type_base", "TARGETS"]

TARGETS = ("cpu", "gpu")


def type_base(name: str) -> int:
    """The first of the 16 type ids a generated module uses."""
    return 0x1000 + 16 * (zlib.crc32(name.encode()) % 768)


def _unimportable(name: str) -> str:
    """Why ``import name`` would not load a generated ``name.py`` ("" when it would): a
    keyword is a syntax error there; a standard library or installed module of that name
    is found (or already imported) instead of it."""
    if keyword.iskeyword(name):
        return f"is a Python keyword (`import {name}` in the generated test is a syntax error)"
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return (f"is the name of a standard library module (`import {name}` in the "
                f"generated test would load that one, not the new module)")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    # (a bare directory on sys.path, a namespace package, is not a module that shadows)
    if spec is not None and spec.origin not in (None, "namespace"):
        return (f"is the name of an installed module, {spec.origin} (`import {name}` in the "
                f"generated test would load that one, not the new module)")
    return ""


def new_module(name: str, target: str = "cpu", dest_dir=".") -> Path:
    """Write the skeleton of module ``name`` for ``target`` ("cpu" or "gpu") into
    ``dest_dir/name``; returns that directory. Refuses a bad name (not lowercase letters,
    digits and '_'; a Python keyword; the name of a standard library or installed module,
    which ``import name`` would load instead), an unknown target and an existing directory
    (nothing is written then; nothing is overwritten)."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
        raise ValueError(f"module name must be lowercase letters, digits and '_', starting with "
                         f"a letter, at most 40 characters (it names files, a channel prefix "
                         f"and types), got {name!r}")
    if name in ("ggmk", "test", "module", "types"):
        raise ValueError(f"module name {name!r} is reserved")
    why = _unimportable(name)
    if why:
        raise ValueError(f"module name {name!r} {why}; choose another name")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    d = Path(dest_dir) / name
    if d.exists():
        raise FileExistsError(f"{d} already exists; not overwriting it")
    base = type_base(name)
    up = name.upper()
    files = {"types.toml": _TYPES.format(name=name, up=up, req=base, out=base + 1)}
    if target == "cpu":
        files["module.toml"] = _MANIFEST.format(name=name, up=up, where="")
        files[f"{name}.py"] = _CPU.format(name=name, up=up)
        files[f"test_{name}.py"] = _CPU_TEST.format(name=name, up=up)
    else:
        files["module.toml"] = _MANIFEST.format(name=name, up=up, where=" on the GPU kernel") \
            + 'granularity = "scalar"\n'
        files[f"{name}.py"] = _GPU.format(name=name, up=up)
        files[f"test_{name}.py"] = _GPU_TEST.format(name=name, up=up)
    d.mkdir(parents=True)
    for fn, text in files.items():
        (d / fn).write_text(text)
    return d


_TYPES = '''\
# Message types of module "{name}". Ids: a block of 16 from ggmk.scaffold.type_base("{name}").

[types.{up}_REQ]
id = {req}
lossy = false
doc = "a request: meta0 = the number to double"

[types.{up}_OUT]
id = {out}
lossy = false
doc = "the answer: meta0 = twice the request's meta0"
'''

_MANIFEST = '''\
[module]
name = "{name}"
version = "0.1.0"
description = "doubles numbers{where}: {name}.in -> {name}.out"

[[channel]]
name = "{name}.in"
direction = "consume"
type = "{up}_REQ"

[[channel]]
name = "{name}.out"
direction = "produce"
type = "{up}_OUT"
mode = "fanout"
guarantee = "lossless"

[[handler]]
type = "{up}_REQ"
name = "on_req"
'''

_CPU = '''\
"""Module "{name}" (CPU kernel): {name}.in ({up}_REQ, meta0 = n) -> {name}.out ({up}_OUT, 2n).

Example::

    import ggmk
    import {name}
    with ggmk.boot([{name}.module()], workers=2) as system:
        system.channel("{name}.in").publish(meta0=21)
        system.run()
"""
from __future__ import annotations

import sys
from pathlib import Path

import ggmk
from ggmk import OK
from ggmk.typereg import load_types

HERE = Path(__file__).resolve().parent


def on_req(ctx):
    """One request: emit twice meta0 on {name}.out; wait for room when it is full."""
    if ctx.emit("{name}.out", 2 * ctx.task.meta0 & (2**64 - 1)):
        return ctx.wait_()
    return OK


def module() -> ggmk.Module:
    """The module, from module.toml and types.toml next to this file (each read on its own,
    so that an error names its file and line)."""
    m = ggmk.Module.from_manifest(HERE / "module.toml", sys.modules[__name__])
    m.manifest.types.merge(load_types(HERE / "types.toml"))
    return m
'''

_CPU_TEST = '''\
"""Tests of module "{name}": the ggmk.testing sandbox, then a real boot (workers=2)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ggmk  # noqa: E402
from ggmk.testing import Sandbox  # noqa: E402

import {name}  # noqa: E402


def test_sandbox_doubles_and_waits_when_full():
    with Sandbox({name}.module()) as sb:
        assert sb.feed("{up}_REQ", meta0=21) == ggmk.OK
        assert [e.meta0 for e in sb.take("{name}.out")] == [42]
        sb.capacity("{name}.out", 1)
        assert sb.feed("{up}_REQ", meta0=[1, 2]) == [ggmk.OK, ggmk.WAIT]
        assert [e.meta0 for e in sb.take("{name}.out")] == [2]
        sb.advance(1)
        assert [e.meta0 for e in sb.take("{name}.out")] == [4]


def test_real_kernel():
    got = []
    app = ggmk.Module("{name}_client")

    @app.handler("{up}_CLIENT", batch=True, consumes="{name}.out", message="{up}_OUT")
    def take(ctx, batch):
        got.extend(batch.meta0.tolist())

    with ggmk.boot([{name}.module(), app], workers=2) as system:
        system.channel("{name}.in").publish(meta0=list(range(100)))
        assert system.run(timeout=30)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert sorted(got) == [2 * i for i in range(100)]
'''

_GPU = '''\
\"\"\"Module "{name}" (GPU kernel): {name}.in ({up}_REQ, meta0 = n) -> {name}.out ({up}_OUT,
2n). Its types come from types.toml and its channels from module.toml, next to this file.

Handlers are compiled by Numba (the numeric subset): integers, floats, arithmetic, ``if``,
``while``/``for range``, calls to ``ggmk.device.api`` (``g.meta0``, ``g.emit_chan``,
``g.emit_host``, ``g.alloc``, ...) and to other compiled functions. Not allowed: Python
objects (lists, dicts, strings, classes), allocating arrays, exceptions, recursion, I/O,
closures over Python state. Return a code (0 = OK).

Placed on the GPU kernel of a dual system, its channels are bridge channels: CPU modules
publish on {name}.in and consume {name}.out exactly as if it ran on the CPU kernel.

Example (a CPU module on the other side; see test_{name}.py)::

    import ggmk, ggmk.dual
    import {name}
    client = ggmk.Module("{name}_client")
    client.produces("{name}.in", "{up}_REQ")

    @client.handler("{up}_CLIENT", batch=True, consumes="{name}.out", message="{up}_OUT")
    def take(ctx, batch):
        print(batch.meta0.tolist())                   # [42]

    if __name__ == "__main__":                        # (the GPU kernel's device process)
        with ggmk.dual.boot([client, {name}.module()], device="auto",
                            types={name}.TYPES) as system:
            system.channel("{name}.in").publish(meta0=21)
            system.run(timeout=60)
\"\"\"
from __future__ import annotations

from pathlib import Path

import ggmk.device as gd
from ggmk.device import api as g
from ggmk.task import OK, WAIT
from ggmk.typereg import load_module_manifest, load_types

HERE = Path(__file__).resolve().parent
TYPES = load_types(str(HERE / "types.toml"))
MANIFEST = load_module_manifest(str(HERE / "module.toml"))
REQ = TYPES.info("{up}_REQ").id
OUT = TYPES.info("{up}_OUT").id

mod = gd.Module(MANIFEST.name)
_OUT = next(c for c in MANIFEST.channels if c.name == "{name}.out")
OUT_CH = mod.channel(_OUT.name, message=OUT, mode=_OUT.mode, guarantee=_OUT.guarantee)


@mod.handler(REQ, consumes="{name}.in", message=REQ)
def on_req(ctx, task):
    \"\"\"One request: emit twice meta0 on {name}.out; when it is full, run again later.\"\"\"
    if g.emit_chan(ctx, OUT_CH, g.meta0(task) * 2, g.meta1(task)) != 0:
        return WAIT
    return OK


def module():
    return mod
'''

_GPU_TEST = '''\
\"\"\"Test of module "{name}": on the GPU kernel (the ``cpu`` target where there is no GPU;
compiling it takes 1-2 min, cached after), fed and read by a CPU module across the bridge.\"\"\"
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ggmk  # noqa: E402
import ggmk.dual  # noqa: E402

import {name}  # noqa: E402


def test_doubles_on_the_gpu_kernel_across_the_bridge():
    got = []
    client = ggmk.Module("{name}_client")
    client.produces("{name}.in", "{up}_REQ")

    @client.handler("{up}_CLIENT", batch=True, consumes="{name}.out", message="{up}_OUT")
    def take(ctx, batch):
        got.extend(batch.meta0.tolist())

    with ggmk.dual.boot([client, {name}.module()], device="cpu", workers=2,
                        types={name}.TYPES) as system:
        system.channel("{name}.in").publish(meta0=list(range(100)))
        assert system.run(timeout=120)
        assert len(system.dead_letters("sys.error")[0]) == 0
    assert sorted(got) == [2 * i for i in range(100)]
'''
