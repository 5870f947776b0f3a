"""``ggmk trace -f``'s server side: a follower that reads slower than the trace grows loses the
oldest batches of events, and is told how many events (``{"dropped": n}`` in the stream)."""
import json
import socket
import tempfile
import threading
import time

import ggmk
from ggmk.control.paths import StatePaths
from ggmk.control.server import ControlServer
from ggmk.events import EventType


class StuckClient:
    """The server's side of a connection whose client does not read: the first events message
    blocks in sendall until ``release`` (what a full socket buffer does), and every message
    sent is kept. ``fileno`` is a real socket's, which the client never writes to."""

    def __init__(self):
        self.a, self.b = socket.socketpair()
        self.sent = []
        self.meta_sent = threading.Event()
        self.blocked = threading.Event()
        self.release = threading.Event()

    def fileno(self):
        return self.a.fileno()

    def recv(self, n, flags=0):
        return self.a.recv(n, flags)

    def sendall(self, data):
        msg = json.loads(data)
        self.sent.append(msg)
        d = msg.get("data") or {}
        if "meta" in d:
            self.meta_sent.set()
        elif "events" in d and not self.blocked.is_set():
            self.blocked.set()
            assert self.release.wait(60)


def test_a_slow_trace_follower_is_told_what_it_lost():
    m = ggmk.Module("m")

    @m.handler("NOP")
    def nop(ctx):
        pass

    s = ggmk.boot([m], workers=2, hal="threads")
    try:
        srv = ControlServer(s, StatePaths.resolve(tempfile.mkdtemp()), modules=[m], app="t")
        srv._driver = threading.current_thread()
        conn = StuckClient()
        out = []
        t = threading.Thread(target=lambda: out.append(srv.cmd_trace(conn, 7, {"follow": True})))
        t.start()
        assert conn.meta_sent.wait(60)            # the follower is registered

        def one_event(i):
            s.tracer.emit(s.nworkers, EventType.WATCHDOG, 0, 0, arg0=i, force=True)
            srv._collect_trace()                 # one batch for the follower
        one_event(0)
        assert conn.blocked.wait(60)              # it took the first one and is stuck sending
        extra = 76
        for i in range(1, 1025 + extra):         # 1024 fit its queue; the oldest 76 fall off
            one_event(i)
        conn.release.set()
        # the follower sends the drop count, then the events it kept; the client then leaves
        def got_all():
            return sum(len((x.get("data") or {}).get("events", [])) for x in conn.sent) >= 1025
        deadline = time.monotonic() + 60
        while not got_all() and t.is_alive() and time.monotonic() < deadline:
            t.join(0.05)
        conn.b.close()
        t.join(60)
        assert not t.is_alive()
    finally:
        s.halt()
    datas = [x["data"] for x in conn.sent if "data" in x]
    drops = [d["dropped"] for d in datas if "dropped" in d]
    assert drops == [extra]
    events = [e for d in datas for e in d.get("events", [])]
    assert [e[5] for e in events] == [0] + list(range(1 + extra, 1025 + extra))
    # the drop record comes before the events that followed the gap
    first_after = next(i for i, d in enumerate(datas) if d.get("events") and
                       d["events"][0][5] == 1 + extra)
    assert "dropped" in datas[first_after - 1]
