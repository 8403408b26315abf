"""`facewarden run`: the daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, MODELS_HELP, STATE_HELP, fail, parse_options
from facewarden.errors import FacewardenError


@click.command()
@click.option("--watch", type=DIR, help="Folder to watch for incoming images (adds a folder source and a route).")
@click.option("--out", type=DIR, help="Folder where results and their audit records are written.")
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--workers", type=click.IntRange(min=0),
              help="Worker processes (default: one per CPU core; 0 = none, workers run elsewhere).")
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
@click.option("--handler", default="anonymize", show_default=True,
              help="Handler for the --watch route (anonymize, idphoto, enroll, verify).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Handler parameter for the --watch route; repeatable.")
def run(watch: Path | None, out: Path | None, state: Path | None, workers: int | None, config: Path | None,
        models_dir: Path | None, handler: str, params: tuple[str, ...]) -> None:
    """Run the daemon: watch the configured sources, process every new image, write results
    and audit records. Without a config file, --watch and --out are enough. SIGTERM drains:
    jobs in progress finish, no new job starts."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.app import run_daemon
    from facewarden.daemon.logs import configure_logging

    try:
        settings = settings_from_flags(config, watch=watch, out=out, state=state, workers=None,
                                       models_dir=models_dir, handler=handler, params=parse_options(params))
        configure_logging(settings.log.format, settings.log.level)
        if not settings.sources:
            raise FacewardenError("config.no_sources", "nothing to watch: pass --watch DIR --out DIR or a config "
                                  "file with sources and routes")
    except FacewardenError as err:
        fail(err)
    sys.exit(run_daemon(settings, workers=workers))
