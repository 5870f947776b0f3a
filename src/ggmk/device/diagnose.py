"""Compiler failures, told in the user's terms: which handler of which module, and why.

The persistent kernel is compiled as one program, so a handler that does not compile surfaces as
an error about the generated kernel. Its trail names the call site ``h_<i>(ctx, ...)`` (handler
``i`` of the build) or the failing function itself; :func:`explain` maps that back to the
handler and keeps the compiler's own message::

    try:
        kernel.start()
    except HandlerCompileError as e:
        print(e.module, e.handler, e.type_id)   # physics broken 6
        print(e.compiler_message)               # Numba's words
"""
from __future__ import annotations

import re

from ggmk.errors import BootError

# the compiler's own explanation ends where its trail into the generated kernel begins
_TRAIL = re.compile(r"^\s*During: ", re.M)
_PIPELINE = re.compile(r"^Failed in \S+ mode pipeline \(step: [^)]*\)\s*$", re.M)


class HandlerCompileError(BootError):
    """A device handler does not compile for the target; names the module, handler, type and
    carries the compiler's message."""

    def __init__(self, module: str, handler: str, type_id: int, target: str, compiler_message: str):
        self.module, self.handler, self.type_id = module, handler, type_id
        self.target, self.compiler_message = target, compiler_message
        super().__init__(f"device handler {handler!r} of module {module!r} (type {type_id}) does "
                         f"not compile for target {target!r}:\n{compiler_message}")


def _culprit(text: str, handlers) -> int | None:
    m = re.search(r"\bh_(\d+)\(ctx\b", text) or re.search(r"\bdef seg_(\d+)\(", text)
    if m and int(m.group(1)) < len(handlers):
        return int(m.group(1))
    for i, h in enumerate(handlers):          # the failing function named by the compiler
        if re.search(rf"<function {re.escape(h.fn.__name__)} at ", text):
            return i
    return None


def compiler_message(text: str) -> str:
    """The compiler's explanation without the pipeline banners and the trail through the
    generated kernel."""
    body = _PIPELINE.sub("", text).strip()
    cut = _TRAIL.search(body)
    if cut:
        body = body[:cut.start()]
    return body.strip() or text.strip()


def explain(exc: BaseException, handlers, target: str) -> HandlerCompileError | None:
    """The handler a compile failure ``exc`` comes from, as a HandlerCompileError; None when the
    failure is not a handler's (then it is the kernel's own: re-raise it as is)."""
    text = str(exc)
    i = _culprit(text, handlers)
    if i is None:
        return None
    h = handlers[i]
    return HandlerCompileError(h.module.name, h.name, int(h.type), target, compiler_message(text))
