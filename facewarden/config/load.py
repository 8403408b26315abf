"""Building Settings from a TOML file, FACEWARDEN_* environment variables and CLI flags.

Precedence: flags > environment > file > defaults. Environment keys nest with a double
underscore: FACEWARDEN_WORKERS__COUNT=2, FACEWARDEN_QUEUE__BACKEND=rabbitmq. Values are
parsed as JSON when they parse (numbers, booleans, lists), else taken as strings.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facewarden.config.schema import Settings
from facewarden.errors import ConfigError

ENV_PREFIX = "FACEWARDEN_"


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _format_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        got = f" (got {shown!r})" if loc and "input" in err and not isinstance(shown, dict | list) else ""
        lines.append(f"{loc or '(top level)'}: {msg}{got}")
    return f"invalid configuration ({origin}):\n  " + "\n  ".join(lines)


def load_settings(path: Path | None = None, *, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """The one place settings are built. ``environ`` defaults to the process environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin = "defaults"
    path = path or (Path(environ[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in environ else None)
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("config.missing", f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config.syntax", f"{path}: TOML syntax error: {exc}") from exc
    data = _deep_merge(data, env_overrides(environ))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("config.invalid", _format_error(exc, origin)) from exc


def settings_from_flags(config: Path | None, *, watch: Path | None = None, out: Path | None = None,
                        state: Path | None = None, workers: int | None = None,
                        models_dir: Path | None = None, handler: str = "anonymize",
                        params: Mapping[str, Any] | None = None,
                        environ: Mapping[str, str] | None = None) -> Settings:
    """Flags are enough without a config file: --watch and --out make a folder source, two
    local stores and one route; with a config file they add to it."""
    over: dict[str, Any] = {}
    if state is not None:
        over["state_dir"] = str(state)
    if models_dir is not None:
        over["models_dir"] = str(models_dir)
    if workers is not None:
        over["workers"] = {"count": workers}
    base = load_settings(config, environ=environ, overrides=over)
    if watch is None and out is None:
        return base
    data = base.model_dump(mode="json")
    if watch is not None:
        data["stores"]["incoming"] = {"type": "local", "root": str(watch)}
        if not any(s.get("name") == "incoming" for s in data["sources"]):
            data["sources"].append({"type": "folder", "name": "incoming", "store": "incoming"})
    if out is not None:
        data["stores"]["outgoing"] = {"type": "local", "root": str(out)}
    if watch is not None and out is not None and not any(r["source"] == "incoming" for r in data["routes"]):
        data["routes"].append({"source": "incoming", "handler": handler, "params": dict(params or {}),
                               "target": "outgoing"})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("config.invalid", _format_error(exc, "flags")) from exc
