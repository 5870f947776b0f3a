"""``ggmk top`` on a terminal (control/top.py): SIGTERM or SIGHUP end it as q does, with the
terminal's echo and line editing restored, and exit code 128 + the signal (killed by the
signal's default action, it left the terminal in cbreak mode: no echo)."""
import os
import pty
import select
import signal
import subprocess
import termios
import time

import pytest

from conftest import GGMK


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_restores_the_terminal(booted, sig):
    master, slave = pty.openpty()
    try:
        assert termios.tcgetattr(slave)[3] & termios.ECHO
        p = subprocess.Popen([GGMK, "top"], stdin=slave, stdout=slave, stderr=slave,
                             env={**booted.env, "TERM": "xterm"}, start_new_session=True)
        try:
            # running: the terminal is in cbreak mode (echo off) and a frame is drawn
            seen, deadline = b"", time.monotonic() + 60
            while (b"ggmk" not in seen or termios.tcgetattr(slave)[3] & termios.ECHO):
                assert time.monotonic() < deadline and p.poll() is None, seen[-500:]
                if select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 65536)
            p.send_signal(sig)
            deadline = time.monotonic() + 30
            while p.poll() is None:          # keep draining the pty so top can write
                assert time.monotonic() < deadline, "top did not exit"
                if select.select([master], [], [], 0.1)[0]:
                    os.read(master, 65536)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 128 + sig
        lflag = termios.tcgetattr(slave)[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON
    finally:
        os.close(master)
        os.close(slave)
