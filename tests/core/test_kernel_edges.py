"""Edges of the CPU kernel's boot and halt found by an audit of real-thread runs: a policy
that is not one, tenant ids that are not ints, ``set_tenant`` with no policy, a worker thread
that crashed before ``halt``, and the halted kernel's stand-in for the enqueue core taking what
the enqueue core takes (a host publish racing ``halt`` got a TypeError: ``wake=``)."""
import inspect
import threading

import numpy as np
import pytest

import ggmk
from ggmk import task as T
from ggmk.core.sched import Scheduler
from ggmk.core.tenants import TenantError, make_policy


@pytest.mark.parametrize("bad", [5, object(), [("eevdf",)]])
def test_a_policy_that_is_not_one_fails_the_boot(bad):
    """(before: ``policy=5`` booted, then every worker died at its first pick)"""
    with pytest.raises(TenantError, match=r"boot: policy=.*allowed a policy name .* or a "
                                          r"TenantPolicy object \(it lacks add_tenant"):
        ggmk.boot([], policy=bad, workers=2)


@pytest.mark.parametrize("tenants, what", [
    ({1.7: 0}, "tenants key 1.7"), ({"1": 0}, "tenants key '1'"), ({True: 0}, "tenants key True"),
    ([0, 1], r"tenants=\[0, 1\]"),
])
def test_tenant_ids_that_are_not_ints_fail_the_boot(tenants, what):
    """(before: 1.7, "1" and True all became tenant 1; a list raised AttributeError)"""
    with pytest.raises(TenantError, match=what):
        ggmk.boot([], tenants=tenants, workers=2)


def test_set_tenant_without_a_policy_says_how_to_get_one():
    with ggmk.boot([], workers=2) as s:
        with pytest.raises(TenantError, match="no tenant policy: boot it with policy="):
            s.set_tenant(3, nice=1)


def test_the_halted_enqueue_takes_what_the_enqueue_core_takes():
    core = inspect.signature(Scheduler.enqueue).parameters
    halted = inspect.signature(ggmk.System._enqueue_after_halt).parameters
    assert list(halted) == list(core)
    app = ggmk.Module("edge")

    @app.handler("EDGE")
    def edge(ctx):
        return ggmk.OK
    s = ggmk.boot([app], workers=2)
    s.halt()
    recs = T.make(3, type=s.type_id("EDGE"))
    assert s._enqueue_after_halt(recs, None, -1, 0, wake=False) == 0
    err, codes = s.dead_letters("sys.error")
    assert len(err) == 3 and set(np.asarray(codes).tolist()) == {T.HALTED}


class _CrashingPolicy:
    """A real policy whose pick fails (a bug in a custom policy): the workers die."""

    def __init__(self):
        self.inner = make_policy("eevdf")

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __contains__(self, tenant):
        return tenant in self.inner

    def pick(self, now_ns):
        raise RuntimeError("policy bug (test)")


def test_halt_after_a_worker_crashed_still_accounts_everything(wait_until):
    """(before: halt raised "a worker thread crashed", left the tasks outstanding, nothing on
    sys.error, channels open; a second halt returned None)"""
    app = ggmk.Module("edge")

    @app.handler("EDGE")
    def edge(ctx):
        return ggmk.OK
    s = ggmk.boot([app], workers=2, policy=_CrashingPolicy())
    for _ in range(5):
        s.submit("EDGE")
    assert wait_until(lambda: len(s.hal.errors) > 0, timeout=30)
    rep = s.halt(timeout=1)
    assert rep["drained"] is False and "policy bug (test)" in rep["worker_errors"][0]
    assert rep["halted"] == 5 and rep["outstanding"] == 0
    assert s.halt() is rep


def test_submit_of_many_tasks_with_one_payload_gives_each_a_reference():
    """``submit(..., payload=, count=n)`` (or a column) stores the payload once for the n
    tasks: each holds a reference (it was one for all: the second finished task's release
    was a DoubleFree that crashed a worker); all released at the end, none leaked; an empty
    column stores nothing; a bad column leaks nothing."""
    import ggmk
    from ggmk.core.module import Module
    m = Module("payloads")
    seen = []

    @m.handler("PAY")
    def pay(ctx):
        seen.append(bytes(ctx.payload))

    with ggmk.boot([m], workers=2) as s:
        assert s.submit("PAY", meta0=np.arange(5), payload=b"hello") == 5
        assert s.submit("PAY", payload=b"again", count=3) == 3
        assert s.run(timeout=30)
        assert sorted(seen) == [b"again"] * 3 + [b"hello"] * 5
        assert s.submit("PAY", meta0=np.arange(0), payload=b"none") == 0
        with pytest.raises(Exception):
            s.submit("PAY", meta0=np.arange(3), meta1=np.arange(4), payload=b"bad")
        assert s.run(timeout=30)
        assert s.arena.live_count() == 0
        assert not list(s.exceptions)


