"""The bridge pump's error list stays bounded under a persistent fault while stats() still
counts every error (a soak's monitor must not see the count stuck at the bound)."""
from ggmk.bridge import FaultyTransport
from tests.bridge.dualkit import boot, wait_for


def test_errors_kept_bounded_and_all_counted():
    # every other receive fails: the pump polls for device traffic even when idle, so the
    # failures keep coming (each is retried; nothing is lost)
    wrap = lambda tr: FaultyTransport(tr, fail_recv=lambda i: i % 2 == 1)   # noqa: E731
    s = boot(transport_wrap=wrap)
    try:
        wait_for(lambda: s.transport.injected > 600, timeout=60, what="600 injected faults")
        st = s.stats()["bridge"]
        assert st["errors_kept"] == len(s.bridge.errors) == 256      # bounded
        # every failed receive is one error: the count goes past what is kept
        assert st["errors"] > 600
        assert st["errors"] <= s.transport.injected
        assert st["errors"] <= st["retries"]        # (a failed receive counts a retry too)
    finally:
        s.halt()
