"""The CPU kernel's platform (ARCHITECTURE.md principle 4): the one place that knows whether
workers are real OS threads (``threads``) or stepped by one thread in a seeded interleaving
(``sim``). Nothing else in ggmk asks which HAL it runs on."""
from __future__ import annotations


def make_hal(name: str, **kw):
    if name == "threads":
        from ggmk.hal.threads import ThreadsHal
        return ThreadsHal(**kw)
    if name == "sim":
        from ggmk.hal.sim import SimHal
        return SimHal(**kw)
    raise ValueError(f"unknown HAL {name!r}: expected 'threads' or 'sim'")
