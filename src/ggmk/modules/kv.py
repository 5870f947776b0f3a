"""The ``kv`` module (SPEC §10): a fixed-size hash map with 64-bit keys, for the CPU kernel.

Channels (``PREFIX`` = the module name, ``kv`` by default):

============  =========  ========  =====================================================
channel       direction  type      record
============  =========  ========  =====================================================
PREFIX.put    consume    KV_PUT    meta0 = key; inline: meta1 = value (a word), tag = 0;
                                   with a payload: payload = value bytes, meta1 = tag
PREFIX.get    consume    KV_GET    meta0 = key, meta1 = tag
PREFIX.del    consume    KV_DEL    meta0 = key, meta1 = tag
PREFIX.resp   produce    KV_RESP   meta0 = ``pack(status, op, tag)``; meta1 = the value
                                   (get of an inline value), its length (values longer
                                   than 8 bytes: payload = the bytes) or the key
============  =========  ========  =====================================================

The same types may also be submitted directly (``system.submit("KV_GET", meta0=key)``).
Tags are 48 bits (``unpack(meta0) -> (status, op, tag)``).

The table is fixed at boot: ``capacity`` keys, open addressing with linear probing over
``2 * capacity`` slots (rounded up to a power of two), backward-shift deletion (no tombstones),
no resizing. A put of a new key into a full table answers ``FULL`` and changes nothing (an
existing key is always updated). Values are at most ``value_size`` bytes: ``value_size <= 8``
keeps words (inline; a payload value is read little-endian), larger sizes keep bytes; a
longer value answers ``TOO_BIG``. Statuses: ``OK``, ``NOT_FOUND``, ``FULL``, ``TOO_BIG``,
``BAD_REQUEST`` (``STATUS_NAMES``).

Backpressure: a response that finds ``PREFIX.resp`` full waits in the module's outbox (the
operation is not redone); while ``outbox_limit`` responses wait, new requests are answered
with ``WAIT`` (they run again later), so nothing is lost and memory stays bounded.

Example::

    import ggmk
    from ggmk.modules import kv

    store = kv.module(capacity=1024)
    app = ggmk.Module("app")
    got = []

    @app.handler("APP_RESP", consumes="kv.resp", message="KV_RESP")
    def on_resp(ctx):
        got.append((kv.unpack(ctx.task.meta0), ctx.task.meta1))

    with ggmk.boot([store, app], workers=2) as system:
        system.channel("kv.put").publish(meta0=7, meta1=700)
        system.run()
        system.channel("kv.get").publish(meta0=7, meta1=1)       # tag 1
        system.run()
    print(got[-1])      # ((0, 2, 1), 700): status OK, op GET, tag 1, value 700
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import Outbox, instance_type, std_module

__all__ = ["module", "KVTable", "pack", "unpack", "OK", "NOT_FOUND", "FULL", "TOO_BIG",
           "BAD_REQUEST", "STATUS_NAMES", "OP_PUT", "OP_GET", "OP_DEL", "TAG_MASK"]

OK, NOT_FOUND, FULL, TOO_BIG, BAD_REQUEST = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: "OK", NOT_FOUND: "NOT_FOUND", FULL: "FULL", TOO_BIG: "TOO_BIG",
                BAD_REQUEST: "BAD_REQUEST"}
OP_PUT, OP_GET, OP_DEL = 1, 2, 3
TAG_MASK = (1 << 48) - 1
_EMPTY = object()


def pack(status: int, op: int, tag: int) -> int:
    """A response's meta0: status (8 bits), op (8 bits), tag (48 bits)."""
    return (status & 0xFF) << 56 | (op & 0xFF) << 48 | (tag & TAG_MASK)


def unpack(meta0: int) -> tuple[int, int, int]:
    """(status, op, tag) of a response's meta0."""
    meta0 = int(meta0)
    return meta0 >> 56, (meta0 >> 48) & 0xFF, meta0 & TAG_MASK


