"""The ``echo`` module (SPEC §10): forward messages - route, tap, round-robin, retype.

``echo.module(to=["a.out"], ...)`` handles one input (a type submitted directly, default
``ECHO``, or a channel with ``consumes=``) and re-emits every message - meta0, meta1 and the
payload (shared, not copied: one more reference per copy) - on:

* ``mode="route"``: the first channel of ``to``;
* ``mode="round_robin"``: the channels of ``to`` in turn; a full one is skipped for the next
  (so round-robin degrades to "whoever has room"), and only when every one is full does the
  message wait;
* ``tap="x.tap"`` (either mode): a copy also goes to the tap channel, declared ``lossy`` by
  default so a slow observer never slows the main path (its overflow lands on
  ``sys.dropped`` with CHAN_FULL, counted, never silent); ``tap_guarantee="lossless"`` makes
  a full tap count ``tap_full`` and skip that copy instead of holding the message.

``retype="NEW_TYPE"`` emits as another type (declared on the output channels); the payload
bytes travel unchanged. A message that finds its output full returns ``WAIT`` (it runs again
on a later tick; waiting is backpressure, not a yield) - so messages that waited can come out
after later ones.

Example::

    import ggmk
    from ggmk.modules import echo

    fwd = echo.module(to=["work.a", "work.b"], mode="round_robin", tap="work.tap")
    sink = ggmk.Module("sink")
    seen = []

    @sink.handler("SINK_A", consumes="work.a", message="ECHO")
    def a(ctx): seen.append(("a", ctx.task.meta0))

    @sink.handler("SINK_B", consumes="work.b", message="ECHO")
    def b(ctx): seen.append(("b", ctx.task.meta0))

    with ggmk.boot([fwd, sink], workers=2) as system:
        system.submit("ECHO", meta0=[1, 2, 3, 4])
        system.run()
    print(sorted(seen))   # [('a', 1), ('a', 3), ('b', 2), ('b', 4)]
"""
from __future__ import annotations

import threading

import numpy as np

from ggmk import task as T
from ggmk.errors import BootError
from ggmk.modules import instance_type, std_module

__all__ = ["module"]

MODES = ("route", "round_robin")


def module(to, *, mode: str = "route", name: str = "echo", type: str = "ECHO",
           consumes: str | None = None, message: str | None = None, retype: str | None = None,
           tap: str | None = None, tap_guarantee: str = "lossy", capacity: int = 4096,
           out_mode: str = "p2p", guarantee: str = "lossless"):
    """A configured echo ``ggmk.Module``.

    ``to``: output channel name(s). ``type``: the input type when tasks are submitted
    directly (its handler; by default ``ECHO``, and ``ECHO_<NAME>`` for an instance not named
    ``echo``: ``system.submit("ECHO_FWD", ...)`` for ``name="fwd"``, its output still of
    type ``ECHO``); ``consumes``/``message``: take the input from a channel carrying
    ``message`` instead (the handler type is then ``ECHO_<NAME>`` unless ``type`` is given).
    ``retype``: the output type (default: the input's message type). ``capacity``,
    ``out_mode``, ``guarantee``: how the output channels are declared. ``m.echo``: counters.
    """
    if isinstance(to, str):
        to = [to]
    to = list(to)
    if not to or not all(isinstance(c, str) for c in to):
        raise BootError(f"echo: 'to' must be one or more channel names, got {to!r}")
    if len(set(to)) != len(to):
        raise BootError(f"echo: 'to' names a channel twice: {to!r}")
    if mode not in MODES:
        raise BootError(f"echo: mode must be one of {MODES}, got {mode!r}")
    if mode == "route" and len(to) != 1:
        raise BootError(f"echo: mode='route' takes exactly one output channel, got {to!r} "
                        "(use mode='round_robin' for several)")
    if tap is not None and tap in to:
        raise BootError(f"echo: the tap channel {tap!r} is also an output")
    m = std_module(name, "echo")
    if consumes is not None:
        msg = message or "ECHO"
        htype = type if type != "ECHO" else instance_type("ECHO", name, "")
    else:
        msg = type
        # a named instance gets its own handler type, as every standard module's does (two
        # instances on ECHO could not boot together); its messages stay ECHO
        htype = instance_type(type, name, "echo") if type == "ECHO" else type
    out_type = retype or msg
    outs = [m.produces(c, out_type, mode=out_mode, guarantee=guarantee, capacity=capacity)
            for c in to]
    tap_d = None
    if tap is not None:
        tap_d = m.produces(tap, out_type, mode="fanout", guarantee=tap_guarantee,
                           capacity=capacity)
    state = {"rr": 0, "forwarded": 0, "tapped": 0, "tap_full": 0, "waits": 0,
             "per_channel": dict.fromkeys(to, 0)}
    lock = threading.Lock()
    m.echo = state
    nout = len(outs)

    def forward(ctx, batch):
        recs = batch.records
        n = len(recs)
        arena = ctx.system.arena
        m0s, m1s = recs["meta0"].tolist(), recs["meta1"].tolist()
        ptrs, lens = recs["payload_ptr"].tolist(), recs["payload_len"].tolist()
        codes = None
        per = state["per_channel"]
        for i in range(n):
            ptr, plen = ptrs[i], lens[i]
            with lock:
                start = state["rr"]
            sent = -1
            for j in range(nout):
                k = (start + j) % nout
                if ptr:
                    arena.retain(ptr)
                if ctx.emit_batch(outs[k], meta0=m0s[i], meta1=m1s[i], payload_ptr=ptr,
                                  payload_len=plen, count=1):
                    sent = k
                    break
                if ptr:
                    arena.release(ptr)
            if sent < 0:
                if codes is None:
                    codes = np.zeros(n, dtype=np.int32)
                codes[i:] = T.WAIT
                state["waits"] += n - i
                break
            with lock:
                state["rr"] = (sent + 1) % nout
                state["forwarded"] += 1
                per[to[sent]] += 1
            if tap_d is not None:
                if ptr:
                    arena.retain(ptr)
                if ctx.emit_batch(tap_d, meta0=m0s[i], meta1=m1s[i], payload_ptr=ptr,
                                  payload_len=plen, count=1):
                    state["tapped"] += 1
                else:
                    state["tap_full"] += 1
                    if ptr:
                        arena.release(ptr)
        return codes

    if consumes is not None:
        m.handler(htype, batch=True, consumes=consumes, message=msg, name="forward")(forward)
    else:
        m.handler(htype, batch=True, name="forward")(forward)
    return m


