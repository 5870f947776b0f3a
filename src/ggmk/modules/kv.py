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

The table is fixed at boot: ``capacity`` keys (the CPU kernel's is a bounded dict; the
device table's open addressing over ``2 * capacity`` slots answers the same). A put of a new
key into a full table answers ``FULL`` and changes nothing (an existing key is always
updated). Values are at most ``value_size`` bytes: ``value_size <= 8`` keeps words
(inline; a payload value is read little-endian), larger sizes keep bytes (a word put inline
is kept as its 8 little-endian bytes); a longer value answers ``TOO_BIG``. Statuses: ``OK``,
``NOT_FOUND``, ``FULL``, ``TOO_BIG``, ``BAD_REQUEST`` (``STATUS_NAMES``).

Backpressure: a response that finds ``PREFIX.resp`` full waits in the module's outbox (the
operation is not redone); while ``outbox_limit`` responses wait, new requests are answered
with ``WAIT`` (they run again later), and so are gets of bytes values while the arena has
no room for their answer (both counted in ``waits``), so nothing is lost and memory stays
bounded. Responses go out only while something subscribes to ``PREFIX.resp`` (a put nobody
awaits is not answered; counted in the outbox's ``unheard``).

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

import functools
import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import Outbox, emit_or_later, instance_type, slot_key, std_module

__all__ = ["module", "KVTable", "GetReplier", "pack", "unpack", "device_module", "type_ids",
           "batch_encode", "batch_decode", "BATCH_ENTRY", "OK", "NOT_FOUND", "FULL", "TOO_BIG",
           "BAD_REQUEST", "STATUS_NAMES", "OP_PUT", "OP_GET", "OP_DEL", "TAG_MASK"]

OK, NOT_FOUND, FULL, TOO_BIG, BAD_REQUEST = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: "OK", NOT_FOUND: "NOT_FOUND", FULL: "FULL", TOO_BIG: "TOO_BIG",
                BAD_REQUEST: "BAD_REQUEST"}
OP_PUT, OP_GET, OP_DEL = 1, 2, 3
TAG_MASK = (1 << 48) - 1
_RESP_BLOCK = 4096                 # answers the reused emit buffer of a kv module holds
_REC = T.RECORD_STRUCT             # one record as plain ints (type, flags, ..., meta0, meta1)
_EMPTY = object()
_U64 = (1 << 64) - 1


def pack(status: int, op: int, tag: int) -> int:
    """A response's meta0: status (8 bits), op (8 bits), tag (48 bits)."""
    return (status & 0xFF) << 56 | (op & 0xFF) << 48 | (tag & TAG_MASK)


_GET_HIT, _GET_MISS = pack(OK, OP_GET, 0), pack(NOT_FOUND, OP_GET, 0)   # (_get_one)


def unpack(meta0: int) -> tuple[int, int, int]:
    """(status, op, tag) of a response's meta0."""
    meta0 = int(meta0)
    return meta0 >> 56, (meta0 >> 48) & 0xFF, meta0 & TAG_MASK


