"""Review of DualSystem._drop_held: a device module's ``halt_records`` hook that returns
something other than task records is reported in the bridge's errors like a hook that raises,
and the other modules' hooks still name their state. It used to raise out of halt() before
the CPU kernel halted (the check covered only the call: ``T.copy`` of a list raised)."""
import numpy as np

import ggmk.dual
from ggmk import task as T
from ggmk.modules import gate, reduce, registry


def _drop(s):
    recs, codes = s.dead_letters("sys.dropped")
    return sorted((s.cpu.type_name(int(t)), int(a), int(b), int(c))
                  for t, a, b, c in zip(recs["type"], recs["meta0"], recs["meta1"], codes))


def test_bad_halt_records_do_not_break_halt():
    r = reduce.device_module(n=3)
    g = gate.device_module(n=3)
    bad = iter([[1, 2, 3], np.zeros(2)])

    def hook(words):
        return next(bad)
    r.halt_records = hook
    for case in ("list", "float array"):
        s = ggmk.dual.boot([r, g], device="cpu", workers=1, device_process=False,
                           types=registry("reduce", "gate"))
        try:
            assert s.submit("GATE_ARRIVE", meta0=7, meta1=5) == 1     # (GPU only: pushed)
            assert s.run(timeout=60)
        finally:
            rep = s.halt(timeout=1)                 # raised TypeError / AttributeError
        assert s.cpu.halted, case
        assert rep["device_held"] == 1, (case, rep)
        assert _drop(s) == [("GATE_ARRIVE", 7, 5, T.CHAN_CLOSED)], case
        errs = [e for e in s.bridge.errors if "halt_records" in e]
        assert len(errs) == 1 and "'reduce'" in errs[0], list(s.bridge.errors)
