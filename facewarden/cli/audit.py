"""`facewarden audit`: verify the hash chain and the copies beside results; show records."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, STATE_HELP
from facewarden.errors import FacewardenError


@click.group()
def audit() -> None:
    """Inspect and verify the hash-chained audit log."""


def _audit_settings(state: Path | None, config: Path | None):
    from facewarden.config import settings_from_flags

    return settings_from_flags(config, state=state)


@audit.command("verify")
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
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
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
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


