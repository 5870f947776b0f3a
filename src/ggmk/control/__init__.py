"""The control plane: a running system's control socket and the client the ``ggmk`` command
line uses (SPEC §11).

A system booted with ``ggmk boot APP`` runs in its own process (``ggmk _serve``), which owns
a state directory (``$XDG_RUNTIME_DIR/ggmk/``, else ``/tmp/ggmk-$UID/``, or ``--state-dir``):

* ``control.sock``: a Unix domain socket, mode 0600, in a 0700 directory; the peer's uid is
  checked with ``SO_PEERCRED`` (another uid is refused). There is no network listener.
* ``ggmk.pid``: the server's pid; ``ggmk.lock``: held (``flock``) while the server lives, so
  a ``kill -9`` leaves files the next ``ggmk boot`` recognises as stale and replaces;
  ``serve.log``: the server's stdout/stderr.

The protocol (``ggmk.control.protocol``) is JSON lines, versioned, one request per line (at
most ``MAX_REQUEST`` bytes); see that module for the message shapes.
"""
from ggmk.control.protocol import PROTOCOL_VERSION, MAX_REQUEST  # noqa: F401
from ggmk.control.paths import StatePaths, default_state_dir  # noqa: F401
