"""``ggmk.testing``: a timer cancel in the sandbox takes the timer's pending tick back, as
``System.withdraw_deferred`` does on the kernel: nothing of it is left queued, nor lands on
``sb.errors`` with HALTED at exit (the sandbox had no ``withdraw_deferred``)."""
import ggmk
from ggmk.modules import timer
from ggmk.testing import Sandbox


def _acks(sb):
    return [(e.meta0, *timer.ack_status(e.meta1)) for e in sb.take("timer.ack")]


def test_a_cancelled_timer_leaves_nothing_queued_in_the_sandbox():
    with Sandbox(timer.module()) as sb:
        sb.feed("TIMER_SET", meta0=[1, 2], meta1=timer.arg(100))
        assert sb.pending() == 2
        sb.feed("TIMER_CANCEL", meta0=1)
        assert sb.pending() == 1                       # timer 2's tick only
        assert _acks(sb) == [(1, timer.OP_SET, timer.OK), (2, timer.OP_SET, timer.OK),
                             (1, timer.OP_CANCEL, timer.OK)]
        sb.advance(100)
        assert [(e.meta0, e.meta1) for e in sb.take("timer.fire")] == [(2, 1)]
        sb.feed("TIMER_SET", meta0=3, meta1=timer.arg(50))
        sb.feed("TIMER_CANCEL", meta0=3)
        assert sb.pending() == 0
    assert sb.errors == [] and sb.dropped == []


def test_the_sandbox_and_the_kernel_agree_on_a_cancel(wait_until):
    with Sandbox(timer.module()) as sb:
        sb.feed("TIMER_SET", meta0=1, meta1=timer.arg(100))
        sb.feed("TIMER_CANCEL", meta0=1)
    tm = timer.module()
    with ggmk.boot([tm], workers=2) as system:
        system.submit("TIMER_SET", meta0=1, meta1=timer.arg(10_000_000))
        assert wait_until(lambda: tm.timer.stats()["armed"] == 1)
        system.submit("TIMER_CANCEL", meta0=1)
        assert system.run(timeout=10)                 # idle: the tick was taken back
    assert sb.errors == [] and len(system.dead_letters("sys.error")[0]) == 0
