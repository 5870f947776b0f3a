"""ggmk.typereg.decls: ChannelDecl and HandlerDecl check what they are given, and they are the
one declaration type of manifests, CPU modules and device modules."""
from __future__ import annotations

import pytest

import ggmk
from ggmk.core.module import Handler
from ggmk.device.module import Handler as DeviceHandler
from ggmk.device.module import Module as DeviceModule
from ggmk.device.module import chan
from ggmk.errors import BootError
from ggmk.typereg import Chan, ChannelDecl, HandlerDecl, TypeRegistry, validate_declarations


def test_decl_constructors_validate():
    with pytest.raises(BootError, match="module 'm': channel 'a.b'.*'sideways'"):
        ChannelDecl("a.b", "sideways", "A", module="m")
    with pytest.raises(BootError, match="handler 'h'.*'huge'"):
        HandlerDecl("A", "h", "m", granularity="huge")
    assert HandlerDecl("A", "h", "m", granularity="batch").batch is True


def test_cpu_module_declarations_are_typereg_decls():
    m = ggmk.Module("counter")
    out = m.produces("counter.out", "COUNTER_INC_RESP", mode="fanout", capacity=64)

    @m.handler("COUNTER_INC", consumes="counter.in", deterministic=True)
    def inc(ctx):
        return ggmk.OK

    cin = m.channels[1]
    assert type(out) is ChannelDecl and type(cin) is ChannelDecl
    assert (out.direction, out.type, out.mode, out.options) == \
        ("produce", "COUNTER_INC_RESP", "fanout", {"capacity": 64})
    assert out.module is m and out.module_name == "counter" and out.handle is None
    assert (cin.direction, cin.mode, cin.guarantee, cin.options) == \
        ("consume", None, None, {"handler": "COUNTER_INC"})
    h = m.handlers[0]
    assert isinstance(h, Handler) and isinstance(h, HandlerDecl)
    assert (h.granularity, h.target, h.module_name) == ("task", "cpu", "counter")
    assert h.declaration(type=7) == HandlerDecl(7, "inc", m, deterministic=True)
    # declarations are emit targets: hashable, and equal only to the same declaration
    assert {out: 1}[out] == 1 and out != cin
    reg = TypeRegistry()
    reg.register("COUNTER_INC", 10, deterministic=True)
    reg.register("COUNTER_INC_RESP", 11)
    validate_declarations(reg, [out.resolved(), cin.resolved(mode="fanout", guarantee="lossless")],
                          [h.declaration()])


def test_module_front_ends_defer_checks_to_boot():
    m = ggmk.Module("Counter")                          # not a manifest module name
    d = m.produces("NotDotted", "COUNTER_INC")          # accepted here, checked at boot
    assert d.problems() and not ChannelDecl("a.b", "produce", "A", module="m").problems()
    with pytest.raises(BootError, match="module 'Counter': channel 'NotDotted': invalid channel"):
        d.resolved()


def test_device_channels_are_typereg_decls_and_chans():
    m = DeviceModule("src")
    out = m.channel("phys.out", message=30, mode="fanout", capacity=256)

    @m.handler(31, consumes=out, message=30)
    def log_it(ctx, task):
        return 0

    assert type(out) is ChannelDecl and isinstance(out, Chan) and out is m.channels[0]
    assert (out.direction, out.message, out.type, out.capacity, out.reserve) == \
        ("produce", 30, 30, 256, 25)
    assert out.module is m and out.module_name == "src"
    assert isinstance(chan("phys.out"), Chan) and not isinstance(chan("phys.out"), ChannelDecl)
    h = m.handlers[0]
    assert isinstance(h, DeviceHandler) and isinstance(h, HandlerDecl)
    assert (h.consumes, h.granularity, h.target, h.shared_mem, h.batch) == \
        (("phys.out",), "scalar", "gpu", 0, False)
    assert h.declaration() == HandlerDecl(31, "log_it", m, granularity="scalar")
