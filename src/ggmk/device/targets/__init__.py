"""Device targets (``cpu``, ``sim``, ``cuda``): the written contract between the kernel's host
side (``host``, ``codegen``, ``layout``) and the modules that compile, allocate and launch.

A target is a module ``ggmk.device.targets.<name>`` that provides what :class:`Target` lists;
:func:`get_target` is the one way to obtain one (it also resolves ``"auto"``). Nothing outside
the target modules asks which target it runs on: a rule that differs between targets is a
member of the contract (the block count of ``cuda``, the host threads of ``cpu``, the words
only ``cpu`` uses, the process the simulator needs).

The host side opens one *session* per kernel (``open_session(plan)``, :class:`Session`): its
state allocators, compile step, launch and ``close`` after the kernel exited. ``cuda`` keeps
per-kernel resources there (its non-blocking stream, the deferred-cleanup scope); the others
need none and use :class:`ModuleSession`.

The primitive source of a target (``PRIM_SRC``: the text spliced in front of ``kernel_src.py``)
lives in its own file here, ``<name>_prims.py``, read as text (:func:`read_source`) like the
kernel source: ``sim``'s is ``cuda``'s with its overrides applied by name
(:func:`override_source`).
"""
from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from ggmk.errors import BootError

NAMES = ("cpu", "sim", "cuda")
_DIR = Path(__file__).parent


# ------------------------------------------------------------------------------------ contract

@runtime_checkable
class Launch(Protocol):
    """A running kernel (what ``Session.launch`` returns). Optional: ``native_ids`` (OS thread
    ids of the host threads running it, ``cpu``: for CPU-time accounting)."""

    error: BaseException | None          # what the kernel raised, once it has exited

    def alive(self) -> bool: ...          # still running (never blocks)

    def wait(self, timeout: float) -> bool: ...   # True once it has exited


@runtime_checkable
class Session(Protocol):
    """The host side of one kernel on one target (``open_session(plan)``)."""

    def alloc_dev(self, image): ...       # device words from a host image (an int64 array)

    def alloc_map(self, image): ...       # host-mapped words (both sides touch) from an image

    def alloc_arena(self, nbytes: int): ...   # the payload arena (uint8, zeroed)

    def prepare(self, kernel, arrays, built=None) -> None: ...   # compile before launch

    def launch(self, kernel, arrays) -> Launch: ...   # launch once; returns at once

    def close(self) -> None: ...          # after the kernel exited: give resources back


@runtime_checkable
class Target(Protocol):
    """What every target module provides. Members marked *optional* below may be left out; a
    caller asks for them with :func:`option`, which supplies the default in :data:`OPTIONAL`.

    Compile side (``codegen``):

    * ``NAME``: ``"cpu"``, ``"sim"`` or ``"cuda"`` (part of the compile cache key).
    * ``PRIM_SRC``: the primitives as source text, executed in the kernel's namespace before
      ``kernel_src.py`` (``atomic_*``, ``blk_*``, ``fence*``, ``syncthreads``, lane and block
      ids, ``idle_wait``, ``wake_idle``, ``block_shared``/``block_smem``...: the list is in
      ``kernel_src.py``'s docstring).
    * ``namespace()``: the globals ``PRIM_SRC`` and the kernel need besides the layout
      constants (intrinsics such as ``vload``/``vstore``/``clock_ns``, ``numba.cuda``,
      ``int64``).
    * ``device_fn(fn, inline=False)``: compile one function of the kernel's source as a
      device function; ``inline``: it must be inlined (see ``INLINE_ALWAYS``).
    * ``handler_fn(fn, noinline=False)``: compile a user handler (``noinline``: it is
      kept out of line, see ``build.mark_noinline``).
    * ``kernel_fn(fn)``: compile ``kernel_body`` into the launchable kernel.
    * optional ``INLINE_ALWAYS``: names of primitives that must be inlined (default ``()``).
    * optional ``constants(plan) -> dict``: compile-time constants only this target's
      primitives use (``cpu``: the names of its words in ``layout``'s target words; default
      none).
    * optional ``CATCH_HANDLER_EXCEPTIONS``: the target's device code has exceptions
      (``cpu``, ``sim``: True; ``cuda``: none): the generated dispatch wraps each handler call
      so a handler that raises fails its task with HANDLER_EXCEPTION (default False).

    Host side (``host``, ``layout``):

    * ``DEFAULTS``: ``DeviceConfig`` fields this target sets (blocks, threads, batch...).
    * ``available() -> (ok, why)``: whether the target can run in this process, and if not,
      what to do.
    * ``open_session(plan) -> Session``: the per-kernel resources, allocators and launch.
    * ``host_view(arr) -> numpy.ndarray``: the host's plain view of a mapped array.
    * ``address_of(arr) -> int``: the device address of an array's first byte (the arena's
      is ``payload_ptr`` 0).
    * optional ``resolve_config(cfg, given)``: complete a config dict in place before it is
      validated; ``given`` holds the keys the user set (``cuda``: ``blocks=0`` is one block
      per SM; ``cpu``: a default ``host_threads`` is at most ``blocks``). Default: nothing.
    * optional ``init_images(plan, images)``: initial values of the target's words in the
      state images (``cpu``: its host-thread count). Default: nothing.
    * optional ``host_notifier(ctl) -> callable | None``: given the host's view of the ctl
      words, a function the host calls after each push, after a pull that freed ring room
      and at stop, to wake parked workers (``cpu``: the doorbell futex). Default ``None``.
    * optional ``host_bell(ctl) -> bell | None``: the host's end of a device -> host bell
      (``cpu``: ``HostBell``, a futex the device rings after a tx publish while a host thread
      says it sleeps: ``value()``, ``waiting(on)``, ``wait(seen, timeout_s)``, ``ring()``).
      Default ``None``: the device rings no host bell, the host watches the tx ring.
    * optional ``PROCESS_ENV``: environment a process needs *before* it imports anything for
      this target (``sim``: the simulator switch); a caller that cannot promise that (a test
      process that also runs other targets) runs the target in a fresh process with it.
      Default ``None``: any process will do.
    """

    NAME: str
    DEFAULTS: dict
    PRIM_SRC: str

    def namespace(self) -> dict: ...

    def device_fn(self, fn, inline: bool = False): ...

    def handler_fn(self, fn, noinline: bool = False): ...

    def kernel_fn(self, fn): ...

    def available(self) -> tuple[bool, str]: ...

    def open_session(self, plan) -> Session: ...

    def host_view(self, arr): ...

    def address_of(self, arr) -> int: ...


