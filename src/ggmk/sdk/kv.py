"""The host-side client of a kv module."""
from __future__ import annotations

import threading

import numpy as np

from ggmk.core.lane import SENT as _SENT
from ggmk.sdk.client import Client
from ggmk.sdk.tags import (TAG_MASK, _U64, _check_timeout, _tag48, _tags48, _u64_column,
                           new_tags)


class KV:
    """Host-side client of a kv module (``prefix`` = its name): synchronous ``put``, ``get``,
    ``delete`` correlated by tag; ``get_many`` / ``get_array`` pipeline a block of gets (one
    column publish, replies matched by tag with NumPy). Values are ints (inline tables) or
    bytes. A status other than OK/NOT_FOUND raises ``KVError``; no reply within ``timeout``
    seconds raises ``TimeoutError``; a halt, ``KernelStopped``. Thread-safe (several threads
    may share one client); any number of clients may share one kv module (their tags come
    from :func:`new_tags`, their replies from one shared subscription).

    A ``get`` of a word table on this process's CPU kernel first takes the call lane
    (``ggmk.core.lane``: the request and its reply counted as channel messages, run on the
    calling thread while a worker is idle), else the client's normal path."""

    class KVError(RuntimeError):
        pass

    def __init__(self, system, prefix: str = "kv", *, timeout: float = 5.0):
        from ggmk.modules import kv as _kv
        _check_timeout("KV", timeout)
        assert _kv.TAG_MASK == TAG_MASK
        self._kv = _kv
        self.system = system
        self.prefix = prefix
        self.client = Client(system, f"{prefix}.get", f"{prefix}.resp",
                             reply_tag=_tag48, reply_tags=_tags48, timeout=timeout)
        self.put_ch = system.channel(f"{prefix}.put")
        self.del_ch = system.channel(f"{prefix}.del")
        # the kv module's state, where this process runs it (a DualSystem: its CPU kernel's)
        mods = getattr(getattr(system, "cpu", system), "modules", ())
        st = next((getattr(m, "kv", None) for m in mods if getattr(m, "name", None) == prefix),
                  None)
        self._bytes_table = st is not None and not st.inline
        self._lane = self._make_lane(st)
        self._lane_tag = threading.local()

    def _make_lane(self, st):
        """The call lane of this client's gets (``ggmk.core.lane``), where the kv module is
        an inline table on this process's CPU kernel and that kernel can run one; else None
        (every get takes the client's normal path)."""
        cpu = getattr(self.system, "cpu", self.system)
        req = self.client.request
        if st is None or not st.inline or getattr(req, "kernel", None) is not cpu:
            return None
        from ggmk.core.lane import CallLane
        from ggmk.modules import instance_type
        resp = cpu.channel(f"{self.prefix}.resp")
        t = cpu.type_id(instance_type("KV_GET", self.prefix, "kv"))
        lane = CallLane(cpu, req, resp, t, self.client._hub, self._kv.GetReplier(st, cpu))
        return lane if lane.usable() else None

    def _check(self, m0, what):
        st = int(m0) >> 56
        if st > self._kv.NOT_FOUND:
            raise KV.KVError(f"kv {what}: {self._kv.STATUS_NAMES.get(st, st)}")
        return st

    def put(self, key: int, value) -> None:
        """Store ``value`` (bytes, or an int 0..2**64-1) under ``key``. An int in a bytes
        table (``value_size`` > 8) is stored as its 8 little-endian bytes, as a handler's
        ``kv_put`` of it is."""
        if isinstance(value, (bytes, bytearray)):
            data = value
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                and 0 <= int(value) < 1 << 64:
            data = int(value).to_bytes(8, "little")
            if not self._bytes_table:   # a word table: the shortest form fits any value_size
                data = data.rstrip(b"\0") or b"\0"
        else:                      # (a float or a str was converted: 3.9 came back as 3)
            raise TypeError(f"KV.put: value={value!r}: allowed bytes or an int "
                            f"0..2**64-1")
        tag = new_tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, payload=bytes(data), channel=self.put_ch)
        self._check(m0, f"put {key}")

    def get(self, key: int, default=None):
        lane = self._lane
        r = None
        if lane is not None and key.__class__ is int and 0 <= key <= _U64 \
                and not self.client._closed:
            # the call lane (ggmk.core.lane): no tag unless its reply goes the normal way
            r = lane.call(key, 0, self._expect)
        if r is None:
            tag = new_tags()
            m0, m1, data = self.client.call(key, tag, tag=tag)
        elif r is _SENT:                # answered, its reply sent the normal way
            m0, m1, data = self.client._wait(self._lane_tag.tag)
        else:
            (m0, m1), data = r, None
        st = m0 >> 56
        if st:                                  # (the message is built only when needed)
            if self._check(m0, f"get {key}") != self._kv.OK:
                return default
        return data if data is not None else m1

    def _expect(self, m0: int) -> int:
        """The lane's reply goes out the normal way: await a new tag (kept per thread for
        the wait) and return the reply's meta0 carrying it."""
        tag = self._lane_tag.tag = new_tags()
        self.client.expect(tag)
        return m0 & ~TAG_MASK | tag

    def delete(self, key: int) -> bool:
        tag = new_tags()
        m0, _, _ = self.client.call(key, tag, tag=tag, channel=self.del_ch)
        return self._check(m0, f"del {key}") == self._kv.OK

    def _get_block(self, keys, depth):
        keys = _u64_column("keys", keys)
        n = len(keys)
        lo = new_tags(n)
        tags = np.arange(lo, lo + n, dtype=np.uint64)
        if depth is None:
            m0, m1, data = self.client.call_many(keys, tags, lo)
        else:
            m0, m1, data = self.client.stream(keys, tags, lo, depth)
        st = m0 >> np.uint64(56)
        if not np.count_nonzero(st):                     # all found: the usual case
            return m1, None, data
        bad = st > np.uint64(self._kv.NOT_FOUND)
        if bad.any():
            i = int(np.argmax(bad))
            raise KV.KVError(f"kv get {int(keys[i])}: "
                             f"{self._kv.STATUS_NAMES.get(int(st[i]), int(st[i]))} "
                             f"({int(bad.sum())} of {n} gets failed)")
        return m1, st == np.uint64(self._kv.OK), data

    def get_array(self, keys, *, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) of ``keys`` (inline tables): two columns, no Python per reply.
        ``values[i]`` is meaningful where ``found[i]``. ``depth``: at most that many requests
        in flight (see :meth:`Client.stream`); None: all at once. Example::

            vals, found = kvc.get_array(np.arange(100_000), depth=1000)
        """
        m1, found, data = self._get_block(keys, depth)
        if found is None:
            found = np.ones(len(m1), np.bool_)
        if data is not None:
            raise KV.KVError(f"kv {self.prefix!r}: get_array is for inline (word) values; "
                             "this table answers with payloads: use get_many")
        return m1, found

    def get_many(self, keys, *, depth: int | None = None) -> list:
        """Values (or None) of ``keys``, pipelined: the requests go out as columns (one emit
        while the channel has room) and the replies are matched by tag in bulk. ``depth``:
        at most that many in flight, kept full (see :meth:`Client.stream`); None: all."""
        m1, found, data = self._get_block(keys, depth)
        out = m1.tolist() if data is None else \
            [d if d is not None else v for d, v in zip(data, m1.tolist())]
        if found is not None:
            for i in np.flatnonzero(~found).tolist():
                out[i] = None
        return out

    def close(self):
        self.client.close()


# -------------------------------------------------------------------------- module helpers
