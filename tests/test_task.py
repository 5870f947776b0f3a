import numpy as np

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


def test_code_names():
    assert T.code_name(T.CHAN_FULL) == "CHAN_FULL"
    assert T.code_name(-7) == "FAIL(-7)"
