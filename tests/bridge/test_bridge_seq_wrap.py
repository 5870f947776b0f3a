"""A GPU -> CPU bridge channel past 2**32 messages. A mark record carries the low 32 bits of
its device channel seq (in its channel column), which wraps; the bridge restores the order
against the seq it expects next. Before, it compared the column itself: after 2**32 messages
the next seq it waited for never came (the record said 0), and the channel stalled for good;
and a seq equal to the sys.error / sys.dropped markers (0xFFFFFF01/02) was read as a dead
letter. At the GPU kernel's rates that is minutes of traffic.

The device channel starts a few messages before the wrap (``_start_near_wrap``: the words
2**32 messages would leave; sending them would take too long for a test)."""
import numpy as np

from ggmk.device import layout
from tests.bridge import bridge_workloads as W
from tests.bridge.dualkit import boot, gen

N = 2000


def _start_near_wrap(s, name, before):
    """The device channel ``name`` has handed out ``2**32 - before`` seqs, all delivered."""
    k = s.kernel
    last = (1 << 32) - before
    kind, o, _ = layout.offsets(k.plan)["chs"]
    assert kind == "dev"
    k._arrays[0][o + (k.channel_id(name) - 1) * layout.CHS + layout.CH_SEQ] = last
    st = next(st for st in s.bridge.outs.values() if st.bc.name == name)
    st.next_seq = last + 1
    return last


def test_a_gpu_to_cpu_channel_carries_on_past_the_wrap_in_order():
    # 300 before the wrap: the run crosses 0xFFFFFF01/02 (the dead-letter markers) and 0
    s = boot(device_process=False)
    try:
        _start_near_wrap(s, "gpu.out", before=300)
        gen(s, "GEN", N)
        assert s.run(timeout=120), "the GPU -> CPU channel stalled at the wrap"
        assert W.REC.sink_val == list(range(N))                 # each once, in order
        err, _ = s.dead_letters("sys.error")
        drop, _ = s.dead_letters("sys.dropped")
        assert len(err) == 0 and len(drop) == 0
        st = next(st for st in s.bridge.outs.values() if st.bc.name == "gpu.out")
        assert st.next_seq == (1 << 32) - 300 + N + 1 and not st.reorder
    finally:
        s.halt()
    assert np.all(np.diff(W.REC.sink_seq) == 1)
