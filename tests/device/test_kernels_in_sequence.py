"""Two device kernels one after the other in one process (``cpu`` target), both holding the
same module's handlers (kv) and each compiled (or loaded from the disk cache) in a process of
its own first, as a cold cache left them.

Why: Numba names a compiled function's symbol after its module, qualname and a per-process
counter, and the JIT resolves symbols by name across every kernel loaded in the process. A
handler kept in its user module got the same symbol in two kernels compiled by two processes
whose counters agreed; the second kernel loaded then ran the first kernel's copy (compiled
against the first kernel's layout) and hung: nothing dispatched, and it did not stop. Now each
kernel compiles its handlers under its own module name (``codegen.compiler._rebind``).

The kernels: kv alone (``capacity=64``) and ``device_std_scenarios`` (also compiled by
``tests/modules/test_device_std.py``), whose ``KV_ALLOC`` handler calls ``g.alloc``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES_DIR = os.path.join(os.path.dirname(HERE), "modules")    # tests/modules
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
if MODULES_DIR not in sys.path:
    sys.path.insert(0, MODULES_DIR)

import device_std_scenarios as S  # noqa: E402
import ggmk.device as gd  # noqa: E402
from ggmk import task as T  # noqa: E402
from ggmk.modules import kv  # noqa: E402

IDS = kv.type_ids()


def _kv_only():
    return [kv.device_module(capacity=64)]


# name -> (modules, the type pushed, the reply type the host gets back)
KERNELS = {"kv": (_kv_only, "KV_GET", "KV_RESP"),
           "std": (S.modules, "KV_ALLOC", "KV_BUFFER")}

_CHILD = """
import sys
sys.path.insert(0, {mods!r})
import ggmk.device as gd
import test_kernels_in_sequence as t
with gd.DeviceKernel(t.KERNELS[{name!r}][0](), target="cpu", workers=2):
    pass
"""


def _compile_in_own_process(name):
    """Compile (or load) kernel ``name`` in a fresh process, so each kernel's disk-cached code
    comes from a process of its own (the case that collided)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, HERE, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _CHILD.format(mods=MODULES_DIR, name=name)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


def _run_one(name):
    mods, typ, reply = KERNELS[name]
    with gd.DeviceKernel(mods(), target="cpu", workers=2) as k:
        k.push_all(T.make(1, type=IDS[typ], meta0=144, meta1=1))
        out = k.pull_until(1, timeout=60)
        m = k.metrics()["global"]
    # accounting: the one task pushed was taken, dispatched and answered; nothing failed
    assert out["type"].tolist() == [IDS[reply]]
    assert (m["rx_in"], m["dispatched"], m["errors"], m["dropped"]) == (1, 1, 0, 0)
    if typ == "KV_ALLOC":
        assert out["meta0"][0] != 0 and m["alloc"] == 1      # g.alloc gave a buffer
    return out


@pytest.mark.parametrize("order", [("kv", "std"), ("std", "kv")], ids=["kv-first", "std-first"])
def test_two_kernels_in_sequence_in_one_process(order):
    for name in order:
        _compile_in_own_process(name)
    for name in order:
        _run_one(name)


def test_a_handler_shared_by_two_kernels_is_named_after_each_kernel():
    """The handler copies (and so their symbols) belong to each kernel's own module."""
    seen = {}
    for name, (mods, _, _) in KERNELS.items():
        k = gd.DeviceKernel(mods(), target="cpu", workers=2)
        b = k.build()                    # generates and wraps; compiles nothing yet
        i = k.type_ids.index(IDS["KV_GET"])
        fn = b.ns[f"h_{i}"].py_func
        assert fn.__module__ == b.path.stem and sys.modules[fn.__module__].__file__ == \
            str(b.path)
        seen[name] = fn.__module__
    assert seen["kv"] != seen["std"]