class KVTable:
    """A map of at most ``capacity`` keys: ``put(key, value) -> status`` (a new key when
    ``capacity`` keys are in answers FULL and changes nothing; an existing key is always
    updated), ``get(key) -> value or None``, ``delete(key) -> bool``; ``put_many`` /
    ``get_many`` for columns. Thread-safe (one lock, held by the callers of the column forms).

    A dict: what fits is decided by the count alone (the device table's rule: its open
    addressing over ``2 * capacity`` slots always has a free slot below capacity), so slots
    here would only add a Python probe loop per operation."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise BootError(f"kv: capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.lock = threading.Lock()
        self._map: dict = {}

    def put(self, key: int, value) -> int:
        m = self._map
        if len(m) >= self.capacity and key not in m:
            return FULL
        m[key] = value
        return OK

    def put_many(self, keys: list, values: list) -> int:
        """Put ``keys[i] = values[i]`` in order; the number applied, a prefix: the rest would
        start with a new key into a full table (FULL: the caller answers it and goes on with
        ``put`` one by one, as a later key may still be an update)."""
        if len(keys) != len(values):
            raise ValueError(f"KVTable.put_many: {len(keys)} keys but {len(values)} values; "
                             f"one value per key")
        m = self._map
        if len(m) + len(keys) <= self.capacity:        # every key fits, new or not
            m.update(zip(keys, values))
            return len(keys)
        for i, (k, v) in enumerate(zip(keys, values)):
            if len(m) >= self.capacity and k not in m:
                return i
            m[k] = v
        return len(keys)

    def get(self, key: int):
        return self._map.get(key)

    def get_many(self, keys: list) -> list:
        """The values (None where absent) of a list of int keys."""
        return list(map(self._map.get, keys))

    def delete(self, key: int) -> bool:
        return self._map.pop(key, _EMPTY) is not _EMPTY

    def __len__(self) -> int:
        return len(self._map)

    def items(self):
        return list(self._map.items())


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
        # (responses are for whoever asked: none go out while nothing subscribes)
        self.outbox = Outbox(self.resp, instance_type("KV_FLUSH", name, "kv"), outbox_limit,
                             optional=True)
        self._resp_ch = None                # the reply channel (_get_one), looked up once
        self._resp_sys = None               # ... in this system (a kernel's or a sandbox's)
        self._blk = None                    # the reused block of answers (_get_inline)
        self._one_lock = threading.Lock()
        self.lane_published = 0             # answers the call lane handed over (sdk.KV)
        self.counters = {"put": 0, "get": 0, "del": 0, "hit": 0, "miss": 0, "full": 0,
                         "too_big": 0, "bad": 0, "waits": 0}

    # one handler per op; each answers every request it applies
    def _run(self, ctx, batch, op):
        system = ctx.system
        out = self.outbox
        # (an empty outbox's flush only takes its lock to find nothing: a put meanwhile is
        # the same race either way)
        if out._q and out.flush(system) and out.full:
            self.counters["waits"] += len(batch)
            return T.WAIT
        recs = batch.records
        if self.inline:                    # (answers waiting go first: see _answer)
            if op == OP_GET:
                return self._get_inline(system, recs)
            if op == OP_PUT and len(recs) > 1 and self._put_inline(system, recs):
                return None
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
                    v = tab.get(key)
                    if v is not None and not self.inline:
                        p = arena.alloc(max(len(v), 1))
                        if not p:
                            # the arena is full for now (answers in flight hold it): push
                            # back the rest, as a full outbox does; they run once room is back
                            if codes is None:
                                codes = np.zeros(n, dtype=np.int32)
                            codes[i:] = T.WAIT
                            c["waits"] += n - i
                            break
                        arena.view(p, len(v))[:] = np.frombuffer(v, np.uint8)
                    c["get"] += 1
                    if v is None:
                        c["miss"] += 1
                        out.put(pack(NOT_FOUND, op, m1), key)
                    elif self.inline:
                        c["hit"] += 1
                        out.put(pack(OK, op, m1), v)
                    else:
                        c["hit"] += 1
                        out.put(pack(OK, op, m1), len(v), p, len(v))
                else:
                    c["del"] += 1
                    ok = tab.delete(key)
                    if not ok:
                        c["miss"] += 1
                    out.put(pack(OK if ok else NOT_FOUND, op, m1), key)
        out.flush(system)
        return codes

    def _get_inline(self, system, recs):
        """Gets of word values, the request/reply hot path: the look-ups are one pass under
        the table lock, the answers are built as columns and published with one emit (the
        per-answer outbox is only for what the reply channel cannot take now)."""
        n = len(recs)
        if n == 1:
            try:                                       # one struct call, no NumPy scalars
                f = _REC.unpack_from(recs)
                return self._get_one(system, f[9], f[10])
            except (BufferError, TypeError, ValueError):     # a strided 1-record view
                return self._get_one(system, int(recs["meta0"][0]), int(recs["meta1"][0]))
        keys = recs["meta0"]
        c = self.counters
        with self.table.lock:                          # the counters too: del counts misses
            vals = self.table.get_many(keys.tolist())
            nmiss = vals.count(None)
            c["get"] += n
            c["hit"] += n - nmiss
            c["miss"] += nmiss
        m0 = np.bitwise_and(recs["meta1"], np.uint64(TAG_MASK))
        m0 |= np.uint64(OP_GET << 48)
        if not nmiss:
            m1 = np.array(vals, np.uint64)
        else:
            hit = np.fromiter((v is not None for v in vals), np.bool_, count=n)
            m0[~hit] |= np.uint64(NOT_FOUND << 56)
            m1 = keys.copy()                           # a miss answers with the key
            if nmiss < n:
                m1[hit] = [v for v in vals if v is not None]
        self._answer(system, m0, m1)
        return None

    def _put_inline(self, system, recs) -> bool:
        """Puts of word values without payloads, as columns: applied in order under the table
        lock (``KVTable.put_many``: one C-level update while every key fits), answered with one
        emit. False (nothing done): a payload, or a value wider than ``value_size``: the
        general loop answers those one by one."""
        if recs["payload_ptr"].any():
            return False
        vals = recs["meta1"]
        if self.vmax < _U64 and (vals > np.uint64(self.vmax)).any():
            return False
        n = len(recs)
        keys = recs["meta0"]
        kl, vl = keys.tolist(), vals.tolist()
        tab = self.table
        full = []
        with tab.lock:
            done = tab.put_many(kl, vl)
            for i in range(done, n):                   # the table filled up on the way
                if tab.put(kl[i], vl[i]) == FULL:
                    full.append(i)
            c = self.counters
            c["put"] += n
            c["full"] += len(full)
        m0 = np.full(n, OP_PUT << 48, np.uint64)       # status OK, tag 0 (inline puts)
        if full:
            m0[full] |= np.uint64(FULL << 56)
        self._answer(system, m0, keys.copy())          # a put answers with the key
        return True

    def _answer(self, system, m0, m1) -> None:
        """Answer columns ``m0`` / ``m1`` on the reply channel with one emit, from a reused
        block of records; what the channel cannot take now waits in the outbox, in order."""
        n = len(m0)
        out = self.outbox
        if len(out):                       # after the answers already waiting, in order
            out.put_many(m0, m1)
            out.flush(system)
            return
        ch = system.channel(self.resp)
        live = bool(ch.subs) and not ch.closed
        mine = live and n <= _RESP_BLOCK and self._one_lock.acquire(False)
        try:
            if mine:                    # the reused answer buffer (fields set once per boot)
                blk = self._blk
                if blk is None or blk["channel"][0] != ch.id or blk["type"][0] != ch.type_id:
                    blk = self._blk = T.make(_RESP_BLOCK, type=ch.type_id,
                                             flags=T.FLAG_CHANNEL_MSG, channel=ch.id)
                recs = blk[:n]
                recs["seq"] = 0
            else:
                recs = T.make(n, type=ch.type_id, flags=T.FLAG_CHANNEL_MSG, channel=ch.id)
            recs["meta0"] = m0
            recs["meta1"] = m1
            done = ch.emit(recs) if live else 0
            if done < n:                               # the rest waits in the outbox, in order
                out.put_many(m0[done:], m1[done:])
        finally:
            if mine:
                self._one_lock.release()
        if done:
            with out._lock:                            # the outbox's count of answers out
                out.published += done
        if done < n:
            out.flush(system)

    def _get_one(self, system, key: int, tag: int):
        """One get (a caller with one request in flight): scalars, and the answer goes out
        as one record packed from plain ints (a struct call: ~4x cheaper than setting the
        fields of a reused array, and no lock to share one)."""
        m0, m1 = self.reply_one(key, tag)
        self.send_one(system, m0, m1)
        return None

    def reply_one(self, key: int, tag: int) -> tuple[int, int]:
        """The answer (meta0, meta1) to a get of ``key`` with ``tag`` (an inline table),
        counted; nothing is emitted (the call lane's ``answer``: sdk.KV)."""
        c = self.counters
        lk = self.table.lock
        lk.acquire()                 # (a pair, not ``with``: ~2.5x cheaper on CPython 3.11)
        try:                         # the counters too: del counts misses
            v = self.table._map.get(key)
            c["get"] += 1
            if v is None:
                c["miss"] += 1
            else:
                c["hit"] += 1
        finally:
            lk.release()
        if v is None:                                  # (pack(), its constant part made once)
            return _GET_MISS | tag & TAG_MASK, key
        return _GET_HIT | tag & TAG_MASK, v

    def answers_now(self) -> bool:
        """Whether an answer may skip the outbox: nothing of this module waits there."""
        return not self.outbox._q

    def taken_directly(self) -> None:
        """Count an answer the call lane handed to its caller (``published`` in stats, as
        ``send_one`` counts one the reply channel took). The lane calls it under the reply
        channel's lock: that serializes these counts."""
        self.lane_published += 1

    def send_one(self, system, m0: int, m1: int) -> None:
        """Emit one answer on the reply channel, or queue it in the outbox (behind the
        answers waiting there, or while the channel cannot take it)."""
        ch = self._resp_ch
        if ch is None or ch.closed or self._resp_sys is not system:
            # (keyed by the system, not ch.kernel: a sandbox's channel has none, and the
            # sandbox's second single get raised AttributeError)
            ch = self._resp_ch = system.channel(self.resp)
            self._resp_sys = system
        if ch.subs and not ch.closed and not self.outbox._q:
            # (answers waiting go first: behind them in the outbox, below)
            # one record from plain ints (Channel.emit_one: no array, no column passes; a
            # channel without it, e.g. ggmk.testing's sandbox, takes the record)
            one = getattr(ch, "emit_one", None)
            if (not one(ch.type_id, 0, 0, 0, 0, m0, m1)) if one is not None else ch.emit(
                    T.make(1, type=ch.type_id, flags=T.FLAG_CHANNEL_MSG, channel=ch.id,
                           meta0=m0, meta1=m1), built=True, prio=0):
                with self.outbox._lock:
                    self.outbox.published += 1
                return
        self.outbox.put(m0, m1)
        self.outbox.flush(system)

    def stats(self) -> dict:
        return dict(self.counters, size=len(self.table), capacity=self.table.capacity,
                    waiting=len(self.outbox),
                    published=self.outbox.published + self.lane_published)


class GetReplier:
    """The call lane's side (``ggmk.core.lane.Replier``) of a kv module's gets of an inline
    table: what ``sdk.KV.get`` runs its gets through. ``kv``: the module's state
    (``module().kv``); ``system``: the kernel it runs on (its reply channel for ``send``)."""

    __slots__ = ("answer", "ready", "taken", "send")

    def __init__(self, kv: "_KV", system):
        if not kv.inline:
            raise ValueError(f"kv {kv.name!r}: the call lane is for inline (word) tables; "
                             f"this one keeps bytes (value_size > 8)")
        self.answer = kv.reply_one
        self.ready = kv.answers_now
        self.taken = kv.taken_directly
        self.send = functools.partial(kv.send_one, system)


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


BATCH_ENTRY = np.dtype([("w", "<u8"), ("key", "<i8"), ("value", "<i8")])   # 24 bytes


def batch_encode(ops, keys, values=0, tags=0) -> bytes:
    """A ``KV_BATCH`` payload: one entry per op (``OP_PUT``/``OP_GET``/``OP_DEL``, columns or
    scalars), key and value words (int64), 48-bit tags."""
    keys = np.asarray(keys, dtype=np.int64)
    e = np.zeros(len(keys), BATCH_ENTRY)
    e["w"] = (np.asarray(ops, dtype=np.uint64) << np.uint64(48)) | \
        (np.asarray(tags, dtype=np.uint64) & np.uint64(TAG_MASK))
    e["key"] = keys
    e["value"] = values
    return e.tobytes()


def batch_decode(raw) -> np.ndarray:
    """The entries of an answered batch: fields ``status``, ``op``, ``tag``, ``key``,
    ``value`` (the value read by a get)."""
    e = np.frombuffer(bytes(raw), BATCH_ENTRY)
    out = np.zeros(len(e), [("status", "u1"), ("op", "u1"), ("tag", "<u8"), ("key", "<i8"),
                            ("value", "<i8")])
    out["status"] = e["w"] >> np.uint64(56)
    out["op"] = (e["w"] >> np.uint64(48)) & np.uint64(0xFF)
    out["tag"] = e["w"] & np.uint64(TAG_MASK)
    out["key"], out["value"] = e["key"], e["value"]
    return out


def kv_find(ctx, key, t0, mask, nslot):
    """The one lock-free probe loop of the device table (put, get and del start with it): the
    first word of the slot holding ``key`` (live or a tombstone: the caller reads its state),
    or -1 when a slot on the chain is locked but not published (being written, or being
    handed to another key: the caller yields and looks again), or ``-2 - e`` when ``key`` is
    absent: ``e`` is the first empty slot of the chain, 0 when every slot was probed."""
    h = slot_key(key, mask)
    for probe in range(nslot):
        s = t0 + 4 * ((h + probe) & mask)
        if g.user_get(ctx, s + 1) != 0:
            if g.user_get(ctx, s + 2) == key:
                return s
            continue
        if g.user_get(ctx, s) != 0:
            return -1
        return -2 - s
    return -2


def kv_scan(ctx, key, t0, mask, nslot, mine):
    """The whole chain of ``key``, for a put of a key that is not live: ``e | k << 16 | t <<
    32`` with ``e`` the chain's end (its first empty slot, or ``mine``: the empty slot this
    lane holds; 0: the table has no empty slot), ``k`` the slot holding ``key`` (0: none; at
    most one does) and ``t`` the first tombstone before the end (0: none); or -1 when a slot
    on the chain is locked but not published (look again). Slot words are below 65536."""
    h = slot_key(key, mask)
    ks = 0
    tb = 0
    for probe in range(nslot):
        s = t0 + 4 * ((h + probe) & mask)
        st = g.user_get(ctx, s + 1)
        if st != 0:
            if ks == 0 and g.user_get(ctx, s + 2) == key:
                ks = s
            elif st == 2 and tb == 0:
                tb = s
            continue
        if s != mine and g.user_get(ctx, s) != 0:
            return -1
        return s | (ks << 16) | (tb << 32)
    return (ks << 16) | (tb << 32)


def kv_lock(ctx, w):
    """Take lock word ``w`` (a slot's first word, or the table's lock) with a fetch-add; when
    another lane holds it, give the add back (bounded tries) and answer False: the caller
    releases what it holds and looks again later (no lane waits holding a lock)."""
    for _ in range(16):
        if g.user_add(ctx, w, 1) == 0:
            return True
        g.user_add(ctx, w, -1)
    return False


def kv_reserve(ctx, count, cap):
    """Take one of the table's ``cap`` places (1), or none when it is full (0). The check and
    the increment are one fetch-add, so lanes putting at the same time cannot both see the
    last place free and overfill the table (a check, then an add, did: 18 keys in 16)."""
    if g.user_add(ctx, count, 1) >= cap:
        g.user_add(ctx, count, -1)
        return 0
    return 1


def kv_put1(ctx, key, val, count, t0, mask, nslot, cap):
    """Put ``key = val``: ``OK``, ``FULL`` (a key that is not live, with ``cap`` keys in), or
    -1 (the table changed under this lane: the caller yields and puts again).

    A live key's value is written under its slot's lock. Any other put (a new key, or the
    tombstone of this one) first locks the chain's end - its first empty slot, which every
    put of this key needs, so puts of one key never run this part at once; the table's lock
    when it has no empty slot - then scans the chain again (it must still end there, with no
    slot being written) and writes the key into its own tombstone, else into the chain's
    first tombstone (hidden while it changes keys), else into that empty slot."""
    r = kv_find(ctx, key, t0, mask, nslot)
    if r == -1:
        return -1
    if r >= 0 and g.user_get(ctx, r + 1) == 1:          # live: an update
        if not kv_lock(ctx, r):
            return -1
        live = g.user_get(ctx, r + 1) == 1 and g.user_get(ctx, r + 2) == key
        if live:
            g.user_set(ctx, r + 3, val)
        g.user_add(ctx, r, -1)
        if live:
            return OK
        return -1
    if g.user_get(ctx, count) >= cap:
        return FULL
    p = kv_scan(ctx, key, t0, mask, nslot, 0)
    if p == -1:
        return -1
    e = p & 0xFFFF
    tk = e
    if e == 0:
        tk = count + 1                                  # no empty slot: the table's lock
    if not kv_lock(ctx, tk):
        return -1
    if e != 0 and g.user_get(ctx, e + 1) != 0:          # published meanwhile
        g.user_add(ctx, tk, -1)
        return -1
    q = kv_scan(ctx, key, t0, mask, nslot, e)
    if q == -1 or (q & 0xFFFF) != e:                    # the chain changed: look again
        g.user_add(ctx, tk, -1)
        return -1
    ks = (q >> 16) & 0xFFFF
    s = (q >> 32) & 0xFFFF
    if ks != 0:
        if g.user_get(ctx, ks + 1) != 2:                # live meanwhile: an update
            g.user_add(ctx, tk, -1)
            return -1
        s = ks                                          # its own tombstone
    if kv_reserve(ctx, count, cap) == 0:
        g.user_add(ctx, tk, -1)
        return FULL
    if s != 0:
        if not kv_lock(ctx, s):
            g.user_add(ctx, count, -1)
            g.user_add(ctx, tk, -1)
            return -1
        if g.user_get(ctx, s + 1) != 2:
            g.user_add(ctx, s, -1)
            g.user_add(ctx, count, -1)
            g.user_add(ctx, tk, -1)
            return -1
        if s != ks:
            g.user_set(ctx, s + 1, 0)                   # unpublished while it changes keys
            g.user_set(ctx, s + 2, key)
        g.user_set(ctx, s + 3, val)
        g.user_set(ctx, s + 1, 1)
        g.user_add(ctx, s, -1)
    elif e != 0:
        g.user_set(ctx, e + 2, key)
        g.user_set(ctx, e + 3, val)
        g.user_set(ctx, e + 1, 1)
    else:                                   # no empty slot, no tombstone: > cap keys (never)
        g.user_add(ctx, count, -1)
        g.user_add(ctx, tk, -1)
        return FULL
    g.user_add(ctx, tk, -1)
    return OK


def kv_del1(ctx, key, count, t0, mask, nslot):
    """Delete ``key``: ``OK``, ``NOT_FOUND``, or -1 (look again). The slot becomes a tombstone
    under its lock; tombstones just before an empty slot then become empty (probe chains
    through them end there anyway), taking each next slot's lock first, so the table keeps
    empty slots to end chains however many keys come and go."""
    r = kv_find(ctx, key, t0, mask, nslot)
    if r == -1:
        return -1
    if r < 0 or g.user_get(ctx, r + 1) != 1:
        return NOT_FOUND
    if not kv_lock(ctx, r):
        return -1
    if g.user_get(ctx, r + 2) != key:                   # the slot changed keys: look again
        g.user_add(ctx, r, -1)
        return -1
    if g.user_get(ctx, r + 1) != 1:                     # deleted meanwhile
        g.user_add(ctx, r, -1)
        return NOT_FOUND
    g.user_set(ctx, r + 1, 2)
    g.user_add(ctx, count, -1)
    # sweep: while the slot after holds nothing (locked by this lane), this one becomes empty
    nx = t0 + 4 * (((r - t0) // 4 + 1) & mask)
    if g.user_get(ctx, nx + 1) != 0 or not kv_lock(ctx, nx):
        g.user_add(ctx, r, -1)
        return OK
    if g.user_get(ctx, nx + 1) != 0:
        g.user_add(ctx, nx, -1)
        g.user_add(ctx, r, -1)
        return OK
    cur = r
    for _ in range(nslot):
        g.user_set(ctx, cur + 1, 0)                     # empty once unlocked
        g.user_add(ctx, nx, -1)
        nx = cur
        cur = t0 + 4 * (((cur - t0) // 4 - 1) & mask)
        if g.user_get(ctx, cur + 1) != 2 or not kv_lock(ctx, cur):
            break
        if g.user_get(ctx, cur + 1) != 2:
            g.user_add(ctx, cur, -1)
            break
    g.user_add(ctx, nx, -1)
    return OK


for _f in (kv_find, kv_scan, kv_lock, kv_reserve, kv_put1, kv_del1):
    _f._ggmk_device_func = True          # what ggmk.device.func marks (without importing it)
del _f


def _max_capacity(base: int) -> int:
    """The largest device table capacity whose words fit from ``base`` (0: none)."""
    n = (65536 - 2 - base) // 4                     # slots that fit
    return (1 << (n.bit_length() - 1)) // 2 if n >= 1 else 0


def device_module(capacity: int = 1024, *, base: int | None = None, name: str = "kv",
                  channels: bool = False, resp_capacity: int = 256):
    """The kv module for the GPU kernel (``ggmk.device``): the same types and ids (KV_PUT,
    KV_GET, KV_DEL requests as device tasks, word values: meta0 = key, meta1 = value or tag;
    a put with a payload: the value's bytes, meta1 = tag, as ``sdk.KV.put`` sends) and the
    same answers (``KV_RESP``: meta0 = ``pack(status, op, tag)``, meta1 = the
    value or the key). Out: to the host with ``emit_host`` (``channels=False``), or
    subscribed to ``NAME.put``/``NAME.get``/``NAME.del`` and published on the device channel
    ``NAME.resp`` (``channels=True``: the CPU version's channels, fanout, lossless,
    ``resp_capacity`` messages; an answer that finds it full is retried by a ``KV_FLUSH``
    task, the operation is not redone). Batches (below) answer the host either way.

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    The table lives in the kernel's user words (``g.user_*``, 65536 int64 words): word
    ``base`` counts the keys, ``base + 1`` is the table's lock, then 4 words per slot (lock,
    state, key, value) for ``2 * capacity`` slots rounded up to a power of two;
    ``base + 2 + 4 * slots`` must fit in 65536 (``capacity`` <= 2048 from ``base=32768``,
    <= 4096 from ``base=0``; ``m.user_words``). Without ``base`` the table starts at 32768
    (lower when it would not fit from there), or where the kernel's build finds free words
    when other modules' words are there (``m.user_words`` and ``m.kv_layout`` say where once
    the kernel is made). The device API has no compare-and-swap on user words: a slot's lock is taken with an atomic fetch-add on its first word (given back
    when another lane holds it: that lane yields and looks again later). Gets take no lock:
    a lane that finds a slot locked but not yet published yields and looks again, and a value
    counts only if the slot still holds the key after it was read. A live key's value is
    written under its slot's lock; every other put of a key (new, or revived from its
    tombstone) first locks its probe chain's end (its first empty slot: every put of that key
    needs it; the table's lock if no slot is empty), checks the rest of the chain again, and
    then reuses the chain's first tombstone (any key's: deleted slots are reused, so keys
    can come and go for ever, ``FULL`` only with ``capacity`` keys in) or that empty slot.
    A delete turns the slot into a tombstone under its lock, and tombstones just before an
    empty slot become empty again.

    Put and del are device functions (:func:`kv_put1`, :func:`kv_del1`) that the single
    handlers and ``KV_BATCH`` share. Batches: a ``KV_BATCH`` task applies many operations from
    a device buffer in one handler call (payload = ``batch_encode(ops, keys, values, tags)``:
    24 bytes per operation; meta0 = their count, meta1 = 0: anything else is
    ``BAD_REQUEST``, as is a count the payload cannot hold) and answers them in place
    (``batch_decode`` of the bytes read back: status, op, tag, key, value), then sends
    ``KV_BATCH_DONE`` (meta0 = the buffer, which the host keeps and reuses; meta1 = the
    count). Buffers come from ``KV_ALLOC`` (meta0 = bytes, at most 128 KiB: 5461 operations;
    answered by ``KV_BUFFER`` with the address, 0 if the arena is full). One task per
    operation pays the kernel's per-task path (queue, dispatch, one host record) for each; a
    batch pays it once.

    What the numeric subset forbids here (and in every device handler): Python objects
    (dicts, lists, strings, classes), allocating arrays, exceptions, recursion, I/O; values
    longer than a word (a put's payload value is at most 8 bytes, read little-endian as the
    CPU kv reads it: longer answers ``TOO_BIG``; a get's or del's payload is ignored). Not
    yet run on a real GPU: the ordering of the key/value stores before the state store relies
    on the ``cpu`` target's one host thread per block; on ``cuda`` it needs a memory fence.

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
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g                       # handlers must see the device API as a global (codegen)
    import ggmk.device as gd
    from ggmk.modules import default_base, device_api, device_check, device_region
    g = device_api()
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise BootError(f"kv (device): capacity must be a positive int, got {capacity!r}")
    slots = 1
    while slots < 2 * capacity:
        slots <<= 1
    movable = base is None            # the build places it (gd.Module.movable)
    if movable:
        base = default_base(32768, 2 + 4 * slots)
    at = 0 if movable else base       # (where a movable one's bound is: the whole words)
    lo, hi = device_region(
        "kv (device)", base, 2 + 4 * slots,
        f"capacity={capacity} (2 + 4 words x {slots} slots)",
        lambda: f"capacity <= {_max_capacity(at)}" + ("" if movable else " at this base")
        if _max_capacity(at) else "", given=not movable)
    CH = bool(channels)
    if CH:
        device_check("kv (device): resp_capacity", resp_capacity, 1, 1 << 20)
    ids = type_ids()
    PUT, GET, DEL, RESP = ids["KV_PUT"], ids["KV_GET"], ids["KV_DEL"], ids["KV_RESP"]
    FLUSH = ids["KV_FLUSH"]
    MASK, CAP, NSLOT = slots - 1, capacity, slots
    TAGM = TAG_MASK
    YIELD, WAITC = T.YIELD, T.WAIT
    m = gd.Module(name)
    COUNT = T0 = 0

    def place(b):
        """The words the handlers use, from ``b`` (again where the build moves the region)."""
        nonlocal COUNT, T0
        COUNT, T0 = b, b + 2
        m.kv_layout = {"count": COUNT, "lock": COUNT + 1, "table": T0, "slots": NSLOT,
                       "capacity": CAP}
    place(base)
    C_RESP = 0
    if CH:
        C_RESP = m.channel(f"{name}.resp", message=RESP, mode="fanout",
                           capacity=resp_capacity)

    @m.handler(PUT, max_yields=60000, consumes=f"{name}.put" if CH else None)
    def kv_put(ctx, task):
        key = g.meta0(task)
        ptr = g.payload_ptr(task)
        tag = 0
        if ptr == 0:
            st = kv_put1(ctx, key, g.meta1(task), COUNT, T0, MASK, NSLOT, CAP)
        else:
            # the CPU kv's rule: payload = the value's little-endian bytes (at most 8), meta1
            # = the tag, answered in every case (sdk.KV.put sends this form and awaits it);
            # the payload stays the sender's (a channel message's: the runtime releases it)
            tag = g.meta1(task) & TAGM
            nb = g.payload_len(task)
            if nb > 8:
                st = TOO_BIG
            else:
                # one word read (arena blocks are 64-byte granules: it stays in the block),
                # the bytes past the payload masked off
                v = g.load_i64(ctx, ptr)
                if nb < 8:
                    v &= (1 << (8 * nb)) - 1
                st = kv_put1(ctx, key, v, COUNT, T0, MASK, NSLOT, CAP)
        if st < 0:
            return YIELD                                # the table changed: put again
        a0 = (st << 56) | (OP_PUT << 48) | tag
        if CH:
            if g.emit_chan(ctx, C_RESP, a0, key) != 0:
                emit_or_later(ctx, FLUSH, a0, key)      # full: a flush task retries
        else:
            g.emit_host(ctx, RESP, a0, key)
        return 0

    @m.handler(GET, max_yields=60000, consumes=f"{name}.get" if CH else None)
    def kv_get(ctx, task):
        key = g.meta0(task)
        tag = g.meta1(task) & TAGM
        r = kv_find(ctx, key, T0, MASK, NSLOT)
        if r == -1:
            return YIELD
        a0 = (NOT_FOUND << 56) | (OP_GET << 48) | tag
        a1 = key
        if r >= 0 and g.user_get(ctx, r + 1) == 1:
            v = g.user_get(ctx, r + 3)
            if g.user_get(ctx, r + 2) == key:           # still this key's after the read
                a0 = (OP_GET << 48) | tag
                a1 = v
        if CH:
            if g.emit_chan(ctx, C_RESP, a0, a1) != 0:
                emit_or_later(ctx, FLUSH, a0, a1)
        else:
            g.emit_host(ctx, RESP, a0, a1)
        return 0

    @m.handler(DEL, max_yields=60000, consumes=f"{name}.del" if CH else None)
    def kv_del(ctx, task):
        key = g.meta0(task)
        tag = g.meta1(task) & TAGM
        st = kv_del1(ctx, key, COUNT, T0, MASK, NSLOT)
        if st < 0:
            return YIELD
        a0 = (st << 56) | (OP_DEL << 48) | tag
        if CH:
            if g.emit_chan(ctx, C_RESP, a0, key) != 0:
                emit_or_later(ctx, FLUSH, a0, key)
        else:
            g.emit_host(ctx, RESP, a0, key)
        return 0

    if CH:
        @m.handler(FLUSH, max_yields=0)
        def kv_flush(ctx, task):
            if g.emit_chan(ctx, C_RESP, g.meta0(task), g.meta1(task)) != 0:
                return WAITC                            # still full: when a credit is back
            return 0

    BATCH, DONE = ids["KV_BATCH"], ids["KV_BATCH_DONE"]
    RESUME = 1 << 62
    ALLOC, BUF = ids["KV_ALLOC"], ids["KV_BUFFER"]

    @m.handler(ALLOC, max_yields=0)
    def kv_alloc(ctx, task):
        g.emit_host(ctx, BUF, g.alloc(ctx, g.meta0(task)), g.meta1(task))
        return 0

    @m.handler(BATCH, max_yields=60000)
    def kv_batch(ctx, task):
        # the entries in place: (pack(0, op, tag), key, value) -> (pack(st, op, tag), key, v)
        ptr = g.payload_ptr(task)
        n = g.meta0(task)
        # (n * 24 could wrap past the check: a count of 2**62 + 1 ran off the arena)
        if ptr == 0 or n < 0 or n > g.payload_len(task) // 24:
            g.emit_host(ctx, RESP, (BAD_REQUEST << 56), n)
            return 0
        # meta1: 0 from the host; RESUME | i where a yield left off (a host value would skip
        # entries that then read OK, or, negative, write outside the buffer)
        m1 = g.meta1(task)
        i = m1 & (RESUME - 1)
        if (m1 != 0 and m1 - i != RESUME) or i > n:
            g.emit_host(ctx, RESP, (BAD_REQUEST << 56), n)
            return 0
        while i < n:
            e = ptr + 24 * i
            w = g.load_i64(ctx, e)
            op = (w >> 48) & 0xFF
            key = g.load_i64(ctx, e + 8)
            st = OK
            if op == OP_GET:
                r = kv_find(ctx, key, T0, MASK, NSLOT)
                if r == -1:
                    st = -1
                else:
                    st = NOT_FOUND
                    if r >= 0 and g.user_get(ctx, r + 1) == 1:
                        v = g.user_get(ctx, r + 3)
                        if g.user_get(ctx, r + 2) == key:
                            g.store_i64(ctx, e + 16, v)
                            st = OK
            elif op == OP_PUT:
                st = kv_put1(ctx, key, g.load_i64(ctx, e + 16), COUNT, T0, MASK, NSLOT, CAP)
            elif op == OP_DEL:
                st = kv_del1(ctx, key, COUNT, T0, MASK, NSLOT)
            else:
                st = BAD_REQUEST
            if st < 0:
                g.set_meta1(task, RESUME | i)
                return YIELD                            # resume at entry i
            g.store_i64(ctx, e, (st << 56) | (w & 0xFFFFFFFFFFFFFF))
            i += 1
        g.retain(ctx, ptr, 1)                           # the host's reference: it reuses it
        g.emit_host(ctx, DONE, ptr, n)
        return 0

    m.user_words = (lo, hi, f"{name}: kv (device) count, lock, 4 words x {NSLOT} slots")
    if movable:
        m.movable(place)
    if CH:
        m.kv_channels = {"put": f"{name}.put", "get": f"{name}.get", "del": f"{name}.del",
                         "resp": f"{name}.resp"}
    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
