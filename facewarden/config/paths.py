"""Where state and models live when nobody says: stable per-user places (XDG base
directories), never the folder a command happens to be started in.

- state:  ``$XDG_STATE_HOME/facewarden``  (default ``~/.local/state/facewarden``)
- models: ``$XDG_DATA_HOME/facewarden/models`` (default ``~/.local/share/facewarden/models``)

Both are overridden by ``state_dir`` / ``models_dir`` in the config file, by
``FACEWARDEN_STATE_DIR`` / ``FACEWARDEN_MODELS_DIR``, and by ``--state`` / ``--models-dir``.
The systemd units set absolute ones under /var/lib/facewarden.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _xdg(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    value = environ.get(var, "")
    # The XDG spec: a relative value is invalid and must be ignored.
    if value and Path(value).is_absolute():
        return Path(value)
    return _home(environ) / fallback


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    return _xdg(os.environ if environ is None else environ, "XDG_STATE_HOME", ".local/state") / "facewarden"


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The models directory `facewarden models install` uses when given none (tests and
    benches find the installed models here too, unless FACEWARDEN_MODELS_DIR says else)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("FACEWARDEN_MODELS_DIR")
    if explicit:
        return absolute(Path(explicit))
    return _xdg(environ, "XDG_DATA_HOME", ".local/share") / "facewarden" / "models"


def absolute(path: Path) -> Path:
    """``~`` expanded, made absolute against the current folder, ``..`` folded."""
    return Path(os.path.abspath(path.expanduser()))