# ------------------------------------------------------------------------------ GPU kernel
g = None          # ggmk.device.api once device_module() ran (imported lazily: it loads Numba)


def type_id(name: str = "ECHO") -> int:
    """The id of an echo type (from echo.toml)."""
    from pathlib import Path

    from ggmk.modules import _manifest
    return _manifest(str(Path(__file__).with_name("echo.toml"))).types.id(name)


def device_module(to, *, mode: str = "route", type: int | None = None,
                  retype: int | None = None, tap: str | None = None,
                  tap_guarantee: str = "lossy", name: str = "echo", capacity: int = 256,
                  out_mode: str = "p2p", rr_word: int | None = None):
    """The echo module for the GPU kernel (``ggmk.device``): handles type ``type`` (an id or
    a type name; default ``ECHO``'s id, and for an instance not named ``echo`` the type name
    ``ECHO_<NAME>``, as the CPU version: a kernel given ``types=``, as a dual boot is, resolves
    it) and forwards meta0, meta1 and the payload (one more reference per
    copy) on device channels it declares: ``to`` (1..4 names), ``mode`` ``"route"`` or
    ``"round_robin"`` (the turn is the atomic counter in user word ``rr_word``, recorded as
    ``m.user_words``, ``None`` when one output needs no turn; without ``rr_word`` 32767, or a
    free word the kernel's build finds when another module has that one, as a second
    instance's: ``m.user_words`` says which once the kernel is made; a full channel is
    skipped; all full: ``wait_at`` and try again), a ``tap`` copy (lossy by default), and
    ``retype`` (the channels' message type id; default the input type). The device channels
    are the module's: consume them with ``handler(..., consumes="name")``. Channel ids are
    fixed at build (``m.echo_channels``: name -> declaration).

    It runs in a device process too (``device_process=True``, ``watchdog``): its handlers are
    closures, so the child calls this factory again with the same arguments
    (``m._ggmk_rebuild``).

    The numeric subset: the handler is straight-line integer code over the task's words and
    channel ids; it cannot hold Python lists or dicts of channels (so at most 4 outputs, each
    a closure constant), allocate, raise, or format.

    Example::

        import numpy as np
        import ggmk.device as gd
        from ggmk import task
        from ggmk.device import api as g
        from ggmk.modules import echo

        fwd = echo.device_module(["d.a", "d.b"], mode="round_robin")
        sink = gd.Module("sink")

        @sink.handler(900, consumes=("d.a", "d.b"))
        def seen(ctx, task):
            g.emit_host(ctx, 901, g.meta0(task), g.channel(task))
            return 0

        with gd.DeviceKernel([fwd, sink], target="cpu") as k:
            k.push(task.make(4, type=echo.type_id(), meta0=np.arange(4)))
            out = k.pull_until(4, timeout=300)
        print(sorted(out["meta0"].tolist()), len(set(out["meta1"].tolist())))   # [0, 1, 2, 3] 2
    """
    made = dict(locals())             # the arguments: a device process rebuilds it
    global g                       # handlers must see the device API as a global (codegen)
    import ggmk.device as gd
    from ggmk.device import api as g
    if isinstance(to, str):
        to = [to]
    to = list(to)
    if not 1 <= len(to) <= 4 or not all(isinstance(c, str) for c in to) or len(set(to)) != len(to):
        raise BootError(f"echo (device): 'to' must be 1..4 distinct channel names, got {to!r}")
    if mode not in MODES:
        raise BootError(f"echo (device): mode must be one of {MODES}, got {mode!r}")
    if mode == "route" and len(to) != 1:
        raise BootError(f"echo (device): mode='route' takes exactly one output channel, "
                        f"got {to!r}")
    if tap is not None and tap in to:
        raise BootError(f"echo (device): the tap channel {tap!r} is also an output")
    movable = rr_word is None         # the build places it (gd.Module.movable)
    if movable:
        rr_word = 32767
    if isinstance(rr_word, bool) or not isinstance(rr_word, int) or not 0 <= rr_word < 65536:
        raise BootError(f"echo (device): rr_word must be an int user word 0..65535 (the "
                        f"round-robin turn), got {rr_word!r}")
    # the CPU version's handler types: ECHO for the default instance, ECHO_<NAME> (a type
    # name the boot registers) for a named one, so two instances can share a kernel and an
    # instance answers to the same type on either kernel; the output stays ECHO
    tin = (type_id() if name == "echo" else instance_type("ECHO", name, "echo")) \
        if type is None else type
    tout = retype if retype is not None else (type_id() if type is None else type)
    m = gd.Module(name)
    chans = [m.channel(c, message=tout, mode=out_mode, guarantee="lossless", capacity=capacity)
             for c in to]
    m.echo_channels = dict(zip(to, chans))
    C0 = chans[0]
    C1 = chans[1] if len(chans) > 1 else C0
    C2 = chans[2] if len(chans) > 2 else C0
    C3 = chans[3] if len(chans) > 3 else C0
    CT = C0
    HAS_TAP = tap is not None
    if HAS_TAP:
        CT = m.channel(tap, message=tout, mode="fanout", guarantee=tap_guarantee,
                       capacity=capacity)
        m.echo_channels[tap] = CT
    NOUT = len(chans)
    RR = rr_word
    # the one user word it uses (round_robin over several outputs), for overlap checks
    m.user_words = (RR, RR + 1, f"{name}: echo (device) round-robin turn") if NOUT > 1 \
        else None

    def place(b):
        nonlocal RR
        RR = b
    if movable and NOUT > 1:
        m.movable(place)

    @m.handler(tin, max_yields=60000)
    def forward(ctx, task):
        m0 = g.meta0(task)
        m1 = g.meta1(task)
        ptr = g.payload_ptr(task)
        nb = g.payload_len(task)
        start = 0
        if NOUT > 1:
            start = g.user_add(ctx, RR, 1) % NOUT
        sent = False
        for j in range(NOUT):
            k = (start + j) % NOUT
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if k == 0:
                c = g.emit_chan_full(ctx, C0, m0, m1, ptr, nb, -1)
            elif k == 1:
                c = g.emit_chan_full(ctx, C1, m0, m1, ptr, nb, -1)
            elif k == 2:
                c = g.emit_chan_full(ctx, C2, m0, m1, ptr, nb, -1)
            else:
                c = g.emit_chan_full(ctx, C3, m0, m1, ptr, nb, -1)
            if c == 0:
                sent = True
                break
            if ptr != 0:
                g.release(ctx, ptr)
        if not sent:
            return g.wait_at(task, m0)          # every output full: come back, meta kept
        if HAS_TAP:
            if ptr != 0:
                g.retain(ctx, ptr, 1)
            if g.emit_chan_full(ctx, CT, m0, m1, ptr, nb, -1) != 0 and ptr != 0:
                g.release(ctx, ptr)
        return 0

    m._ggmk_rebuild = (__name__, "device_module", made)
    return m
