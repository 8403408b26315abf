"""facewarden: offline, audited face processing of stored images.

As a library: ``facewarden.anonymize(path_bytes_or_array, **params)``, ``idphoto``,
``enroll`` and ``verify`` (see :mod:`facewarden.library`). They are imported on first use so
that ``import facewarden`` (and the CLI) load no model runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Facewarden", "Result", "__version__", "anonymize", "enroll", "idphoto", "verify"]

if TYPE_CHECKING:
    from facewarden.library import Facewarden, Result, anonymize, enroll, idphoto, verify


def __getattr__(name: str) -> Any:
    if name in ("Facewarden", "Result", "anonymize", "enroll", "idphoto", "verify"):
        from facewarden import library

        return getattr(library, name)
    raise AttributeError(f"module 'facewarden' has no attribute {name!r}")
