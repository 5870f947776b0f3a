"""A task past its type's ``max_yields`` on the device kernel (kernel_src ``finish``) reaches
sys.error with the yield_count the CPU kernel's dead letter carries (SPEC §14 item 12: the
count lives in the header). At max_yields 65535, the u16 count's top, the device stored
65536 & 0xFFFF = 0 where the CPU kernel saturates at 65535.

One types.toml registry gives the limits (3 and 65535) to both kernels; the device kernel
compiles once on the ``cpu`` target."""
import ggmk.device as gd
from ggmk import task as T
from ggmk.core.kernel import boot
from ggmk.core.module import Module
from ggmk.device.host import SYS_ERROR, error_code
from ggmk.typereg import TypeRegistry

LIMITS = {"SPIN_SMALL": 3, "SPIN_TOP": 0xFFFF}


def _registry() -> TypeRegistry:
    reg = TypeRegistry()
    for i, (name, my) in enumerate(LIMITS.items()):
        reg.register(name, 0x7A10 + i, max_yields=my)
    return reg


dev = gd.Module("spin_dev")


@dev.handler("SPIN_SMALL")
def spin_small(ctx, task):
    return T.YIELD


@dev.handler("SPIN_TOP")
def spin_top(ctx, task):
    return T.YIELD


def _device_dead_letters(reg) -> dict:
    with gd.DeviceKernel([dev], target="cpu", workers=2, types=reg) as k:
        for i, name in enumerate(LIMITS):
            assert k.push(T.make(1, type=reg.id(name), meta0=i + 1)) == 1
        out = k.pull_until(len(LIMITS), timeout=120)
    assert (out["channel"] == SYS_ERROR).all()
    assert error_code(out).tolist() == [T.MAX_YIELDS] * len(LIMITS)
    return {reg.name(int(t)): int(y) for t, y in zip(out["type"], out["yield_count"])}


def _cpu_dead_letters(reg) -> dict:
    m = Module("spin_cpu")
    runs = dict.fromkeys(LIMITS, 0)
    for name in LIMITS:
        def spin(ctx, name=name):
            runs[name] += 1
            return ctx.yield_()
        m.handler(name)(spin)
    with boot([m], types=reg, workers=2) as s:
        for i, name in enumerate(LIMITS):
            s.submit(name, meta0=i + 1)
        assert s.run(timeout=120)
        recs, codes = s.dead_letters("sys.error")
    assert codes.tolist() == [T.MAX_YIELDS] * len(LIMITS)
    # every yield up to the limit ran again: max_yields + 1 runs, the last one failed
    assert runs == {n: my + 1 for n, my in LIMITS.items()}
    return {reg.name(int(t)): int(y) for t, y in zip(recs["type"], recs["yield_count"])}


def test_past_max_yields_the_device_dead_letter_carries_the_cpu_kernels_count():
    reg = _registry()
    cpu = _cpu_dead_letters(reg)
    # max_yields + 1 yields, at the u16 top saturated (not wrapped to 0)
    assert cpu == {"SPIN_SMALL": 4, "SPIN_TOP": 0xFFFF}
    assert _device_dead_letters(reg) == cpu

