"""Import MediaPipe's face detector and selfie segmenter without the rest of MediaPipe.

``from mediapipe.tasks.python import vision`` runs three package ``__init__`` files that
import every task MediaPipe has: the vision one imports ``drawing_utils``, which imports
``matplotlib.pyplot`` (~1-2 s, the largest part of our start-up), the tasks one imports
the audio tasks and ``sounddevice``. We use two vision tasks and ``mp.Image``.

:func:`defer_package_inits` puts those packages into ``sys.modules`` with their
``__init__`` not yet run. An attribute asked of such a package is resolved on its own: a
submodule is imported; a name the ``__init__`` binds (``FaceDetector = face_detector.
FaceDetector``, ``from ...image import Image``) is bound by running just that statement;
anything else runs the whole ``__init__`` once, so code that needs more of MediaPipe gets
exactly what a normal import would have given it, only later.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import threading
from types import ModuleType

#: Packages whose ``__init__`` imports far more than we use, outermost first.
HEAVY_PACKAGES = ("mediapipe", "mediapipe.tasks.python", "mediapipe.tasks.python.vision")

_lock = threading.RLock()


def defer_package_inits(names: tuple[str, ...] = HEAVY_PACKAGES) -> None:
    """Idempotent; does nothing for a package that is already imported."""
    with _lock:
        for name in names:
            if name in sys.modules:
                continue
            parent, _, child = name.rpartition(".")
            if parent:
                importlib.import_module(parent)  # a deferred stub or the real thing
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None or spec.submodule_search_locations is None:
                continue
            module = importlib.util.module_from_spec(spec)
            module.__getattr__ = _resolver(module)
            sys.modules[name] = module
            if parent:
                setattr(sys.modules[parent], child, module)
        for name in names:
            module = sys.modules[name]
            if "__getattr__" in module.__dict__:
                _bind_module_aliases(module)


def _bind_module_aliases(module: ModuleType) -> None:
    """``import mediapipe.tasks.python as tasks`` in an __init__ rebinds a name that importing
    the submodule ``mediapipe.tasks`` already set (``mp.tasks`` is ``mediapipe.tasks.python``
    after a normal import): bind such aliases now, when their module is already loaded."""
    with open(module.__spec__.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in sys.modules:
                    setattr(module, alias.asname, sys.modules[alias.name])


def _resolver(module: ModuleType):
    def resolve(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        with _lock:
            if attr in module.__dict__:
                return module.__dict__[attr]
            return _bind(module, attr)

    return resolve


def _bind(module: ModuleType, attr: str):
    name = module.__name__
    if importlib.util.find_spec(f"{name}.{attr}") is not None:
        return importlib.import_module(f"{name}.{attr}")
    statement = _binding_statement(module, attr)
    if isinstance(statement, ast.Assign) and (chain := _dotted(statement.value)):
        # ``X = core.base_options.X``: walk it, importing submodules the packages on the
        # way would have imported in their own (also not yet run) __init__.
        obj = getattr(module, chain[0]) if chain[0] not in module.__dict__ else module.__dict__[chain[0]]
        for part in chain[1:]:
            if not hasattr(obj, part) and hasattr(obj, "__path__"):
                importlib.import_module(f"{obj.__name__}.{part}")
            obj = getattr(obj, part)
        setattr(module, attr, obj)
        return obj
    if isinstance(statement, ast.Import | ast.ImportFrom):
        exec(compile(ast.Module([statement], []), module.__spec__.origin, "exec"), module.__dict__)
        if attr in module.__dict__:
            return module.__dict__[attr]
    # Anything else: run the real __init__ once, as a normal import would have.
    del module.__dict__["__getattr__"]
    module.__spec__.loader.exec_module(module)
    return getattr(module, attr)


def _binding_statement(module: ModuleType, attr: str) -> ast.stmt | None:
    with open(module.__spec__.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    found = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            found = node
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            aliases = [a for a in node.names if (a.asname or a.name) == attr]
            if aliases:
                found = ast.ImportFrom(module=node.module, names=aliases, level=0)
        elif isinstance(node, ast.Import):
            aliases = [a for a in node.names if a.asname == attr]
            if aliases:
                found = ast.Import(names=aliases)
    if found is not None:
        ast.fix_missing_locations(found)
    return found


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]
