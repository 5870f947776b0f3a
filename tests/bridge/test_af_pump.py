"""Audit (bridge): a bridge channel is declared exactly like a local one, so a CPU -> GPU
channel's ``error_handler`` gets its GPU consumer's failures as it gets a CPU consumer's (SPEC
§5: channel errors go to the channel's error handler if one is set, else sys.error). Before,
a failure of the GPU handler went to sys.error with the error handler never called."""
import threading

import pytest

import ggmk
import ggmk.device as gd
from ggmk.device import api as g
import ggmk.dual
from ggmk.typereg import TypeRegistry
from tests.bridge.dualkit import wait_for

TYPES = {"AFP_MSG": 531, "AFP_PLAIN_MSG": 532, "AFP_FAIL": 541, "AFP_PLAIN": 542}
FAILED = -7

gpu = gd.Module("afp_gpu")


@gpu.handler("AFP_FAIL", consumes="afp.fail", message="AFP_MSG")
def afp_fail(ctx, task):
    if g.meta0(task) % 2 == 1:
        return -7
    return 0


@gpu.handler("AFP_PLAIN", consumes="afp.plain", message="AFP_PLAIN_MSG")
def afp_plain(ctx, task):
    if g.meta0(task) % 2 == 1:
        return -7
    return 0


class Seen:
    lock = threading.Lock()
    got: list = []


def on_error(recs, codes):
    with Seen.lock:
        Seen.got.extend(zip(recs["meta0"].tolist(), codes.tolist()))


cpu = ggmk.Module("afp_cpu")
cpu.produces("afp.fail", "AFP_MSG", error_handler=on_error)
cpu.produces("afp.plain", "AFP_PLAIN_MSG")


def _registry():
    reg = TypeRegistry()
    for name, tid in TYPES.items():
        reg.register(name, id=tid)
    return reg


@pytest.mark.parametrize("device_process", [True, False], ids=["device_process", "in_process"])
def test_a_gpu_consumers_failure_goes_to_the_channels_error_handler(device_process):
    Seen.got = []
    s = ggmk.dual.boot([cpu, gpu], device="cpu", types=_registry(), workers=2,
                       device_process=device_process)
    try:
        for i in range(6):
            assert s.channel("afp.fail").publish(meta0=i) == 0
            assert s.channel("afp.plain").publish(meta0=i) == 0
        errs = []
        wait_for(lambda: len(Seen.got) >= 3 and
                 (errs.append(s.dead_letters("sys.error")) or
                  sum(len(e[0]) for e in errs) >= 3), 60, "the six failures")
    finally:
        s.halt()
    # the channel with an error handler: every failure there, none on sys.error
    assert sorted(Seen.got) == [(1, FAILED), (3, FAILED), (5, FAILED)]
    recs = [int(m) for e in errs for m in e[0]["meta0"]]
    types = {int(t) for e in errs for t in e[0]["type"]}
    codes = {int(c) for e in errs for c in e[1]}
    # the channel without one: sys.error, as before
    assert sorted(recs) == [1, 3, 5] and types == {TYPES["AFP_PLAIN"]} and codes == {FAILED}