def _no_config(cfg: dict, given) -> None:
    pass


def _no_images(plan, images: dict) -> None:
    pass


def _no_constants(plan) -> dict:
    return {}


def _no_notifier(ctl) -> Callable[[], None] | None:
    return None


#: The optional members of :class:`Target` and their defaults.
OPTIONAL: dict[str, Any] = {
    "INLINE_ALWAYS": (),
    "constants": _no_constants,
    "resolve_config": _no_config,
    "init_images": _no_images,
    "host_notifier": _no_notifier,
    "host_bell": _no_notifier,
    "PROCESS_ENV": None,
}


def option(target, name: str):
    """``target``'s optional member ``name`` (one of :data:`OPTIONAL`), or its default."""
    return getattr(target, name, OPTIONAL[name])


#: The required members of :class:`Target`, by name.
REQUIRED = ("NAME", "DEFAULTS", "PRIM_SRC", "namespace", "device_fn", "handler_fn", "kernel_fn",
            "available", "open_session", "host_view", "address_of")


def missing(target) -> list[str]:
    """The required members of :class:`Target` that ``target`` lacks (empty when it conforms)."""
    return [n for n in REQUIRED if not hasattr(target, n)]


# ------------------------------------------------------------------------------------ lookup

def gpu_present() -> bool:
    """Cheap check without importing any CUDA package: is an NVIDIA driver loaded?"""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def resolve_name(name: str) -> str:
    """``name`` itself, or for ``"auto"``: ``"cuda"`` where a usable GPU is present, else
    ``"cpu"``."""
    if name == "auto":
        if gpu_present():
            from ggmk.device.targets import cuda as cuda_target
            ok, _ = cuda_target.available()
            if ok:
                return "cuda"
        return "cpu"
    if name not in NAMES:
        raise BootError(f"DeviceKernel: target {name!r} is not one of auto, cpu, sim, cuda")
    return name


def get_target(name: str) -> Target:
    """The target module for ``name`` (``"auto"``, ``"cpu"``, ``"sim"``, ``"cuda"``). Imports
    no GPU package unless ``name`` is ``"cuda"`` (or ``"auto"`` on a machine with a GPU)."""
    return importlib.import_module(f"ggmk.device.targets.{resolve_name(name)}")


# ------------------------------------------------------------------------------------ sources

def read_source(filename: str) -> str:
    """The text of a primitive source file of this package (``cuda_prims.py``...)."""
    return (_DIR / filename).read_text()


def _defined_names(node) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


def override_source(base: str, overrides: str) -> str:
    """``base`` (a primitive source) with every top-level definition (function or plain
    assignment) that ``overrides`` defines too replaced by the one in ``overrides``; the
    definitions only ``overrides`` has are appended. Works on the syntax tree, so no
    formatting of either file changes which definitions are replaced. The module docstring and
    comments between definitions of ``base`` are dropped; those of ``overrides`` are kept
    only inside definitions."""
    btree, otree = ast.parse(base), ast.parse(overrides)
    odefs: dict[str, ast.stmt] = {}
    for node in otree.body:
        for n in _defined_names(node):
            odefs[n] = node
    out: list[str] = []
    used: set[int] = set()
    for node in btree.body:
        names = _defined_names(node)
        if not names:
            continue                    # docstring, imports for linters: not primitives
        repl = [odefs[n] for n in names if n in odefs]
        if repl:
            for r in repl:
                if id(r) not in used:
                    used.add(id(r))
                    out.append(ast.get_source_segment(overrides, r, padded=False))
        else:
            out.append(ast.get_source_segment(base, node, padded=False))
    for node in otree.body:
        if _defined_names(node) and id(node) not in used:
            used.add(id(node))
            out.append(ast.get_source_segment(overrides, node, padded=False))
    return "\n\n\n".join(out) + "\n"


def primitives_of(text: str) -> dict[str, str]:
    """{name: ast dump} of the top-level definitions of a primitive source (for checks that
    do not depend on formatting)."""
    out = {}
    for node in ast.parse(text).body:
        for n in _defined_names(node):
            out[n] = ast.dump(node)
    return out


# ------------------------------------------------------------------------------------ session

class ModuleSession:
    """A session for a target without per-kernel resources: the target module's functions
    (``alloc_dev``, ``alloc_map``, ``alloc_arena``, ``prepare(kernel, arrays, plan, built)``
    and ``launch(kernel, arrays, plan)``)."""

    def __init__(self, target, plan):
        self.target = target
        self.plan = plan

    def alloc_dev(self, image):
        return self.target.alloc_dev(image)

    def alloc_map(self, image):
        return self.target.alloc_map(image)

    def alloc_arena(self, nbytes):
        return self.target.alloc_arena(nbytes)

    def prepare(self, kernel, arrays, built=None):
        self.target.prepare(kernel, arrays, self.plan, built)

    def launch(self, kernel, arrays):
        return self.target.launch(kernel, arrays, self.plan)

    def close(self):
        pass