class KVTable:
    """Open addressing, linear probing, backward-shift delete; fixed slots, never resized.

    ``put(key, value) -> status``, ``get(key) -> value or None``, ``delete(key) -> bool``.
    Thread-safe (one lock)."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise BootError(f"kv: capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        slots = 1
        while slots < 2 * capacity:
            slots <<= 1
        self.slots = slots
        self.mask = slots - 1
        self.keys = [0] * slots
        self.vals: list = [_EMPTY] * slots
        self.count = 0
        self.lock = threading.Lock()

    def _home(self, key: int) -> int:
        return ((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 40 & self.mask

    def _find(self, key: int) -> tuple[int, bool]:
        i = self._home(key)
        keys, vals, mask = self.keys, self.vals, self.mask
        while vals[i] is not _EMPTY:
            if keys[i] == key:
                return i, True
            i = (i + 1) & mask
        return i, False

    def put(self, key: int, value) -> int:
        i, found = self._find(key)
        if not found:
            if self.count >= self.capacity:
                return FULL
            self.keys[i] = key
            self.count += 1
        self.vals[i] = value
        return OK

    def get(self, key: int):
        i, found = self._find(key)
        return self.vals[i] if found else None

    def delete(self, key: int) -> bool:
        i, found = self._find(key)
        if not found:
            return False
        keys, vals, mask = self.keys, self.vals, self.mask
        vals[i] = _EMPTY
        self.count -= 1
        j = i
        while True:                       # backward shift: keep every probe chain unbroken
            j = (j + 1) & mask
            if vals[j] is _EMPTY:
                return True
            h = self._home(keys[j])
            # move j into the hole i when its home is not cyclically in (i, j]
            if (i <= j and not (i < h <= j)) or (i > j and (j < h <= i)):
                keys[i], vals[i] = keys[j], vals[j]
                vals[j] = _EMPTY
                i = j

    def __len__(self) -> int:
        return self.count

    def items(self):
        return [(k, v) for k, v in zip(self.keys, self.vals) if v is not _EMPTY]


class _KV:
    def __init__(self, name, capacity, value_size, resp_capacity, outbox_limit):
        if not isinstance(value_size, int) or isinstance(value_size, bool) or \
                not 1 <= value_size <= 1 << 16:
            raise BootError(f"kv: value_size must be an int in 1..65536, got {value_size!r}")
        self.table = KVTable(capacity)
        self.value_size = value_size
        self.inline = value_size <= 8
        self.vmax = (1 << (8 * value_size)) - 1 if self.inline else None
        self.name = name
        self.resp = f"{name}.resp"
        self.outbox = Outbox(self.resp, instance_type("KV_FLUSH", name, "kv"), outbox_limit)
        self.counters = {"put": 0, "get": 0, "del": 0, "hit": 0, "miss": 0, "full": 0,
                         "too_big": 0, "bad": 0, "waits": 0}

    # one handler per op; each answers every request it applies
    def _run(self, ctx, batch, op):
        system = ctx.system
        out = self.outbox
        if out.flush(system) and out.full:
            self.counters["waits"] += len(batch)
            return T.WAIT
        recs = batch.records
        n = len(recs)
        codes = None
        tab = self.table
        arena = system.arena
        m0s, m1s = recs["meta0"].tolist(), recs["meta1"].tolist()
        ptrs, lens = recs["payload_ptr"].tolist(), recs["payload_len"].tolist()
        c = self.counters
        with tab.lock:
            for i in range(n):
                if out.full:                  # answers are waiting: push back the rest
                    if codes is None:
                        codes = np.zeros(n, dtype=np.int32)
                    codes[i:] = T.WAIT
                    c["waits"] += n - i
                    break
                key, m1, ptr, plen = m0s[i], m1s[i], ptrs[i], lens[i]
                if op == OP_PUT:
                    c["put"] += 1
                    if ptr:
                        tag = m1 & TAG_MASK
                        raw = bytes(arena.view(ptr, plen))
                        if plen > self.value_size:
                            st = TOO_BIG
                        else:
                            st = tab.put(key, int.from_bytes(raw, "little") if self.inline
                                         else raw)
                    else:
                        tag = 0
                        if self.inline and m1 > self.vmax:
                            st = TOO_BIG
                        else:
                            st = tab.put(key, m1 if self.inline else m1.to_bytes(8, "little"))
                    if st == FULL:
                        c["full"] += 1
                    elif st == TOO_BIG:
                        c["too_big"] += 1
                    out.put(pack(st, op, tag), key)
                elif op == OP_GET:
                    c["get"] += 1
                    v = tab.get(key)
                    if v is None:
                        c["miss"] += 1
                        out.put(pack(NOT_FOUND, op, m1), key)
                    elif self.inline:
                        c["hit"] += 1
                        out.put(pack(OK, op, m1), v)
                    else:
                        c["hit"] += 1
                        p = arena.alloc(max(len(v), 1))
                        if not p:
                            out.put(pack(TOO_BIG, op, m1), key)
                            continue
                        arena.view(p, len(v))[:] = np.frombuffer(v, np.uint8)
                        out.put(pack(OK, op, m1), len(v), p, len(v))
                else:
                    c["del"] += 1
                    ok = tab.delete(key)
                    if not ok:
                        c["miss"] += 1
                    out.put(pack(OK if ok else NOT_FOUND, op, m1), key)
        out.flush(system)
        return codes

    def stats(self) -> dict:
        return dict(self.counters, size=len(self.table), capacity=self.table.capacity,
                    waiting=len(self.outbox), published=self.outbox.published)


def module(capacity: int = 1024, *, value_size: int = 8, name: str = "kv",
           resp_capacity: int = 4096, outbox_limit: int = 1024, mode: str = "fanout"):
    """A configured kv ``ggmk.Module``: ``capacity`` keys of at most ``value_size`` bytes;
    channels ``NAME.put/get/del`` in, ``NAME.resp`` out (``mode`` fanout or p2p, lossless,
    ``resp_capacity``). ``m.kv`` is the state: ``m.kv.table`` (KVTable), ``m.kv.stats()``."""
    m = std_module(name, "kv")
    st = _KV(name, capacity, value_size, resp_capacity, outbox_limit)
    m.kv = st
    m.produces(st.resp, "KV_RESP", mode=mode, guarantee="lossless", capacity=resp_capacity)
    for op, base, verb in ((OP_PUT, "KV_PUT", "put"), (OP_GET, "KV_GET", "get"),
                           (OP_DEL, "KV_DEL", "del")):
        ht = instance_type(base, name, "kv")

        def fn(ctx, batch, _op=op):
            return st._run(ctx, batch, _op)
        m.handler(ht, batch=True, consumes=f"{name}.{verb}", message=base,
                  name=f"on_{verb}")(fn)

    @m.handler(st.outbox.flush_type, name="on_flush")
    def on_flush(ctx):
        st.outbox.flushed(ctx.system)

    @m.fini
    def _fini(system):
        st.outbox.drop_all(system)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)


def type_ids() -> dict[str, int]:
    """The kv types' ids (from kv.toml): what device handlers are registered under."""
    from ggmk.modules import _manifest
    from pathlib import Path
    man = _manifest(str(Path(__file__).with_name("kv.toml")))
    return {t.name: t.id for t in man.types}


