"""`--load`: the user's own modules, served by the standard node beside the KV app.

Only what the command line names is imported, once, before the node starts: nothing that
arrives from the cluster can load code. A BEAM caller reaches only the functions those
modules declared with the module-level `pykv.export` (see `pykv.exports`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .exports import Declaration, declared


class LoadError(Exception):
    """A module named with `--load` could not be imported (`__cause__` says why)."""


def is_path(spec: str) -> bool:
    """`examples/hello.py`, `./hello` are files; `hello`, `my_app.exports` are module names."""
    return spec.endswith(".py") or "/" in spec or (os.sep != "/" and os.sep in spec)


def load(spec: str) -> tuple[ModuleType, list[Declaration]]:
    """Import a file path or a module name; returns the module and the exports it declared
    (with those of the modules it imported for the first time, such as a package's own)."""
    before = set(sys.modules)
    try:
        module = _load_file(Path(spec)) if is_path(spec) else importlib.import_module(spec)
    except LoadError:
        raise
    except BaseException as e:  # SystemExit and KeyboardInterrupt in module code too
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise LoadError(f"cannot load {spec}: {reason}") from e
    names = [module.__name__] + sorted(set(sys.modules) - before - {module.__name__})
    return module, [d for name in names for d in declared(name)]


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise LoadError(f"cannot load {path}: no such file")
    name = path.stem
    resolved = path.resolve()
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == resolved:
            return existing
        raise LoadError(f"cannot load {path}: a module named {name!r} is already imported "
                        f"({getattr(existing, '__file__', None) or 'built in'}); rename the file")
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot load {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    # as when Python runs a script: its own folder first on the path, for sibling imports
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
