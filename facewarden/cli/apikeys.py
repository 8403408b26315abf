"""`facewarden apikeys`: create, list and revoke keys for the HTTP API and web console."""

from __future__ import annotations

import json
from pathlib import Path

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, STATE_HELP, fail
from facewarden.errors import FacewardenError


def _keys(state: Path | None, config: Path | None):
    from facewarden.config import load_settings
    from facewarden.web.auth import KeyStore

    overrides = {"state_dir": state} if state is not None else {}
    return KeyStore(load_settings(config, overrides=overrides).state_dir)


def _common(f):
    f = click.option("--state", type=DIR, help=STATE_HELP)(f)
    return click.option("--config", "-c", type=CONFIG_FILE, help=CONFIG_HELP)(f)


@click.group("apikeys")
def apikeys() -> None:
    """API keys for /api/v1 and the console (stored hashed in the state dir)."""


@apikeys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(["anonymize", "idphoto", "enroll", "checkin", "admin"]),
              help="What the key may do (repeatable); admin allows everything.")
@_common
def create(name: str, scopes: tuple[str, ...], state: Path | None, config: Path | None) -> None:
    """Create a key; the token is printed once and cannot be shown again."""
    try:
        token, key = _keys(state, config).create(name, list(scopes))
    except FacewardenError as err:
        fail(err)
    click.echo(token)
    click.echo(f"created key {key.id} ({name}) with scopes {','.join(key.scopes)}; store the token now, "
               "it is not kept", err=True)


@apikeys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON list instead of lines.")
@_common
def list_(as_json: bool, state: Path | None, config: Path | None) -> None:
    """Keys by id, name and scopes (never the tokens)."""
    keys = _keys(state, config).list()
    if as_json:
        click.echo(json.dumps([k.public() for k in keys], indent=2))
        return
    for k in keys:
        click.echo(f"{k.id}  {k.name:24} {','.join(k.scopes)}")


@apikeys.command("revoke")
@click.argument("key_id")
@_common
def revoke(key_id: str, state: Path | None, config: Path | None) -> None:
    """Revoke a key at once (a running daemon re-reads the file)."""
    from facewarden.errors import UsageError

    if not _keys(state, config).revoke(key_id):
        fail(UsageError("apikey.unknown", f"no key {key_id!r}"))
    click.echo(f"revoked {key_id}")
