"""A boot works on a copy of the ``types=`` registry it is given: the names it registers (the
modules' unknown names, the system channels' types) stay out of the caller's registry, so the
same registry object can boot again, also next to a manifest whose id an earlier boot's auto
id would have taken (CPU-only boot and ``ggmk.dual``'s boot)."""
import pytest

import ggmk
import ggmk.device as gd
from ggmk import OK
from ggmk.errors import BootError

TOML = """
[types.PHYS_STEP]
id = 10
lossy = false
[types.PHYS_DONE]
id = 11
"""

# a module whose manifest brings MINE with the first auto id (0x8000)
MANIFEST = """
[module]
name = "b"
version = "1.0"
[[handler]]
type = "MINE"
name = "mine"
[types.MINE]
id = 32768
"""


def _contents(reg):
    return [(t.name, t.id) for t in reg]


def _extra():
    a = ggmk.Module("a")
    a.handler("EXTRA_A")(lambda ctx: OK)
    a.produces("extra.out", "EXTRA_OUT")
    return a


def test_boot_leaves_the_callers_registry_alone_and_it_boots_again():
    reg = ggmk.load_types(TOML)
    before = _contents(reg)
    with ggmk.boot([_extra()], workers=1, types=reg) as s:
        assert s.types is not reg
        assert {"EXTRA_A", "EXTRA_OUT", "SYS_TRACE"} <= set(s.types.names())
        assert s.types.id("PHYS_STEP") == 10
        assert s.submit("EXTRA_A", meta0=1) == 1 and s.run(timeout=30)
    assert _contents(reg) == before
    # (the second boot failed: "duplicate id 32768: type EXTRA_A from register() and MINE")
    b = ggmk.Module.from_manifest(MANIFEST, {"mine": lambda ctx: OK})
    with ggmk.boot([b], workers=1, types=reg) as s:
        assert s.types.id("MINE") == 32768
        assert s.submit("MINE", meta0=1) == 1 and s.run(timeout=30)
    assert _contents(reg) == before
    with ggmk.boot([_extra()], workers=1, types=reg) as s:        # ... and the same ids again
        assert s.types.id("EXTRA_A") == 32768


def test_types_must_be_a_registry():
    with pytest.raises(BootError, match=r"types=\{'PHYS_STEP': 10\}: allowed a TypeRegistry"):
        ggmk.boot([], workers=1, types={"PHYS_STEP": 10})


def _gpu():
    gm = gd.Module("gsrc")

    @gm.handler("G_WORK")
    def work(ctx, task):
        return 0
    return gm


def test_dual_boot_leaves_the_callers_registry_alone_and_it_boots_again():
    reg = ggmk.load_types(TOML)
    before = _contents(reg)
    s = ggmk.boot([_extra(), _gpu()], device="cpu", workers=1, device_process=False, types=reg)
    try:
        assert {"EXTRA_A", "G_WORK"} <= set(s.cpu.types.names())
    finally:
        s.halt()
    assert _contents(reg) == before
    b = ggmk.Module.from_manifest(MANIFEST, {"mine": lambda ctx: OK})
    s = ggmk.boot([b, _gpu()], device="cpu", workers=1, device_process=False, types=reg)
    try:
        assert s.cpu.types.id("MINE") == 32768 and "G_WORK" in s.cpu.types
    finally:
        s.halt()
    assert _contents(reg) == before
