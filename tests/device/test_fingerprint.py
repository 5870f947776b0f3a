"""A handler's fingerprint (part of the compiled kernel's cache key) covers every device
function it reaches, however deep, and the constants they read: only direct callees were
hashed, so editing a helper two calls down loaded a stale cached kernel."""
import types

import ggmk.device as gd

SRC = '''
import ggmk.device as gd
from ggmk.device import api as g

LIMIT = {limit}

@gd.func
def inner(x):
    return x + {delta}

@gd.func
def outer(x):
    if x > LIMIT:
        return 0
    return inner(x)

m = gd.Module("fp")

@m.handler(101)
def h(ctx, task):
    g.emit_host(ctx, 102, outer(g.meta0(task)), 0)
    return 0
'''


def _fingerprint(limit=10, delta=1):
    mod = types.ModuleType("fp_mod")           # the same module name each time
    exec(compile(SRC.format(limit=limit, delta=delta), "fp_mod.py", "exec"), mod.__dict__)
    (h,) = mod.m.handlers
    return h.fingerprint()


def test_the_same_source_has_the_same_fingerprint():
    assert _fingerprint() == _fingerprint()


def test_an_edit_two_calls_down_changes_the_fingerprint():
    assert _fingerprint(delta=2) != _fingerprint(delta=1)


def test_a_constant_read_by_a_callee_changes_the_fingerprint():
    assert _fingerprint(limit=11) != _fingerprint(limit=10)


def test_gd_func_is_the_marker_the_fingerprint_follows():
    assert getattr(gd.func(lambda x: x), "_ggmk_device_func", False)
