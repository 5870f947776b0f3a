"""The control protocol: versioned JSON lines over the control socket.

Request (one line, UTF-8 JSON, at most ``MAX_REQUEST`` bytes including the newline)::

    {"v": 1, "id": 7, "cmd": "ps", "args": {}}

Response (one line)::

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "unknown_command", "message": "..."}}

Streaming commands (``log`` / ``trace`` with ``follow``, ``top``) answer with any number of
``{"v": 1, "id": 7, "ok": true, "stream": true, "data": {...}}`` lines and end with
``{"v": 1, "id": 7, "ok": true, "end": true}`` (or when the client closes the connection; any
line the client sends during a stream ends it too). A connection may carry any number of
requests, one at a time. A new connection has 10 s to start its first request (then 600 s
between requests); when every client slot is taken, the connection waiting longest for a
request (never-used ones first) is closed to serve a new one.

Error codes: ``bad_json``, ``bad_request``, ``bad_version``, ``too_large`` (the connection is
closed after it), ``timeout`` (a request not ended by its newline within 10 s of its
first byte; closed), ``unknown_command``,
``bad_args``, ``unknown_type``, ``unknown_channel``, ``unknown_module``, ``payload`` (the
payload does not fit the type: the message names the field), ``halted``, ``busy`` (too many
clients: closed; or, for ``kv`` put, the module's put channel is full: try again), ``permission_denied`` (another uid; closed), ``unsupported``, ``internal``.
"""
from __future__ import annotations

import json
import sys

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024          # bytes, one request line
MAX_RESPONSE = 256 * 1024 * 1024 # bytes, one response line (the client refuses more)
TRACE_CAPACITY = 1 << 18         # trace events a system keeps (oldest dropped); --max-events

COMMANDS = ("ping", "ps", "stats", "emit", "chan_ls", "chan_inspect", "mod_ls", "mod_info",
            "mod_reset", "kern_ls", "kern_info", "kv", "log", "trace", "top", "halt")


class ControlError(Exception):
    """An error response: ``code`` (see the module doc) and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _default(o):
    # (NumPy values exist only where NumPy is loaded: a CLI client never imports it)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return repr(o)


def dumps(obj) -> bytes:
    """One protocol line (with the newline)."""
    return (json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=True)
            + "\n").encode()


def request(cmd: str, args: dict | None = None, id: int = 1) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "id": id, "cmd": cmd, "args": args or {}})


def ok(id, result) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result})


def stream(id, data) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "id": id, "ok": True, "stream": True, "data": data})


def end(id) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "id": id, "ok": True, "end": True})


def error(id, code: str, message: str) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "id": id, "ok": False,
                  "error": {"code": code, "message": message}})


def parse_request(line: bytes) -> tuple[object, str, dict]:
    """(id, cmd, args) from one request line, or ControlError."""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError("bad_json", f"request is not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise ControlError("bad_json", "request JSON is nested too deeply") from None
    if not isinstance(msg, dict):
        raise ControlError("bad_request", "a request is a JSON object "
                           '{"v": 1, "id": N, "cmd": NAME, "args": {...}}')
    rid = msg.get("id")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ControlError("bad_version", f"protocol version {msg.get('v')!r} is not supported; "
                           f"this server speaks v{PROTOCOL_VERSION}")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError("bad_request", "'cmd' must be a string")
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError("bad_request", "'args' must be a JSON object")
    return rid, cmd, args
