"""Building Settings from a TOML file, FACEWARDEN_* environment variables and CLI flags.

Precedence: flags > environment > file > defaults. Environment keys nest with a double
underscore: FACEWARDEN_WORKERS__COUNT=2, FACEWARDEN_QUEUE__BACKEND=rabbitmq; a source is
addressed by its name: FACEWARDEN_SOURCES__DMS__SECRET_FILE=/run/secrets/dms. Values are
parsed as JSON when they parse (numbers, booleans, lists), else taken as strings.

Relative paths in a config file are relative to the file's folder; relative paths from
flags or the environment are relative to the current folder. This module is the only
place (with its siblings in facewarden/config) that reads the environment.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facewarden.config.errors import format_validation_error
from facewarden.config.paths import default_models_dir, default_state_dir
from facewarden.config.schema import Settings
from facewarden.config.secrets import REVEAL
from facewarden.errors import ConfigError

ENV_PREFIX = "FACEWARDEN_"
#: Keys holding a filesystem path (besides every ``*_file`` key); HTTP `path`s are not.
PATH_KEYS = {"state_dir", "models_dir", "root", "key_file", "verify"}  # verify: a CA bundle when a string


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        elif isinstance(v, Mapping) and isinstance(out.get(k), list):
            out[k] = _merge_into_list(out[k], v, k)
        else:
            out[k] = v
    return out


def _merge_into_list(items: list[Any], over: Mapping[str, Any], what: str) -> list[Any]:
    """``sources.<name>.<key>`` (or ``sources.<index>.<key>``) from the environment."""
    items = list(items)
    for sel, value in over.items():
        idx = next((i for i, it in enumerate(items)
                    if isinstance(it, Mapping) and str(it.get("name", "")).lower() == str(sel).lower()), None)
        if idx is None and str(sel).isdigit() and int(sel) < len(items):
            idx = int(sel)
        if idx is None:
            names = [str(it.get("name")) for it in items if isinstance(it, Mapping)]
            raise ConfigError("config.invalid", f"{what}[{sel}]: no entry named {sel!r} to override "
                              f"(known: {names}) (from {ENV_PREFIX}{what.upper()}__{str(sel).upper()}__...)")
        if isinstance(value, Mapping) and isinstance(items[idx], Mapping):
            items[idx] = _deep_merge(dict(items[idx]), value)
        else:
            items[idx] = value
    return items


def _env_tree(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    tree: dict[str, Any] = {}
    paths: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
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
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        paths[tuple(path)] = name
    return tree, paths


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    return _env_tree(environ)[0]


def _resolve_paths(node: Any, base: Path, key: str = "") -> Any:
    """Relative paths in a file's data -> absolute, against the file's folder."""
    if isinstance(node, dict):
        return {k: (v if k == "params" else _resolve_paths(v, base, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_paths(v, base, key) for v in node]
    if isinstance(node, str) and (key in PATH_KEYS or key.endswith("_file")):
        path = Path(node).expanduser()
        return str(path if path.is_absolute() else base / path)
    return node


class _Raw:
    """The merged settings data before validation, and where each part came from."""

    def __init__(self, path: Path | None, environ: Mapping[str, str]):
        self.environ = environ
        self.data: dict[str, Any] = {}
        self.origin = "defaults"
        if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
            path = Path(environ[f"{ENV_PREFIX}CONFIG"])
        self.path = path
        if path is not None:
            self.origin = str(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except FileNotFoundError as exc:
                raise ConfigError("config.missing", f"config file {path} does not exist") from exc
            except OSError as exc:
                raise ConfigError("config.missing", f"config file {path}: {exc.strerror}") from exc
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError("config.syntax", f"{path}: TOML syntax error: {exc}") from exc
            self.data = _resolve_paths(data, Path(os.path.abspath(path)).parent)
        env, self.env_paths = _env_tree(environ)
        if env:
            self.origin += " + FACEWARDEN_* environment"
        self.data = _deep_merge(self.data, env)

    def merge(self, over: Mapping[str, Any], origin: str) -> None:
        if over:
            self.data = _deep_merge(self.data, over)
            self.origin += f" + {origin}"

    def validate(self) -> Settings:
        data = dict(self.data)
        data.setdefault("state_dir", str(default_state_dir(self.environ)))
        data.setdefault("models_dir", str(default_models_dir(self.environ)))
        try:
            return Settings.model_validate(data, context={"environ": self.environ})
        except ValidationError as exc:
            raise ConfigError("config.invalid", format_validation_error(
                exc, Settings, data, origin=self.origin, env_paths=self.env_paths)) from None


def load_settings(path: Path | None = None, *, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """The one place settings are built. ``environ`` defaults to the process environment."""
    raw = _Raw(path, os.environ if environ is None else environ)
    raw.merge(overrides or {}, "overrides")
    return raw.validate()


def settings_from_flags(config: Path | None, *, watch: Path | None = None, out: Path | None = None,
                        state: Path | None = None, workers: int | None = None,
                        models_dir: Path | None = None, handler: str = "anonymize",
                        params: Mapping[str, Any] | None = None,
                        environ: Mapping[str, str] | None = None) -> Settings:
    """Flags are enough without a config file: --watch and --out make a folder source, two
    local stores and one route; with a config file they add to it."""
    raw = _Raw(config, os.environ if environ is None else environ)
    over: dict[str, Any] = {}
    if state is not None:
        over["state_dir"] = str(state)
    if models_dir is not None:
        over["models_dir"] = str(models_dir)
    if workers is not None:
        over["workers"] = {"count": workers}
    raw.merge(over, "flags")
    data = raw.data
    if watch is not None or out is not None:
        data["stores"] = dict(data.get("stores") or {})
        data["sources"] = list(data.get("sources") or [])
        data["routes"] = list(data.get("routes") or [])
        raw.origin += " + flags"
    if watch is not None:
        data["stores"]["incoming"] = {"type": "local", "root": str(watch)}
        if not any(isinstance(s, Mapping) and s.get("name", "incoming") == "incoming" for s in data["sources"]):
            data["sources"].append({"type": "folder", "name": "incoming", "store": "incoming"})
    if out is not None:
        data["stores"]["outgoing"] = {"type": "local", "root": str(out)}
    if watch is not None and out is not None and not any(
            isinstance(r, Mapping) and r.get("source") == "incoming" for r in data["routes"]):
        data["routes"].append({"source": "incoming", "handler": handler, "params": dict(params or {}),
                               "target": "outgoing"})
    return raw.validate()


def dump_for_child(settings: Settings) -> str:
    """Settings as JSON for a worker process: secrets in clear (never log or print this)."""
    return settings.model_dump_json(context=REVEAL)
