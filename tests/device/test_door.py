"""The GPU kernel's door: host records it takes in (``push``) go to their type's bucket; one
that finds the bucket full (and the local queue's share for it) is dropped to ``sys.dropped``
with CHAN_FULL, and is **not** counted as enqueued: it never runs, and "enqueued == run" is
how a host knows the kernel is idle (counted, it kept a dual system from ever idling: see
tests/bridge/test_bridge_ingress_room.py). One small kernel: 256-slot bucket and local queue."""
import numpy as np
import pytest

import ggmk.device as gd
from ggmk import task as taskmod
from ggmk.device import api as g
from ggmk.device.host import SYS_DROPPED, error_code
from ggmk.task import CHAN_FULL, OK

door = gd.Module("door", trace_level="warn")


@door.handler(1)
def echo(ctx, task):
    g.emit_host(ctx, 2, g.meta0(task), 0)
    return OK


@pytest.fixture(scope="module")
def kern():
    k = gd.DeviceKernel([door], target="cpu", workers=1, bucket_cap=256, local_cap=256,
                        batch=256)
    k.start()
    yield k
    k.stop()


def test_records_dropped_at_the_door_are_dropped_not_enqueued(kern):
    n = 2000
    # one push publishes all of them at once: the kernel takes up to 1024 in one look, more
    # than its 256-slot bucket and the local queue's 192 can hold
    assert kern.push(taskmod.make(n, type=1, meta0=np.arange(n))) == n
    out = kern.pull_until(n, timeout=60)
    assert len(out) == n
    dropped = out[out["channel"] == SYS_DROPPED]
    ran = out[out["channel"] != SYS_DROPPED]
    assert len(dropped) > 0, "nothing dropped: the test no longer reaches the door"
    assert set(error_code(dropped).tolist()) == {CHAN_FULL}
    assert (dropped["type"] == 1).all() and (ran["type"] == 2).all()
    # each record either ran once or was dropped once
    assert sorted(ran["meta0"].tolist() + dropped["meta0"].tolist()) == list(range(n))
    m = kern.metrics()
    t = m["types"][1]
    assert t["enqueued"] == t["run"] == t["ok"] == len(ran)
    assert m["global"]["bucket_full"] == len(dropped)
