"""The device targets' contract (``ggmk.device.targets``): every target module provides what
``Target`` lists, ``get_target`` is the one lookup (``"auto"`` included), the optional members
have defaults, and the primitives live in their own files: ``sim``'s are ``cuda``'s with its
overrides applied by name (checked on syntax trees: no reformat of either file changes the
outcome). No GPU, no simulator: nothing here imports ``numba.cuda``."""
import ast
import importlib
import inspect
import sys

import numpy as np
import pytest

from ggmk.device import layout
from ggmk.device.targets import (NAMES, OPTIONAL, REQUIRED, Target, get_target, missing, option,
                                 override_source, primitives_of, read_source, resolve_name)
from ggmk.errors import BootError

MODULES = {n: importlib.import_module(f"ggmk.device.targets.{n}") for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_each_target_module_satisfies_the_protocol(name):
    t = MODULES[name]
    assert missing(t) == []
    assert isinstance(t, Target)
    assert t.NAME == name
    assert isinstance(t.DEFAULTS, dict) and set(t.DEFAULTS) <= set(layout.DeviceConfig.
                                                                   __dataclass_fields__)
    assert isinstance(t.PRIM_SRC, str) and ast.parse(t.PRIM_SRC)
    for fn in ("namespace", "device_fn", "handler_fn", "kernel_fn", "available",
               "open_session", "host_view", "address_of"):
        assert callable(getattr(t, fn)), fn
    # an optional member a target has is of the kind its default is
    for opt, default in OPTIONAL.items():
        if hasattr(t, opt) and callable(default):
            assert callable(getattr(t, opt)), opt
        elif hasattr(t, opt) and default is not None:
            assert isinstance(getattr(t, opt), type(default)), opt


def test_required_members_are_the_protocols():
    names = set(Target.__annotations__) | {n for n, v in vars(Target).items()
                                           if inspect.isfunction(v) and not n.startswith("_")}
    assert names == set(REQUIRED)
    assert not set(OPTIONAL) & set(REQUIRED)


def test_a_module_missing_a_member_is_named():
    class Half:
        NAME, DEFAULTS, PRIM_SRC = "x", {}, ""
    assert "open_session" in missing(Half) and "namespace" in missing(Half)


def test_option_defaults():
    class Bare:
        pass
    assert option(Bare, "INLINE_ALWAYS") == ()
    assert option(Bare, "PROCESS_ENV") is None
    assert option(Bare, "constants")(None) == {}
    assert option(Bare, "host_notifier")(np.zeros(4, np.int64)) is None
    cfg = {"blocks": 0}
    option(Bare, "resolve_config")(cfg, frozenset())
    assert cfg == {"blocks": 0}


def test_get_target_resolves_names_and_auto():
    assert get_target("cpu") is MODULES["cpu"]
    assert get_target("sim") is MODULES["sim"]
    auto = get_target("auto")
    assert auto.NAME in ("cpu", "cuda") and resolve_name("auto") == auto.NAME
    with pytest.raises(BootError, match="'tpu' is not one of auto, cpu, sim, cuda"):
        get_target("tpu")


def test_host_resolve_target_is_the_same_lookup():
    from ggmk.device.host import resolve_target
    assert resolve_target("cpu") == "cpu" and resolve_target("auto") == resolve_name("auto")


def test_only_sim_needs_a_process_of_its_own():
    assert option(MODULES["sim"], "PROCESS_ENV") == {"NUMBA_ENABLE_CUDASIM": "1"}
    assert option(MODULES["cpu"], "PROCESS_ENV") is None
    assert option(MODULES["cuda"], "PROCESS_ENV") is None


# ---- the target-specific rules behind the contract

def test_cpu_clamps_a_default_host_thread_count_to_the_blocks():
    cpu = MODULES["cpu"]
    cfg = dict(cpu.DEFAULTS, blocks=1, host_threads=4)
    cpu.resolve_config(cfg, frozenset())
    assert cfg["host_threads"] == 1
    cfg = dict(cpu.DEFAULTS, blocks=1, host_threads=4)
    cpu.resolve_config(cfg, frozenset({"host_threads"}))     # given: validation says no
    assert cfg["host_threads"] == 4


def test_cuda_resolves_blocks_only_when_zero():
    cfg = {"blocks": 3}
    MODULES["cuda"].resolve_config(cfg, frozenset())         # nothing to ask the device
    assert cfg == {"blocks": 3}


def test_cpu_words_are_layouts_target_words():
    cpu = MODULES["cpu"]
    c = cpu.constants(None)
    assert (c["C_DOORBELL"], c["C_PARKED"]) == (layout.C_TARGET0, layout.C_TARGET1)
    assert (c["G_HOST_TICKET"], c["G_NHOST"]) == (layout.G_TARGET0, layout.G_TARGET1)
    # and its primitives use no word it does not name
    used = {n.id for n in ast.walk(ast.parse(cpu.PRIM_SRC)) if isinstance(n, ast.Name)}
    assert {"C_DOORBELL", "C_PARKED", "G_HOST_TICKET", "G_NHOST"} <= used


def test_cpu_init_images_sets_the_host_thread_count():
    cfg = layout.DeviceConfig(blocks=4, host_threads=3).validate()
    p = layout.plan(cfg, 1, 1)
    assert layout.images(p)["glob"][layout.G_TARGET1] == 0
    im = layout.images(p, MODULES["cpu"].init_images)
    assert im["glob"][MODULES["cpu"].G_NHOST] == 3


def test_cpu_host_notifier_rings_the_doorbell_and_wakes_only_when_parked(monkeypatch):
    cpu = MODULES["cpu"]
    woken = []
    monkeypatch.setattr(cpu, "doorbell", woken.append)
    ctl = np.zeros(layout.NCTL, np.int64)
    notify = cpu.host_notifier(ctl)
    notify()
    assert ctl[cpu.C_DOORBELL] == 1 and woken == []
    ctl[cpu.C_PARKED] = 1
    notify()
    assert ctl[cpu.C_DOORBELL] == 2 and woken == [ctl[cpu.C_DOORBELL:].ctypes.data]


def test_cpu_launch_is_not_alive_once_a_host_thread_failed(wait_until):
    """host_threads=2 and one of them raises: the kernel is not alive (its blocks are gone)
    though the other thread still runs, and ``wait`` still waits for that one to leave."""
    import threading
    from types import SimpleNamespace
    tickets, release = iter(range(2)), threading.Event()

    def kernel():
        if next(tickets) == 0:
            raise ValueError("a handler raised")
        release.wait(60)

    launch = MODULES["cpu"].launch(kernel, (), SimpleNamespace(cfg=SimpleNamespace(
        host_threads=2)))
    assert wait_until(lambda: launch.error is not None, 30)
    assert repr(launch.error) == "ValueError('a handler raised')"
    assert not launch.alive()
    assert launch.wait(0.05) is False            # the other thread runs until it is told
    release.set()
    assert launch.wait(30) is True and not launch.alive()


# ---- primitives in their own files

@pytest.mark.parametrize("name,filename", [("cpu", "cpu_prims.py"), ("cuda", "cuda_prims.py")])
def test_primitives_are_their_files(name, filename):
    assert MODULES[name].PRIM_SRC == read_source(filename)


def test_primitive_files_are_never_imported():
    for f in ("cpu_prims", "cuda_prims", "sim_prims"):
        assert f"ggmk.device.targets.{f}" not in sys.modules


def _attr_chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_sim_has_none_of_cudas_overridden_definitions():
    cuda_defs = primitives_of(read_source("cuda_prims.py"))
    over = primitives_of(read_source("sim_prims.py"))
    sim_defs = primitives_of(MODULES["sim"].PRIM_SRC)
    overridden = set(cuda_defs) & set(over)
    assert {"atomic_add", "atomic_cas", "atomic_max", "blk_add", "blk_max", "block_shared",
            "block_smem", "block_id", "block_step", "first_block", "nanosleep"} <= overridden
    for name in overridden:
        assert sim_defs[name] == over[name] != cuda_defs[name], name
    for name in set(cuda_defs) - overridden:
        assert sim_defs[name] == cuda_defs[name], name          # the rest is cuda's
    assert set(sim_defs) == set(cuda_defs) | set(over)
    # no CUDA call the simulator cannot run (or runs differently) is left
    calls = {_attr_chain(n) for n in ast.walk(ast.parse(MODULES["sim"].PRIM_SRC))
             if isinstance(n, ast.Attribute)}
    assert not {c for c in calls if c.startswith(("cuda.atomic", "cuda.blockIdx", "cuda.gridDim",
                                                  "cuda.nanosleep"))}, calls


def test_override_is_reformat_proof():
    base = read_source("cuda_prims.py")
    over = read_source("sim_prims.py")
    expected = primitives_of(override_source(base, over))
    # reformat both files: other spacing, comments, a different order of the overrides
    re_base = "# reformatted\n" + "\n\n".join(ast.unparse(n) + "  # note"
                                              if not isinstance(n, ast.FunctionDef)
                                              else ast.unparse(n)
                                              for n in ast.parse(base).body) + "\n"
    body = ast.parse(over).body
    re_over = "\n\n\n\n".join(ast.unparse(n) for n in body[3:] + body[:3]) + "\n"
    got = primitives_of(override_source(re_base, re_over))
    assert got == expected


def test_override_source_replaces_by_name_and_appends_new_ones():
    base = "def a():\n    return 1\n\n\ndef b():\n    return 2\n\nc = a\n"
    over = "def b():\n    return 20\n\n\nc = b\n\n\ndef d():\n    return 4\n"
    ns = {}
    exec(override_source(base, over), ns)
    assert (ns["a"](), ns["b"](), ns["c"](), ns["d"]()) == (1, 20, 20, 4)
