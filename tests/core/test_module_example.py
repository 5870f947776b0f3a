"""The ``counter`` module of core/module.py's docstring, booted as core/kernel.py's docstring
shows, runs: every task it emits has a handler (its COUNTER_DONE had none, so the example's one
task failed with HANDLER_EXCEPTION: unknown type)."""
import contextlib
import io
import textwrap

import ggmk
from ggmk.core import kernel, module


def test_the_counter_example_runs_clean():
    body = module.__doc__.split("Example::", 1)[1].split("\nTypes are named")[0]
    ns = {"ggmk": ggmk}
    exec(textwrap.dedent(body), ns)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(textwrap.dedent(kernel.__doc__.split("Example::", 1)[1]), ns)
    counts = eval(out.getvalue())
    assert counts["ok"] == 1 and counts["fail"] == 0, counts
