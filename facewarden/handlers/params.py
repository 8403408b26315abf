"""Handler parameters declared once: what validates a job's params is also what
`facewarden handlers`, the README tables and the HTTP API's schemas are made from, so the
documentation cannot drift from the behaviour.

Validation normalises (equal meaning gives equal dicts, hence equal idempotency keys) and
fails with ``params.invalid`` naming the param; an unknown name gets the nearest known one.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facewarden.errors import InputRejected

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def invalid(message: str) -> InputRejected:
    return InputRejected("params.invalid", message)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter. ``kind`` is what a user types: choice, number, integer, bool, text, or
    custom (then ``parse`` does the work and ``type_text`` says what it accepts)."""

    name: str
    kind: str
    default: Any
    help: str
    choices: Sequence[str] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: Custom normaliser for values the kinds above do not cover; raises ValueError(message).
    parse: Callable[[Any], Any] | None = None
    type_text: str | None = None
    #: When True and the value is None, the param is left out of the normalised dict.
    optional: bool = False
    #: Accepted spellings for choices: alias -> canonical.
    aliases: Mapping[str, str] | None = None

    def describe_type(self) -> str:
        if self.type_text:
            return self.type_text
        if self.kind == "choice":
            return " | ".join(self.choices)
        if self.kind in ("number", "integer"):
            lo = "" if self.minimum is None else _fmt(self.minimum)
            hi = "" if self.maximum is None else _fmt(self.maximum)
            return f"{self.kind} [{lo}, {hi}]" if (lo or hi) else self.kind
        return self.kind

    def normalise(self, value: Any) -> Any:
        if value is None and (self.optional or self.default is None):
            return None
        if self.parse is not None:
            try:
                return self.parse(value)
            except InputRejected:
                raise
            except (ValueError, TypeError) as exc:
                raise invalid(f"{self.name}: {exc}") from None
        if self.kind == "choice":
            text = value.strip().lower() if isinstance(value, str) else None
            if text is not None and self.aliases and text in self.aliases:
                return self.aliases[text]
            if text not in self.choices:
                raise invalid(f"{self.name} must be one of {', '.join(self.choices)}")
            return text
        if self.kind in ("number", "integer"):
            if isinstance(value, str):
                try:
                    value = float(value) if self.kind == "number" else int(value)
                except ValueError:
                    raise invalid(f"{self.name} must be a {self.kind}") from None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise invalid(f"{self.name} must be a {self.kind}")
            if self.kind == "integer" and float(value) != int(value):
                raise invalid(f"{self.name} must be an integer")
            if (self.minimum is not None and value < self.minimum) or (
                    self.maximum is not None and value > self.maximum):
                raise invalid(f"{self.name} must be a {self.kind} within "
                              f"[{_fmt(self.minimum)}, {_fmt(self.maximum)}]")
            return int(value) if self.kind == "integer" else float(value)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise invalid(f"{self.name} must be true or false")
        if self.kind == "text":
            limit = int(self.maximum or 1000)
            if not isinstance(value, str) or len(value) > limit:
                raise invalid(f"{self.name} must be text of at most {limit} characters")
            return value
        raise AssertionError(f"param {self.name}: kind {self.kind} needs a parse function")


class ParamSchema:
    def __init__(self, handler: str, params: Sequence[Param], summary: str) -> None:
        self.handler = handler
        self.summary = summary
        self.params = {p.name: p for p in params}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.params)

    def validate(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise invalid("params must be a mapping of names to values")
        unknown = sorted(str(k) for k in raw if k not in self.params)
        if unknown:
            hints = []
            for name in unknown:
                near = difflib.get_close_matches(name, list(self.params), n=1)
                hints.append(f"{name} (did you mean {near[0]}?)" if near else name)
            raise invalid(f"unknown param(s) for {self.handler}: {', '.join(hints)}; "
                          f"known: {', '.join(self.params)}")
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            value = spec.normalise(raw.get(name, spec.default))
            if value is None and spec.optional:
                continue
            out[name] = value
        return out

    def describe(self) -> dict[str, Any]:
        return {"handler": self.handler, "summary": self.summary,
                "params": [{"name": p.name, "type": p.describe_type(), "default": p.default, "help": p.help}
                           for p in self.params.values()]}


def default_text(value: Any) -> str:
    """How a default reads in a table: '–' for none, JSON-ish otherwise."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else str(v)
