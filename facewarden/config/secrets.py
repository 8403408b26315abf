"""Secret-bearing setting types and reading secrets from files.

A secret option ``X`` (a token, an HMAC secret, a URL with a password) can be given as:

- ``X = "..."``                 in the file or ``FACEWARDEN_..._X`` (least preferred),
- ``X_file = "/path"``          the file holds only the value (trailing newline ignored),
- ``X_credential = "name"``     systemd ``LoadCredential=name:/etc/...``: read from
                                ``$CREDENTIALS_DIRECTORY/name``.

Values are read once, while the settings are validated; they are shown as ``**********``
(URLs as ``scheme://user:***@host``) by `facewarden config`, ``repr`` and JSON dumps,
unless a dump is made with ``context=REVEAL`` (handing settings to worker processes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    ValidationInfo,
    model_validator,
)

from facewarden.config.redact import REDACTED, redact_url

#: Serialization context that writes secrets in clear (for child processes only).
REVEAL = {"reveal_secrets": True}
SUFFIXES = ("_file", "_credential")


class _SecretMarker:
    """Annotated metadata: this option is a secret (accepts ``_file``/``_credential``)."""

    def __repr__(self) -> str:
        return "secret"


SECRET = _SecretMarker()


def _reveal(info: SerializationInfo) -> bool:
    return bool((info.context or {}).get("reveal_secrets"))


def _dump_url(value: str, info: SerializationInfo) -> str:
    return value if _reveal(info) else redact_url(value)


def _dump_secret(value: SecretStr, info: SerializationInfo) -> str:
    return value.get_secret_value() if _reveal(info) else REDACTED


#: A URL that may carry a password: a plain ``str`` to its users, redacted in JSON dumps
#: and reprs (a Python-mode ``model_dump()`` keeps it, to build other settings from).
SecretUrl = Annotated[str, SECRET, PlainSerializer(_dump_url, when_used="json")]
#: A whole-value secret: ``.get_secret_value()`` to use it.
Secret = Annotated[SecretStr, SECRET, PlainSerializer(_dump_secret, when_used="json")]


def is_secret(annotation: Any) -> bool:
    if any(m is SECRET for m in getattr(annotation, "__metadata__", ())):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return is_secret(get_args(annotation)[0])
    if origin is Union or type(annotation).__name__ == "UnionType":
        return any(is_secret(a) for a in get_args(annotation))
    return False


def secret_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items()
            if is_secret(f.annotation) or any(m is SECRET for m in f.metadata)]


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key}: {path} is not UTF-8 text") from None


def resolve_secret_files(model: type[BaseModel], data: Any, environ: Mapping[str, str]) -> Any:
    if not isinstance(data, dict):
        return data
    names = secret_fields(model)
    if not names:
        return data
    data = dict(data)
    for name in names:
        given = [k for k in (name, *(name + s for s in SUFFIXES)) if data.get(k) is not None]
        if len(given) > 1:
            raise ValueError(f"{name}: give only one of {', '.join(given)}")
        if f"{name}_file" in data:
            raw = data.pop(f"{name}_file")
            if raw is not None:
                data[name] = _read(Path(str(raw)).expanduser(), f"{name}_file")
        if f"{name}_credential" in data:
            cred = str(data.pop(f"{name}_credential"))
            folder = environ.get("CREDENTIALS_DIRECTORY")
            if not folder:
                raise ValueError(f"{name}_credential: $CREDENTIALS_DIRECTORY is not set (systemd sets it "
                                 f"for units with LoadCredential={cred}:...)")
            if "/" in cred or cred in ("", ".", ".."):
                raise ValueError(f"{name}_credential: {cred!r} is not a credential name")
            data[name] = _read(Path(folder) / cred, f"{name}_credential")
    return data


class StrictModel(BaseModel):
    """Base of every settings table: unknown keys are errors, values are frozen, and
    secret options accept ``_file`` / ``_credential`` variants."""

    # Env values are parsed as JSON, so a digit-only queue or bucket name arrives as an int.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    def __repr_args__(self) -> Any:
        hidden = set(secret_fields(type(self)))
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name in hidden and isinstance(value, str) else value)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        environ = (info.context or {}).get("environ")
        return resolve_secret_files(cls, data, os.environ if environ is None else environ)
