"""Validation errors as one line per problem: the full key path, the problem, the nearest
known key for a typo, the environment variable that set the value, and never a secret.

    sources[s3].queue_urll: unknown key; did you mean queue_url?
    workers.count: Input should be a valid integer (got 'many') (from FACEWARDEN_WORKERS__COUNT)
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from facewarden.config.redact import redact_value
from facewarden.config.secrets import SECRET, SUFFIXES, is_secret, secret_fields


def _strip(ann: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> X (a union of several stays a union)."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
            continue
        if origin is Union or origin is types.UnionType:
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
                continue
        return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _union_members(ann: Any) -> list[type[BaseModel]] | None:
    if get_origin(ann) in (Union, types.UnionType):
        members = [_strip(a) for a in get_args(ann)]
        if members and all(_is_model(m) for m in members):
            return members
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return get_args(field.annotation)[0]


def known_keys(model: type[BaseModel]) -> list[str]:
    keys = list(model.model_fields)
    for name in secret_fields(model):
        keys += [name + s for s in SUFFIXES]
    return keys


class _Where:
    """What a pydantic ``loc`` points at, walked through the settings schema."""

    def __init__(self, root: type[BaseModel], loc: tuple[Any, ...], data: Any):
        self.display = ""
        self.raw: list[str] = []  # the path in data terms (source names for list items)
        self.parent: type[BaseModel] | None = None  # model holding the last key
        self.secret = False
        state: Any = root
        node = data
        for part in loc:
            if isinstance(state, type) and _is_model(state):
                self.parent = state
                self.display += f".{part}" if self.display else str(part)
                self.raw.append(str(part).lower())
                node = node.get(part) if isinstance(node, Mapping) else None
                field = state.model_fields.get(str(part))
                if field is None:
                    state = None
                    continue
                self.secret = is_secret(field.annotation) or any(m is SECRET for m in field.metadata)
                state = _strip(field.annotation)
                continue
            members = _union_members(state) if state is not None else None
            if members is not None:  # a discriminated union: this part is the tag
                state = next((m for m in members if _tag_of(m) == part), None)
                continue
            origin = get_origin(state)
            if origin is list and isinstance(part, int):
                item = node[part] if isinstance(node, list) and part < len(node) else None
                name = item.get("name") if isinstance(item, Mapping) else None
                label = str(name) if isinstance(name, str) and name else str(part)
                self.display += f"[{label}]"
                self.raw.append(label.lower())
                node = item
                state = _strip(get_args(state)[0])
                continue
            if origin is dict:
                self.display += f".{part}"
                self.raw.append(str(part).lower())
                node = node.get(part) if isinstance(node, Mapping) else None
                state = _strip(get_args(state)[1])
                continue
            # past the schema (e.g. inside a list[str]): just show it
            self.display += f"[{part}]" if isinstance(part, int) else f".{part}"
            self.raw.append(str(part).lower())
        self.state = state


def _line(err: Mapping[str, Any], root: type[BaseModel], data: Any) -> tuple[str, list[str]]:
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
    kind = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = _Where(root, loc, data)
    path = where.display
    raw = list(where.raw)
    if kind == "extra_forbidden" and where.parent is not None:
        key = str(loc[-1])
        known = known_keys(where.parent)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        msg = f"unknown key; did you mean {close[0]}?" if close else \
            f"unknown key (known: {', '.join(sorted(k for k in known if k != 'type'))})"
        return f"{path}: {msg}", raw
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx") or {}
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        tag = ctx.get("tag")
        if kind == "union_tag_not_found":
            return f"{path}.type: missing (one of {', '.join(expected)})", raw
        close = difflib.get_close_matches(str(tag), expected, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{path}.type: unknown type {tag!r}{hint} (known: {', '.join(expected)})", raw
    if kind == "value_error" and ": " in msg and " " not in msg.partition(": ")[0]:
        # model-level checks say "key: problem"
        key, _, msg = msg.partition(": ")
        path = f"{path}.{key}" if path else key
        raw.append(key.lower())
        where.secret = where.secret or (where.parent is not None and key in secret_fields(where.parent))
        if isinstance(where.state, type) and _is_model(where.state):
            where.secret = where.secret or key in secret_fields(where.state)
    shown = ""
    if "input" in err and not isinstance(err["input"], dict | list) and kind != "missing" and path:
        if where.secret:
            shown = " (value hidden: it is a secret)"
        else:
            shown = f" (got {redact_value(path.rsplit('.', 1)[-1], err['input'])!r})"
    if where.secret and kind in ("too_short", "too_long", "string_too_short"):
        msg = msg.replace("items", "characters")
    return (f"{path}: {msg}{shown}" if path else msg), raw


def format_validation_error(exc: ValidationError, root: type[BaseModel], data: Any, *,
                            origin: str, env_paths: Mapping[tuple[str, ...], str] | None = None) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        line, raw = _line(err, root, data)
        if env_paths:
            named = [var for path, var in env_paths.items()
                     if tuple(raw[:len(path)]) == path or (raw and tuple(path[:len(raw)]) == tuple(raw))]
            if named:
                line += f" (from {', '.join(sorted(named))})"
        for extra in line.split("\n"):
            lines.append(extra.strip())
    return f"invalid configuration ({origin}):\n  " + "\n  ".join(dict.fromkeys(lines))
