"""Keeping secrets out of what people read: `facewarden config`, logs and error messages.

Two kinds of secret live in the settings: whole values (HMAC secrets, tokens, S3 secret
keys: typed ``SecretStr``) and passwords inside URLs (``amqp://admin:hunter2@host``,
kept as plain strings because every AMQP client wants one, but never shown in clear).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

REDACTED = "**********"

#: ``scheme://user:password@`` — the password part is what we hide.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@/\s]*)@", re.I)
#: Log fields (and config keys) whose value is a secret by its name alone.
SECRET_NAME = re.compile(r"secret|token|passw|credential|private_key|api_key", re.I)


def redact_url(url: str) -> str:
    """``amqp://admin:hunter2@host/`` -> ``amqp://admin:***@host/``; other text unchanged."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", url)


redact_text = redact_url


def redact_value(name: str, value: Any) -> Any:
    """What may be shown of ``value`` given the key it sits under."""
    if isinstance(value, str):
        if SECRET_NAME.search(name) and not name.endswith(("_file", "_credential")):
            return REDACTED
        return redact_url(value)
    return value


def redact_log_fields(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: secrets never reach a log line, whoever logged them."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = redact_value(key, value)
    return event_dict
