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


# -- bad input: one clear error naming the field, the value and the allowed range -------------
# (no silent truncation, wrap-around or masking; see the validation notes in ggmk.task)

@pytest.mark.parametrize("kw, exc, words", [
    (dict(meta0="abc"), TypeError, ["meta0", "'abc'", "not an integer", "0..2**64-1"]),
    (dict(meta0=None), TypeError, ["meta0", "None", "not an integer"]),
    (dict(meta0=2**64), ValueError, ["meta0", str(2**64), "out of range 0..2**64-1"]),
    (dict(meta0=-1), ValueError, ["meta0", "-1", "out of range 0..2**64-1"]),
    (dict(meta0=np.int64(-5)), ValueError, ["meta0", "-5", "out of range 0..2**64-1"]),
    (dict(meta0=np.array(-5)), ValueError, ["meta0", "-5", "out of range"]),
    (dict(meta1=1.5), TypeError, ["meta1", "1.5", "float", "int"]),
    (dict(meta1=2.0), TypeError, ["meta1", "2.0", "float"]),
    (dict(meta0=np.float32(3)), TypeError, ["meta0", "float"]),
    (dict(meta0=True), TypeError, ["meta0", "True", "bool"]),
    (dict(tenant=1 << 16), ValueError, ["tenant", "65536", "0..65535"]),
    (dict(flags=np.uint32(70000)), ValueError, ["flags", "70000", "0..65535"]),
    (dict(type=2**32), ValueError, ["type", str(2**32), "0..2**32-1"]),
    (dict(payload_len=-1), ValueError, ["payload_len", "-1", "0..2**32-1"]),
    (dict(priority=7), ValueError, ["priority", "7", "not one of 0, 1, 2, 3"]),
    (dict(priority=-1), ValueError, ["priority", "-1", "not one of 0, 1, 2, 3"]),
    (dict(priority=np.int8(4)), ValueError, ["priority", "4", "not one of 0, 1, 2, 3"]),
    (dict(priority=1.0), TypeError, ["priority", "float"]),
    (dict(priority="high"), TypeError, ["priority", "'high'"]),
    (dict(meta0={1, 2}), TypeError, ["meta0", "set"]),
])
def test_make_refuses_a_bad_scalar_naming_field_value_and_range(kw, exc, words):
    with pytest.raises(exc) as ei:
        T.make(3, **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)
    assert isinstance(ei.value, T.TaskValueError if exc is ValueError else T.TaskTypeError)


