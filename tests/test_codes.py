"""Every code has one value and one name, in ggmk.task (issue: codes defined elsewhere collided:
the nvme module's -400.. and the bridge's -400.. shared values)."""
import importlib

from ggmk import task as T

MODULES = ["ggmk.bridge", "ggmk.modules.nvme", "ggmk.modules.nic", "ggmk.modules.reduce",
           "ggmk.modules.stats", "ggmk.sdk", "ggmk.core.chan"]


def test_importing_the_modules_adds_no_code_names():
    before = dict(T.CODE_NAMES)
    for m in MODULES:
        importlib.import_module(m)
    assert T.CODE_NAMES == before


def test_every_code_constant_has_a_distinct_value_and_its_name():
    codes = {n: v for n, v in vars(T).items()
             if n.isupper() and isinstance(v, int) and n in T.CODE_NAMES.values()}
    assert len(set(codes.values())) == len(codes)
    for name, value in codes.items():
        assert T.code_name(value) == name
