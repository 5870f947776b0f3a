"""The GPU kernel's trace switches, host side (nothing is compiled here): the config's
``trace`` (SPEC §7's strip switch) compiles every trace record out, ``GGMK_TRACE=0`` sets
it by default, and the run-time level table starts at the modules' build levels."""
import os
import subprocess
import sys

import pytest

import ggmk.device as gd
from ggmk.device import codegen, layout
from ggmk.errors import BootError

loud = gd.Module("sw_loud", trace_level="all")
calm = gd.Module("sw_calm", trace_level="warn")


@loud.handler(7201)
def loud_h(ctx, task):
    return 0


@calm.handler(7202)
def calm_h(ctx, task):
    return 0


def _kernel(**kw):
    return gd.DeviceKernel([loud, calm], target="cpu", workers=1, **kw)


def test_trace_false_compiles_every_trace_record_out():
    k = _kernel(trace=False, trace_tasks=True)
    c = codegen.constants(k.plan, k.handlers)
    assert not any(c[n] for n in ("TRACE_ON", "TRACE_WORKER", "TRACE_TASKS", "TRACE_TASKS_ALL"))
    k = _kernel(trace=True)
    c = codegen.constants(k.plan, k.handlers)
    assert c["TRACE_ON"] and c["TRACE_WORKER"] and c["TRACE_TASKS"]
    assert not c["TRACE_TASKS_ALL"]
    with pytest.raises(BootError, match="trace='no' must be True or False"):
        _kernel(trace="no")


def test_level_table_starts_at_the_build_levels():
    k = _kernel()
    assert k._build_levels().tolist() == [4, 2, 4]        # per type, then park / wake at all
    assert layout.offsets(k.plan)["tlv"][2] == len(k.handlers) + 1
    assert _kernel(trace_tasks=True)._worker_level([0, 0]) == 0
    assert _kernel(trace_tasks=True)._worker_level([0, 1]) == 4
    assert _kernel()._worker_level([3, 2]) == 0            # no module at all: no park / wake


def test_ggmk_trace_0_strips_a_device_kernel_by_default():
    code = ("import ggmk.device as gd\n"
            "m = gd.Module('x', trace_level='all')\n"
            "m.handler(1)(lambda ctx, task: 0)\n"
            "print(gd.DeviceKernel([m], target='cpu').config.trace, "
            "gd.DeviceKernel([m], target='cpu', trace=True).config.trace)\n")
    for env, want in (("0", "False True"), ("1", "True True")):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, GGMK_TRACE=env), timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want
