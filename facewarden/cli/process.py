"""`facewarden process`: a batch over files and folders, through the daemon's pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, MODELS_HELP, STATE_HELP, fail, parse_options
from facewarden.errors import FacewardenError


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--handler", default="anonymize", show_default=True, help="Handler to run on every input.")
@click.option("--out", type=DIR,
              help="Folder for results and their audit records; each input's path below the common parent "
                   "of the arguments is kept. Default: beside each input, as NAME_anonymized.EXT "
                   "(the handler's name for other handlers).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output whose content differs (refused by default).")
@click.option("--force", is_flag=True, help="Process again even when the output already holds this result.")
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Handler parameter, e.g. --param mode=pixelate; repeatable; values are JSON when they parse.")
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
def process(inputs: tuple[Path, ...], handler: str, out: Path | None, overwrite: bool, force: bool,
            state: Path | None, params: tuple[str, ...], config: Path | None, models_dir: Path | None) -> None:
    """Process FILES and FOLDERS once, through the same pipeline and audit log as the daemon.
    Originals are never modified. Prints one line per input; exits 0 when all succeeded,
    1 when any was rejected, 78 when models are missing (run `facewarden models install`)."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.oneshot import process_paths

    try:
        settings = settings_from_flags(config, state=state, models_dir=models_dir)
        configure_logging(settings.log.format, "warning")
        failures = process_paths(settings, list(inputs), out, handler, parse_options(params), echo=click.echo,
                                 replace="always" if overwrite else "never", force=force)
    except FacewardenError as err:
        fail(err)
    sys.exit(1 if failures else 0)
