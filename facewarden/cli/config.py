"""`facewarden config`: validate and print the settings."""

from __future__ import annotations

import json
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, fail
from facewarden.errors import FacewardenError


@click.command("config")
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
def config_check(config: Path | None) -> None:
    """Validate the configuration and print it, with every default filled in."""
    from facewarden.config import load_settings

    try:
        settings = load_settings(config)
    except FacewardenError as err:
        fail(err)
    click.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
