"""The `facewarden` command: one module per command group, all mounted here.

Subcommand modules are imported eagerly and a broken one fails loudly: a command that
silently disappears from ``--help`` is worse than a traceback. Each module keeps its heavy
imports (models, brokers) inside the command bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import click

from facewarden import __version__
from facewarden.cli.apikeys import apikeys
from facewarden.cli.audit import audit
from facewarden.cli.config import config_check
from facewarden.cli.handlers import handlers_command
from facewarden.cli.models import models
from facewarden.cli.process import process
from facewarden.cli.quarantine import quarantine
from facewarden.cli.run import run
from facewarden.cli.subjects import subjects
from facewarden.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facewarden")
def cli() -> None:
    """Offline, audited face processing of stored images: anonymize, ID photos, enroll/verify."""


for _command in (run, process, models, audit, config_check, handlers_command, quarantine, subjects, worker,
                 apikeys):
    cli.add_command(_command)


def main() -> None:
    cli()


__all__ = ["cli", "main"]
