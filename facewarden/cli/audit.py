"""`facewarden audit`: verify the hash chain and the copies beside results; show records."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, STATE_HELP, fail
from facewarden.errors import FacewardenError


@click.group()
def audit() -> None:
    """Inspect and verify the hash-chained audit log."""


def _audit_settings(state: Path | None, config: Path | None):
    from facewarden.config import settings_from_flags

    try:
        return settings_from_flags(config, state=state)
    except FacewardenError as err:  # a bad config: one line and exit 78, no traceback
        fail(err)


@audit.command("verify")
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
@click.option("--store-root", "roots", multiple=True, metavar="NAME=DIR",
              help="Where a local store named in the records lives, when not in the config (repeatable).")
def audit_verify(state: Path | None, config: Path | None, roots: tuple[str, ...]) -> None:
    """Walk the whole chain: fails (exit 1) when any record was altered, removed or
    reordered, when a copy beside a result no longer matches the log, when a store holding
    copies cannot be reached, or when there is no audit log (or an empty one) to verify."""
    from facewarden.storage.audit import AuditLog

    settings = _audit_settings(state, config)
    try:
        log = AuditLog(settings.state_dir, create=False)
    except FileNotFoundError:
        click.echo(f"FAILED: no audit log under {Path(settings.state_dir).absolute()} "
                   "(pass --state DIR, or --config with the daemon's state_dir)")
        sys.exit(1)
    reader = CopyReader(_verify_stores(settings, config, roots))
    report = log.verify(reader.read)
    problems = list(report.problems)
    if report.records == 0:
        problems.append(f"the audit log under {Path(settings.state_dir).absolute()} has no records")
    for name, count in sorted(reader.unreachable.items()):
        problems.append(f"{count} copies in store {name!r} could not be read from here "
                        "(pass --config naming that store, or --store-root NAME=DIR)")
    for problem in problems:
        click.echo(f"FAIL  {problem}")
    status = "OK" if not problems else "FAILED"
    click.echo(f"{status}: {report.records} records, {report.copies_checked} copies beside results checked, "
               f"{len(problems)} problem(s)")
    sys.exit(0 if not problems else 1)


def _verify_stores(settings: Any, config: Path | None, roots: tuple[str, ...]) -> dict[str, Any]:
    """The stores named in records: from the config when one is given (S3 included), and
    from ``--store-root``; the others are found through the records' own file URIs."""
    from facewarden.storage.local import LocalStore
    from facewarden.storage.stores import open_stores

    stores = open_stores(settings.all_stores()) if config is not None else {}
    for pair in roots:
        name, _, root = pair.partition("=")
        stores[name] = LocalStore(name, Path(root))
    return stores


class CopyReader:
    """Reads the copy beside a result for ``AuditLog.verify``; remembers which stores it
    could not reach, so that verify fails instead of checking fewer copies silently."""

    def __init__(self, stores: dict[str, Any]):
        self.stores = stores
        self.unreachable: dict[str, int] = {}

    def read(self, location: str, record: dict) -> bytes | None:
        name, _, key = location.partition(":")
        store = self.stores.get(name)
        if store is None:
            path = _copy_path_from_record(record)
            if path is not None:
                return path.read_bytes() if path.exists() else b"missing"
        else:
            try:
                data = store.read_if_exists(key)
                return data if data is not None else b"missing"
            except FacewardenError:
                pass
        self.unreachable[name] = self.unreachable.get(name, 0) + 1
        return None


def _copy_path_from_record(record: dict) -> Path | None:
    """The local file of a record's copy, from the URI of the result it sits beside."""
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
    try:
        log = AuditLog(settings.state_dir, create=False)
    except FileNotFoundError:
        click.echo(f"no audit log under {Path(settings.state_dir).absolute()} (pass --state DIR)", err=True)
        sys.exit(1)
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


