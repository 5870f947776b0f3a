"""Channel wiring across kernels: which channels are bridge channels, and are the two kernels'
declarations of each one consistent?

``plan(cpu_modules, gpu_modules, types)`` looks at every channel name declared on either
kernel: CPU producers (``Module.produces``), CPU consumers (``consumes`` / ``handler(...,
consumes=)``), GPU producers (``ggmk.device.Module.channel``) and GPU consumers (device
``handler(..., consumes=)``). A channel whose producer lives on one kernel and which has a
consumer on the other is a **bridge channel**; it is declared exactly like a local one. A
device channel no other module declares is the host's, as a CPU kernel's is: consumed only on
the GPU, it is a CPU -> GPU bridge channel the host publishes on (``system.channel(name)``, the
consumer's type); produced only there, a GPU -> CPU one the host may subscribe to.

Every conflict is a boot error naming both modules, their kernels, the channel and the types:
a producer and a consumer on different kernels with different message types, producers on
both kernels, more subscribers than a p2p channel allows (counted over both kernels), a mode
or guarantee one side declares differently, and (with ``types=``) a bridge channel whose type
``types.toml`` does not know. All problems are reported at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ggmk.core.channel_spec import MAX_FANOUT, validate_capacity
from ggmk.errors import BootError, ChannelError

CPU, GPU = "CPU", "GPU"
# the device side of a CPU -> GPU channel declared with no capacity holds as many messages as
# a CPU channel does (channel_spec.DEFAULT_CAPACITY): the bridge sends it at most that many
# (Bridge: its credit window is capped there), and 256 left the 1024-credit window's other
# 768 ingress tasks waiting on the device
DEFAULT_DEVICE_CAPACITY = 4096
DEFAULT_WINDOW = 1024


def credit_window(bc, window: int | None = None, room: int | None = None) -> int:
    """The credits of bridge channel ``bc`` (messages in flight to or on the far kernel):
    ``window`` as given (``bridge={"window": ...}``), or by default 1024, raised for a GPU ->
    CPU channel to the capacity of its device side. A CPU -> GPU channel gets no more than its
    device side holds, nor than ``room`` (the GPU kernel's ingress room: ``ingress_room``)
    either way. Why: tasks beyond the credits (GPU -> CPU egress) or beyond the device
    channel's room (CPU -> GPU ingress) wait on the device, woken at every credit: a GPU -> CPU
    channel of 4096 behind 1024 credits ran ~5 device tasks a message (3 with 4096 credits).
    (CPU -> GPU credits at the device side's 4096 by default measured slower: more ingress
    tasks then wait on the device for a consumer's own full channel.) And an ingress task
    the device's bucket cannot take is dropped at the door: more credits than ``room`` would
    lose messages of a lossless channel."""
    cap = max(1, int(bc.capacity))
    if bc.direction == "c2g":
        w = min(DEFAULT_WINDOW if window is None else int(window), cap)
        return w if room is None else max(1, min(w, int(room)))
    return max(DEFAULT_WINDOW, cap) if window is None else int(window)


def ingress_room(device_config) -> int:
    """How many ingress tasks of one CPU -> GPU channel the GPU kernel can hold without
    dropping any: its type bucket (``bucket_cap``) less the tenth kept for priority-0 tasks
    (a message of any other priority is refused there). Host records that find no room are
    dropped at the door (``sys.dropped``, CHAN_FULL), so a channel's credits stay within it."""
    cap = int(device_config.bucket_cap)
    return cap - cap // 10


def device_spec(channels, window: int | None = None) -> tuple[list, list]:
    """What the bridge's device module is built from (``device_side.build_module``), for the
    bridge channels ``channels``: ``inbound`` [(k, name, type id, mode, guarantee, capacity)]
    of the CPU -> GPU ones, ``outbound`` [(k, name, lossless, credit window)] of the GPU ->
    CPU ones (``window``: the ``bridge={"window": ...}`` option or None)."""
    inbound = [(b.k, b.name, b.type_id, b.mode, b.guarantee, b.capacity)
               for b in channels if b.direction == "c2g"]
    outbound = [(b.k, b.name, b.lossless, credit_window(b, window))
                for b in channels if b.direction == "g2c"]
    return inbound, outbound


@dataclass
class End:
    kernel: str                 # CPU | GPU
    module: str
    type: object                # as declared (name or id; None: not stated)
    what: str                   # "produces" | "consumes"
    mode: str | None = None
    guarantee: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class BridgeChannel:
    """One bridge channel. ``direction``: "c2g" (CPU producer, GPU consumers) or "g2c"."""
    k: int
    name: str
    direction: str
    type_id: int
    type_name: str
    mode: str
    guarantee: str
    capacity: int
    producer: End
    consumers: list
    deterministic: bool = False
    # no CPU module declares it: the dual boot opens its CPU channel for the host
    host: bool = False

    @property
    def lossless(self) -> bool:
        return self.guarantee == "lossless"

    def describe(self) -> str:
        a, b = (CPU, GPU) if self.direction == "c2g" else (GPU, CPU)
        return (f"{self.name!r} ({self.type_name}, {self.mode}, {self.guarantee}, "
                f"{a} -> {b})")


def _type_label(types, t) -> str:
    if t is None:
        return "?"
    if isinstance(t, str):
        return repr(t)
    try:
        return f"{types.name(int(t))!r} (id {int(t)})" if types is not None and int(t) in types \
            else f"id {int(t)}"
    except Exception:   # noqa: BLE001 - display only
        return f"id {t}"


def _resolve(types, t):
    """A comparable key for a declared type: its id when the registry knows it, else the name."""
    if t is None:
        return None
    if isinstance(t, str):
        if types is not None and t in types:
            return int(types.id(t))
        return t
    return int(t)


def _ends(cpu_modules, gpu_modules):
    chans: dict[str, dict] = {}

    def slot(name):
        return chans.setdefault(name, {"prod": [], "cons": []})

    for m in cpu_modules:
        for d in m.channels:
            e = End(CPU, m.name, d.type, "produces" if d.direction == "produce" else "consumes",
                    d.mode, d.guarantee, dict(getattr(d, "options", {}) or {}))
            slot(d.name)["prod" if d.direction == "produce" else "cons"].append(e)
    for m in gpu_modules:
        for d in m.channels:
            cap = getattr(d, "capacity", None)
            if cap is None:
                cap = (getattr(d, "options", None) or {}).get("capacity")
            msg = getattr(d, "message", None)
            if msg is None:
                msg = getattr(d, "type", None)
            slot(d.name)["prod"].append(End(GPU, m.name, msg, "produces", d.mode, d.guarantee,
                                            {"capacity": cap}))
        for h in m.handlers:
            for cname in h.consumes:
                slot(cname)["cons"].append(End(GPU, m.name, h.message, "consumes",
                                               options={"handler": h.name,
                                                        "handler_type": h.type}))
    return chans


def plan(cpu_modules, gpu_modules, types=None, *, types_given: bool = False) -> list:
    """The bridge channels of a dual-kernel boot (ascending name order, ``k`` = 0, 1, ...),
    or a BootError listing every cross-kernel declaration problem."""
    problems: list[str] = []
    out: list[BridgeChannel] = []
    for name, ends in sorted(_ends(cpu_modules, gpu_modules).items()):
        prods, cons = ends["prod"], ends["cons"]
        pk = {e.kernel for e in prods}
        ck = {e.kernel for e in cons}
        if len(pk) > 1:
            a = next(e for e in prods if e.kernel == CPU)
            b = next(e for e in prods if e.kernel == GPU)
            problems.append(f"channel {name!r} is produced on both kernels: CPU module "
                            f"{a.module!r} and GPU module {b.module!r} (a channel's producer "
                            "lives on one kernel)")
            continue
        # a device channel no other module declares is the host's, as a CPU kernel's is
        # (a standard module goes on either kernel): consumed only on the GPU, the host
        # publishes on it; produced only there, the host subscribes to it
        host = False
        if pk:
            pkern = pk.pop()
            host = pkern == GPU and not cons
        elif CPU in ck and GPU in ck:
            pkern = CPU                     # published by the host into the CPU channel
        elif ck == {GPU}:
            pkern, host = CPU, True
        else:
            continue
        far = [e for e in cons if e.kernel != pkern]
        # producer spec (mode, guarantee, capacity, type)
        if prods:
            p = prods[0]
        elif CPU in ck:
            c0 = next(e for e in cons if e.kernel == CPU)
            p = End(CPU, c0.module, c0.type, "consumes", c0.mode, c0.guarantee, {})
        else:
            # the type the GPU consumers expect (``message=``), else the handler's own
            # type, as a CPU consumer's channel carries its handler's type by default
            c0 = cons[0]
            t = next((e.type for e in cons if e.type is not None), c0.options["handler_type"])
            p = End(GPU, c0.module, t, "consumes", None, None, {})
        mode = p.mode or "p2p"
        guarantee = p.guarantee or "lossless"
        if not far and not host:
            continue
        # types: every end's declared type must be the producer's
        pt = _resolve(types, p.type)
        for e in prods[1:] + cons:
            if e.type is None:
                continue
            et = _resolve(types, e.type)
            if pt is not None and et != pt and e.kernel != p.kernel:
                problems.append(
                    f"channel {name!r}: {p.kernel} module {p.module!r} {p.what} type "
                    f"{_type_label(types, p.type)} but {e.kernel} module {e.module!r} "
                    f"{e.what} type {_type_label(types, e.type)} (CHAN_TYPE_MISMATCH across "
                    "kernels)")
        # one declaration of mode / guarantee
        for e in cons:
            for attr, v in (("mode", e.mode), ("guarantee", e.guarantee)):
                if v is not None and v != getattr(p, attr) and getattr(p, attr) is not None \
                        and e.kernel != p.kernel:
                    problems.append(f"channel {name!r}: {p.kernel} module {p.module!r} declares "
                                    f"it {getattr(p, attr)} but {e.kernel} module {e.module!r} "
                                    f"declares it {v}")
        if mode == "p2p" and len(cons) > 1:
            names = ", ".join(f"{e.kernel} module {e.module!r}" for e in cons)
            problems.append(f"channel {name!r} is p2p but has {len(cons)} subscribers across "
                            f"kernels ({names}) (CHAN_ALREADY_BOUND; declare mode='fanout')")
        if mode == "fanout" and len(cons) > MAX_FANOUT:
            # (each kernel counts only its own: 31 CPU + 2 GPU subscribers booted)
            nk = {k: sum(e.kernel == k for e in cons) for k in (CPU, GPU)}
            problems.append(f"channel {name!r} is fanout with {len(cons)} subscribers across "
                            f"kernels ({nk[CPU]} CPU, {nk[GPU]} GPU): fan-out allows at most "
                            f"{MAX_FANOUT} (CHAN_ALREADY_BOUND)")
        # the type must be known on both kernels
        tname, tid = None, None
        if isinstance(p.type, str):
            tname = p.type
            if types is not None and p.type in types:
                tid = int(types.id(p.type))
            elif types_given:
                problems.append(f"bridge channel {name!r} ({p.kernel} module {p.module!r}) is "
                                f"declared with unknown type {p.type!r}: types.toml has no such "
                                "type (both kernels must know it)")
                continue
        elif p.type is not None:
            tid = int(p.type)
            if types is not None and tid in types:
                tname = types.name(tid)
            elif types_given:
                problems.append(f"bridge channel {name!r} ({p.kernel} module {p.module!r}) is "
                                f"declared with unknown type id {tid}: types.toml has no such "
                                "type (both kernels must know it)")
                continue
        det = False
        if types is not None and tid is not None and tid in types:
            det = bool(getattr(types.info(tid), "deterministic", False))
        cap = p.options.get("capacity")
        if pkern == CPU:
            # the bridge's own device channel (the proxy): as many as the CPU channel holds,
            # up to 4096 (the CPU channel's ring is where more wait); the CPU kernel's own
            # check first (a bare ValueError from int() here, before)
            if cap is not None:
                try:
                    cap = validate_capacity(name, cap)
                except ChannelError as e:
                    problems.append(f"CPU module {p.module!r}: {e}")
                    continue
            cap = min(cap or DEFAULT_DEVICE_CAPACITY, 4096)
        else:
            cap = int(cap or DEFAULT_DEVICE_CAPACITY)   # the GPU module's declaration as is
        out.append(BridgeChannel(len(out), name, "c2g" if pkern == CPU else "g2c",
                                 tid if tid is not None else -1, tname or f"TYPE_{tid}",
                                 mode, guarantee, cap, p,
                                 list(cons), det, host))
    if problems:
        e = BootError("boot: cross-kernel channel wiring failed:\n  " + "\n  ".join(problems))
        e.problems = problems
        raise e
    return out
