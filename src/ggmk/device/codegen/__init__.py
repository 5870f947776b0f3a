"""Build the persistent kernel for a target from the registered handlers, in three steps (one
module each):

1. ``resolve``: resolution and validation. Handlers get dense indices 0..N-1 in registration
   order with their type ids resolved; device channels get ids, message types and
   subscribers. Every declaration error is raised here, before anything compiles.
2. ``source``: source generation. The handlers' type ids become compile-time constants of a
   generated ``type_index`` (an ``if``/``elif`` chain: no tables, no indirect calls) and of
   the dispatch switch ``dispatch_segment`` which calls each handler by name; the channel
   tables likewise; ``constants`` are the compile-time constants of the whole source.
3. ``compiler``: compile and cache. The generated text is appended to the target's primitives,
   the kernel source (``kernel_src.py``) and the handler API (``api.py``), written to
   ``$GGMK_CACHE_DIR`` (default ``~/.cache/ggmk``) under a key that hashes the handler set
   (bytecode, constants, granularity, ...), the sources, the configuration and the target, and
   executed in a fresh module whose namespace holds the target's primitives. Because the file
   is real and its name carries the key, the target's compiler cache (Numba's on ``cpu`` and
   ``cuda``) is keyed by the handler set: a second boot with the same handlers loads the
   compiled kernel from disk. Each handler is rebuilt with its references to
   ``ggmk.device.api`` (the module or its functions) and to ``@func`` helpers rebound to the
   target-compiled versions.

The names below are the ones the host side (``host``, ``build``) uses.
"""
from ggmk.device.codegen.resolve import (ChanSpec, check_type_policies,  # noqa: F401
                                         resolve_channels, resolve_handlers, smem_words)
from ggmk.device.codegen.source import (ENQ_CHANNEL, ENQ_NORMAL, ENQ_SHARED,  # noqa: F401
                                        ENQ_YIELD, constants, generate, generate_channels,
                                        trace_switches)
from ggmk.device.codegen.compiler import Built, build, cache_dir  # noqa: F401
