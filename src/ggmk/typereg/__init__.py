"""The type registry (``types.toml``), module manifests (``module.toml``) and boot-time checks.

A package, one module per concept: ``schema`` (fields, types, the payload layout and codecs),
``toml`` (reading ``types.toml``), ``registry`` (``TypeRegistry``), ``decls`` (``ChannelDecl``,
``HandlerDecl``: the one declaration type of manifests and of the CPU and device modules),
``manifest`` (``module.toml``) and ``validate`` (boot-time checks). Everything is importable
from ``ggmk.typereg`` itself.

Every message type has an id (the task record's ``type`` field, u32), an UPPER_SNAKE name, a
payload schema and policies. From the schema come a packed NumPy dtype, 0-copy typed views of
payloads in arena memory, a binary codec and the JSON codec ``ggmk emit TYPE --payload JSON``
uses (SPEC §6, §11).

``types.toml``
--------------
One table per type under ``[types]``; the only other top-level table is ``[registry]``::

    [registry]
    strict = true             # default false: see below

    [types.PHYS_STEP]
    id = 10                   # required: 1 .. 65535 (0xFFFF), unique
    deterministic = true      # policy, default false: handlers of it must be deterministic
    lossy = false             # policy, default true; false = needs lossless delivery
    max_yields = 8            # policy, default 16 (0 .. 65535): the yield circuit breaker
    doc = "one physics step"  # optional free text
    payload = { x = "f64", y = "f64", n = "u32", tag = "bytes[8]", blob = "bytes" }

A module whose handler or channel names a type that no types.toml, module fragment or
``register`` call defines gets it at an automatic id (scripts need no types.toml); with
``strict = true`` (or ``load_types(path, strict=True)``) that is a BootError naming the module,
the handler or channel, the name and the closest defined names, and without it a name close to
a defined one is a warning on the ``ggmk`` log (a misspelt handler type never sees the defined
type's tasks). A module instance's own ``<TYPE>_<MODULE>`` types (``kv.module(name="cache")``:
``KV_GET_CACHE``) are allowed either way; ``reg.auto_registered()`` lists the bare names.

``payload`` may also be written as a sub-table (``[types.PHYS_STEP.payload]``); field order is the
TOML order either way. A type without ``payload`` has an empty payload (inline-only tasks).

Field types: ``u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool`` (bool is one byte, 0 or 1),
``bytes[N]`` (exactly N bytes, N >= 1) and ``bytes`` (variable length; at most one, and last).
The fixed part (all fields but ``bytes``) is at most ``MAX_FIXED_SIZE`` = 2**31-1 bytes (NumPy's
record size is a C int). Field names are identifiers; ``type``, ``record``, ``var``, ``keys``,
``to_dict`` and names starting with ``__`` are reserved (``PayloadView`` has attributes of those
names, and ``v.name`` must read the field).

Payload layout (the same bytes on CPU and GPU)::

    [fixed part: the fields in order, packed, little-endian, no padding]   ``TypeInfo.dtype``
    [u32 little-endian length L][L bytes]       only when the type has a ``bytes`` field

so ``payload_len == fixed_size`` without a variable field and ``fixed_size + 4 + L`` with one.
The length prefix is not part of ``dtype``.

JSON codec: a JSON object with exactly the type's fields; integers are JSON integers (a float is
refused for an integer field), floats accept any JSON number (NaN/Infinity as Python's ``json``
writes them), bools are ``true``/``false``, and both kinds of bytes field are lowercase hex
strings (``"00ff10"``; uppercase and spaces between bytes are accepted on input).

Type ids: 0 is never a type (a zeroed task record has type 0). Ids in types.toml may be anything in
1 .. 0xFFFF (``MAX_TYPE_ID``: the record's ``type`` field is a u32, but the CPU kernel's per-type
tables have ``1 << 16`` entries, so a larger id is refused when the file is loaded rather than
failing the boot); keep hand-assigned ids below ``AUTO_ID_FIRST`` (0x8000), because
``TypeRegistry.register`` without an id takes the lowest free id in 0x8000 .. 0xFFFF.

``module.toml``
---------------
::

    [module]
    name = "counter"            # lowercase: [a-z][a-z0-9_-]*
    version = "0.1.0"
    description = "optional"

    [[channel]]                 # one per channel end this module declares
    name = "counter.in"         # namespace.verb, lowercase dotted
    direction = "consume"       # produce | consume
    type = "COUNTER_INC"
    mode = "p2p"                # p2p (default) | fanout
    guarantee = "lossless"      # lossless (default) | lossy

    [[handler]]
    type = "COUNTER_INC"
    name = "inc"                # the function name in the module
    deterministic = false       # default false
    batch = false               # default false; true means granularity "batch"
    granularity = "task"        # CPU: task | batch; GPU: scalar | warp | block
    shared_mem = 0              # bytes of shared memory (block granularity only)

    [types.COUNTER_INC]         # optional: types the module brings, as in types.toml
    id = 100

Example::

    reg = load_types("types.toml")
    step = reg.info("PHYS_STEP")
    raw = step.encode({"x": 1.0, "y": 2.0, "n": 3, "tag": b"abcdefgh", "blob": b"hi"})
    v = step.view(np.frombuffer(raw, np.uint8), len(raw))   # v["n"] == 3, v.blob -> uint8 view
    step.decode_json(step.encode_json('{"x": 1, "y": 2, "n": 3, "tag": "0001020304050607",'
                                      ' "blob": ""}'))
    man = load_module_manifest("modules/counter/module.toml")
    validate_declarations(reg, man.channels, man.handlers, source=man.path)   # or BootError
"""

from __future__ import annotations

from ggmk.typereg.schema import (  # noqa: F401
    AUTO_ID_FIRST, AUTO_ID_LAST, DEFAULT_MAX_YIELDS, FIELD_NAME_RE, FIELD_TYPES, MAX_TYPE_ID,
    MAX_YIELDS_LIMIT, TYPE_NAME_RE, TYPE_TABLE_DTYPE, Field, PayloadView, TypeInfo,
)
from ggmk.typereg.registry import TypeRegistry, UnknownTypeError  # noqa: F401
from ggmk.typereg.toml import load_types  # noqa: F401
from ggmk.typereg.decls import (  # noqa: F401
    CHANNEL_NAME_RE, CPU_GRANULARITIES, DIRECTIONS, GPU_GRANULARITIES, GRANULARITIES,
    GUARANTEES, HANDLER_NAME_RE, MODES, MODULE_NAME_RE, Chan, ChannelDecl, HandlerDecl,
)
from ggmk.typereg.manifest import ModuleManifest, load_module_manifest  # noqa: F401
from ggmk.typereg.validate import (  # noqa: F401
    ANY_TYPE_CHANNELS, raise_boot_problems, validate_declarations, validate_manifests,
)

__all__ = [
    "AUTO_ID_FIRST", "AUTO_ID_LAST", "MAX_TYPE_ID", "DEFAULT_MAX_YIELDS", "FIELD_TYPES",
    "TYPE_TABLE_DTYPE", "Field", "TypeInfo", "PayloadView", "TypeRegistry", "UnknownTypeError",
    "load_types", "ChannelDecl", "HandlerDecl", "ModuleManifest", "load_module_manifest",
    "validate_declarations", "validate_manifests",
]
