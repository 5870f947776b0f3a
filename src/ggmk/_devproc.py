"""Entry point of a device process (``ggmk.bridge.process``), kept out of ``ggmk.bridge``:
importing it imports nothing that imports Numba, so the target's ``PROCESS_ENV`` (the ``sim``
target's simulator switch, read when Numba is first imported) can be set before."""
import os


def main(conn, spec: dict) -> None:
    os.environ.update(spec.get("env") or {})
    from ggmk.bridge.process import _child_main
    _child_main(conn, spec)
