import numpy as np
import pytest

from ggmk import task as T


def test_record_is_48_bytes_with_spec_field_order():
    assert T.TASK_DTYPE.itemsize == 48
    offsets = {n: T.TASK_DTYPE.fields[n][1] for n in T.TASK_DTYPE.names}
    assert offsets == {"type": 0, "flags": 4, "tenant": 6, "channel": 8, "seq": 12,
                       "payload_ptr": 16, "payload_len": 24, "yield_count": 28, "_pad": 30,
                       "meta0": 32, "meta1": 40}


def test_empty_is_16_byte_aligned():
    for n in (1, 3, 17):
        assert T.empty(n).ctypes.data % 16 == 0


def test_make_and_views():
    rec = T.make(4, type=7, priority=np.array([0, 1, 2, 3]), meta0=np.arange(4))
    assert list(T.priority_of(rec["flags"])) == [0, 1, 2, 3]
    b = T.TaskBatch(rec)
    assert len(b) == 4 and list(b.meta0) == [0, 1, 2, 3]
    t = T.Task(rec[2:3][0])
    t.meta0 = 99
    assert rec["meta0"][2] == 99 and t.type == 7 and t.priority == 2


def test_make_takes_scalars_arrays_lists_and_ranges_alike():
    rec = T.make(3, type=np.uint32(5), tenant=[1, 2, 3], seq=range(10, 13), meta0=np.arange(3),
                 meta1=7, priority=1)
    assert rec["type"].tolist() == [5, 5, 5] and rec["tenant"].tolist() == [1, 2, 3]
    assert rec["seq"].tolist() == [10, 11, 12] and rec["meta0"].tolist() == [0, 1, 2]
    assert rec["meta1"].tolist() == [7, 7, 7] and T.priority_of(rec["flags"]).tolist() == [1] * 3
    assert not rec["channel"].any() and not rec["payload_ptr"].any()


@pytest.mark.parametrize("bad", [dict(type=None), dict(meta0=-1), dict(tenant=1 << 16),
                                 dict(meta0=np.arange(2))])
def test_make_refuses_bad_values(bad):
    with pytest.raises((TypeError, ValueError, OverflowError)):
        T.make(3, **bad)


def test_code_names():
    assert T.code_name(T.CHAN_FULL) == "CHAN_FULL"
    assert T.code_name(-7) == "FAIL(-7)"