def device_module(capacity: int = 1024, *, base: int = 32768, name: str = "kv"):
    """The kv module for the GPU kernel (``ggmk.device``): the same types and ids (KV_PUT,
    KV_GET, KV_DEL requests as device tasks, inline values only: meta0 = key, meta1 = value
    or tag) and the same answers (``KV_RESP`` to the host with ``emit_host``: meta0 =
    ``pack(status, op, tag)``, meta1 = the value or the key).

    The table lives in the kernel's user words (``g.user_*``, 65536 int64 words): word
    ``base`` counts the keys, then 4 words per slot (claim, state, key, value) for
    ``2 * capacity`` slots rounded up to a power of two; ``base + 1 + 4 * slots`` must fit in
    65536 (``capacity`` <= 2048 at the default base, <= 4096 with ``base=0``). A slot is
    claimed with an atomic fetch-add on its claim word (the device API has no
    compare-and-swap on user words), then published by setting its state: a lane that finds a slot claimed but not yet published
    yields and looks again. Deleted slots are tombstones reused only by the same key, so
    churning through many distinct keys exhausts the table (``FULL``), never overwrites.

    What the numeric subset forbids here (and in every device handler): Python objects
    (dicts, lists, strings, classes), allocating arrays, exceptions, recursion, I/O; values
    longer than a word (a request with a payload is answered ``BAD_REQUEST``). Not yet run
    on a real GPU: the ordering of the key/value stores before the state store relies on the
    ``cpu`` target's one host thread per block; on ``cuda`` it needs a memory fence.

    Example::

        import numpy as np
        import ggmk.device as gd
        from ggmk import task
        from ggmk.modules import kv

        ids = kv.type_ids()
        with gd.DeviceKernel([kv.device_module(capacity=64)], target="cpu") as k:
            k.push(task.make(1, type=ids["KV_PUT"], meta0=7, meta1=700))
            k.pull_until(1, timeout=300)
            k.push(task.make(1, type=ids["KV_GET"], meta0=7, meta1=5))
            r = k.pull_until(1, timeout=60)
        print(kv.unpack(int(r["meta0"][0])), int(r["meta1"][0]))    # (0, 2, 5) 700
    """
    global g                       # handlers must see the device API as a global (codegen)
    import ggmk.device as gd
    from ggmk.device import api as g
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise BootError(f"kv: capacity must be a positive int, got {capacity!r}")
    slots = 1
    while slots < 2 * capacity:
        slots <<= 1
    if not isinstance(base, int) or base < 0 or base + 1 + 4 * slots > 65536:
        raise BootError(f"kv device table: base {base} + 1 + 4 * {slots} slots exceeds the "
                        f"65536 user words; lower capacity or base")
    ids = type_ids()
    PUT, GET, DEL, RESP = ids["KV_PUT"], ids["KV_GET"], ids["KV_DEL"], ids["KV_RESP"]
    COUNT, T0, MASK, CAP, NSLOT = base, base + 1, slots - 1, capacity, slots
    TAGM = TAG_MASK
    YIELD = T.YIELD
    m = gd.Module(name)

    # home slot: Fibonacci hashing, 0x9E3779B97F4A7C15 as an int64 (wraps like the CPU's)
    @m.handler(PUT, max_yields=60000)
    def kv_put(ctx, task):
        key = g.meta0(task)
        val = g.meta1(task)
        if g.payload_ptr(task) != 0:
            g.emit_host(ctx, RESP, (BAD_REQUEST << 56) | (OP_PUT << 48), key)
            return 0
        h = ((key * -7046029254386353131) >> 40) & MASK
        for probe in range(NSLOT):
            s = T0 + 4 * ((h + probe) & MASK)
            st = g.user_get(ctx, s + 1)
            if st != 0:
                if g.user_get(ctx, s + 2) == key:
                    if st == 2:                         # a tombstone of this key: revive
                        if g.user_get(ctx, COUNT) >= CAP:
                            g.emit_host(ctx, RESP, (FULL << 56) | (OP_PUT << 48), key)
                            return 0
                        g.user_add(ctx, COUNT, 1)
                    g.user_set(ctx, s + 3, val)
                    g.user_set(ctx, s + 1, 1)
                    g.emit_host(ctx, RESP, OP_PUT << 48, key)
                    return 0
                continue
            if g.user_get(ctx, s) != 0:
                return YIELD                            # being written: look again later
            if g.user_get(ctx, COUNT) >= CAP:
                g.emit_host(ctx, RESP, (FULL << 56) | (OP_PUT << 48), key)
                return 0
            if g.user_add(ctx, s, 1) != 0:
                return YIELD                            # another lane claimed it first
            g.user_add(ctx, COUNT, 1)
            g.user_set(ctx, s + 2, key)
            g.user_set(ctx, s + 3, val)
            g.user_set(ctx, s + 1, 1)
            g.emit_host(ctx, RESP, OP_PUT << 48, key)
            return 0
        g.emit_host(ctx, RESP, (FULL << 56) | (OP_PUT << 48), key)
        return 0

    @m.handler(GET, max_yields=60000)
    def kv_get(ctx, task):
        key = g.meta0(task)
        tag = g.meta1(task) & TAGM
        h = ((key * -7046029254386353131) >> 40) & MASK
        for probe in range(NSLOT):
            s = T0 + 4 * ((h + probe) & MASK)
            st = g.user_get(ctx, s + 1)
            if st == 0:
                if g.user_get(ctx, s) != 0:
                    return YIELD
                break
            if g.user_get(ctx, s + 2) == key:
                if st == 1:
                    g.emit_host(ctx, RESP, (OP_GET << 48) | tag, g.user_get(ctx, s + 3))
                    return 0
                break
        g.emit_host(ctx, RESP, (NOT_FOUND << 56) | (OP_GET << 48) | tag, key)
        return 0

    @m.handler(DEL, max_yields=60000)
    def kv_del(ctx, task):
        key = g.meta0(task)
        tag = g.meta1(task) & TAGM
        h = ((key * -7046029254386353131) >> 40) & MASK
        for probe in range(NSLOT):
            s = T0 + 4 * ((h + probe) & MASK)
            st = g.user_get(ctx, s + 1)
            if st == 0:
                if g.user_get(ctx, s) != 0:
                    return YIELD
                break
            if g.user_get(ctx, s + 2) == key:
                if st == 1:
                    g.user_set(ctx, s + 1, 2)
                    g.user_add(ctx, COUNT, -1)
                    g.emit_host(ctx, RESP, (OP_DEL << 48) | tag, key)
                    return 0
                break
        g.emit_host(ctx, RESP, (NOT_FOUND << 56) | (OP_DEL << 48) | tag, key)
        return 0

    m.kv_layout = {"count": COUNT, "table": T0, "slots": NSLOT, "capacity": CAP}
    return m
