"""A device handler that does not compile: the error names the handler, its module and type, and
keeps the compiler's message (issue 4, bad input). Real compiles on the ``cpu`` target."""
import subprocess
import sys

import workloads

import pytest

import ggmk.device as gd
from ggmk.device import api as g
from ggmk.device import HandlerCompileError
from ggmk.device.diagnose import compiler_message
from ggmk.errors import BootError


def test_a_broken_handler_is_named_with_the_compilers_message():
    m = gd.Module("physics")

    @m.handler(5)
    def fine(ctx, task):
        return 0

    @m.handler(6)
    def broken(ctx, task):
        return g.meta0(task) + "not a number"      # int + str: no such operation

    k = gd.DeviceKernel([m], target="cpu", workers=1)
    with pytest.raises(HandlerCompileError) as ei:
        k.start()
    e = ei.value
    assert isinstance(e, BootError)
    assert (e.module, e.handler, e.type_id, e.target) == ("physics", "broken", 6, "cpu")
    assert "'broken' of module 'physics' (type 6)" in str(e)
    assert "add(int64" in e.compiler_message                 # Numba's own words
    assert "During:" not in e.compiler_message               # not the generated kernel's trail
    assert isinstance(e.__cause__, Exception)                # the full compiler error is kept


def test_compiler_message_drops_banners_and_trail():
    text = ("Failed in nopython mode pipeline (step: nopython frontend)\n"
            "Unknown attribute 'x' of type int64\n\nFile \"a.py\", line 3:\n"
            "During: typing of get attribute at a.py (3)\nDuring: resolving callee type")
    assert compiler_message(text) == "Unknown attribute 'x' of type int64\n\nFile \"a.py\", line 3:"


def test_the_cpu_target_imports_nothing_from_cuda():
    code = ("import sys, ggmk.device as gd\n"
            "from workloads import chain_module\n"
            "k = gd.DeviceKernel([chain_module()], target='cpu', workers=1)\n"
            "k.start(); k.stop()\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'cuda', 'cupy', "
            "'pynvml')))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], env=workloads.subprocess_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
