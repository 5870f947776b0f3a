"""The control client against a server whose listen queue is full (a flood of connections)."""
import shutil
import socket
import tempfile

import pytest

from ggmk.control.client import Client, NotRunning
from ggmk.control.paths import StatePaths
from ggmk.control.protocol import ControlError


def test_a_full_listen_queue_is_busy_not_not_running():
    d = tempfile.mkdtemp(prefix="ggq-", dir="/tmp")
    paths = StatePaths.resolve(d)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(paths.sock))
    lst.listen(0)                       # never accepts: the queue fills at once
    filled = []
    try:
        while True:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(str(paths.sock))
            except BlockingIOError:
                c.close()
                break
            filled.append(c)
            assert len(filled) < 1000
        with pytest.raises(ControlError) as ei:
            Client(paths, timeout=0.5).connect()
        assert ei.value.code == "busy" and "listen queue" in ei.value.message
        assert not isinstance(ei.value, NotRunning)
    finally:
        for c in filled:
            c.close()
        lst.close()
        shutil.rmtree(d, ignore_errors=True)
