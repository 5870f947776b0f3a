"""Standard modules: small fixes from the audit of the CPU versions - stats gauges set through
their channel keep the last value, timer's FIRED memory is an option (``fired_keep``), two
named echo instances boot together, and bad arguments to log and stats are refused naming
them."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ggmk
from ggmk.errors import BootError
from ggmk.modules import echo, log, stats, timer


def collector(name, chan, msg):
    m = ggmk.Module(name)
    m.got = []
    lock = threading.Lock()

    @m.handler(f"{name.upper()}_IN", batch=True, consumes=chan, message=msg)
    def take(ctx, batch):
        with lock:
            m.got.extend(zip(batch.meta0.tolist(), batch.meta1.tolist()))
    return m


def no_dead(system):
    err, ecodes = system.dead_letters("sys.error")
    drop, dcodes = system.dead_letters("sys.dropped")
    assert len(err) == 0 and len(drop) == 0, (err, ecodes, drop, dcodes)


# ----------------------------------------------------------------------------------- stats
def test_a_gauge_set_through_its_channel_ends_on_the_last_value_published():
    """The stats docstring promises order for sets through ``stats.set`` (an ordered
    subscriber), not for direct submits (which run in parallel batches on any worker: the
    kernel orders only a channel's messages for its subscriber)."""
    for _ in range(3):
        st = stats.module(period=1000)
        with ggmk.boot([st], workers=2, max_batch=7) as system:
            ch = system.channel("stats.set")
            for v in range(1, 2001):                # one publish each: many small batches
                ch.publish(meta0=5, meta1=v)
            assert system.run(timeout=30)
            no_dead(system)
        assert st.stats.gauges[5] == 2000
        assert st.stats.updates == 2000
    assert "Set a gauge whose last value matters through" in stats.__doc__


@pytest.mark.parametrize("kw, what", [
    ({"keep": -1}, "stats: keep=-1: allowed an int >= 0"),
    ({"keep": 1.5}, "stats: keep=1.5: allowed an int >= 0"),
    ({"keep": True}, "stats: keep=True: allowed an int >= 0"),
    ({"sink": 3}, "stats: sink must be None or a callable"),
])
def test_stats_refuses_bad_settings_naming_them(kw, what):
    with pytest.raises(BootError) as e:
        stats.module(**kw)
    assert what in str(e.value)


@pytest.mark.parametrize("mid", [1.7, -1, 1 << 64, True, "1"])
def test_stats_name_refuses_what_no_metric_id_is(mid):
    """``int()`` made 1.7 metric 1; -1 named an id no task can carry."""
    st = stats.module()
    with pytest.raises(ValueError) as e:
        st.stats.name(mid, "x")
    assert f"stats.name: mid={mid!r}: allowed an int 0..{2**64 - 1}" in str(e.value)
    assert st.stats.names == {}
    st.stats.name(np.uint64(7), "seven")
    assert st.stats.names == {7: "seven"}


# ----------------------------------------------------------------------------------- timer
def test_timer_fired_keep_bounds_what_a_cancel_still_answers_fired_for():
    """The last ``fired_keep`` fired one-shot timers answer FIRED (65 536 by default: a
    bound the docstring did not state); older ones UNKNOWN."""
    assert timer.FIRED_KEEP == 65536 and "fired_keep" in timer.__doc__
    tm = timer.module(fired_keep=2)
    acks = collector("acks", "timer.ack", "TIMER_ACK")
    fires = collector("fires", "timer.fire", "TIMER_FIRE")
    with ggmk.boot([tm, acks, fires], workers=2) as system:
        for i in range(3):                    # fired in order 0, 1, 2
            system.submit("TIMER_SET", meta0=i, meta1=timer.arg(1))
            assert system.run(timeout=30)
        assert sorted(fires.got) == [(0, 1), (1, 1), (2, 1)]
        acks.got.clear()
        system.submit("TIMER_CANCEL", meta0=[0, 1, 2, 3])
        assert system.run(timeout=30)
        no_dead(system)
    got = sorted((tid, timer.STATUS_NAMES[timer.ack_status(m1)[1]]) for tid, m1 in acks.got)
    assert got == [(0, "UNKNOWN"), (1, "FIRED"), (2, "FIRED"), (3, "UNKNOWN")]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "9"])
def test_timer_fired_keep_is_checked(bad):
    with pytest.raises(BootError) as e:
        timer.module(fired_keep=bad)
    assert f"timer: fired_keep={bad!r}: allowed an int >= 0" in str(e.value)


# ------------------------------------------------------------------------------------ echo
def test_two_named_echo_instances_taking_direct_input_boot_together():
    """modules/__init__.py: an instance not named like the module gets handler types
    ``<TYPE>_<NAME>``; echo's direct input kept ``ECHO`` for every instance, so two could not
    boot ("type 'ECHO' has two handlers")."""
    e1, e2 = echo.module("a.x", name="e1"), echo.module("b.x", name="e2")
    assert [h.type for h in e1.handlers + e2.handlers] == ["ECHO_E1", "ECHO_E2"]
    assert [h.type for h in echo.module("c.x").handlers] == ["ECHO"]        # the default
    ca, cb = collector("ca", "a.x", "ECHO"), collector("cb", "b.x", "ECHO")
    with ggmk.boot([e1, e2, ca, cb], workers=2) as system:
        system.submit("ECHO_E1", meta0=[1, 2], meta1=10)
        system.submit("ECHO_E2", meta0=3, meta1=30)
        assert system.run(timeout=30)
        no_dead(system)
        assert system.channel("a.x").type_id == system.type_id("ECHO")    # messages: ECHO
    assert sorted(ca.got) == [(1, 10), (2, 10)] and cb.got == [(3, 30)]
    assert e1.echo["forwarded"] == 2 and e2.echo["forwarded"] == 1


# ------------------------------------------------------------------------------------- log
@pytest.mark.parametrize("fmt", [5, 3.5, None, ["a"]])
def test_log_encode_refuses_a_format_that_is_not_text(fmt):
    """``encode(INFO, 5)`` built a line of 5 NUL bytes (``bytes(5)``)."""
    with pytest.raises(TypeError) as e:
        log.encode(log.INFO, fmt)
    assert f"log: fmt={fmt!r}: allowed a str or bytes" in str(e.value)
    assert log.decode(log.encode(log.INFO, b"%d up", 3)) == (log.INFO, "3 up")


def test_log_refuses_a_sink_that_is_not_callable():
    """Accepted, it failed every LOG task at run time (HANDLER_EXCEPTION on sys.error)."""
    with pytest.raises(BootError, match=r"log: sink must be None or a callable .*got 5"):
        log.module(sink=5)
