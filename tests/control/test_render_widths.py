"""The rich views never cut a figure short: at any console width a number or a header is
shown whole (wrapped inside its cell if it must), never ended with an ellipsis. rich's default
for a pipe is 80 columns, and ``make demo`` and ``ggmk top --once`` printed "20,0…" there."""
import io

import pytest
from rich.console import Console

from ggmk.control import top
from ggmk.demo import workload

BIG = 301_600                 # the demo's largest figures are of this size
HUGE = 1_234_567_890_123


def _frame(BIG=BIG, chan="particles.step.out", ctype="PARTICLE_STATE"):
    ch = {"name": chan, "kernel": "gpu->cpu", "type": ctype, "depth": BIG, "emitted": BIG,
          "dropped": BIG}
    return {
        "t": 1.0,
        "ps": {"app": "/some/long/path/to/the/app.py", "pid": 4242, "state": "running",
               "device": "auto", "uptime_s": 12.5},
        "kernels": [{"name": "cpu", "state": "running", "workers": 2, "tick": BIG,
                     "tasks_done": BIG, "errors": BIG, "queued": BIG}],
        "workers": [{"id": 0, "tasks": BIG, "batches": BIG, "parks": BIG}],
        "channels": [ch],
        "bridge": {"channels": {chan: {"direction": "gpu->cpu", "type": ctype, "pushed": BIG,
                                       "in_flight": BIG, "dead": BIG}},
                   "transfers": BIG, "records": BIG},
        "types": [{"type": "PARTICLE_STATE", **{k: BIG for k in
                   ("enqueued", "ok", "fail", "retry", "yield", "dropped")}}],
        "arena": {}, "sched": {}, "modules": [],
    }


def _demo_stats(BIG=BIG):
    c = {k: BIG for k in ("enqueued", "ok", "yield", "retry", "fail", "dropped")}
    local = {"high_watermark": BIG}
    return {"types": {"PARTICLE_STEP": c, "SOLVE": c},
            "sched": {"ready_high_watermark": BIG, "local": [local, local],
                      "overflow": local, "events": local},
            "arena": {"total": {"used_bytes": BIG, "total_bytes": BIG, "high_watermark": BIG,
                                "allocs": BIG, "fails": BIG}},
            "sys_error_codes": {"FAIL": BIG}, "workers": [{"id": 0, "tasks": BIG}],
            "det": {"tick": BIG, "tasks": BIG}, "trace_hash": "ab" * 16,
            "halt": {"halted": 0}, "drained": True}


def _shown(print_to, width) -> str:
    out = io.StringIO()
    print_to(Console(file=out, width=width, color_system=None))
    return out.getvalue()


def _uncut(text: str) -> bool:
    """No ellipsis, and every table whole: each top border ends with its corner (a table
    wider than the panel is cropped at the edge, its last columns gone without a sign)."""
    tops = [ln.rstrip() for ln in text.splitlines() if "┏" in ln]
    return "…" not in text and bool(tops) and all(
        ln.endswith("┓") or ln.endswith("┓ │") for ln in tops)


def test_top_shows_every_figure_whole():
    text = _shown(lambda c: c.print(top.render(_frame())), 120)
    assert _uncut(text), text
    # 19 figures in the tables (a single frame has no rate columns), 2 in the bridge line
    assert text.count(f"{BIG:,}") + text.count(str(BIG)) == 21, text


@pytest.mark.parametrize("width", [80, 120])
def test_top_at_80_columns_shows_the_tour_whole(width):
    """What ``make demo``'s tour prints (``ggmk top --once``): the names a user types into
    the next command and every figure whole; it printed "20,0…"."""
    text = _shown(lambda c: c.print(top.render(_frame(chan="scale.out", ctype="SCALED"))),
                  width)
    assert _uncut(text), text
    assert "scale.out" in text and "SCALED" in text
    assert text.count(f"{BIG:,}") + text.count(str(BIG)) == 21, text


@pytest.mark.parametrize("width", [80, 120])
def test_demo_table_shows_every_figure_whole(width):
    text = _shown(lambda c: workload.render(_demo_stats(), c), width)
    assert _uncut(text), text
    # the types table (its sys.error column: failed + dropped, 2 x BIG here), the queues table
    assert text.count(f"{BIG:,}") == 10 + 13, text
    assert text.count(f"{2 * BIG:,}") == 2 + 1, text  # (+ the accounting line's OK total)


@pytest.mark.parametrize("width", [40, 80])
def test_a_console_too_narrow_for_the_figures_wraps_them_rather_than_cutting(width):
    assert "…" not in _shown(lambda c: c.print(top.render(_frame(HUGE))), width)
    assert _uncut(_shown(lambda c: workload.render(_demo_stats(HUGE), c), width))
