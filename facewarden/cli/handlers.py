"""`facewarden handlers`: every handler's parameters, from the schemas that validate jobs."""

from __future__ import annotations

import json

import click

from facewarden.cli.common import fail
from facewarden.errors import FacewardenError


def schemas(only: str | None = None) -> list[dict]:
    from facewarden.handlers import base as handlers

    names = [only] if only else handlers.names()
    found = [handlers.get(name) for name in names]
    # A handler that validates its params by itself (no schema) cannot be described.
    return [h.schema.describe() for h in found if getattr(h, "schema", None) is not None]


def markdown_table(description: dict) -> str:
    """The README's table for one handler (tests/test_handlers_cli.py keeps them equal)."""
    from facewarden.handlers.params import default_text

    rows = ["| param | default | type | meaning |", "|---|---|---|---|"]
    for p in description["params"]:
        type_text = p["type"].replace("|", "\\|")
        rows.append(f"| `{p['name']}` | `{default_text(p['default'])}` | {type_text} | {p['help']} |")
    return "\n".join(rows)


@click.command("handlers")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts and API clients).")
@click.option("--markdown", is_flag=True, help="Print the README's parameter tables.")
def handlers_command(name: str | None, as_json: bool, markdown: bool) -> None:
    """List every handler (or NAME) with its parameters: type, default and meaning. The
    same definitions validate job params, route params and --param values."""
    try:
        described = schemas(name)
    except FacewardenError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for d in described:
        if markdown:
            click.echo(f"**{d['handler']}** — {d['summary']}\n\n{markdown_table(d)}\n")
            continue
        click.echo(click.style(d["handler"], bold=True) + f"  {d['summary']}")
        width = max(len(p["name"]) for p in d["params"])
        from facewarden.handlers.params import default_text

        for p in d["params"]:
            click.echo(f"  {p['name']:<{width}}  {p['type']}  (default: {default_text(p['default'])})")
            click.echo(f"  {'':<{width}}  {p['help']}")
        click.echo("")
