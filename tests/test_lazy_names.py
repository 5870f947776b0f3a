"""``import ggmk`` loads its names on first use: a ``ggmk`` command (the CLI and the control
client) starts without the kernel or NumPy, and every documented name still resolves."""
import subprocess
import sys

import pytest

import ggmk


def test_the_cli_and_the_control_client_import_no_kernel_and_no_numpy():
    code = ("import sys, ggmk.cli.main, ggmk.control.client; "
            "print(sorted(m for m in ('numpy', 'numba', 'ggmk.core.kernel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_every_public_name_resolves_and_an_unknown_one_is_a_clear_error():
    from ggmk import OK, Module, boot          # the from-import form loads them too
    assert OK == 0 and callable(boot) and isinstance(Module, type)
    for name in ggmk.__all__:
        assert getattr(ggmk, name) is not None, name
    assert "boot" in dir(ggmk) and "TaskBatch" in dir(ggmk)
    with pytest.raises(AttributeError, match="no attribute 'bot'"):
        ggmk.bot
