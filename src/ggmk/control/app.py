"""The app convention ``ggmk boot APP`` uses.

APP is a Python file (``path/to/app.py``) or an importable module (``pkg.app``) that defines
either ``modules`` (a list of ``ggmk.Module`` / ``ggmk.device.Module``) or a function ``app()``
returning ``(modules, options)``, where ``options`` is a dict of boot options (``types``,
``workers``, ``hal``, ``tick_hz``, ...). An optional ``boot_options`` dict is used with
``modules``. Command-line options (``--workers``, ``--hal``, ``--deterministic``) override the
app's. Example::

    # myapp.py
    import ggmk
    m = ggmk.Module("hello")

    @m.handler("HELLO")
    def hello(ctx):
        return ggmk.OK

    modules = [m]
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path


class AppError(Exception):
    pass


def _describe(e: BaseException) -> str:
    """``Type: message`` of what an app raised (``SystemExit: 4`` for ``sys.exit(4)``)."""
    msg = str(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def load(app: str):
    """Import APP and return ``(modules, options)``."""
    if app.endswith(".py") or os.sep in app or os.path.exists(app):
        path = Path(app).absolute()
        if not path.is_file():
            raise AppError(f"app file {app} does not exist")
        name = f"ggmk_app_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise AppError(f"cannot import {app}: not a Python file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(mod)
        except BaseException as e:   # noqa: BLE001 - sys.exit()/KeyboardInterrupt too
            raise AppError(f"importing {app} failed: {_describe(e)}") from e
    else:
        try:
            mod = importlib.import_module(app)
        except BaseException as e:   # noqa: BLE001
            raise AppError(f"cannot import app module {app!r}: {_describe(e)}") from e
    if callable(getattr(mod, "app", None)):
        try:
            got = mod.app()
        except BaseException as e:   # noqa: BLE001
            raise AppError(f"{app}: app() failed: {_describe(e)}") from e
        if isinstance(got, tuple) and len(got) == 2:
            modules, options = got
        else:
            modules, options = got, {}
    elif hasattr(mod, "modules"):
        modules = mod.modules
        options = getattr(mod, "boot_options", {}) or {}
    else:
        raise AppError(f"{app} defines neither `modules` (a list of modules) nor `app()` "
                       "(returning (modules, options))")
    if not isinstance(modules, (list, tuple)) or not modules:
        raise AppError(f"{app}: modules must be a non-empty list, got {modules!r}")
    if not isinstance(options, dict):
        raise AppError(f"{app}: the boot options must be a dict, got {type(options).__name__}")
    return list(modules), dict(options)
