"""`facewarden quarantine`: review what was not processed, and act on it, audited."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, STATE_HELP, fail
from facewarden.errors import FacewardenError, UsageError
from facewarden.exitcodes import EX_FAILED, EX_OK


@click.group()
def quarantine() -> None:
    """Inputs that could not be processed: list, show, retry, release, purge. Every action
    is an audit record; the images themselves never leave the quarantine store unless
    released on purpose."""


def _open(state: Path | None, config: Path | None) -> tuple[Any, Any, dict[str, Any]]:
    from facewarden.config import settings_from_flags
    from facewarden.storage.audit import AuditLog
    from facewarden.storage.stores import open_stores

    settings = settings_from_flags(config, state=state)
    try:
        audit = AuditLog(settings.state_dir, create=False)
    except FileNotFoundError:
        fail(UsageError("state.missing", f"no audit log under {Path(settings.state_dir).absolute()} "
                        "(pass --state DIR or --config)"))
    return settings, audit, open_stores(settings.all_stores())


def _entries_for(audit: Any, seqs: tuple[int, ...], all_: bool, reason: str | None) -> list[Any]:
    from facewarden.storage import quarantine as book

    if seqs:
        found = []
        for seq in seqs:
            entry = book.find(audit, seq)
            if entry is None:
                fail(UsageError("quarantine.unknown", f"record {seq} is not a quarantine entry"))
            if not book.is_open(audit, seq):
                fail(UsageError("quarantine.closed", f"entry {seq} was already retried, released or purged"))
            found.append(entry)
        return found
    if not all_ and reason is None:
        fail(UsageError("quarantine.none_chosen", "name entries by seq, or pass --all or --reason CODE"))
    return [e for e in book.entries(audit) if reason is None or e.code == reason or e.code.startswith(reason + ".")]


def _common(f: Any) -> Any:
    f = click.option("--state", type=DIR, help=STATE_HELP)(f)
    return click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)(f)


@quarantine.command("list")
@_common
@click.option("--reason", help="Only entries with this reason code (or code prefix, e.g. input).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def list_(state: Path | None, config: Path | None, reason: str | None, as_json: bool) -> None:
    """Open entries, oldest first: seq, age, reason code, input."""
    from facewarden.storage import quarantine as book

    _settings, audit, stores = _open(state, config)
    shown = 0
    for entry in book.entries(audit):
        if reason and not (entry.code == reason or entry.code.startswith(reason + ".")):
            continue
        present = book.has_bytes(entry, stores)
        shown += 1
        if as_json:
            click.echo(json.dumps({**entry.summary(), "present": present}))
        else:
            missing = "" if present else "  (bytes missing)"
            click.echo(f"{entry.seq:>6}  {entry.recorded_at}  {entry.age_days:5.1f}d  {entry.code:<24} "
                       f"{entry.input.get('store')}:{entry.input.get('key')}{missing}")
    if not as_json:
        click.echo(f"{shown} open entr{'y' if shown == 1 else 'ies'}", err=True)


@quarantine.command("show")
@_common
@click.argument("seq", type=int)
def show(state: Path | None, config: Path | None, seq: int) -> None:
    """The entry's audit record, whether its bytes are still there, and what was done."""
    from facewarden.storage import quarantine as book

    _settings, audit, stores = _open(state, config)
    entry = book.find(audit, seq)
    if entry is None:
        fail(UsageError("quarantine.unknown", f"record {seq} is not a quarantine entry"))
    click.echo(json.dumps({"entry": entry.summary(), "open": book.is_open(audit, seq),
                           "present": book.has_bytes(entry, stores), "record": entry.record}, indent=2))


