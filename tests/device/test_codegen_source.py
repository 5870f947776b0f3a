"""``ggmk.device.codegen.source``: the generated part of the kernel's source (text only)."""
import ast

import ggmk.device as gd
from ggmk.device import layout
from ggmk.device.codegen import resolve, source


def _h(ctx, task):
    return 0


def _w(ctx, task, lane, nlanes, smem, phase):
    return 0


def _kernel():
    m = gd.Module("gen")
    m.handler(11)(_h)
    m.handler(12, granularity="warp", shared_bytes=8, phases=2)(_w)
    m.handler(13, granularity="block")(_w)
    hs = resolve.resolve_handlers([m])
    cfg = layout.DeviceConfig(blocks=2, threads=64).validate()
    plan = layout.plan(cfg, len(hs), resolve.smem_words(hs, 64))
    return hs, plan


def test_type_tables_and_dispatch_switch():
    hs, plan = _kernel()
    text = source.generate(hs, plan)
    tree = ast.parse(text)
    defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"type_index", "type_of_index", "type_max_yields", "type_level", "seg_0", "seg_1",
            "seg_2", "dispatch_segment", "chan_cap", "sub_slot"} <= defs
    ns = {}
    # the type tables are plain functions: run them
    tables = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("type_index", "type_of_index")]
    exec(compile(ast.Module(tables, []), "<gen>", "exec"), ns)
    assert [ns["type_index"](t) for t in (11, 12, 13, 99)] == [0, 1, 2, -1]
    assert [ns["type_of_index"](i) for i in (0, 1, 2, 3)] == [11, 12, 13, -1]
    assert "h_1(ctx, D[o:o + W], lane % WARP, WARP, sm, ph)" in text      # warp, 2 phases
    assert "for ph in range(2):" in text
    assert "h_2(ctx, D[o:o + W], lane, NT, smem, ph)" in text             # block


def test_constants_are_target_neutral_and_complete():
    hs, plan = _kernel()
    c = source.constants(plan, hs)
    for k in ("OK", "CHAN_FULL", "ENQ_SHARED", "CHAN_NO_SUBSCRIBER", "TRACE_WORKER", "NB",
              "O_CTL", "C_STOP", "C_TARGET0", "G_TARGET1", "EV_TASK_FAIL", "LV_ERROR"):
        assert k in c, k
    # names a target gives its own words are the target's (Target.constants), not here
    assert not {"C_DOORBELL", "C_PARKED", "G_NHOST", "G_HOST_TICKET"} & set(c)


def test_handler_exceptions_are_caught_only_where_device_code_has_them():
    """``catch`` (cpu, sim: ``CATCH_HANDLER_EXCEPTIONS``) wraps every handler call in
    try/except -> HANDLER_EXCEPTION, warp and block tasks finished after the last phase;
    without it (cuda) the generated code has no try at all, and finishes in the lane whose
    return counts, as before."""
    from ggmk.device.targets import get_target
    hs, plan = _kernel()
    caught = ast.parse(source.generate(hs, plan, catch=True))
    plain = ast.parse(source.generate(hs, plan))
    tries = [n for n in ast.walk(caught) if isinstance(n, ast.Try)]
    assert len(tries) == 3 and all(
        isinstance(t.body[0].value, ast.Call) and t.body[0].value.func.id in ("h_0", "h_1", "h_2")
        and t.handlers[0].type.id == "Exception" for t in tries)
    assert not [n for n in ast.walk(plain) if isinstance(n, ast.Try)]
    assert "HANDLER_EXCEPTION" in source.constants(plan, hs)
    assert [getattr(get_target(n), "CATCH_HANDLER_EXCEPTIONS", False)
            for n in ("cpu", "cuda")] == [True, False]
