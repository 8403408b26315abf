"""What every command shares: help texts, the KEY=VALUE option parser, and turning a
FacewardenError into one line on stderr and an exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from facewarden import exitcodes

STATE_HELP = ("State directory (queue, audit log, quarantine, gallery). "
              "Default: the configured state_dir, else $XDG_STATE_HOME/facewarden (~/.local/state/facewarden).")
CONFIG_HELP = "TOML config file (see config/facewarden.example.toml). FACEWARDEN_* environment variables override it."
MODELS_HELP = ("Directory holding the installed model files. "
               "Default: the configured models_dir, else $XDG_DATA_HOME/facewarden/models.")

#: Click types reused by every command.
DIR = click.Path(file_okay=False, path_type=Path)
CONFIG_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def parse_options(pairs: tuple[str, ...] | list[str], *, option: str = "--param",
                  json_values: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` pairs from repeatable options; values are JSON when they parse
    (``--param blur=25`` is the number 25), the plain string otherwise."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        if json_values:
            try:
                out[key.strip()] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def fail(err: Any) -> NoReturn:
    """One line on stderr; exit 78 for configuration and missing models (systemd does not
    restart those), 2 for other refusals (see facewarden.exitcodes)."""
    click.echo(f"error [{err.code}]: {err.message}", err=True)
    sys.exit(exitcodes.for_error(err))