@quarantine.command("retry")
@_common
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every open entry.")
@click.option("--reason", help="Every open entry with this reason code (or prefix).")
@click.option("--out", type=DIR, help="Output folder for entries no configured route serves (`process` inputs).")
def retry(state: Path | None, config: Path | None, seqs: tuple[int, ...], all_: bool, reason: str | None,
          out: Path | None) -> None:
    """Run entries through the normal pipeline again, now, as their route says (after a
    fix: models installed, a store back, a handler param changed in the config). Each
    retry gets its own audit record; a retry that fails again opens a new entry."""
    from facewarden.daemon.retry import retry_entry
    from facewarden.storage import quarantine as book

    settings, audit, stores = _open(state, config)
    failed = 0
    for entry in _entries_for(audit, seqs, all_, reason):
        if not book.has_bytes(entry, stores):
            click.echo(f"{entry.seq}: skipped, its bytes are no longer in quarantine (purge closes it)")
            failed += 1
            continue
        try:
            outcome = retry_entry(settings, audit, stores, entry, out=out)
        except FacewardenError as err:
            click.echo(f"{entry.seq}: not retried [{err.code}] {err.message}")
            failed += 1
            continue
        reason_text = "" if outcome.outcome == "ok" else f" [{(outcome.record.get('reason') or {}).get('code')}]"
        click.echo(f"{entry.seq}: {outcome.outcome}{reason_text} -> record {outcome.record.get('seq')}")
        failed += outcome.outcome not in ("ok", "duplicate")
    sys.exit(EX_FAILED if failed else EX_OK)


@quarantine.command("release")
@_common
@click.argument("seqs", nargs=-1, type=int, required=True)
@click.option("--to", "to", type=DIR, required=True,
              help="Folder that receives the original, unprocessed files (must not exist or be empty of them).")
@click.option("--reason", "why", required=True, help="Why they are released (kept in the audit record).")
def release(state: Path | None, config: Path | None, seqs: tuple[int, ...], to: Path, why: str) -> None:
    """Hand unprocessed originals back to a person, out of the quarantine. They are NOT
    anonymized: the audit record keeps who asked for it and why."""
    import getpass

    from facewarden.storage import quarantine as book
    from facewarden.storage.base import safe_key

    _settings, audit, stores = _open(state, config)
    to.mkdir(parents=True, exist_ok=True)
    for entry in _entries_for(audit, seqs, False, None):
        qstore = stores.get(entry.quarantine["store"])
        if qstore is None or not book.has_bytes(entry, stores):
            fail(UsageError("quarantine.missing", f"entry {entry.seq}: its bytes are not in quarantine"))
        name = Path(safe_key(entry.input.get("key") or entry.quarantine["key"])).name
        target = to / name
        if target.exists():
            fail(UsageError("output.exists", f"{target} exists; release into an empty folder"))
        target.write_bytes(qstore.get(entry.quarantine["key"]))
        qstore.delete(entry.quarantine["key"])
        book.record_action(audit, entry, "release", to=str(target.absolute()), why=why, by=getpass.getuser())
        click.echo(f"{entry.seq}: released -> {target}")


@quarantine.command("purge")
@_common
@click.argument("seqs", nargs=-1, type=int)
@click.option("--older-than", "older", type=click.FloatRange(min=0), metavar="DAYS",
              help="Every open entry older than DAYS days (the retention period).")
@click.option("--dry-run", is_flag=True, help="Say what would be purged, purge nothing.")
def purge(state: Path | None, config: Path | None, seqs: tuple[int, ...], older: float | None, dry_run: bool) -> None:
    """Delete quarantined originals (by seq, or all older than a retention period). Their
    audit records stay (they hold no image data); a purge record closes each entry."""
    from facewarden.storage import quarantine as book

    _settings, audit, stores = _open(state, config)
    if not seqs and older is None:
        fail(UsageError("quarantine.none_chosen", "name entries by seq or pass --older-than DAYS"))
    chosen = _entries_for(audit, seqs, True, None) if seqs else \
        [e for e in book.entries(audit) if e.age_days >= older]  # type: ignore[operator]
    for entry in chosen:
        if dry_run:
            click.echo(f"{entry.seq}: would purge {entry.quarantine['key']} ({entry.age_days:.1f} days old)")
            continue
        qstore = stores.get(entry.quarantine["store"])
        if qstore is not None and qstore.stat(entry.quarantine["key"]) is not None:
            qstore.delete(entry.quarantine["key"])
        book.record_action(audit, entry, "purge", age_days=round(entry.age_days, 2))
        click.echo(f"{entry.seq}: purged")
    click.echo(f"{len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'} {'to purge' if dry_run else 'purged'}",
               err=True)