@pytest.mark.parametrize("kw, exc, words", [
    (dict(meta0=np.array([1.0, 2.0, 3.0])), TypeError, ["meta0", "float64", "integers"]),
    (dict(meta0=np.array([1, -5, 3], np.int64)), ValueError,
     ["meta0", "-5", "index 1", "0..2**64-1"]),
    (dict(meta1=np.array([0, 0, -1], np.int8)), ValueError, ["meta1", "-1", "index 2"]),
    (dict(tenant=np.array([1, 2, 70000], np.uint32)), ValueError,
     ["tenant", "70000", "index 2", "0..65535"]),
    (dict(tenant=np.array([1, -2, 3], np.int64)), ValueError, ["tenant", "-2", "index 1"]),
    (dict(type=np.array([1, 2, 2**40], np.uint64)), ValueError, ["type", str(2**40), "2**32-1"]),
    (dict(seq=range(-1, 2)), ValueError, ["seq", "-1", "index 0"]),
    (dict(meta0=[1, 2.5, 3]), TypeError, ["meta0", "2.5", "index 1", "float"]),
    (dict(meta0=[1, None, 3]), TypeError, ["meta0", "None", "index 1"]),
    (dict(meta0=[1, -1, 2**63]), ValueError, ["meta0", "-1", "index 1"]),   # NumPy: float64
    (dict(meta0=[1, 2**64, 3]), ValueError, ["meta0", str(2**64), "index 1"]),  # NumPy: object
    (dict(meta0=np.array(["a", "b", "c"])), TypeError, ["meta0", "<U1"]),
    (dict(meta0=np.array([True, False, True])), TypeError, ["meta0", "bool"]),
    (dict(meta0=np.zeros((3, 1), np.uint64)), ValueError, ["meta0", "one-dimensional", "(3, 1)"]),
    (dict(meta0=[[1, 2], [3]]), ValueError, ["meta0"]),
    (dict(priority=np.array([0, 1, 4])), ValueError, ["priority", "4", "index 2", "0, 1, 2, 3"]),
    (dict(priority=np.array([0, -1, 2])), ValueError, ["priority", "-1", "index 1"]),
    (dict(priority=np.array([0, 1, 7], np.uint16)), ValueError, ["priority", "7"]),
    (dict(priority=[0.0, 1.0, 2.0]), TypeError, ["priority", "float"]),
])
def test_make_refuses_a_bad_column_naming_field_value_and_range(kw, exc, words):
    with pytest.raises(exc) as ei:
        T.make(3, **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("col", [[1, 2, 3], np.arange(3), range(3), (1, 2, 3)])
def test_make_column_length_must_be_the_count(col):
    with pytest.raises(ValueError, match=r"meta0: a column of length 3 but count is 5"):
        T.make(5, meta0=col)
    with pytest.raises(ValueError, match=r"meta0: a column of length 3 but count is 1"):
        T.make(1, meta0=col)


@pytest.mark.parametrize("n, exc, words", [
    (-3, ValueError, ["count", "-3", ">= 0"]),
    (1.0, TypeError, ["count", "1.0", "float"]),
    (True, TypeError, ["count", "True"]),
    ("3", TypeError, ["count", "'3'"]),
    (None, TypeError, ["count", "None"]),
])
def test_make_refuses_a_bad_count(n, exc, words):
    with pytest.raises(exc) as ei:
        T.make(n, type=1)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_make_keeps_every_valid_extreme_exactly():
    top = 2**64 - 1
    rec = T.make(3, type=[0, 1, 2**32 - 1], flags=np.array([0xFFFF, 4, 0], np.int64),
                 tenant=np.uint16(0xFFFF), channel=2**32 - 1, seq=np.arange(3, dtype=np.int8),
                 payload_ptr=[0, 2**63, top], payload_len=np.uint64(2**32 - 1),
                 meta0=np.array([0, 2**63, top], dtype=object), meta1=top, priority=[0, 1, 3])
    assert rec["type"].tolist() == [0, 1, 2**32 - 1]
    assert rec["flags"].tolist() == [0xFFFC, 5, 3]          # priority replaces the low bits
    assert rec["tenant"].tolist() == [0xFFFF] * 3 and rec["seq"].tolist() == [0, 1, 2]
    assert rec["payload_ptr"].tolist() == [0, 2**63, top] == rec["meta0"].tolist()
    assert rec["meta1"].tolist() == [top] * 3 and rec["channel"].tolist() == [2**32 - 1] * 3
    assert T.make(0, meta0=np.arange(0)).shape == (0,)      # an empty batch is fine for make
    assert T.make(np.int64(2), priority=np.uint8(3))["flags"].tolist() == [3, 3]


def test_make_accepts_int_subclasses_and_every_integer_dtype():
    import enum

    class Kind(enum.IntEnum):
        A = 7

    assert T.make(1, type=Kind.A)["type"].tolist() == [7]
    for dt in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        rec = T.make(4, type=np.arange(4, dtype=dt), tenant=np.arange(4, dtype=dt),
                     meta0=np.arange(4, dtype=dt), priority=np.arange(4, dtype=dt))
        assert rec["meta0"].tolist() == [0, 1, 2, 3] == T.priority_of(rec["flags"]).tolist()


def test_make_errors_are_value_and_type_errors_of_ggmk():
    from ggmk.errors import GgmkError
    assert issubclass(T.TaskValueError, ValueError) and issubclass(T.TaskValueError, GgmkError)
    assert issubclass(T.TaskTypeError, TypeError) and issubclass(T.TaskTypeError, GgmkError)


def test_check_count():
    assert T.check_count(None) == 1
    assert T.check_count(None, 7, np.arange(4)) == 4          # the first column sets it
    assert T.check_count(None, [1, 2, 3], 0) == 3             # lists and ranges are columns
    assert T.check_count(None, 5, range(6)) == 6
    assert T.check_count(2, np.arange(9)) == 2                # make() then checks the lengths
    assert T.check_count(np.int32(4)) == 4
    for bad, exc, words in ((0, ValueError, ["count", "0", ">= 1"]),
                            (-3, ValueError, ["count", "-3", ">= 1"]),
                            (2.0, TypeError, ["count", "2.0"]),
                            (True, TypeError, ["count", "True"]),
                            ("3", TypeError, ["count", "'3'"])):
        with pytest.raises(exc) as ei:
            T.check_count(bad, np.arange(3))
        for w in words:
            assert w in str(ei.value), (w, str(ei.value))
    with pytest.raises(ValueError, match="n: 0"):
        T.check_count(0, name="n")


def test_task_meta_setters_refuse_what_they_cannot_store():
    rec = T.make(1)
    t = T.Task(rec[0:1][0])
    for bad, exc in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                     (np.int64(-2), ValueError), ("x", TypeError), (None, TypeError)):
        for field in ("meta0", "meta1"):
            with pytest.raises(exc, match=field):
                setattr(t, field, bad)
    t.meta0, t.meta1 = 2**64 - 1, np.uint32(7)
    assert (t.meta0, t.meta1) == (2**64 - 1, 7)


@pytest.mark.parametrize("n", [0, 1, 5, 256, 257, 3000])
def test_copy_concat_select_equal_numpy_and_are_fresh_writable_arrays(n):
    """The raw-byte record copies (task.copy / concat / select) give what NumPy's structured
    copies give, on contiguous and strided inputs, small (through bytes) and large."""
    rng = np.random.default_rng(n)
    a = T.make(n, type=7, meta0=rng.integers(0, 1 << 63, n, dtype=np.uint64),
               meta1=np.arange(n, dtype=np.uint64), seq=np.arange(n, dtype=np.uint32))
    for src in (a, a[::3], a[1:]):
        c = T.copy(src)
        assert c.dtype == T.TASK_DTYPE and c.flags.writeable and c.flags.c_contiguous
        assert np.array_equal(c, src.copy())
        if len(c):
            c["meta1"][0] += 1                     # a copy, not a view
            assert src["meta1"][0] != c["meta1"][0]
    parts = [a[:n // 3], a[n // 3:], a[::2]]
    assert np.array_equal(T.concat(parts), np.concatenate(parts))
    assert np.array_equal(T.concat([a]), a) and T.concat([a]) is not a
    mask = a["meta0"] % 3 == 0
    assert np.array_equal(T.select(a, mask), a[mask])
    idx = rng.permutation(n)
    assert np.array_equal(T.select(a, idx), a[idx])
    s = T.select(a, mask)
    if len(s):
        s["meta0"][0] += 1
        assert not np.array_equal(s, a[mask])


def test_the_record_copy_examples_run():
    """The docstring examples of task.copy / task.select (what a reader copies) run."""
    import doctest
    runner = doctest.DocTestRunner()
    finder = doctest.DocTestFinder()
    tests = [t for f in (T.copy, T.select) for t in finder.find(f, f.__name__)]
    assert sum(len(t.examples) for t in tests) >= 4
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
