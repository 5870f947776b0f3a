"""Bad input through the host API: one clear error naming the argument, the value and the
allowed range, and nothing half-submitted (no silent truncation, wrap-around or masking)."""
import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.errors import BootError


@pytest.fixture
def system():
    m = ggmk.Module("m")
    got = []

    @m.handler("WORK", batch=True)
    def work(ctx, batch):
        got.extend(zip(batch.meta0.tolist(), batch.priority.tolist()))

    with ggmk.boot([m], hal="sim") as s:
        s.got = got
        yield s


def _enqueued(s) -> int:
    return s.stats()["types"].get("WORK", {}).get("enqueued", 0)


@pytest.mark.parametrize("kw, exc, words", [
    (dict(meta0="abc"), TypeError, ["meta0", "'abc'", "0..2**64-1"]),
    (dict(meta0=None), TypeError, ["meta0", "None"]),
    (dict(meta0=2**64), ValueError, ["meta0", str(2**64), "0..2**64-1"]),
    (dict(meta0=1.5), TypeError, ["meta0", "1.5", "float"]),
    (dict(meta1=np.array([1.0, 2.5])), TypeError, ["meta1", "float64"]),
    (dict(meta0=np.int64(-5)), ValueError, ["meta0", "-5", "0..2**64-1"]),
    (dict(meta0=-1), ValueError, ["meta0", "-1", "0..2**64-1"]),
    (dict(meta0=np.arange(-2, 2)), ValueError, ["meta0", "-2", "index 0"]),
    (dict(priority=7), ValueError, ["priority", "7", "0, 1, 2, 3"]),
    (dict(priority=-1), ValueError, ["priority", "-1", "0, 1, 2, 3"]),
    (dict(tenant=1 << 16), ValueError, ["tenant", "65536", "0..65535"]),
    (dict(count=0), ValueError, ["count", "0", ">= 1"]),
    (dict(count=-3), ValueError, ["count", "-3", ">= 1"]),
    (dict(count=2.0), TypeError, ["count", "2.0"]),
    (dict(meta0=[1, 2, 3], count=5), ValueError, ["meta0", "length 3", "count is 5"]),
])
def test_submit_refuses_bad_input_and_submits_nothing(system, kw, exc, words):
    with pytest.raises(exc) as ei:
        system.submit("WORK", **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)
    assert system.run(timeout=10)
    assert _enqueued(system) == 0 and system.got == []


@pytest.mark.parametrize("bad, words", [
    (T.make(1, type=1), ["submit", "ndarray", "records go to submit_batch"]),
    ([1, 2], ["submit", "list", "a name (str) or an id"]),
    (2.5, ["submit", "float"]),
])
def test_submit_names_a_type_that_is_not_a_name_or_id(system, bad, words):
    with pytest.raises(TypeError) as ei:
        system.submit(bad)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))
    assert system.run(timeout=10) and _enqueued(system) == 0


def test_submit_takes_lists_as_columns_and_keeps_values_exactly(system):
    assert system.submit("WORK", meta0=[1, 2, 3]) == 3            # the list sets the count
    assert system.submit("WORK", meta0=np.array([2**64 - 1], np.uint64), priority=3) == 1
    assert system.run(timeout=10)
    assert sorted(system.got) == [(1, 0), (2, 0), (3, 0), (2**64 - 1, 3)]


def test_a_types_toml_id_beyond_the_kernel_tables_fails_at_load_not_at_boot(tmp_path):
    f = tmp_path / "types.toml"
    f.write_text("[types.BIG]\nid = 70000\n")
    with pytest.raises(ggmk.errors.TypesError) as ei:       # before: a bare IndexError at boot
        ggmk.typereg.load_types(f)
    assert str(f) in str(ei.value) and "BIG" in str(ei.value) and "70000" in str(ei.value)
    assert "1..65535" in str(ei.value)


def test_consuming_sys_error_by_declaration_says_what_it_carries_and_what_to_do():
    m = ggmk.Module("watch")

    @m.handler("ERR_SEEN", consumes="sys.error")
    def seen(ctx):
        pass

    with pytest.raises(BootError) as ei:                   # before: "carries 'TYPE_0'"
        ggmk.boot([m], hal="sim")
    msg = str(ei.value)
    assert "TYPE_0" not in msg
    assert "'sys.error'" in msg and "any type" in msg and "reason code" in msg
    assert "system.channel('sys.error').subscribe('ERR_SEEN')" in msg


def test_the_suggested_sys_error_subscription_works():
    m = ggmk.Module("watch")
    seen = []

    @m.handler("ERR_SEEN")
    def on_error(ctx):
        seen.append((ctx.reason, ctx.task.meta0))

    @m.handler("WORK")
    def work(ctx):
        return T.FAIL

    with ggmk.boot([m], hal="sim") as s:
        s.channel("sys.error").subscribe("ERR_SEEN")
        s.submit("WORK", meta0=5)
        assert s.run(timeout=10)
    assert seen == [(T.FAIL, 5)]
