"""`facewarden subjects`: enrol, list, export and erase the people in the face gallery.

``add`` runs each photo through the same pipeline as the daemon (enroll handler: quality
gate, receipt, commit to the gallery, audit record), so a photo accepted here is accepted
by a drop folder and the other way round. ``delete`` leaves an audit tombstone that says who
was erased and how many embeddings went, never the embeddings.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import click

from facewarden.cli.common import fail
from facewarden.errors import FacewardenError

STATE_HELP = ("State directory holding gallery.db. "
              "Default: the configured state_dir, else $XDG_STATE_HOME/facewarden (~/.local/state/facewarden).")
CONFIG_HELP = "TOML config file. FACEWARDEN_* environment variables override it."
MODELS_HELP = ("Directory holding the installed model files. "
              "Default: the configured models_dir, else $XDG_DATA_HOME/facewarden/models.")
KEY_HELP = "Key file of an encrypted gallery (default: gallery.key_file from the config)."


def _settings(config: Path | None, state: Path | None, models_dir: Path | None, key_file: Path | None):
    from facewarden.config import settings_from_flags

    settings = settings_from_flags(config, state=state, models_dir=models_dir)
    if key_file is not None:
        settings = settings.model_copy(update={"gallery": settings.gallery.model_copy(update={"key_file": key_file})})
    return settings


def _gallery(settings):
    from facewarden.storage.gallery import open_configured

    return open_configured(settings)


def _common(f):
    f = click.option("--config", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=CONFIG_HELP)(f)
    f = click.option("--key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=KEY_HELP)(f)
    return click.option("--state", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP)(f)


@click.group()
def subjects() -> None:
    """Enrolled people (biometric data): add, list, export (access request), delete (erasure)."""


@subjects.command("add")
@click.argument("subject_id")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Display name (encrypted at rest when the gallery is).")
@click.option("--consent", help="Consent text or reference, stored with the subject.")
@click.option("--retain-days", type=click.FloatRange(min=0), help="Purge the subject this many days from now.")
@click.option("--backend", type=click.Choice(["dlib", "facenet"]), default="dlib", show_default=True,
              help="Embedding backend (verify must use the same one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the enrolment receipts and their audit copies. Default: STATE/enroll-receipts.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), help=MODELS_HELP)
@_common
def add(subject_id: str, images: tuple[Path, ...], name: str | None, consent: str | None, retain_days: float | None,
        backend: str, out: Path | None, models_dir: Path | None, state: Path | None, key_file: Path | None,
        config: Path | None) -> None:
    """Enrol SUBJECT_ID from IMAGES (each must show exactly one sharp, large enough face).
    Exits 1 when any photo was rejected, naming its reason."""
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.oneshot import process_paths

    try:
        settings = _settings(config, state, models_dir, key_file)
        configure_logging(settings.log.format, "warning")
        gallery = _gallery(settings)  # a locked gallery fails here, before any photo is read
        # A fresh request id per invocation: the pipeline skips an input it has already
        # processed with equal params, which would make re-enrolment after deletion a no-op.
        params: dict = {"subject": subject_id, "backend": backend, "request": uuid.uuid4().hex}
        if retain_days is not None:
            params["retain_days"] = retain_days
        failures = process_paths(settings, list(images), out or Path(settings.state_dir) / "enroll-receipts",
                                 "enroll", params, echo=click.echo, replace="own")
        # Name and consent go straight to the (possibly encrypted) gallery, not through the
        # job params, which the append-only audit log would keep after an erasure.
        if (name is not None or consent is not None) and any(s["id"] == subject_id for s in gallery.subjects()):
            gallery.upsert_subject(subject_id, name=name, consent=consent)
    except FacewardenError as err:
        fail(err)
    sys.exit(1 if failures else 0)


@subjects.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_common
def list_(as_json: bool, state: Path | None, key_file: Path | None, config: Path | None) -> None:
    """List subjects: id, name, embeddings per backend, retention date (no embeddings)."""
    try:
        rows = _gallery(_settings(config, state, None, key_file)).subjects()
    except FacewardenError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    import time

    for r in rows:
        retain = time.strftime("%Y-%m-%d", time.gmtime(r["retain_until"])) if r["retain_until"] else "-"
        counts = ",".join(f"{b}:{n}" for b, n in sorted(r["embeddings"].items())) or "0"
        click.echo(f"{r['id']:24} {r['name'] or '-':24} {counts:28} retain_until={retain}")


@subjects.command("export")
@click.argument("subject_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@_common
def export(subject_id: str, output: Path | None, state: Path | None, key_file: Path | None,
           config: Path | None) -> None:
    """Everything stored about SUBJECT_ID, embeddings included, as JSON (an access request)."""
    try:
        data = _gallery(_settings(config, state, None, key_file)).export(subject_id)
    except FacewardenError as err:
        fail(err)
    text = json.dumps(data, indent=2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
        output.chmod(0o600)


@subjects.command("delete")
@click.argument("subject_id")
@click.option("--reason", default="erasure request", show_default=True, help="Why (kept in the audit tombstone).")
@_common
def delete(subject_id: str, reason: str, state: Path | None, key_file: Path | None, config: Path | None) -> None:
    """Erase SUBJECT_ID: embeddings, name, consent and photo references; the audit log keeps
    a tombstone (who, how many embeddings, why), never biometric data."""
    from facewarden.storage.audit import AuditLog

    try:
        settings = _settings(config, state, None, key_file)
        n = _gallery(settings).delete(subject_id)
        AuditLog(settings.state_dir).append({"kind": "subject.deleted", "subject": subject_id,
                                             "embeddings_removed": n,
                                             "reason": {"code": "subject.erasure", "message": reason}})
    except FacewardenError as err:
        fail(err)
    click.echo(f"deleted {subject_id}: {n} embedding(s) erased")


@subjects.command("keygen")
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def keygen(key_file: Path) -> None:
    """Create a new 256-bit gallery key file (mode 0600); refuses to overwrite one."""
    from facewarden.storage.gallery import generate_key_file

    try:
        generate_key_file(key_file)
    except FileExistsError:
        click.echo(f"error: {key_file} exists; refusing to overwrite a key", err=True)
        sys.exit(2)
    click.echo(f"wrote {key_file}; set gallery.key_file in the config and keep a copy somewhere safe")