def test_a_failed_module_init_runs_the_fini_of_the_modules_already_up():
    """A later module's init raises: the earlier ones' fini runs (reverse order) before the
    error reaches the caller, so what they opened (here a thread) is not left behind; the
    failing module's own fini does not run (its init did not finish)."""
    stop, log = threading.Event(), []
    first, second, bad = ggmk.Module("first"), ggmk.Module("second"), ggmk.Module("bad")

    @first.init
    def up(system):
        first.th = threading.Thread(target=stop.wait, daemon=True)
        first.th.start()

    @first.fini
    def down(system):
        log.append("first")
        stop.set()
        first.th.join(10)

    second.init(lambda system: None)
    second.fini(lambda system: log.append("second"))
    bad.init(lambda system: 1 / 0)
    bad.fini(lambda system: log.append("bad"))
    with pytest.raises(ZeroDivisionError):
        ggmk.boot([first, second, bad], workers=2)
    assert log == ["second", "first"] and not first.th.is_alive()


def test_a_declaration_problem_names_only_the_manifest_of_the_module_at_fault():
    """A user module's duplicate handler name was reported "in" echo.toml (every manifest
    module's file was named, whichever module the problem was in)."""
    from ggmk.errors import BootError
    from ggmk.modules import echo
    m = ggmk.Module("user")
    m.handler("A", consumes="u.a", name="h")(lambda ctx: None)
    m.handler("B", consumes="u.b", name="h")(lambda ctx: None)
    p = ggmk.Module("p")
    p.produces("u.a", "A")
    p.produces("u.b", "B")
    with pytest.raises(BootError) as e:
        ggmk.boot([echo.module("u.c"), p, m], workers=1)
    msg = str(e.value)
    assert "module 'user': handler name 'h' declared twice" in msg and ".toml" not in msg


@pytest.mark.parametrize("call, err, match", [
    (lambda s: s.submit("T", trace="yes"), ValueError, r"trace='yes': allowed True or False"),
    (lambda s: s.submit_batch([1]), TypeError,
     r"submit_batch: recs must be task records \(a 1-d NumPy array of ggmk.task.TASK_DTYPE, "
     r"made by ggmk.task.make\), got list \[1\]"),
    (lambda s: s.submit_batch(np.zeros(3)), TypeError,
     r"submit_batch: recs must be task records .* got an array of dtype float64 and shape \(3,\)"),
    (lambda s: s.run(timeout="x"), ValueError,
     r"run: timeout='x': allowed None or a number of seconds >= 0"),
    (lambda s: s.run(timeout=-1.0), ValueError, r"run: timeout=-1.0: allowed None or a number"),
    (lambda s: s.run("x"), ValueError, r"run: seconds='x': allowed None or a number"),
    (lambda s: s.run(0.01, until_idle="no"), ValueError, r"until_idle='no': allowed True or"),
    (lambda s: s.submit_and_run("T", timeout="x"), ValueError,
     r"submit_and_run: timeout='x': allowed None or a number of seconds >= 0"),
])
def test_bad_submit_and_run_options_are_named(call, err, match):
    """(before: trace='yes' flagged the task for tracing; submit_batch([1]) was a raw
    AttributeError, submit_batch(np.zeros(3)) an IndexError, run(timeout='x') a raw
    TypeError.) Nothing is submitted; the system stays usable."""
    m = ggmk.Module("m")
    ran = []

    @m.handler("T")
    def t(ctx):
        ran.append(ctx.task.meta0)

    with ggmk.boot([m], workers=2) as s:
        with pytest.raises(err, match=match):
            call(s)
        assert s.run(timeout=30) and ran == []
        assert s.submit("T", meta0=1, trace=np.bool_(False)) == 1
        assert s.submit_batch(T.make(2, type=s.type_id("T"), meta0=[2, 3])) == 2
        assert s.run(timeout=np.float64(30)) and sorted(ran) == [1, 2, 3]
